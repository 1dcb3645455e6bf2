//! The resilient [`Upstream`] of an outbound route: the resilience layer's decisions
//! (discovery, balancing, retries, circuit breaking) around the route's mTLS [`Transport`], one
//! `Transport::send` per try.

use http::{Request, Response};
use tokio_util::sync::CancellationToken;

use super::transport::{Endpoint, Transport};
use super::upstream::{BoxFuture, Tries, Upstream, UpstreamError};
use crate::proxy::body::ProxyBody;
use crate::proxy::client::UpstreamBody;
use crate::proxy::error::TransportError;
use crate::proxy::forward::wants_upgrade;
use crate::resilience::{
    ConfigError, DiscoveryConfig, EndpointsConfig, Metrics, ReplayBody, Route, RouteError,
    RouteResilienceConfig, TryFailure,
};

impl TryFailure for TransportError {
    fn is_connect_failure(&self) -> bool {
        TransportError::is_connect_failure(self)
    }

    fn caller_failed(&self) -> bool {
        self.is_caller_failure()
    }

    fn endpoint_busy(&self) -> bool {
        matches!(self, TransportError::Refused { .. })
    }

    fn endpoint_is_wrong(&self) -> bool {
        matches!(
            self,
            TransportError::IdentityMismatch { .. } | TransportError::Tls { .. }
        )
    }
}

/// What every route's resilience shares in one process: the metric families, DNS settings and the stop
/// signal for background discovery.
#[derive(Debug, Clone)]
pub struct Runtime {
    metrics: Metrics,
    discovery: DiscoveryConfig,
    token: CancellationToken,
}

impl Runtime {
    /// Registers the resilience metrics in `registry` (once per process).
    pub fn new(
        registry: &prometheus::Registry,
        discovery: DiscoveryConfig,
        token: CancellationToken,
    ) -> prometheus::Result<Self> {
        Ok(Self {
            metrics: Metrics::register(registry)?,
            discovery,
            token,
        })
    }

    /// Starts a route (discovery in the background; never waits for DNS) and wraps its transport.
    pub fn upstream(
        &self,
        name: &str,
        endpoints: &EndpointsConfig,
        resilience: &RouteResilienceConfig,
        transport: Transport,
    ) -> Result<std::sync::Arc<dyn Upstream>, ConfigError> {
        let route = Route::start(
            name,
            endpoints,
            resilience,
            &self.discovery,
            &self.metrics,
            self.token.clone(),
        )?;
        Ok(std::sync::Arc::new(ResilientUpstream { route, transport }))
    }
}

/// An [`Upstream`] that sends each request through a resilience [`Route`].
#[derive(Debug)]
pub struct ResilientUpstream {
    route: Route,
    transport: Transport,
}

impl Upstream for ResilientUpstream {
    fn call<'a>(
        &'a self,
        req: Request<ProxyBody>,
        tries: &'a Tries,
    ) -> BoxFuture<'a, Result<Response<UpstreamBody>, UpstreamError>> {
        Box::pin(async move {
            if wants_upgrade(&req) {
                // An upgraded connection is a tunnel, not a request: one try, nothing to replay.
                let endpoint = self
                    .route
                    .pick_for_connection()
                    .ok_or(UpstreamError::NoEndpoint)?;
                tries.record(endpoint.addr);
                return Ok(self.transport.send(endpoint.addr, req).await?);
            }
            let transport = &self.transport;
            let result = self
                .route
                .call_known_length(
                    req,
                    |endpoint, req: Request<ReplayBody<ProxyBody>>| async move {
                        tries.record(endpoint.addr);
                        let (parts, body) = req.into_parts();
                        let body: ProxyBody = match body.into_original_or_full() {
                            Some(http_body_util::Either::Left(original)) => original,
                            Some(http_body_util::Either::Right(full)) => {
                                http_body_util::Either::Right(full)
                            }
                            None => {
                                return Err(TransportError::Http(
                                    "internal: a partly read request body cannot be forwarded"
                                        .into(),
                                ));
                            }
                        };
                        transport
                            .send(endpoint.addr, Request::from_parts(parts, body))
                            .await
                    },
                )
                .await;
            result.map_err(|e| match e {
                RouteError::Failed { error, .. } => UpstreamError::Transport(error),
                local @ RouteError::Local { .. } => UpstreamError::Unavailable {
                    status: local.status(),
                    message: local.to_string(),
                },
            })
        })
    }

    fn pick(&self) -> Option<Endpoint> {
        self.route
            .pick_for_connection()
            .map(|e| Endpoint::new(e.addr))
    }

    fn transport(&self) -> &Transport {
        &self.transport
    }
}
