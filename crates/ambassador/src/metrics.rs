//! The ambassador's Prometheus metrics, registered in the kit's registry (admin `/metrics`).
//!
//! Per-route handles are resolved once when a listener starts, so the request path touches only
//! atomics, never the label maps.

use http::StatusCode;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Which way traffic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// A protection limit that was hit.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    HeaderSize,
    HeaderReadTimeout,
    MaxConnections,
    IdleTimeout,
    /// A connection that had sent no request was closed to make room in the pending budget.
    PendingConnections,
    /// A request refused because the app already had `max_app_requests` in flight.
    MaxAppRequests,
    /// A connection closed for resetting more streams than it let finish.
    StreamResets,
    /// A request refused by the route's `rate_limit` (answered 429).
    RateLimited,
    /// A request whose body came slower than `min_body_rate` (answered 408).
    MinBodyRate,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeaderSize => "header_size",
            Self::HeaderReadTimeout => "header_read_timeout",
            Self::MaxConnections => "max_connections",
            Self::IdleTimeout => "idle_timeout",
            Self::PendingConnections => "pending_connections",
            Self::MaxAppRequests => "max_app_requests",
            Self::StreamResets => "stream_resets",
            Self::RateLimited => "rate_limit",
            Self::MinBodyRate => "min_body_rate",
        }
    }
}

/// All the ambassador's metric families.
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    open: IntGaugeVec,
    connections: IntCounterVec,
    tls_failures: IntCounterVec,
    limits: IntCounterVec,
    upstream_errors: IntCounterVec,
    /// End-user authentication's families.
    pub jwt: crate::jwt::JwtMetrics,
    protocol_errors: IntCounterVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "ambassador_requests_total",
                "HTTP requests by direction, route and response status class.",
            ),
            &["direction", "route", "class"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "ambassador_request_duration_seconds",
                "Time from a request's head to its response's head, by direction and route.",
            )
            .buckets(vec![
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                5.0, 10.0,
            ]),
            &["direction", "route"],
        )?;
        let open = IntGaugeVec::new(
            Opts::new(
                "ambassador_open_connections",
                "Client connections open now, by direction and route.",
            ),
            &["direction", "route"],
        )?;
        let connections = IntCounterVec::new(
            Opts::new(
                "ambassador_connections_total",
                "Client connections accepted, by direction and route.",
            ),
            &["direction", "route"],
        )?;
        let tls_failures = IntCounterVec::new(
            Opts::new(
                "ambassador_tls_failures_total",
                "Refused or failed mTLS handshakes by direction, route and reason: no_certificate, \
                 unknown_ca, expired, not_yet_valid, identity_not_allowed, identity_mismatch, \
                 handshake_error.",
            ),
            &["direction", "route", "reason"],
        )?;
        let limits = IntCounterVec::new(
            Opts::new(
                "ambassador_limits_exceeded_total",
                "Connections or requests stopped by a protection limit: header_size, \
                 header_read_timeout, max_connections, idle_timeout, pending_connections, \
                 max_app_requests, stream_resets, rate_limit, min_body_rate.",
            ),
            &["direction", "route", "limit"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "ambassador_upstream_errors_total",
                "Requests answered by the ambassador itself because the next hop failed, by kind.",
            ),
            &["direction", "route", "kind"],
        )?;
        let protocol_errors = IntCounterVec::new(
            Opts::new(
                "ambassador_protocol_errors_total",
                "Clients' protocol errors, by kind: bad_request (an HTTP/1 request hyper could not \
                 parse, answered 400), ambiguous_request (two Host headers or an h2c upgrade, \
                 answered 400), stream_reset (a request abandoned by its client before the \
                 answer), goaway_<reason> (an HTTP/2 connection closed with a GOAWAY of ours, \
                 e.g. goaway_enhance_your_calm for a flood, goaway_protocol_error).",
            ),
            &["direction", "route", "kind"],
        )?;
        for c in [
            &protocol_errors,
            &requests,
            &connections,
            &tls_failures,
            &limits,
            &upstream_errors,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(open.clone()))?;
        Ok(Self {
            jwt: crate::jwt::JwtMetrics::register(registry)?,
            requests,
            duration,
            open,
            connections,
            tls_failures,
            limits,
            upstream_errors,
            protocol_errors,
        })
    }

    /// The handles of one route.
    pub fn route(&self, direction: Direction, route: &str) -> RouteMetrics {
        let d = direction.as_str();
        let class = |c: &str| self.requests.with_label_values(&[d, route, c]);
        RouteMetrics {
            direction,
            route: route.to_owned(),
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: self.duration.with_label_values(&[d, route]),
            open: self.open.with_label_values(&[d, route]),
            accepted: self.connections.with_label_values(&[d, route]),
            family: self.clone(),
        }
    }
}

/// One route's metric handles. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    direction: Direction,
    route: String,
    by_class: [IntCounter; 5],
    duration: Histogram,
    open: IntGauge,
    accepted: IntCounter,
    family: Metrics,
}

impl RouteMetrics {
    pub fn route(&self) -> &str {
        &self.route
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    pub fn observe(&self, status: StatusCode, seconds: f64) {
        let i = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.by_class[i].inc();
        self.duration.observe(seconds);
    }

    /// Counts an accepted connection and keeps it in the open gauge until the guard drops.
    pub fn connection_opened(&self) -> OpenConnection {
        self.accepted.inc();
        self.open.inc();
        OpenConnection {
            gauge: self.open.clone(),
        }
    }

    pub fn tls_failure(&self, reason: &str) {
        self.family
            .tls_failures
            .with_label_values(&[self.direction.as_str(), &self.route, reason])
            .inc();
    }

    pub fn limit_exceeded(&self, limit: Limit) {
        self.family
            .limits
            .with_label_values(&[self.direction.as_str(), &self.route, limit.as_str()])
            .inc();
    }

    pub fn protocol_error(&self, kind: &str) {
        self.family
            .protocol_errors
            .with_label_values(&[self.direction.as_str(), &self.route, kind])
            .inc();
    }

    pub fn upstream_error(&self, kind: &str) {
        self.family
            .upstream_errors
            .with_label_values(&[self.direction.as_str(), &self.route, kind])
            .inc();
    }
}

/// Keeps a connection counted as open.
#[derive(Debug)]
pub struct OpenConnection {
    gauge: IntGauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
