//! The seam between the outbound request path and the choice of endpoint: the handler hands
//! each app request to its route's [`Upstream`], which picks an endpoint and sends it over the
//! route's [`Transport`]. The resilience layer (discovery, balancing, retries, circuit
//! breaking) implements it: [`super::resilient::ResilientUpstream`].

use std::future::Future;
use std::pin::Pin;

use http::{Request, Response, StatusCode};

use super::transport::{Endpoint, Transport};
use crate::proxy::body::ProxyBody;
use crate::proxy::client::UpstreamBody;
use crate::proxy::error::TransportError;

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an upstream gave no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The route has no endpoint to send to.
    #[error("no endpoint available")]
    NoEndpoint,
    /// The chosen endpoint failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The upstream decided not to send (load shedding, every endpoint ejected, ...).
    #[error("{message}")]
    Unavailable { status: StatusCode, message: String },
}

impl UpstreamError {
    /// The status the app gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            Self::Transport(t) if t.is_caller_failure() => StatusCode::BAD_REQUEST,
            Self::Transport(_) => StatusCode::BAD_GATEWAY,
            Self::Unavailable { status, .. } => *status,
        }
    }

    /// The `kind` label of `ambassador_upstream_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoEndpoint => "no_endpoint",
            Self::Transport(t) => t.kind(),
            Self::Unavailable { .. } => "unavailable",
        }
    }
}

/// Where a request was sent, for the access log: the endpoint of its last try and how many
/// tries there were.
#[derive(Debug, Default)]
pub struct Tries {
    last: std::sync::Mutex<Option<std::net::SocketAddr>>,
    count: std::sync::atomic::AtomicU32,
}

impl Tries {
    pub fn record(&self, endpoint: std::net::SocketAddr) {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(endpoint);
    }

    /// The last endpoint tried, and the retries after the first try.
    pub fn get(&self) -> (Option<std::net::SocketAddr>, u32) {
        let count = self.count.load(std::sync::atomic::Ordering::Relaxed);
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        (last, count.saturating_sub(1))
    }
}

/// What the outbound handler calls once per app request.
pub trait Upstream: Send + Sync + std::fmt::Debug + 'static {
    fn call<'a>(
        &'a self,
        req: Request<ProxyBody>,
        tries: &'a Tries,
    ) -> BoxFuture<'a, Result<Response<UpstreamBody>, UpstreamError>>;

    /// An endpoint for a raw TCP connection (TCP routes), if any.
    fn pick(&self) -> Option<Endpoint>;

    /// The transport, for TCP routes.
    fn transport(&self) -> &Transport;
}
