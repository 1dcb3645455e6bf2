//! What every proxied request goes through, whichever its direction: the checks that may answer
//! it before it is forwarded, and, once its response head is ready, its metrics, the access log
//! and `Connection: close` when the drain has begun.
//!
//! Per-request policy lives here so that both directions apply it alike: a check that may
//! refuse a request (authentication, a rate limit) belongs in [`RequestPolicy::check`], what is
//! recorded or added once the response is known in [`RequestPolicy::finish`], and what a
//! request carries between the two (a trace context, say) in [`Exchange`].

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::metrics::{Limit, RouteMetrics};
use crate::proxy::forward::{ResponseBody, answer};

/// The per-request policies of one listener.
#[derive(Debug)]
pub struct RequestPolicy {
    max_header_bytes: usize,
    access_log: bool,
    /// Cancelled once shutdown is requested.
    requested: CancellationToken,
    /// End-user authentication (inbound routes with `jwt:`).
    jwt: Option<crate::jwt::Authenticator>,
}

/// One request on its way through: what [`RequestPolicy::finish`] needs of it.
#[derive(Debug)]
pub struct Exchange {
    start: Instant,
    method: Method,
    /// The path, when the access log is on.
    path: String,
    /// Whether the client speaks HTTP/1 on this connection.
    http1: bool,
    /// The end user the request was authenticated as (a JWT's `sub`), for keyed rate limits
    /// and the access log; set by the checks that authenticate.
    pub user_id: Option<String>,
    /// Why the request was refused by a check, for the access log.
    pub refusal: Option<&'static str>,
}

impl Exchange {
    pub fn method(&self) -> &Method {
        &self.method
    }
}

impl RequestPolicy {
    pub fn new(limits: &Limits, access_log: bool, requested: CancellationToken) -> Self {
        Self {
            max_header_bytes: limits.max_header_bytes,
            access_log,
            requested,
            jwt: None,
        }
    }

    /// Checks the end user's JWT on every request (the user headers are stripped whatever
    /// the path's mode).
    pub fn with_jwt(mut self, jwt: crate::jwt::Authenticator) -> Self {
        self.jwt = Some(jwt);
        self
    }

    /// Starts the record of a request whose head has arrived.
    pub fn begin<B>(&self, req: &Request<B>, http1: bool) -> Exchange {
        Exchange {
            start: Instant::now(),
            method: req.method().clone(),
            path: if self.access_log {
                req.uri().path().to_owned()
            } else {
                String::new()
            },
            http1,
            user_id: None,
            refusal: None,
        }
    }

    /// The answer that refuses a request before it is forwarded, if any; the refusal is counted
    /// in `metrics` (the listener's).
    pub fn check<B>(
        &self,
        req: &mut Request<B>,
        exchange: &mut Exchange,
        metrics: &RouteMetrics,
    ) -> Option<Response<ResponseBody>> {
        // HTTP/1 heads are held to the limit by hyper's read buffer (431 from hyper, counted
        // when the connection ends).
        if !exchange.http1
            && let Some(refused) = refuse_large_h2_head(req, self.max_header_bytes, metrics)
        {
            return Some(refused);
        }
        if let Some(jwt) = &self.jwt {
            match jwt.authenticate(req) {
                Ok(verified) => exchange.user_id = verified.and_then(|v| v.user_id.clone()),
                Err(reason) => {
                    exchange.refusal = Some(reason.as_str());
                    return Some(refuse_jwt(reason));
                }
            }
        }
        None
    }

    /// Completes the exchange as its response head goes out: counts it in `metrics` (the
    /// route's), logs it with `peer` (who called), and asks an HTTP/1 client to close once
    /// shutdown is requested.
    pub fn finish(
        &self,
        exchange: Exchange,
        metrics: &RouteMetrics,
        peer: &str,
        mut response: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        if exchange.http1 {
            close_if_shutting_down(response.headers_mut(), &self.requested);
        }
        let seconds = exchange.start.elapsed().as_secs_f64();
        metrics.observe(response.status(), seconds);
        if self.access_log {
            access_log(metrics, &exchange, response.status(), seconds, peer);
        }
        response
    }
}

/// The `SETTINGS_MAX_HEADER_LIST_SIZE` given to HTTP/2: twice `max_header_bytes`, so that
/// heads up to that size reach [`RequestPolicy::check`] (answered and counted); bigger ones are
/// refused by the h2 layer itself (a `431` too, but not counted).
pub fn h2_header_list_limit(max_header_bytes: usize) -> u32 {
    u32::try_from(max_header_bytes.saturating_mul(2)).unwrap_or(u32::MAX)
}

/// An HTTP/2 request head larger than `max` bytes, as HTTP/2 counts them (RFC 9113 6.5.2: name
/// and value of each field plus 32, pseudo-header fields included), is answered `431` and
/// counted, as an HTTP/1 head of that size is.
fn refuse_large_h2_head<B>(
    req: &Request<B>,
    max: usize,
    metrics: &RouteMetrics,
) -> Option<Response<ResponseBody>> {
    let uri = req.uri();
    let mut size = 4 * 32
        + ":method".len()
        + req.method().as_str().len()
        + ":path".len()
        + uri.path_and_query().map_or(1, |p| p.as_str().len())
        + ":scheme".len()
        + uri.scheme_str().map_or(0, str::len)
        + ":authority".len()
        + uri.authority().map_or(0, |a| a.as_str().len());
    for (name, value) in req.headers() {
        size += name.as_str().len() + value.len() + 32;
    }
    if size <= max {
        return None;
    }
    metrics.limit_exceeded(Limit::HeaderSize);
    tracing::warn!(
        route = metrics.route(),
        size,
        "HTTP/2 request head too large: answered 431"
    );
    Some(answer(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        format!(
            "ambassador: the request head ({size} bytes) is larger than max_header_bytes ({max})\n"
        ),
    ))
}

/// The answer to a request refused by JWT authentication: never naming the token.
fn refuse_jwt(reason: crate::jwt::Refusal) -> Response<ResponseBody> {
    let (status, challenge) = crate::jwt::challenge(reason);
    let mut response = answer(
        status,
        format!("ambassador: authentication: {}\n", reason.as_str()),
    );
    if let Some(value) = challenge {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// Writes one access-log line (tracing target `access`; JSON with `--log-format json`).
fn access_log(
    metrics: &RouteMetrics,
    exchange: &Exchange,
    status: StatusCode,
    seconds: f64,
    peer: &str,
) {
    tracing::info!(
        target: "access",
        direction = metrics.direction().as_str(),
        route = metrics.route(),
        method = exchange.method.as_str(),
        path = exchange.path.as_str(),
        status = status.as_u16(),
        duration_ms = seconds * 1000.0,
        peer,
        user = exchange.user_id.as_deref(),
        refusal = exchange.refusal,
    );
}

/// Adds `Connection: close` to an HTTP/1 response once shutdown is requested, so clients move
/// away while the listener still answers.
fn close_if_shutting_down(headers: &mut HeaderMap, requested: &CancellationToken) {
    if requested.is_cancelled() {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}
