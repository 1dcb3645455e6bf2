//! The keep-alive connections to the app on localhost.
//!
//! HTTP/1.1: an idle stack of connections, each taken by one request and given back when its
//! response body has been read to the end (hyper's pooled client spawned a task per request to
//! wait for that moment, and looked the pool up in a hash map). h2c: the outbound side's few
//! shared HTTP/2 connections.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Method, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::AppProtocol;
use crate::outbound::UpstreamBody;
use crate::outbound::h2::{BoxError, H2Conns};
use crate::outbound::transport::TransportError;
use crate::proxy::ProxyBody;
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

type Sender = http1::SendRequest<ProxyBody>;

/// The size of each read from the app (see `connect`).
const APP_READ_BUFFER: usize = 4096;

struct Pool {
    idle: Mutex<Vec<(Sender, Instant)>>,
}

impl Pool {
    /// The most recently used idle connection that can take a request now. Connections whose
    /// last response was read but whose task has not marked them idle yet stay for later.
    fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        idle.retain(|(s, since)| !s.is_closed() && now.saturating_duration_since(*since) < IDLE);
        let i = idle.iter().rposition(|(s, _)| s.is_ready())?;
        Some(idle.remove(i).0)
    }

    fn give_back(&self, sender: Sender) {
        if !sender.is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.push((sender, Instant::now()));
        }
    }
}

/// Keep-alive connections to the app, shared by every inbound connection of a route.
#[derive(Clone)]
pub struct AppClient {
    addr: SocketAddr,
    authority: Authority,
    /// Each worker thread's own pool: a connection's I/O stays on the thread that uses it.
    pool: Arc<ShardLocal<Arc<Pool>>>,
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
            pool: Arc::new(ShardLocal::new(|| {
                Arc::new(Pool {
                    idle: Mutex::new(Vec::new()),
                })
            })),
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
            parts.authority = Some(self.authority.clone());
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
            // Boxed, as the connects below: inline, the futures of these rarer paths would add
            // their size to every request's future (0.7 KB for this one), moved whole each time.
            return Box::pin(h2.send(req, &connect, addr))
                .await
                .map(|r| r.map(UpstreamBody::H2))
                .map_err(|(e, _)| AppError::H2(e));
        }
        let connect = req.method() == Method::CONNECT;
        if !connect {
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
        if !req.headers().contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(self.authority.as_str())
        {
            req.headers_mut().insert(header::HOST, host);
        }
        // A connection kept idle may have been closed by the app meanwhile: a request it could
        // not take comes back unsent, and goes once more on a new connection.
        let pool = self.pool.get();
        let reused = pool.take();
        let was_reused = reused.is_some();
        let mut sender = match reused {
            Some(sender) => sender,
            None => Box::pin(self.connect()).await?,
        };
        let response = match sender.try_send_request(req).await {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                Some(req) if was_reused => {
                    sender = Box::pin(self.connect()).await?;
                    sender
                        .try_send_request(req)
                        .await
                        .map_err(|e| e.into_error())?
                }
                _ => return Err(e.into_error().into()),
            },
        };
        // An accepted upgrade takes the connection over.
        let upgrade = response.status() == http::StatusCode::SWITCHING_PROTOCOLS
            || (connect && response.status().is_success());
        let give_back = (!upgrade).then(|| (sender, pool.clone()));
        Ok(response.map(|body| UpstreamBody::Pooled(PooledBody { body, give_back })))
    }

    async fn connect(&self) -> Result<Sender, AppError> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(AppError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            // hyper reads into an 8 KiB buffer at least, growing it for large bodies. A response
            // head and small body are handed on as slices of that buffer, so until the next hop
            // has sent them the buffer stays pinned and the next read takes a fresh one: with
            // many connections the pinned buffers were the largest part of the heap (about
            // 30 KiB per connection at the peak, 64 connections on the mesh-hop benchmark). One
            // page per read, as nginx's `proxy_buffer_size` defaults to, halves that; a large
            // body costs more reads.
            .read_buf_exact_size(Some(APP_READ_BUFFER))
            .handshake(TokioIo::new(stream))
            .await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "app connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// A response body from a pooled HTTP/1.1 connection, which goes back to the pool once the body
/// has been read to its end (a body dropped half-read closes its connection).
pub struct PooledBody {
    body: Incoming,
    give_back: Option<(Sender, Arc<Pool>)>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

impl PooledBody {
    fn finished(&mut self) {
        if let Some((sender, pool)) = self.give_back.take() {
            pool.give_back(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finished();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.body.is_end_stream() {
                    this.finished();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.give_back = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body whose end was announced but never polled for is complete too (an empty body
        // such as a 204's, or one the server read to its last byte).
        if self.body.is_end_stream() {
            self.finished();
        }
    }
}
