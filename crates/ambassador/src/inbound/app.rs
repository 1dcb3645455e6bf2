//! The keep-alive connections to the app on localhost: an HTTP/1.1 pool, or for h2c a few shared
//! HTTP/2 connections, one set per worker thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::AppProtocol;
use crate::proxy::body::ProxyBody;
use crate::proxy::client::UpstreamBody;
use crate::proxy::client::h1::{self, Http1Pool, Sender};
use crate::proxy::client::h2::H2Conns;
use crate::proxy::error::TransportError;
use crate::shard::ShardLocal;

/// Connections unused this long are closed rather than reused (the app may have closed them).
const IDLE: Duration = Duration::from_secs(60);

/// Why the app gave no response.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("{0}")]
    H2(TransportError),
}

impl AppError {
    /// True when the peer's own request body failed (malformed, cut short), not the app.
    pub fn is_caller_failure(&self) -> bool {
        match self {
            Self::Http(e) => e.is_user(),
            Self::H2(e) => e.is_caller_failure(),
            Self::Connect(_) => false,
        }
    }
}

/// Keep-alive connections to the app, shared by every inbound connection of a route.
#[derive(Clone)]
pub struct AppClient {
    addr: SocketAddr,
    authority: Authority,
    /// Each worker thread's own pool: a connection's I/O stays on the thread that uses it.
    pool: Arc<ShardLocal<Arc<Http1Pool>>>,
    /// h2c: shared HTTP/2 connections instead of the HTTP/1.1 pool, per worker thread too.
    h2: Option<Arc<ShardLocal<Arc<H2Conns>>>>,
}

impl std::fmt::Debug for AppClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppClient")
            .field("addr", &self.addr)
            .field("h2", &self.h2.is_some())
            .finish_non_exhaustive()
    }
}

impl AppClient {
    pub fn new(addr: SocketAddr, authority: Authority, protocol: AppProtocol) -> Self {
        Self {
            addr,
            authority,
            pool: Arc::new(ShardLocal::new(|| Http1Pool::new(IDLE))),
            h2: (protocol == AppProtocol::H2c)
                .then(|| Arc::new(ShardLocal::new(|| H2Conns::new(1, IDLE)))),
        }
    }

    /// Sends a request to the app. Its URI's path (or a CONNECT's authority) is kept, the
    /// connection always goes to the app's address; a missing `Host` becomes the app's address.
    pub async fn request(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, AppError> {
        if let Some(h2) = self.h2.as_deref().map(ShardLocal::get) {
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            // RFC 9113 8.3.1: `:authority` from the request's own (an HTTP/2 client's
            // `:authority`, an HTTP/1.1 client's `Host`, which HTTP/2 does not carry); the app's
            // address only for a request that names none.
            let host = req.headers_mut().remove(header::HOST);
            parts.authority = parts
                .authority
                .take()
                .or_else(|| host.and_then(|h| Authority::try_from(h.as_bytes()).ok()))
                .or_else(|| Some(self.authority.clone()));
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
            let addr = self.addr;
            let connect = move || async move {
                let stream =
                    TcpStream::connect(addr)
                        .await
                        .map_err(|e| TransportError::Connect {
                            addr,
                            message: e.to_string(),
                        })?;
                let _ = stream.set_nodelay(true);
                Ok(stream)
            };
            // Boxed, as the pool's connects: inline, the futures of these rarer paths would add
            // their size to every request's future, moved whole each time.
            return Box::pin(h2.send(req, &connect, addr))
                .await
                .map(|r| r.map(UpstreamBody::H2))
                .map_err(|(e, _)| AppError::H2(e));
        }
        if !req.headers().contains_key(header::HOST) {
            // An HTTP/2 client's `:authority` becomes `Host` (RFC 9113 8.3.1); the app's address
            // only for a request that names none.
            let host = req
                .uri()
                .authority()
                .map_or(self.authority.as_str(), Authority::as_str);
            if let Ok(host) = HeaderValue::from_str(host) {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        if req.method() != Method::CONNECT {
            // Origin form: the path only.
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(
                req.uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
            );
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        let response = self.pool.get().send(req, || self.connect()).await?;
        Ok(response.map(UpstreamBody::Pooled))
    }

    async fn connect(&self) -> Result<Sender, AppError> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(AppError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(h1::handshake(TokioIo::new(stream)).await?)
    }
}
