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

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::config::{Limits, Telemetry};
use crate::metrics::{Limit, RouteMetrics};
use crate::proxy::access_log::{Entry, Logged};
use crate::proxy::forward::{ResponseBody, answer};
use crate::ratelimit::{RateKey, RateLimiter, retry_after_seconds};
use crate::trace::{self, NewTraces};

/// The per-request policies of one listener.
#[derive(Debug)]
pub struct RequestPolicy {
    max_header_bytes: usize,
    access_log: bool,
    access_log_query: bool,
    new_traces: NewTraces,
    /// The route's token buckets (inbound routes with `rate_limit:`).
    rate_limit: Option<RateLimiter>,
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
    /// What the access log will say, when it is on.
    log: Option<Box<Entry>>,
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

    /// The counter of request body bytes the access log reports, when it is on.
    pub fn request_bytes(&self) -> Option<Arc<AtomicU64>> {
        self.log.as_ref().map(|e| e.request_bytes.clone())
    }

    /// Records where the request went and how many times it was sent again, for the log.
    pub fn set_upstream(&mut self, endpoint: Option<SocketAddr>, retries: u32) {
        if let Some(entry) = &mut self.log {
            entry.upstream = endpoint;
            entry.retries = retries;
        }
    }

    /// Records the request's `X-Request-Id`, for the log.
    pub fn set_request_id(&mut self, id: &HeaderValue) {
        if let Some(entry) = &mut self.log {
            entry.request_id = id.to_str().ok().map(str::to_owned);
        }
    }
}

impl RequestPolicy {
    pub fn new(limits: &Limits, telemetry: Telemetry, requested: CancellationToken) -> Self {
        Self {
            max_header_bytes: limits.max_header_bytes,
            access_log: telemetry.access_log,
            access_log_query: telemetry.access_log_query,
            new_traces: telemetry.new_traces,
            rate_limit: None,
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

    /// Limits the rate of the route's requests ([`RequestPolicy::limit_rate`]).
    pub fn with_rate_limit(mut self, limiter: RateLimiter) -> Self {
        self.rate_limit = Some(limiter);
        self
    }

    /// Starts the record of a request whose head has arrived.
    pub fn begin<B>(&self, req: &Request<B>, http1: bool) -> Exchange {
        Exchange {
            start: Instant::now(),
            method: req.method().clone(),
            log: self
                .access_log
                .then(|| Box::new(Entry::new(req, self.access_log_query))),
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
        let trace_id = trace::propagate(req.headers_mut(), self.new_traces);
        if let Some(entry) = &mut exchange.log {
            entry.trace_id = trace_id;
        }
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

    /// `429 Too Many Requests` with `Retry-After` when the bucket of the request's caller
    /// (`peer`, or the user [`RequestPolicy::check`] authenticated) is empty; counted in
    /// `metrics`.
    pub fn limit_rate(
        &self,
        exchange: &mut Exchange,
        peer: &str,
        metrics: &RouteMetrics,
    ) -> Option<Response<ResponseBody>> {
        let limiter = self.rate_limit.as_ref()?;
        let key = match limiter.key() {
            RateKey::Route => "",
            RateKey::Peer => peer,
            RateKey::User => exchange.user_id.as_deref().unwrap_or(peer),
        };
        let wait = limiter.acquire(key).err()?;
        metrics.limit_exceeded(Limit::RateLimited);
        exchange.refusal = Some("rate_limited");
        let seconds = retry_after_seconds(wait);
        let mut response = answer(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "ambassador: route `{}`: rate limit reached; retry in {seconds} s\n",
                metrics.route()
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        Some(response)
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
    ) -> Response<Logged<ResponseBody>> {
        if exchange.http1 {
            close_if_shutting_down(response.headers_mut(), &self.requested);
        }
        let seconds = exchange.start.elapsed().as_secs_f64();
        metrics.observe(response.status(), seconds);
        let Some(mut entry) = exchange.log else {
            return response.map(Logged::plain);
        };
        entry.status = response.status().as_u16();
        entry.direction = metrics.direction();
        metrics.route().clone_into(&mut entry.route);
        peer.clone_into(&mut entry.peer);
        entry.user = exchange.user_id;
        entry.refusal = exchange.refusal;
        response.map(|body| Logged::new(body, Some(entry)))
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

/// Adds `Connection: close` to an HTTP/1 response once shutdown is requested, so clients move
/// away while the listener still answers.
fn close_if_shutting_down(headers: &mut HeaderMap, requested: &CancellationToken) {
    if requested.is_cancelled() {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}
