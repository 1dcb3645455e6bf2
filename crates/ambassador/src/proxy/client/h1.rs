//! HTTP/1.1 client connections kept alive in an idle stack: each is taken by one request and
//! given back when its response body has been read to the end.
//!
//! Not hyper-util's pooled client: it spawns a task per request to wait for that moment and
//! looks the pool up in a hash map, on every request.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::rt::{Read, Write};
use tokio::time::Instant;

use crate::proxy::body::{BoxError, ProxyBody};

/// One HTTP/1.1 client connection's handle.
pub type Sender = http1::SendRequest<ProxyBody>;

/// The size of each read from the server (see [`handshake`]).
const READ_BUFFER: usize = 4096;

/// Opens an HTTP/1.1 client connection over `io` and drives it on a task of its own.
pub async fn handshake<T>(io: T) -> hyper::Result<Sender>
where
    T: Read + Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        // hyper reads into an 8 KiB buffer at least, growing it for large bodies. A response
        // head and small body are handed on as slices of that buffer, so until the next hop has
        // sent them the buffer stays pinned and the next read takes a fresh one: with many
        // connections the pinned buffers are the largest part of the heap. One page per read,
        // as nginx's `proxy_buffer_size` defaults to, keeps them small; a large body costs more
        // reads.
        .read_buf_exact_size(Some(READ_BUFFER))
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "HTTP/1.1 client connection ended with an error");
        }
    });
    Ok(sender)
}

/// The idle connections to one server, of one worker thread.
pub struct Http1Pool {
    idle: Mutex<Vec<(Sender, Instant)>>,
    /// Connections unused this long are closed rather than reused (the server may have closed
    /// them).
    max_idle: Duration,
}

impl std::fmt::Debug for Http1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool")
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}

impl Http1Pool {
    pub fn new(max_idle: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(Vec::new()),
            max_idle,
        })
    }

    /// The most recently used idle connection that can take a request now. Connections whose
    /// last response was read but whose task has not marked them idle yet stay for later.
    fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let max_idle = self.max_idle;
        idle.retain(|(s, since)| {
            !s.is_closed() && now.saturating_duration_since(*since) < max_idle
        });
        let i = idle.iter().rposition(|(s, _)| s.is_ready())?;
        Some(idle.remove(i).0)
    }

    fn give_back(&self, sender: Sender) {
        if !sender.is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.push((sender, Instant::now()));
        }
    }

    /// Sends `req` on an idle connection, or on a new one from `connect`. A connection kept idle
    /// may have been closed by the server meanwhile: a request it could not take comes back
    /// unsent, and goes once more on a new connection. The connection returns to the pool when
    /// the response body has been read to its end, unless the response took it over (an
    /// accepted upgrade).
    pub async fn send<E, C, Fut>(
        self: &Arc<Self>,
        req: Request<ProxyBody>,
        connect: C,
    ) -> Result<Response<PooledBody>, E>
    where
        C: Fn() -> Fut,
        Fut: Future<Output = Result<Sender, E>>,
        E: From<hyper::Error>,
    {
        let tunnel = req.method() == Method::CONNECT;
        let reused = self.take();
        let was_reused = reused.is_some();
        // Boxed: inline, the connect future of this rarer path would add its size to every
        // request's future, which is moved whole each time.
        let mut sender = match reused {
            Some(sender) => sender,
            None => Box::pin(connect()).await?,
        };
        let response = match sender.try_send_request(req).await {
            Ok(response) => response,
            Err(mut e) => match e.take_message() {
                Some(req) if was_reused => {
                    sender = Box::pin(connect()).await?;
                    sender
                        .try_send_request(req)
                        .await
                        .map_err(|e| e.into_error())?
                }
                _ => return Err(e.into_error().into()),
            },
        };
        // An accepted upgrade takes the connection over.
        let upgrade = response.status() == StatusCode::SWITCHING_PROTOCOLS
            || (tunnel && response.status().is_success());
        let give_back = (!upgrade).then(|| (sender, self.clone()));
        Ok(response.map(|body| PooledBody { body, give_back }))
    }
}

/// A response body from a pooled HTTP/1.1 connection, which goes back to the pool once the body
/// has been read to its end (a body dropped half-read closes its connection).
pub struct PooledBody {
    body: Incoming,
    give_back: Option<(Sender, Arc<Http1Pool>)>,
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
