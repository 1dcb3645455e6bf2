//! What every accepted connection shares: activity tracking for the idle, header-read and
//! first-request limits, the drive loop that applies them and the shutdown, the connection-count
//! limit, the smaller budget of connections that have not sent a request yet, and the logging of
//! refusals at a bounded rate.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::metrics::{Limit, RouteMetrics};

/// Streams reset by the client after they were accepted, per connection, before the reset
/// ratio is looked at: below this, any client may cancel as it likes.
pub const RESET_ALLOWANCE: u64 = 100;

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
    /// Requests handed to the handler whose response has not been sent whole yet.
    in_flight: AtomicU32,
    /// Of those, the ones still waiting for their response head (from the app or the remote).
    awaiting_head: AtomicU32,
    /// Whether this connection reads HTTP/1 heads (the header-read limit applies).
    http1: bool,
    /// When the connection started being served (ms since start).
    opened: u64,
    /// Requests started on this connection.
    requests: AtomicU64,
    /// Requests the client abandoned (reset or disconnected) before their response head.
    resets: AtomicU64,
    /// Set once resets outnumber the requests answered: the connection is closed.
    abusive: AtomicBool,
    /// Cancelled to close the connection at once: evicted from the pending budget while it had
    /// sent no request, or too many resets.
    close: CancellationToken,
    /// The connection's place in its listener's pending budget, given up at its first request.
    pending: Mutex<Option<PendingGuard>>,
}

impl Activity {
    pub fn new(http1: bool) -> Arc<Self> {
        Self::with_pending(http1, None)
    }

    /// An activity record for a connection that holds a place in the pending budget until its
    /// first request (and is closed if that place is taken from it before).
    pub fn with_pending(http1: bool, pending: Option<PendingGuard>) -> Arc<Self> {
        let close = pending
            .as_ref()
            .map_or_else(CancellationToken::new, |p| p.evicted.clone());
        let now = now_ms();
        Arc::new(Self {
            last: AtomicU64::new(now),
            head_started: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            awaiting_head: AtomicU32::new(0),
            http1,
            opened: now,
            requests: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            abusive: AtomicBool::new(false),
            close,
            pending: Mutex::new(pending),
        })
    }

    /// A request the client abandoned before its response head (an HTTP/2 reset, a closed
    /// connection). True the first time resets pass the allowance and outnumber the requests
    /// that were answered: the caller closes the connection.
    pub fn on_reset(&self) -> bool {
        let resets = self.resets.fetch_add(1, Ordering::Relaxed) + 1;
        let answered = self.requests.load(Ordering::Relaxed).saturating_sub(resets);
        if resets > RESET_ALLOWANCE
            && resets > answered
            && !self.abusive.swap(true, Ordering::Relaxed)
        {
            self.close.cancel();
            return true;
        }
        false
    }

    /// Whether the connection was closed for its resets.
    pub fn is_abusive(&self) -> bool {
        self.abusive.load(Ordering::Relaxed)
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
        self.awaiting_head.fetch_add(1, Ordering::Relaxed);
        if self.requests.fetch_add(1, Ordering::Relaxed) == 0 {
            // The first request: the connection leaves the pending budget.
            drop(
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(),
            );
        }
        RequestGuard {
            activity: self.clone(),
            permit: None,
            head_out: false,
        }
    }
}

/// Marks one request in flight on its connection until dropped.
#[derive(Debug)]
pub struct RequestGuard {
    activity: Arc<Activity>,
    /// A place in a shared limit (the app's concurrent requests) held as long as the request.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Whether the response head is out (the request no longer waits for the next hop).
    head_out: bool,
}

impl RequestGuard {
    /// Keeps `permit` until the request's response has been sent.
    pub fn hold(&mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        self.permit = Some(permit);
    }

    /// The response head is out: from now on, only the client can keep the request from
    /// finishing.
    fn head_out(&mut self) {
        if !self.head_out {
            self.head_out = true;
            self.activity.awaiting_head.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.head_out();
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
    /// The response `body` of the request `guard` marks, whose head is ready.
    pub fn new(body: B, mut guard: RequestGuard) -> Self {
        guard.head_out();
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
        Ended::Done(Ok(())) | Ended::Closed(_) => false,
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
    /// Closed by the ambassador: no first request within the header-read limit, a place in the
    /// pending budget taken by a newer connection, too many resets, or a graceful close the
    /// client did not let finish.
    Closed(Closed),
}

/// Why the ambassador closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// No request within the header-read limit of the connection's start.
    NoRequest,
    /// Its place in the pending budget went to a newer connection.
    Evicted,
    /// It reset more streams than it let finish, and did not let the graceful close finish.
    Resets,
    /// A graceful close (idle, shutdown) that the client did not let finish in time.
    Forced,
    /// Responses ready, but the client took none of their bytes for the idle limit.
    Stalled,
}

/// Drives a hyper connection to its end, applying the idle, header-read and first-request
/// limits and the shutdown: on `stop`, when idle or once its client reset too many streams, it
/// asks the connection to finish gracefully (HTTP/1: `Connection: close` after the response in
/// flight; HTTP/2: GOAWAY, streams in flight finish). A connection that sent no request within the header-read limit is closed, and so is
/// one whose graceful close takes longer than that limit again (unless requests are in flight).
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
    // Closing for its resets: gracefully, so that the requests of other clients sharing the
    // connection (an ambassador's pooled connection carries many) still finish.
    let mut resets_closing = false;
    // When a graceful close started by the ambassador must be over.
    let mut closing_deadline = u64::MAX;
    let sleep = tokio::time::sleep(limits.header_read_timeout.min(limits.idle_timeout));
    let mut sleep = std::pin::pin!(sleep);
    let header_ms = millis(limits.header_read_timeout);
    let idle_ms = millis(limits.idle_timeout);
    let mut second_look = false;
    loop {
        tokio::select! {
            // The connection first: a task woken late (a loaded machine) judges the client by
            // what it already sent (a complete request, an oversized head: 431) before a timer
            // that ran out while the task waited.
            biased;
            result = conn.as_mut() => return Ended::Done(result),
            () = activity.close.cancelled(), if !resets_closing => {
                if activity.is_abusive() {
                    metrics.limit_exceeded(Limit::StreamResets);
                    resets_closing = true;
                    if !closing {
                        closing = true;
                        conn.as_mut().graceful();
                    }
                    closing_deadline = closing_deadline.min(now_ms() + header_ms);
                    sleep.as_mut().reset(Instant::now() + Duration::from_millis(header_ms.min(1000)));
                    continue;
                }
                return Ended::Closed(Closed::Evicted);
            }
            () = stop.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful();
            }
            () = sleep.as_mut() => {
                // A timer that fired late (the process could not run: a loaded machine, a
                // paused container) can be seen before the client's bytes that came in
                // meanwhile are: the connection gets one more look before the clock judges it.
                let late = Instant::now().saturating_duration_since(sleep.deadline());
                if late > LATE_TIMER && !second_look {
                    second_look = true;
                    sleep.as_mut().reset(Instant::now() + SECOND_LOOK);
                    continue;
                }
                let now = now_ms();
                let head = activity.head_started.load(Ordering::Relaxed);
                if head != 0 && now + 1 >= head + header_ms {
                    metrics.limit_exceeded(Limit::HeaderReadTimeout);
                    return Ended::HeaderTimeout;
                }
                let in_flight = activity.in_flight.load(Ordering::Relaxed);
                if closing && in_flight == 0 && now >= closing_deadline {
                    return Ended::Closed(if resets_closing { Closed::Resets } else { Closed::Forced });
                }
                let last = activity.last.load(Ordering::Relaxed);
                if in_flight > 0
                    && activity.awaiting_head.load(Ordering::Relaxed) == 0
                    && now >= last + idle_ms
                {
                    // Every response is ready and nothing has moved for the idle limit: the
                    // client stopped reading (a full socket, an HTTP/2 window held at zero).
                    // A graceful close would wait on it too.
                    metrics.limit_exceeded(Limit::IdleTimeout);
                    return Ended::Closed(Closed::Stalled);
                }
                let first = activity.requests.load(Ordering::Relaxed) == 0;
                if first && now >= activity.opened + header_ms {
                    // Silent, or dripping bytes that never make a request (an HTTP/2 preface
                    // sent a byte at a time): its idle clock never runs out, this one does.
                    metrics.limit_exceeded(Limit::HeaderReadTimeout);
                    return Ended::Closed(Closed::NoRequest);
                }
                let idle = in_flight == 0 && head == 0;
                if !closing && idle && now >= last + idle_ms {
                    metrics.limit_exceeded(Limit::IdleTimeout);
                    closing = true;
                    closing_deadline = now + header_ms;
                    conn.as_mut().graceful();
                }
                // Wake again at the nearest deadline that could fire.
                let mut next = last + idle_ms;
                if head != 0 {
                    next = next.min(head - 1 + header_ms);
                }
                if first {
                    next = next.min(activity.opened + header_ms);
                }
                if closing {
                    next = next.min(closing_deadline);
                }
                let wait = next.saturating_sub(now).max(50);
                sleep.as_mut().reset(Instant::now() + Duration::from_millis(wait));
            }
        }
    }
}

/// How late a timer must fire to count as late, and how long the second look lasts.
const LATE_TIMER: Duration = Duration::from_millis(50);
const SECOND_LOOK: Duration = Duration::from_millis(100);

/// `work` within `limit`, None past it. A deadline that fired late (the process could not
/// run: a loaded machine, a paused container) may be seen before the client's bytes that came
/// in meanwhile are, so `work` then gets a second look before the client is judged by the
/// clock.
pub async fn within<F: Future>(limit: Duration, work: F) -> Option<F::Output> {
    let deadline = Instant::now() + limit;
    let mut work = std::pin::pin!(work);
    if let Ok(done) = tokio::time::timeout_at(deadline, work.as_mut()).await {
        return Some(done);
    }
    if Instant::now().saturating_duration_since(deadline) <= LATE_TIMER {
        return None;
    }
    tokio::time::timeout(SECOND_LOOK, work).await.ok()
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

/// The budget of connections that have not sent a complete first request yet (inbound: from
/// accept, through the TLS handshake, to the first request head). They cost memory and prove
/// nothing, so they get a smaller budget than `max_connections`; when it is full, the oldest
/// of them is closed to make room, so a flood of silent connections cannot keep new clients out:
/// a real client leaves the budget within milliseconds, an attacker's connection waits its turn
/// to be closed.
#[derive(Debug, Clone)]
pub struct PendingBudget {
    inner: Arc<PendingInner>,
}

#[derive(Debug)]
struct PendingInner {
    max: usize,
    next: AtomicU64,
    /// By age: the first entry is the oldest.
    waiting: Mutex<BTreeMap<u64, CancellationToken>>,
}

impl PendingBudget {
    pub fn new(max: usize) -> Self {
        Self {
            inner: Arc::new(PendingInner {
                max: max.max(1),
                next: AtomicU64::new(0),
                waiting: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// A place for a new connection; true as well when the oldest pending connection was
    /// evicted for it.
    pub fn admit(&self) -> (PendingGuard, bool) {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        let mut waiting = self.inner.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let mut evicted_one = false;
        while waiting.len() >= self.inner.max {
            match waiting.pop_first() {
                Some((_, oldest)) => {
                    oldest.cancel();
                    evicted_one = true;
                }
                None => break,
            }
        }
        waiting.insert(id, evicted.clone());
        drop(waiting);
        (
            PendingGuard {
                budget: self.inner.clone(),
                id,
                evicted,
            },
            evicted_one,
        )
    }

    /// Connections holding a place now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// A connection's place in the [`PendingBudget`]; given back when dropped.
#[derive(Debug)]
pub struct PendingGuard {
    budget: Arc<PendingInner>,
    id: u64,
    /// Cancelled when a newer connection took the place.
    pub evicted: CancellationToken,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.budget
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Lets one log line through per second and says how many were held back meanwhile, for
/// refusals an attacker can cause at will (one line per refused connection would let a flood
/// fill the disk and spend a core on logging).
#[derive(Debug, Default)]
pub struct LogLimiter {
    /// Per kind of refusal (a handful of fixed names): one kind's flood never hides another's
    /// first line.
    kinds: std::sync::Mutex<Vec<(&'static str, KindLimit)>>,
}

#[derive(Debug, Default)]
struct KindLimit {
    /// The second (since start) of the last line let through, plus one; 0 before the first.
    second: u64,
    held: u64,
}

impl LogLimiter {
    pub const fn new() -> Self {
        Self {
            kinds: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Some(lines of this kind held back since the last one) when a line of `kind` may be
    /// logged now: one a second per kind.
    pub fn allow(&self, kind: &'static str) -> Option<u64> {
        let second = now_ms() / 1000 + 1;
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let at = match kinds.iter().position(|(k, _)| *k == kind) {
            Some(at) => at,
            None => {
                kinds.push((kind, KindLimit::default()));
                kinds.len() - 1
            }
        };
        let limit = &mut kinds[at].1;
        if limit.second != second {
            limit.second = second;
            return Some(std::mem::take(&mut limit.held));
        }
        limit.held += 1;
        None
    }
}

/// A stream whose first bytes were read to decide how to serve it; they are read again first.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: Vec<u8>,
    at: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Vec<u8>, inner: T) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> Prefixed<T> {
    /// Reads until `want` bytes are in (or the stream ends, or what came already differs from
    /// `want`'s start), without waking between bytes that are not there yet. True when the
    /// stream starts with `want`.
    pub async fn starts_with(&mut self, want: &[u8]) -> io::Result<bool> {
        while self.prefix.len() < want.len() {
            if !want.starts_with(&self.prefix) {
                return Ok(false);
            }
            let mut byte = [0u8; 16];
            let room = (want.len() - self.prefix.len()).min(byte.len());
            let n = self.inner.read(&mut byte[..room]).await?;
            if n == 0 {
                return Ok(false);
            }
            self.prefix.extend_from_slice(&byte[..n]);
        }
        Ok(self.prefix.starts_with(want))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_pending_budget_evicts_the_oldest() {
        let budget = PendingBudget::new(2);
        let (a, ev_a) = budget.admit();
        let (b, _) = budget.admit();
        assert!(!ev_a);
        let (c, evicted) = budget.admit();
        assert!(evicted);
        assert!(a.evicted.is_cancelled(), "the oldest goes");
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        drop(b);
        assert_eq!(budget.len(), 1);
        let (_d, evicted) = budget.admit();
        assert!(!evicted, "room was given back");
        drop(a);
        assert_eq!(budget.len(), 2, "an evicted guard gives back nothing twice");
    }

    #[test]
    fn resets_close_a_connection_only_past_the_allowance_and_the_answers() {
        let activity = Activity::new(false);
        for _ in 0..RESET_ALLOWANCE {
            let _ = activity.request_started();
            assert!(!activity.on_reset());
        }
        // Many answered requests make room for as many resets.
        for _ in 0..500 {
            let _ = activity.request_started();
        }
        assert!(!activity.on_reset());
        for _ in 0..1000 {
            let _ = activity.request_started();
            if activity.on_reset() {
                assert!(activity.is_abusive());
                return;
            }
        }
        panic!("a connection resetting every request must be closed");
    }

    #[test]
    fn the_log_limiter_lets_one_line_a_second_through_per_kind() {
        let limiter = LogLimiter::new();
        assert_eq!(limiter.allow("unknown_ca"), Some(0));
        assert_eq!(limiter.allow("unknown_ca"), None);
        assert_eq!(limiter.allow("unknown_ca"), None);
        // Another kind of refusal is not hidden by the first one's flood.
        assert_eq!(limiter.allow("expired"), Some(0));
        assert_eq!(limiter.allow("expired"), None);
    }

    #[tokio::test]
    async fn prefixed_reads_its_prefix_again() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"PRI * HTTP/2.0").await.unwrap();
        let mut p = Prefixed::new(Vec::new(), b);
        assert!(p.starts_with(b"PRI").await.unwrap());
        let mut buf = [0u8; 14];
        p.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"PRI * HTTP/2.0");
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"GET / HTTP/1.1").await.unwrap();
        let mut p = Prefixed::new(Vec::new(), b);
        assert!(!p.starts_with(b"PRI").await.unwrap());
        let mut buf = [0u8; 14];
        p.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"GET / HTTP/1.1");
    }
}
