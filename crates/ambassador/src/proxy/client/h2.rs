//! HTTP/2 to one server, spoken with the `h2` crate directly: a few shared connections, each
//! request a stream opened from the caller's own task.
//!
//! Not hyper's HTTP/2 client: it hands every request to the connection's task over a channel
//! and spawns a task per request to wait for its response, machinery that costs more CPU than
//! the stream itself. Here the caller opens the stream and awaits the response; only a request
//! body that is not complete at once gets a task of its own to stream it.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, RecvStream, SendStream};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::proxy::body::{BoxError, ProxyBody};
use crate::proxy::error::TransportError;

/// Flow-control windows we grant the remote for response bodies. Fixed rather than adaptive: a
/// bound on what a client that stops reading can make the ambassador buffer (one stream
/// window), and enough for a LAN (64 KiB per stream is 500 Mbit/s at 1 ms). The connection's
/// window holds every stream's window at once (the remote allows 256 streams): data waiting
/// for a client that stopped reading is never released, so with a smaller connection window
/// a few such streams would stop every other stream of the connection.
const STREAM_WINDOW: u32 = 64 * 1024;
const CONNECTION_WINDOW: u32 = 256 * STREAM_WINDOW;
/// A ping on every connection this often; no pong within the timeout closes it.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The h2 settings of every client connection.
pub fn builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .enable_push(false)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(64 * 1024)
        .max_send_buffer_size(400 * 1024);
    builder
}

/// One live connection: its handle and the time a request last picked it.
struct Conn {
    id: u64,
    send: SendRequest<Bytes>,
    last_used: Arc<AtomicU64>,
}

#[derive(Default)]
struct State {
    conns: Vec<Conn>,
    next: usize,
    next_id: u64,
    /// The attempt opening a connection now (only one at a time per server).
    connecting: Option<u64>,
}

/// The HTTP/2 connections to one server: up to `max`, shared by all requests, opened on
/// demand, closed after `idle` without a request.
pub struct H2Conns {
    state: Mutex<State>,
    /// Wakes requests waiting for a connection being opened.
    opened: tokio::sync::Notify,
    /// The last attempt that failed, for the requests that waited on it.
    last_failure: Mutex<Option<(u64, TransportError)>>,
    max: usize,
    idle: Duration,
}

impl std::fmt::Debug for H2Conns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Conns")
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

/// What [`H2Conns::checkout`] found.
enum Checkout {
    Ready(u64, SendRequest<Bytes>),
    /// None open: the caller opens one (attempt number), having reserved the right to.
    Open(u64),
    /// None open and another request is opening one (this attempt): wait for it.
    Wait(u64),
}

fn now_ms() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl H2Conns {
    pub fn new(max: usize, idle: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            opened: tokio::sync::Notify::new(),
            last_failure: Mutex::new(None),
            max: max.max(1),
            idle,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the next live connection in turn; asks the caller to open one when there is none,
    /// or (at most one at a time) another while fewer than `max` are open.
    fn checkout(&self) -> (Checkout, Option<u64>) {
        let mut state = self.lock();
        if state.conns.is_empty() {
            if let Some(attempt) = state.connecting {
                return (Checkout::Wait(attempt), None);
            }
            let attempt = state.next_id;
            state.next_id += 1;
            state.connecting = Some(attempt);
            return (Checkout::Open(attempt), None);
        }
        let extra = (state.conns.len() < self.max && state.connecting.is_none()).then(|| {
            let attempt = state.next_id;
            state.next_id += 1;
            state.connecting = Some(attempt);
            attempt
        });
        let i = state.next % state.conns.len();
        state.next = state.next.wrapping_add(1);
        let conn = &state.conns[i];
        conn.last_used.store(now_ms(), Ordering::Relaxed);
        (Checkout::Ready(conn.id, conn.send.clone()), extra)
    }

    fn remove(&self, id: u64) {
        self.lock().conns.retain(|c| c.id != id);
    }

    /// Opens a connection with `connect`, adds it to the set and starts its driver.
    async fn open<F, Fut, T>(
        self: Arc<Self>,
        attempt: u64,
        connect: F,
    ) -> Result<(), TransportError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, TransportError>>,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let result = async {
            let io = connect().await?;
            builder()
                .handshake::<_, Bytes>(io)
                .await
                .map_err(|e| TransportError::Http(format!("HTTP/2 handshake failed: {e}")))
        }
        .await;
        let outcome = match result {
            Ok((send, conn)) => {
                let last_used = Arc::new(AtomicU64::new(now_ms()));
                {
                    let mut state = self.lock();
                    state.conns.push(Conn {
                        id: attempt,
                        send,
                        last_used: last_used.clone(),
                    });
                    state.connecting = None;
                }
                tokio::spawn(drive(
                    conn,
                    Arc::downgrade(&self),
                    attempt,
                    last_used,
                    self.idle,
                ));
                Ok(())
            }
            Err(e) => {
                *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((attempt, e.clone()));
                self.lock().connecting = None;
                Err(e)
            }
        };
        self.opened.notify_waiters();
        outcome
    }

    /// A connection ready for a new stream: an open one, or one opened now (by this request or
    /// by another that got there first).
    async fn ready<F, Fut, T>(
        self: &Arc<Self>,
        connect: &F,
    ) -> Result<(u64, SendRequest<Bytes>), TransportError>
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<T, TransportError>> + Send,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        loop {
            // Registered before the checkout, so a connection opened in between is not missed.
            let opened = self.opened.notified();
            let (checkout, extra) = self.checkout();
            if let Some(attempt) = extra {
                self.spawn_open(attempt, connect);
            }
            let attempt = match checkout {
                Checkout::Ready(id, send) => match send.ready().await {
                    Ok(send) => return Ok((id, send)),
                    // Closed or going away: forget it and look again.
                    Err(_) => {
                        self.remove(id);
                        continue;
                    }
                },
                Checkout::Open(attempt) => {
                    self.spawn_open(attempt, connect);
                    attempt
                }
                Checkout::Wait(attempt) => attempt,
            };
            opened.await;
            // The attempt this request waited for failed: so does the request (rather than
            // every waiter trying in turn, each up to the connect timeout).
            let failure = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((failed, e)) = failure.as_ref()
                && *failed == attempt
            {
                return Err(e.clone());
            }
        }
    }

    /// Opens a connection on a task of its own, so that a request that gives up waiting (its
    /// timeout, its client gone) does not leave the server "being connected" for ever.
    fn spawn_open<F, Fut, T>(self: &Arc<Self>, attempt: u64, connect: &F)
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<T, TransportError>> + Send,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (conns, connect) = (self.clone(), connect.clone());
        tokio::spawn(async move {
            let _ = conns.open(attempt, connect).await;
        });
    }

    /// Sends `req` on one of the connections (opened with `connect` when needed). A request that
    /// could not be sent because no connection could be had comes back with the error.
    #[allow(clippy::result_large_err)]
    pub async fn send<F, Fut, T>(
        self: &Arc<Self>,
        req: Request<ProxyBody>,
        connect: &F,
        addr: std::net::SocketAddr,
    ) -> Result<Response<H2Body>, (TransportError, Option<Request<ProxyBody>>)>
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<T, TransportError>> + Send,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (id, mut send) = match self.ready(connect).await {
            Ok(ready) => ready,
            Err(e) => return Err((e, Some(req))),
        };
        let (parts, body) = req.into_parts();
        let mut head = Request::from_parts(parts, ());
        let eos = body.is_end_stream();
        if let Some(len) = body.size_hint().exact()
            && (len != 0 || !matches!(*head.method(), http::Method::GET | http::Method::HEAD))
            && !head.headers().contains_key(http::header::CONTENT_LENGTH)
        {
            head.headers_mut()
                .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        }
        let (response, stream) = match send.send_request(head, eos) {
            Ok(pair) => pair,
            Err(e) => {
                // The stream was never opened: the request did not reach the remote.
                self.remove(id);
                return Err((
                    TransportError::Connect {
                        addr,
                        message: format!(
                            "the HTTP/2 connection closed before the request was sent: {e}"
                        ),
                    },
                    None,
                ));
            }
        };
        drop(send);
        let body_failed = Arc::new(std::sync::OnceLock::new());
        let pipe = (!eos)
            .then(|| tokio::spawn(pipe_body(body, stream, body_failed.clone())).abort_handle());
        respond(response, PipeGuard(pipe), addr, &body_failed)
            .await
            .map_err(|e| (e, None))
    }
}

async fn respond(
    response: ResponseFuture,
    pipe: PipeGuard,
    addr: std::net::SocketAddr,
    body_failed: &std::sync::OnceLock<String>,
) -> Result<Response<H2Body>, TransportError> {
    let result = response.await;
    if let (Err(_), Some(why)) = (&result, body_failed.get()) {
        // We reset the stream because the caller's body failed: the remote is not to blame.
        return Err(TransportError::RequestBody(why.clone()));
    }
    match result {
        Ok(response) => {
            let exact = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            Ok(response.map(|recv| H2Body {
                recv,
                exact,
                data_done: false,
                _pipe: pipe,
            }))
        }
        // The remote refused the stream before processing it (RFC 9113 8.7): safe to retry.
        Err(e) if e.reason() == Some(Reason::REFUSED_STREAM) => Err(TransportError::Refused {
            addr,
            message: format!("the remote refused the stream before processing it: {e}"),
        }),
        Err(e) => Err(TransportError::Http(format!("HTTP/2 request failed: {e}"))),
    }
}

/// Drives one connection until it closes: pings it every [`KEEPALIVE_INTERVAL`] (no pong within
/// [`KEEPALIVE_TIMEOUT`] closes it) and takes it out of the set once idle, after which it closes
/// by itself when its last stream ends.
async fn drive<T>(
    mut conn: h2::client::Connection<T, Bytes>,
    conns: Weak<H2Conns>,
    id: u64,
    last_used: Arc<AtomicU64>,
    idle: Duration,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut pinger = conn.ping_pong();
    let mut conn = std::pin::pin!(conn);
    let mut in_set = true;
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    let tick = KEEPALIVE_INTERVAL.min(idle);
    let mut interval = tokio::time::interval_at(Instant::now() + tick, tick);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP/2 connection ended");
                }
                break;
            }
            _ = interval.tick() => {
                if in_set && now_ms().saturating_sub(last_used.load(Ordering::Relaxed)) >= idle_ms {
                    in_set = false;
                    if let Some(conns) = conns.upgrade() {
                        conns.remove(id);
                    }
                    continue;
                }
                let Some(pinger) = pinger.as_mut() else { continue };
                let pong = tokio::time::timeout(KEEPALIVE_TIMEOUT, pinger.ping(h2::Ping::opaque()));
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "HTTP/2 connection ended");
                        }
                        break;
                    }
                    pong = pong => match pong {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "HTTP/2 ping failed: closing the connection");
                            break;
                        }
                        Err(_) => {
                            tracing::warn!("HTTP/2 connection did not answer a ping within {KEEPALIVE_TIMEOUT:?}: closing it");
                            break;
                        }
                    }
                }
            }
        }
    }
    if let Some(conns) = conns.upgrade() {
        conns.remove(id);
    }
}

/// Streams a request body into its h2 stream, within the flow-control window the remote grants.
async fn pipe_body(
    mut body: ProxyBody,
    mut stream: SendStream<Bytes>,
    failed: Arc<std::sync::OnceLock<String>>,
) {
    loop {
        let frame = poll_fn(|cx| {
            if let Poll::Ready(reset) = stream.poll_reset(cx) {
                return Poll::Ready(Err(reset.ok()));
            }
            Pin::new(&mut body).poll_frame(cx).map(Ok)
        })
        .await;
        let frame = match frame {
            // The remote reset the stream: nothing more to send.
            Err(_) => return,
            Ok(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "request body failed: resetting the stream");
                let _ = failed.set(e.to_string());
                stream.send_reset(Reason::CANCEL);
                return;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(mut data) => {
                while !data.is_empty() {
                    stream.reserve_capacity(data.len());
                    let granted = match poll_fn(|cx| stream.poll_capacity(cx)).await {
                        Some(Ok(n)) => n,
                        Some(Err(_)) | None => return,
                    };
                    if granted == 0 {
                        continue;
                    }
                    let chunk = data.split_to(granted.min(data.len()));
                    if stream.send_data(chunk, false).is_err() {
                        return;
                    }
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = stream.send_trailers(trailers);
                    return;
                }
            }
        }
    }
}

/// Aborts the request-body task when the response is dropped first.
#[derive(Debug)]
struct PipeGuard(Option<AbortHandle>);

impl Drop for PipeGuard {
    fn drop(&mut self) {
        if let Some(pipe) = self.0.take() {
            pipe.abort();
        }
    }
}

/// A response body received on an h2 stream; its flow-control window is given back as it is
/// read, so the remote sends only as fast as the app takes it.
#[derive(Debug)]
pub struct H2Body {
    recv: RecvStream,
    exact: Option<u64>,
    data_done: bool,
    _pipe: PipeGuard,
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.data_done {
            match this.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => this.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match this.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(trailers))) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
