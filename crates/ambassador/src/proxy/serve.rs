//! Serving one accepted HTTP connection, as both directions do: hyper's HTTP/1.1 or HTTP/2
//! server over the (possibly TLS) stream, driven under the listener's limits and the drain, and
//! how the connection ended logged, counted and, for HTTP/1, closed properly.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::metrics::{Limit, RouteMetrics};
use crate::proxy::conn::{self, Activity, Ended, Guarded, Reclaim, RequestGuard, Tracked};
use crate::proxy::forward::ResponseBody;
use crate::proxy::policy::h2_header_list_limit;

/// A response on its way back to the client; the guard keeps its request counted as in flight
/// until the body has been sent.
pub type ServedResponse = Response<Guarded<ResponseBody>>;

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
            .max_concurrent_streams(1024);
        Self {
            http1: h1,
            http2: h2,
            limits,
        }
    }

    /// Serves HTTP/2 (`h2`) or HTTP/1.1 on `stream` until the connection ends, `handle`
    /// answering each request, then closes it as its end requires. `stop` starts a graceful
    /// close; `metrics` counts the limits hit and `peer` names the client in the logs.
    pub async fn serve<S, H, Fut>(
        &self,
        stream: S,
        h2: bool,
        peer: SocketAddr,
        stop: &CancellationToken,
        metrics: &RouteMetrics,
        handle: H,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(RequestGuard, Request<Incoming>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<ServedResponse, Infallible>> + Send + 'static,
    {
        let activity = Activity::new(!h2);
        let (io, reclaimed) = Reclaim::new(Tracked::new(stream, activity.clone()));
        let io = TokioIo::new(io);
        let requests = activity.clone();
        let service = hyper::service::service_fn(move |req| {
            let guard = requests.request_started();
            handle(guard, req)
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

/// Logs and counts how an HTTP connection ended.
fn report_end(metrics: &RouteMetrics, ended: &Ended<hyper::Error>, peer: SocketAddr) {
    match ended {
        Ended::Done(Ok(())) => {}
        Ended::Done(Err(e)) if e.is_parse_too_large() => {
            metrics.limit_exceeded(Limit::HeaderSize);
            tracing::warn!(route = metrics.route(), %peer, "request head too large: answered 431");
        }
        Ended::Done(Err(e)) => {
            tracing::debug!(route = metrics.route(), %peer, error = %e, "connection ended with an error");
        }
        Ended::HeaderTimeout => {
            tracing::warn!(route = metrics.route(), %peer, "request head not complete in time: answered 408");
        }
    }
}
