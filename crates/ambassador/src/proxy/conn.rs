//! What every accepted connection shares: activity tracking for the idle and header-read limits,
//! the drive loop that applies them and the shutdown, and the connection-count limit.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::metrics::{Limit, RouteMetrics};

fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    // Milliseconds since start fit u64 for half a billion years.
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One connection's activity, shared by its I/O wrapper, its request handler and its drive loop.
#[derive(Debug)]
pub struct Activity {
    /// Last time bytes moved either way (ms since start).
    last: AtomicU64,
    /// When the first byte of a request head arrived (ms since start, +1), 0 when not reading one.
    head_started: AtomicU64,
    /// Requests handed to the handler whose response head is not out yet.
    in_flight: AtomicU32,
    /// Whether this connection reads HTTP/1 heads (the header-read limit applies).
    http1: bool,
}

impl Activity {
    pub fn new(http1: bool) -> Arc<Self> {
        Arc::new(Self {
            last: AtomicU64::new(now_ms()),
            head_started: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            http1,
        })
    }

    fn on_read(&self) {
        let now = now_ms();
        self.last.store(now, Ordering::Relaxed);
        if self.http1
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(now + 1, Ordering::Relaxed);
        }
    }

    fn on_write(&self) {
        self.last.store(now_ms(), Ordering::Relaxed);
    }

    /// A request head was parsed and handed to the handler; the guard marks its response head.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.head_started.store(0, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            activity: self.clone(),
        }
    }
}

/// Marks one request in flight on its connection until dropped.
#[derive(Debug)]
pub struct RequestGuard {
    activity: Arc<Activity>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps the [`RequestGuard`] of a request until its response body has been sent: bytes the
/// client sends while a response is still streaming (an echo, a long upload answered early)
/// belong to that request, not to the head of the next one.
#[derive(Debug)]
pub struct Guarded<B> {
    body: B,
    guard: Option<RequestGuard>,
}

impl<B> Guarded<B> {
    pub fn new(body: B, guard: RequestGuard) -> Self {
        Self {
            body,
            guard: Some(guard),
        }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(poll, Poll::Ready(None) | Poll::Ready(Some(Err(_))))
            || this.body.is_end_stream()
        {
            this.guard = None;
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A stream that, when hyper drops it, goes back to the connection task through its
/// [`Reclaimed`] slot instead of being closed, so the task can still answer (`408`) and close
/// gracefully ([`lingering_close`]).
#[derive(Debug)]
pub struct Reclaim<T> {
    inner: Option<T>,
    slot: Arc<Mutex<Option<T>>>,
}

/// Where a [`Reclaim`]ed stream lands once hyper is done with it.
#[derive(Debug)]
pub struct Reclaimed<T> {
    slot: Arc<Mutex<Option<T>>>,
}

impl<T> Reclaim<T> {
    pub fn new(inner: T) -> (Self, Reclaimed<T>) {
        let slot = Arc::new(Mutex::new(None));
        (
            Self {
                inner: Some(inner),
                slot: slot.clone(),
            },
            Reclaimed { slot },
        )
    }

    fn inner(&mut self) -> io::Result<&mut T> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl<T> Drop for Reclaim<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
            *slot = Some(inner);
        }
    }
}

impl<T> Reclaimed<T> {
    /// The stream, once its [`Reclaim`] wrapper has been dropped (None while it is alive, for
    /// instance inside an upgraded connection's tunnel).
    pub fn take(&self) -> Option<T> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Reclaim<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.inner() {
            Ok(inner) => Pin::new(inner).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Reclaim<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.inner() {
            Ok(inner) => Pin::new(inner).poll_write(cx, data),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.inner() {
            Ok(inner) => Pin::new(inner).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner() {
            Ok(inner) => Pin::new(inner).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner() {
            Ok(inner) => Pin::new(inner).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// How long, and how many bytes, a lingering close keeps reading what the client still sends.
pub const LINGER_TIME: Duration = Duration::from_secs(1);
pub const LINGER_BYTES: u64 = 16 * 1024 * 1024;

/// Closes a connection whose client may still be sending (the rest of a refused request): the
/// write side is shut first (after a TLS close_notify), then reads are discarded until the
/// client closes, for at most [`LINGER_TIME`] or [`LINGER_BYTES`]. Closing a socket with
/// unread bytes makes the kernel send a reset, which can destroy the answer before the client
/// read it (nginx's `lingering_close`).
pub async fn lingering_close<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let work = async {
        // hyper may have shut the write side already; a second shutdown's error is no reason
        // to skip the draining.
        let _ = stream.shutdown().await;
        // On the heap: only closing connections pay for it, not every connection task's state.
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0u64;
        while total < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n as u64,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, work).await;
}

/// What a client that was too slow with its request head is told.
const REQUEST_TIMEOUT: &str = "ambassador: the request head was not complete within the header read timeout (header_read_timeout)\n";

/// Closes an HTTP/1 connection hyper is done with, as `ended` requires: a client cut for
/// slowness gets `408 Request Timeout` first; one whose request hyper refused (`431`, `400`)
/// may still be sending it, so both close lingering. Other ends just close.
pub async fn close_http1<S: AsyncRead + AsyncWrite + Unpin>(
    ended: &Ended<hyper::Error>,
    stream: &Reclaimed<S>,
) {
    let linger = match ended {
        Ended::HeaderTimeout => true,
        Ended::Done(Err(e)) => e.is_parse(),
        Ended::Done(Ok(())) => false,
    };
    if !linger {
        return;
    }
    let Some(mut stream) = stream.take() else {
        return;
    };
    if let Ended::HeaderTimeout = ended {
        let answer = format!(
            "HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\nx-ambassador-error: 1\r\ncontent-length: {}\r\n\r\n{REQUEST_TIMEOUT}",
            REQUEST_TIMEOUT.len()
        );
        // A client that does not read gets no more time than the linger.
        let write = tokio::time::timeout(LINGER_TIME, stream.write_all(answer.as_bytes())).await;
        if !matches!(write, Ok(Ok(()))) {
            return;
        }
    }
    lingering_close(stream).await;
}

/// An I/O stream that records its activity.
#[derive(Debug)]
pub struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.on_read();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.on_write();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.on_write();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A hyper server connection that can be asked to finish gracefully.
pub trait Graceful {
    fn graceful(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// How a driven connection ended.
#[derive(Debug)]
pub enum Ended<E> {
    /// The connection finished (cleanly or with the protocol's error).
    Done(Result<(), E>),
    /// A client took longer than the header-read limit to send a request head; it was cut.
    HeaderTimeout,
}

/// Drives a hyper connection to its end, applying the idle and header-read limits and the
/// shutdown: on `stop` (or when idle) it asks the connection to finish gracefully (HTTP/1:
/// `Connection: close` after the response in flight; HTTP/2: GOAWAY, streams in flight finish).
pub async fn drive<C, E>(
    conn: C,
    activity: &Activity,
    limits: &Limits,
    stop: &CancellationToken,
    metrics: &RouteMetrics,
) -> Ended<E>
where
    C: Graceful + Future<Output = Result<(), E>>,
{
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    let sleep = tokio::time::sleep(limits.header_read_timeout.min(limits.idle_timeout));
    let mut sleep = std::pin::pin!(sleep);
    loop {
        tokio::select! {
            result = conn.as_mut() => return Ended::Done(result),
            () = stop.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful();
            }
            () = sleep.as_mut() => {
                let now = now_ms();
                let head = activity.head_started.load(Ordering::Relaxed);
                let header_ms = millis(limits.header_read_timeout);
                if head != 0 && now + 1 >= head + header_ms {
                    metrics.limit_exceeded(Limit::HeaderReadTimeout);
                    return Ended::HeaderTimeout;
                }
                let last = activity.last.load(Ordering::Relaxed);
                let idle_ms = millis(limits.idle_timeout);
                let idle = activity.in_flight.load(Ordering::Relaxed) == 0 && head == 0;
                if !closing && idle && now >= last + idle_ms {
                    metrics.limit_exceeded(Limit::IdleTimeout);
                    closing = true;
                    conn.as_mut().graceful();
                }
                // Wake again at the nearest deadline that could fire.
                let mut next = last + idle_ms;
                if head != 0 {
                    next = next.min(head - 1 + header_ms);
                }
                let wait = next.saturating_sub(now).max(50);
                sleep.as_mut().reset(Instant::now() + Duration::from_millis(wait));
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

/// Copies bytes both ways until both sides are done (each side's EOF is passed on as a
/// half-close), the pair is idle for `idle`, or `stop` is cancelled.
pub async fn tunnel<A, B>(
    mut a: A,
    mut b: B,
    activity: &Activity,
    idle: Duration,
    stop: &CancellationToken,
) -> io::Result<TunnelEnd>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    let mut copy = std::pin::pin!(copy);
    let idle_ms = millis(idle);
    loop {
        let last = activity.last.load(Ordering::Relaxed);
        let wait = (last + idle_ms).saturating_sub(now_ms()).max(50);
        tokio::select! {
            result = copy.as_mut() => return result.map(|_| TunnelEnd::Done),
            () = stop.cancelled() => return Ok(TunnelEnd::Shutdown),
            () = tokio::time::sleep(Duration::from_millis(wait)) => {
                if now_ms() >= activity.last.load(Ordering::Relaxed) + idle_ms {
                    return Ok(TunnelEnd::Idle);
                }
            }
        }
    }
}

/// Why a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum TunnelEnd {
    Done,
    Idle,
    Shutdown,
}

/// The connection budget of one listener.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    permits: Arc<tokio::sync::Semaphore>,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(
                max.min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// A permit for one more connection, or None when the listener is full.
    pub fn try_acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}
