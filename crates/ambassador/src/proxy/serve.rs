//! Serving one accepted HTTP connection, as both directions do: hyper's HTTP/1.1 or HTTP/2
//! server over the (possibly TLS) stream, driven under the listener's limits and the drain, and
//! how the connection ended logged, counted and, for HTTP/1, closed properly. Requests that
//! cannot be forwarded unambiguously (two `Host` headers, an `h2c` upgrade) are refused here,
//! and requests their client abandons are counted against the connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::metrics::{Direction, Limit, RouteMetrics};
use crate::proxy::access_log::Logged;
use crate::proxy::conn::{
    self, Activity, Closed, Ended, Guarded, LogLimiter, PendingGuard, Reclaim, RequestGuard,
    Tracked,
};
use crate::proxy::forward::{self, ResponseBody};
use crate::proxy::policy::h2_header_list_limit;

/// A response on its way back to the client; the guard keeps its request counted as in flight
/// until the body has been sent.
pub type ServedResponse = Response<Guarded<Logged<ResponseBody>>>;

/// HTTP/2 streams a client may have open at once on one connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// The HTTP server settings of one listener.
#[derive(Debug)]
pub struct HttpServer {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
    pub limits: Limits,
}

impl HttpServer {
    pub fn new(limits: Limits) -> Self {
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            // The header-read limit is applied by conn::drive, which (unlike hyper's) does not
            // also cut keep-alive connections that merely wait for their next request.
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_bytes)
            .half_close(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            // Above our limit, so that heads between the two reach the handler, which answers
            // 431 and counts it (h2 would refuse them itself, uncounted).
            .max_header_list_size(h2_header_list_limit(limits.max_header_bytes))
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
        Self {
            http1: h1,
            http2: h2,
            limits,
        }
    }

    /// Serves HTTP/2 (`h2`) or HTTP/1.1 on `stream` until the connection ends, `handle`
    /// answering each request, then closes it as its end requires. `stop` starts a graceful
    /// close; `metrics` counts the limits hit and `peer` names the client in the logs.
    /// `pending`, the connection's place in the pending budget, is given up at its first
    /// request (and the connection closed if a newer one takes it before).
    #[allow(clippy::too_many_arguments)]
    pub async fn serve<S, H, Fut>(
        &self,
        stream: S,
        h2: bool,
        peer: SocketAddr,
        pending: Option<PendingGuard>,
        stop: &CancellationToken,
        metrics: &RouteMetrics,
        handle: H,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(RequestGuard, Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ServedResponse, Infallible>> + Send + 'static,
    {
        let activity = Activity::with_pending(!h2, pending);
        let (io, reclaimed) = Reclaim::new(Tracked::new(stream, activity.clone()));
        let io = TokioIo::new(io);
        let requests = activity.clone();
        let handle = Arc::new(handle);
        let counted = metrics.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = requests.request_started();
            let watch = ResetWatch {
                activity: requests.clone(),
                metrics: counted.clone(),
                done: false,
            };
            let refused = ambiguous(&req);
            let handle = handle.clone();
            async move {
                let mut watch = watch;
                let response = match refused {
                    Some(why) => {
                        watch.metrics.protocol_error("ambiguous_request");
                        let response: Response<ResponseBody> = forward::answer(
                            StatusCode::BAD_REQUEST,
                            format!("ambassador: {why}\n"),
                        );
                        Ok(response.map(|body| Guarded::new(Logged::plain(body), guard)))
                    }
                    None => handle(guard, req).await,
                };
                watch.done = true;
                response
            }
        });
        let ended = if h2 {
            let conn = self.http2.serve_connection(io, service);
            conn::drive(conn, &activity, &self.limits, stop, metrics).await
        } else {
            let conn = self.http1.serve_connection(io, service).with_upgrades();
            conn::drive(conn, &activity, &self.limits, stop, metrics).await
        };
        report_end(metrics, &ended, peer);
        if !h2 {
            conn::close_http1(&ended, &reclaimed).await;
        }
    }
}

/// Why a request cannot be forwarded as it is, if it cannot: the next hop could read it
/// differently from us (RFC 9112 3.2: a request with more than one `Host` is a 400), or it
/// asks to switch to cleartext HTTP/2 inside the connection, where the requests would reach the
/// app without the ambassador seeing (or setting) their headers.
fn ambiguous<B>(req: &Request<B>) -> Option<&'static str> {
    let headers = req.headers();
    if headers.get_all(http::header::HOST).iter().nth(1).is_some() {
        return Some("the request has more than one Host header");
    }
    let h2c = headers
        .get_all(http::header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("h2c"));
    if h2c {
        return Some("upgrades to h2c are refused; speak HTTP/2 through ALPN or prior knowledge");
    }
    None
}

/// Counts a request whose handler was dropped before it answered: the client reset the stream
/// (HTTP/2) or went away. Too many on one connection close it.
struct ResetWatch {
    activity: Arc<Activity>,
    metrics: RouteMetrics,
    done: bool,
}

impl Drop for ResetWatch {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.metrics.protocol_error("stream_reset");
        if self.activity.on_reset() {
            static LOG: LogLimiter = LogLimiter::new();
            if let Some(held) = LOG.allow("stream_resets") {
                tracing::warn!(
                    route = self.metrics.route(),
                    similar_lines_held_back = held,
                    "connection closed: its client reset more requests than it let finish"
                );
            }
        }
    }
}

/// Logs (under the direction's target) and counts how an HTTP connection ended.
fn report_end(metrics: &RouteMetrics, ended: &Ended<hyper::Error>, peer: SocketAddr) {
    let route = metrics.route();
    let line = match ended {
        Ended::Done(Ok(())) | Ended::Closed(Closed::Forced) => return,
        Ended::Closed(Closed::Evicted) => {
            tracing::debug!(route, %peer, "connection closed: its place in the pending budget went to a newer one");
            return;
        }
        Ended::Closed(Closed::Resets) => return,
        Ended::Closed(Closed::Stalled) => {
            tracing::debug!(route, %peer, "connection closed: its client took nothing of the responses for the idle timeout");
            return;
        }
        Ended::Closed(Closed::NoRequest) => {
            tracing::debug!(route, %peer, "connection closed: no request within the header read timeout");
            return;
        }
        Ended::Done(Err(e)) if e.is_parse_too_large() => {
            metrics.limit_exceeded(Limit::HeaderSize);
            "request head too large: answered 431"
        }
        Ended::Done(Err(e)) if e.is_parse() => {
            metrics.protocol_error("bad_request");
            "request could not be parsed: answered 400"
        }
        Ended::Done(Err(e)) => {
            if let Some(reason) = goaway_sent(e) {
                metrics.protocol_error(reason);
                "HTTP/2 connection closed with a GOAWAY for a protocol error or a flood"
            } else {
                tracing::debug!(route, %peer, error = %e, "connection ended with an error");
                return;
            }
        }
        Ended::HeaderTimeout => "request head not complete in time: answered 408",
    };
    // An attacker causes these at will: at most one line a second per direction and kind.
    static INBOUND: LogLimiter = LogLimiter::new();
    static OUTBOUND: LogLimiter = LogLimiter::new();
    match metrics.direction() {
        Direction::Inbound => {
            if let Some(held) = INBOUND.allow(line) {
                tracing::warn!(target: "ambassador::inbound", route, %peer, similar_lines_held_back = held, "{line}");
            }
        }
        Direction::Outbound => {
            if let Some(held) = OUTBOUND.allow(line) {
                tracing::warn!(target: "ambassador::outbound", route, %peer, similar_lines_held_back = held, "{line}");
            }
        }
    }
}

/// The `goaway_<reason>` kind when an HTTP/2 connection ended with a GOAWAY we sent.
fn goaway_sent(e: &hyper::Error) -> Option<&'static str> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            if !h2.is_go_away() || h2.is_remote() {
                return None;
            }
            return Some(match h2.reason()? {
                h2::Reason::PROTOCOL_ERROR => "goaway_protocol_error",
                h2::Reason::ENHANCE_YOUR_CALM => "goaway_enhance_your_calm",
                h2::Reason::COMPRESSION_ERROR => "goaway_compression_error",
                h2::Reason::FRAME_SIZE_ERROR => "goaway_frame_size_error",
                h2::Reason::FLOW_CONTROL_ERROR => "goaway_flow_control_error",
                h2::Reason::STREAM_CLOSED => "goaway_stream_closed",
                h2::Reason::SETTINGS_TIMEOUT => "goaway_settings_timeout",
                h2::Reason::NO_ERROR => return None,
                _ => "goaway_other",
            });
        }
        source = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request<()> {
        let mut req = Request::builder().uri("/");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn two_hosts_and_h2c_upgrades_are_refused() {
        assert!(ambiguous(&request(&[("host", "a")])).is_none());
        assert!(ambiguous(&request(&[("host", "a"), ("host", "b")])).is_some());
        assert!(ambiguous(&request(&[("upgrade", "websocket")])).is_none());
        assert!(ambiguous(&request(&[("upgrade", "foo, H2C")])).is_some());
    }
}
