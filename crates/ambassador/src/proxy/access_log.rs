//! The access log: one line per request (tracing target `access`; one JSON object with
//! `--log-format json`), written when the response has been sent (or abandoned), so that it can
//! say how many bytes went each way and how long the whole exchange took.
//!
//! Nothing here runs when the log is off: the response body carries an empty `Option`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Buf;
use http::{Method, Request};
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::metrics::Direction;
use crate::trace::TraceId;

/// What one access-log line says; filled as the request goes through.
#[derive(Debug)]
pub struct Entry {
    pub time: SystemTime,
    pub start: Instant,
    pub direction: Direction,
    pub route: String,
    pub method: Method,
    pub authority: String,
    pub path: String,
    pub query: Option<String>,
    pub peer: String,
    pub user: Option<String>,
    pub status: u16,
    pub upstream: Option<SocketAddr>,
    pub retries: u32,
    pub trace_id: Option<TraceId>,
    pub request_id: Option<String>,
    pub refusal: Option<&'static str>,
    /// Request body bytes read so far, counted by [`crate::proxy::body::Counted`].
    pub request_bytes: Arc<AtomicU64>,
}

impl Entry {
    /// The request's part of the line: whatever its head says. `query` keeps the query string.
    pub fn new<B>(req: &Request<B>, query: bool) -> Self {
        let uri = req.uri();
        let authority = uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or_default()
            .to_owned();
        Self {
            time: SystemTime::now(),
            start: Instant::now(),
            direction: Direction::Inbound,
            route: String::new(),
            method: req.method().clone(),
            authority,
            path: uri.path().to_owned(),
            query: if query {
                uri.query().map(str::to_owned)
            } else {
                None
            },
            peer: String::new(),
            user: None,
            status: 0,
            upstream: None,
            retries: 0,
            trace_id: None,
            request_id: None,
            refusal: None,
            request_bytes: Arc::new(AtomicU64::new(0)),
        }
    }

    fn write(&self, response_bytes: u64, completed: bool) {
        let duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        let time = humantime::format_rfc3339_millis(self.time).to_string();
        let upstream = self.upstream.map(|a| a.to_string());
        tracing::info!(
            target: "access",
            time,
            direction = self.direction.as_str(),
            route = self.route.as_str(),
            peer = self.peer.as_str(),
            user = self.user.as_deref(),
            method = self.method.as_str(),
            authority = self.authority.as_str(),
            path = self.path.as_str(),
            query = self.query.as_deref(),
            status = self.status,
            request_bytes = self.request_bytes.load(Ordering::Relaxed),
            response_bytes,
            duration_ms,
            upstream,
            retries = self.retries,
            trace_id = self.trace_id.as_ref().map(TraceId::as_str),
            request_id = self.request_id.as_deref(),
            refusal = self.refusal,
            completed,
        );
    }
}

/// A response body that writes its exchange's access-log line once it has been sent, failed
/// or been dropped unsent (`completed: false`).
#[derive(Debug)]
pub struct Logged<B> {
    body: B,
    entry: Option<Box<Entry>>,
    bytes: u64,
    /// Whether the body has nothing more to send.
    ended: bool,
}

impl<B> Logged<B> {
    /// The body of a response whose exchange is not logged.
    pub fn plain(body: B) -> Self {
        Self {
            body,
            entry: None,
            bytes: 0,
            ended: false,
        }
    }

    fn done(&mut self, completed: bool) {
        if let Some(entry) = self.entry.take() {
            entry.write(self.bytes, completed);
        }
    }
}

impl<B: Body> Logged<B> {
    pub fn new(body: B, entry: Option<Box<Entry>>) -> Self {
        Self {
            ended: entry.is_some() && body.is_end_stream(),
            body,
            entry,
            bytes: 0,
        }
    }
}

impl<B: Body + Unpin> Body for Logged<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.body).poll_frame(cx);
        if this.entry.is_some() {
            match &poll {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.bytes += data.remaining() as u64;
                    }
                    if this.body.is_end_stream() {
                        this.ended = true;
                        this.done(true);
                    }
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    this.done(true);
                }
                Poll::Ready(Some(Err(_))) => this.done(false),
                Poll::Pending => {}
            }
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        // A body hyper never polled to its end is complete only if it had nothing to send
        // (a HEAD, a 304, an empty answer); otherwise the client went away first.
        let ended = self.ended;
        self.done(ended);
    }
}
