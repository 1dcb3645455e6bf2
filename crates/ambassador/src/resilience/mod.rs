//! Outbound resilience: discovery, balancing, timeouts, retries, circuit breaking and load shedding for
//! one route, around a caller-supplied "send one try to this endpoint" function.
//!
//! The outbound proxy owns connections (mTLS, pooling); this module owns the decisions: which endpoint,
//! whether a failure is retried, whether an endpoint is ejected. [`Route::call`] is the seam.

mod balancer;
pub mod config;
pub mod discovery;
pub mod endpoint;
pub mod metrics;
pub mod retry;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{Either, Full};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use balancer::{Balancer, Pick};
pub use config::{
    BalancerKind, BreakerConfig, ConfigError, DiscoveryConfig, EndpointsConfig, PeakEwmaConfig,
    RetryConfig, RouteResilienceConfig, SuccessRateConfig, TimeoutConfig,
};
pub use endpoint::{Endpoint, EndpointState, TryOutcome};
pub use metrics::{Health, Metrics, RouteMetrics};
pub use retry::{BoxError, PreparedBody, ReplayBody, RetryBudget};

/// The body of a response from [`Route::call`]: the endpoint's own, or one the route made up (503, 504...).
pub type RouteBody<B> = Either<B, Full<Bytes>>;

/// Response header naming why the ambassador answered itself instead of an endpoint.
pub const ERROR_HEADER: &str = "x-ambassador-error";

/// What the "send one try" function reports when it fails: whether the endpoint was never reached.
pub trait TryFailure: fmt::Display {
    /// True when no connection could be established (refused, unreachable, connect timeout, TLS
    /// handshake failed): the request never reached the endpoint, so any method may be retried.
    fn is_connect_failure(&self) -> bool;

    /// True when trying the same endpoint again cannot help (it presented the wrong identity, its
    /// certificate is bad): the request is retried only on an endpoint not tried yet.
    fn endpoint_is_wrong(&self) -> bool {
        false
    }

    /// True when the caller's own request broke the try (its body was malformed or cut short):
    /// it says nothing about the endpoint, so it neither counts against it nor is retried.
    fn caller_failed(&self) -> bool {
        false
    }

    /// True when the endpoint turned the try away unprocessed because it was busy (an HTTP/2
    /// stream refused at its concurrency limit): any method may be retried, and it does not
    /// count against the endpoint, which is working.
    fn endpoint_busy(&self) -> bool {
        false
    }
}

/// A ready-made [`TryFailure`] for senders without an error type of their own.
#[derive(Debug, thiserror::Error)]
pub enum TryError {
    #[error("connection failed: {0}")]
    Connect(#[source] BoxError),
    /// The request may have reached the endpoint (reset mid-request, protocol error).
    #[error("request failed: {0}")]
    Other(#[source] BoxError),
}

impl TryFailure for TryError {
    fn is_connect_failure(&self) -> bool {
        matches!(self, TryError::Connect(_))
    }
}

/// Why [`Route::call`] has no endpoint response to return.
#[derive(Debug, thiserror::Error)]
pub enum RouteError<E> {
    /// The route answers itself: no endpoints, all ejected, over the concurrency limit, a timeout.
    /// `message` names the route; `kind` is a short machine-readable reason.
    #[error("{message}")]
    Local {
        status: StatusCode,
        kind: &'static str,
        message: String,
    },
    /// The last try failed with this error (and was not, or could no longer be, retried).
    #[error("route {route}: endpoint {endpoint}: {error}")]
    Failed {
        route: Arc<str>,
        endpoint: SocketAddr,
        error: E,
    },
}

impl<E: fmt::Display> RouteError<E> {
    /// 503/504 for local answers, 502 for a failed try.
    pub fn status(&self) -> StatusCode {
        match self {
            RouteError::Local { status, .. } => *status,
            RouteError::Failed { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            RouteError::Local { kind, .. } => kind,
            RouteError::Failed { .. } => "upstream-error",
        }
    }

    /// A plain-text answer saying what went wrong, with the reason in [`ERROR_HEADER`].
    pub fn into_response<RB>(self) -> Response<RouteBody<RB>> {
        let mut response =
            Response::new(Either::Right(Full::new(Bytes::from(format!("{self}\n")))));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(ERROR_HEADER, HeaderValue::from_static(self.kind()));
        response
    }
}

/// The endpoint's response, or why there is none.
pub type CallResult<RB, E> = Result<Response<RB>, RouteError<E>>;

/// One outbound route: its endpoints (kept current by discovery) and its resilience policy.
#[derive(Clone)]
pub struct Route {
    inner: Arc<RouteInner>,
}

struct RouteInner {
    name: Arc<str>,
    config: RouteResilienceConfig,
    table: RwLock<Arc<Vec<Arc<EndpointState>>>>,
    balancer: Balancer,
    budget: RetryBudget,
    limit: Option<Arc<Semaphore>>,
    metrics: RouteMetrics,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.inner.name)
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

/// An endpoint as seen from outside, for tests, logs and the admin view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSnapshot {
    pub addr: SocketAddr,
    pub health: &'static str,
    pub pending: usize,
}

impl Route {
    /// Validates the configuration and starts discovery in the background; never waits for DNS.
    /// Must be called within a tokio runtime. Discovery stops when `token` is cancelled.
    pub fn start(
        name: &str,
        endpoints: &EndpointsConfig,
        resilience: &RouteResilienceConfig,
        discovery: &DiscoveryConfig,
        metrics: &Metrics,
        token: CancellationToken,
    ) -> Result<Self, ConfigError> {
        resilience.validate()?;
        let metrics = metrics.route(name);
        let rx = discovery::start(endpoints, discovery, metrics.clone(), token.clone())?;
        let route = Route {
            inner: Arc::new(RouteInner {
                name: Arc::from(name),
                config: resilience.clone(),
                table: RwLock::new(Arc::new(Vec::new())),
                balancer: Balancer::new(resilience.balancer, resilience.peak_ewma.decay),
                budget: RetryBudget::new(&resilience.retries),
                limit: (resilience.max_concurrent_requests > 0)
                    .then(|| Arc::new(Semaphore::new(resilience.max_concurrent_requests))),
                metrics,
            }),
        };
        route.reconcile(&rx.borrow());
        tokio::spawn(route.clone().follow(rx, token));
        Ok(route)
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn config(&self) -> &RouteResilienceConfig {
        &self.inner.config
    }

    pub fn metrics(&self) -> &RouteMetrics {
        &self.inner.metrics
    }

    /// The endpoints currently balanced over (drained ones are gone from this list).
    pub fn endpoints(&self) -> Vec<EndpointSnapshot> {
        self.table()
            .iter()
            .map(|e| EndpointSnapshot {
                addr: e.addr(),
                health: e.health().label(),
                pending: e.pending(),
            })
            .collect()
    }

    fn table(&self) -> Arc<Vec<Arc<EndpointState>>> {
        Arc::clone(
            &self
                .inner
                .table
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    async fn follow(
        self,
        mut rx: watch::Receiver<discovery::EndpointList>,
        token: CancellationToken,
    ) {
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                changed = rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let list = rx.borrow_and_update().clone();
                    self.reconcile(&list);
                }
            }
        }
    }

    /// Applies a new endpoint list: known endpoints keep their state (latency, breaker), new ones start
    /// healthy, vanished ones are drained (no new tries; tries in flight hold them until they finish).
    fn reconcile(&self, list: &[SocketAddr]) {
        let current = self.table();
        let known: Vec<Duration> = current
            .iter()
            .filter(|e| list.contains(&e.addr()))
            .map(|e| e.rtt_estimate())
            .collect();
        let newcomer_rtt = if known.is_empty() {
            self.inner.config.peak_ewma.default_rtt
        } else {
            known.iter().sum::<Duration>() / known.len() as u32
        };
        let next: Vec<Arc<EndpointState>> = list
            .iter()
            .map(|addr| {
                current
                    .iter()
                    .find(|e| e.addr() == *addr)
                    .cloned()
                    .unwrap_or_else(|| {
                        EndpointState::with_rtt(*addr, newcomer_rtt, self.inner.metrics.clone())
                    })
            })
            .collect();
        for gone in current.iter().filter(|e| !list.contains(&e.addr())) {
            tracing::info!(route = %self.inner.name, endpoint = %gone.label(), in_flight = gone.pending(), "endpoint removed by discovery: draining");
            gone.mark_removed();
        }
        self.inner.metrics.set_endpoint_count(next.len());
        *self
            .inner
            .table
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(next);
    }

    /// Sends `req` through the route: picks an endpoint per try, retries what may be retried within the
    /// budget, feeds the breaker, and gives up with a [`RouteError`] when no endpoint can answer. `send`
    /// sends one try to one endpoint (and applies the connect timeout, `config().timeouts.connect`).
    /// The body is kept for retries when at most `retries.max_buffered_body_bytes` long.
    pub fn call<B, RB, E, F, Fut>(
        &self,
        req: Request<B>,
        send: F,
    ) -> impl Future<Output = CallResult<RB, E>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
        E: TryFailure,
        F: Fn(Endpoint, Request<ReplayBody<B>>) -> Fut,
        Fut: Future<Output = Result<Response<RB>, E>>,
    {
        // Not an `async fn`: a wrapper future would hold (and move) another copy of guarded's.
        let cap = self.inner.config.retries.max_buffered_body_bytes;
        self.guarded(req, send, move |body| PreparedBody::read(body, cap))
    }

    /// Like [`Route::call`] but only keeps a body for retries when its length is known in advance (and
    /// within the cap): a body of unknown length streams through at once, for one try, instead of
    /// waiting to be read. For senders that can only take a whole body or the untouched original.
    pub fn call_known_length<B, RB, E, F, Fut>(
        &self,
        req: Request<B>,
        send: F,
    ) -> impl Future<Output = CallResult<RB, E>>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
        E: TryFailure,
        F: Fn(Endpoint, Request<ReplayBody<B>>) -> Fut,
        Fut: Future<Output = Result<Response<RB>, E>>,
    {
        let cap = self.inner.config.retries.max_buffered_body_bytes;
        self.guarded(req, send, move |body| {
            PreparedBody::read_known_length(body, cap)
        })
    }

    async fn guarded<B, RB, E, F, Fut, P, PF>(
        &self,
        req: Request<B>,
        send: F,
        prepare: P,
    ) -> CallResult<RB, E>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
        E: TryFailure,
        F: Fn(Endpoint, Request<ReplayBody<B>>) -> Fut,
        Fut: Future<Output = Result<Response<RB>, E>>,
        P: FnOnce(B) -> PF,
        PF: Future<Output = Result<PreparedBody<B>, BoxError>>,
    {
        let _permit = match self.admit() {
            Ok(permit) => permit,
            Err(limit) => {
                self.inner.metrics.shed();
                return Err(self.local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    format!(
                        "route {}: over its limit of {limit} concurrent requests",
                        self.inner.name
                    ),
                ));
            }
        };
        // One clock reading for the deadline and the budget (each read costs, per request).
        let now = Instant::now();
        self.inner.budget.deposit(now.into_std());
        let timeout = self.inner.config.timeouts.request;
        let deadline = now + timeout;
        let idempotent = retry::is_idempotent(&req);
        let (parts, body) = req.into_parts();
        let attempt = async {
            let body = prepare(body).await.map_err(|e| {
                self.local(
                    StatusCode::BAD_REQUEST,
                    "request-body",
                    format!("could not read the request body: {e}"),
                )
            })?;
            self.tries(parts, body, idempotent, send, deadline).await
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(result) => result,
            Err(_) => Err(self.local(
                StatusCode::GATEWAY_TIMEOUT,
                "request-timeout",
                format!(
                    "route {}: no response within {} (timeouts.request)",
                    self.inner.name,
                    humantime::format_duration(timeout)
                ),
            )),
        }
    }

    fn admit(&self) -> Result<Option<OwnedSemaphorePermit>, usize> {
        match &self.inner.limit {
            None => Ok(None),
            Some(limit) => Arc::clone(limit)
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| self.inner.config.max_concurrent_requests),
        }
    }

    /// Picks an endpoint for a connection that is not a request (raw TCP routes); never a breaker probe,
    /// since nothing would report how it went.
    pub fn pick_for_connection(&self) -> Option<Endpoint> {
        match self.inner.balancer.pick(
            &self.table(),
            &[],
            self.inner.config.circuit_breaker.fail_open,
            false,
            std::time::Instant::now(),
        ) {
            Pick::Endpoint { state, .. } => Some(state.endpoint()),
            Pick::NoEndpoints | Pick::AllEjected => None,
        }
    }

    async fn tries<B, RB, E, F, Fut>(
        &self,
        parts: http::request::Parts,
        mut body: PreparedBody<B>,
        idempotent: bool,
        send: F,
        deadline: Instant,
    ) -> CallResult<RB, E>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
        E: TryFailure,
        F: Fn(Endpoint, Request<ReplayBody<B>>) -> Fut,
        Fut: Future<Output = Result<Response<RB>, E>>,
    {
        let config = &self.inner.config;
        let mut tried: Vec<SocketAddr> = Vec::new();
        let mut retries = 0u32;
        let mut last_failure: Option<CallResult<RB, E>> = None;
        loop {
            let mut wrong_endpoint = false;
            let table = self.table();
            // The one clock reading of this try: the pick, the try's start and its deadline.
            let now = Instant::now();
            let (state, probe) = match self.inner.balancer.pick(
                &table,
                &tried,
                config.circuit_breaker.fail_open,
                true,
                now.into_std(),
            ) {
                Pick::Endpoint { state, probe } => (state, probe),
                Pick::NoEndpoints => {
                    self.inner.metrics.unavailable("no_endpoints");
                    return last_failure.unwrap_or_else(|| {
                        Err(self.local(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no-endpoints",
                            format!(
                                "route {}: no endpoints (discovery has found none yet, or none are left)",
                                self.inner.name
                            ),
                        ))
                    });
                }
                Pick::AllEjected => {
                    self.inner.metrics.unavailable("all_ejected");
                    return last_failure.unwrap_or_else(|| {
                        Err(self.local(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "all-ejected",
                            format!(
                                "route {}: all {} endpoints are ejected by the circuit breaker after failing",
                                self.inner.name,
                                table.len()
                            ),
                        ))
                    });
                }
            };
            drop(table);
            let Some(try_body) = body.take_for_try() else {
                // Unreachable by construction (a spent body is never retried); answer rather than panic.
                return last_failure.unwrap_or_else(|| {
                    Err(self.local(
                        StatusCode::BAD_GATEWAY,
                        "body-spent",
                        format!("route {}: request body already sent", self.inner.name),
                    ))
                });
            };
            tried.push(state.addr());
            let guard = state.start_try(probe, now.into_std());
            let per_try = config
                .timeouts
                .per_try
                .min(deadline.saturating_duration_since(now));
            // Boxed: the send future is the largest part of this one, and every layer above
            // would otherwise hold (and move, at each await) a copy of its size.
            let result = tokio::time::timeout_at(
                now + per_try,
                Box::pin(send(
                    state.endpoint(),
                    Request::from_parts(parts.clone(), try_body),
                )),
            )
            .await;
            let (outcome, retry_reason, failure) = match result {
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    let failed = config.circuit_breaker.failure_status.contains(&status);
                    let retry = idempotent && config.retries.on_status.contains(&status);
                    if !failed && !retry {
                        guard.finish(
                            TryOutcome::Success,
                            &config.circuit_breaker,
                            &config.peak_ewma,
                        );
                        return Ok(response);
                    }
                    let outcome = if failed {
                        TryOutcome::Failure
                    } else {
                        TryOutcome::Success
                    };
                    (Some(outcome), retry.then_some("status"), Ok(response))
                }
                Ok(Err(error)) if error.caller_failed() => {
                    // Neither a success nor a failure of the endpoint: the guard drops unscored.
                    drop(guard);
                    return Err(RouteError::Failed {
                        route: Arc::clone(&self.inner.name),
                        endpoint: state.addr(),
                        error,
                    });
                }
                Ok(Err(error)) if error.endpoint_busy() => (
                    None,
                    Some("refused"),
                    Err(RouteError::Failed {
                        route: Arc::clone(&self.inner.name),
                        endpoint: state.addr(),
                        error,
                    }),
                ),
                Ok(Err(error)) => {
                    let connect = error.is_connect_failure();
                    wrong_endpoint = error.endpoint_is_wrong();
                    let failure = Err(RouteError::Failed {
                        route: Arc::clone(&self.inner.name),
                        endpoint: state.addr(),
                        error,
                    });
                    if connect {
                        (Some(TryOutcome::ConnectFailure), Some("connect"), failure)
                    } else {
                        (
                            Some(TryOutcome::Failure),
                            idempotent.then_some("error"),
                            failure,
                        )
                    }
                }
                Err(_) => (
                    Some(TryOutcome::Failure),
                    idempotent.then_some("timeout"),
                    Err(self.local(
                        StatusCode::GATEWAY_TIMEOUT,
                        "try-timeout",
                        format!(
                            "route {}: endpoint {} did not answer within {} (timeouts.per_try)",
                            self.inner.name,
                            state.addr(),
                            humantime::format_duration(per_try)
                        ),
                    )),
                ),
            };
            match outcome {
                Some(outcome) => guard.finish(outcome, &config.circuit_breaker, &config.peak_ewma),
                // Unscored, as a cancelled try is: a busy endpoint is not a failing one.
                None => drop(guard),
            }
            let Some(reason) = retry_reason else {
                return failure;
            };
            if wrong_endpoint && self.table().iter().all(|e| tried.contains(&e.addr())) {
                return failure;
            }
            if retries >= config.retries.max_retries || !body.is_replayable() {
                return failure;
            }
            if !self.inner.budget.try_withdraw() {
                self.inner.metrics.budget_exhausted();
                return failure;
            }
            let pause = retry::backoff(&config.retries, retries);
            if Instant::now() + pause >= deadline {
                // The request timeout would fire mid-sleep; this failure says more than a bare 504.
                return failure;
            }
            self.inner.metrics.retry(reason);
            tracing::debug!(route = %self.inner.name, endpoint = %state.addr(), reason, retry = retries + 1, "retrying");
            retries += 1;
            last_failure = Some(failure);
            tokio::time::sleep(pause).await;
        }
    }

    fn local<E>(&self, status: StatusCode, kind: &'static str, message: String) -> RouteError<E> {
        RouteError::Local {
            status,
            kind,
            message,
        }
    }
}
