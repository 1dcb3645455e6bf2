//! Prometheus metrics per route and endpoint, registered once per process in the sidecar's registry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

/// An endpoint's breaker state as shown in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// No traffic until `until`; then one probe request decides.
    Ejected {
        until: Instant,
    },
    /// The single probe request is in flight.
    Probing,
}

impl Health {
    pub fn label(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Ejected { .. } => "ejected",
            Health::Probing => "probing",
        }
    }
}

/// The metric families; clone freely.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Families>,
}

#[derive(Debug)]
struct Families {
    endpoint_state: GaugeVec,
    endpoints: GaugeVec,
    tries: IntCounterVec,
    try_latency: HistogramVec,
    ejections: IntCounterVec,
    retries: IntCounterVec,
    budget_exhausted: IntCounterVec,
    shed: IntCounterVec,
    unavailable: IntCounterVec,
    dns_refresh: IntCounterVec,
    dns_endpoints_removed: IntCounterVec,
}

impl Metrics {
    /// Registers the families; call once per registry (a second call fails with AlreadyReg).
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let endpoint_state = GaugeVec::new(
            Opts::new(
                "ambassador_upstream_endpoint_state",
                "1 for the endpoint's current circuit-breaker state (healthy, ejected, probing), 0 otherwise",
            ),
            &["route", "endpoint", "state"],
        )?;
        let endpoints = GaugeVec::new(
            Opts::new(
                "ambassador_upstream_endpoints",
                "Endpoints a route currently balances over",
            ),
            &["route"],
        )?;
        let tries = IntCounterVec::new(
            Opts::new(
                "ambassador_upstream_tries_total",
                "Tries sent to an endpoint, by result (success, failure)",
            ),
            &["route", "endpoint", "result"],
        )?;
        let try_latency = HistogramVec::new(
            HistogramOpts::new(
                "ambassador_upstream_try_duration_seconds",
                "Time from sending a try to its response headers or failure",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route", "endpoint"],
        )?;
        let ejections = IntCounterVec::new(
            Opts::new(
                "ambassador_upstream_ejections_total",
                "Times the circuit breaker ejected an endpoint",
            ),
            &["route", "endpoint"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "ambassador_upstream_retries_total",
                "Retries sent, by reason (connect, status, error, timeout)",
            ),
            &["route", "reason"],
        )?;
        let budget_exhausted = IntCounterVec::new(
            Opts::new(
                "ambassador_upstream_retry_budget_exhausted_total",
                "Retries not sent because the retry budget was spent",
            ),
            &["route"],
        )?;
        let shed = IntCounterVec::new(
            Opts::new(
                "ambassador_upstream_shed_total",
                "Requests refused with 503 at once: the route's concurrency limit was reached",
            ),
            &["route"],
        )?;
        let unavailable = IntCounterVec::new(
            Opts::new(
                "ambassador_upstream_unavailable_total",
                "Requests answered 503 at once because no endpoint could take them (no_endpoints, all_ejected)",
            ),
            &["route", "reason"],
        )?;
        let dns_refresh = IntCounterVec::new(
            Opts::new(
                "ambassador_upstream_dns_refresh_total",
                "DNS lookups for a route, by result (ok, empty, error)",
            ),
            &["route", "result"],
        )?;
        let dns_endpoints_removed = IntCounterVec::new(
            Opts::new(
                "ambassador_upstream_endpoints_removed_total",
                "Endpoints drained because discovery no longer lists them",
            ),
            &["route"],
        )?;
        registry.register(Box::new(endpoint_state.clone()))?;
        registry.register(Box::new(endpoints.clone()))?;
        registry.register(Box::new(tries.clone()))?;
        registry.register(Box::new(try_latency.clone()))?;
        registry.register(Box::new(ejections.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(budget_exhausted.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        registry.register(Box::new(unavailable.clone()))?;
        registry.register(Box::new(dns_refresh.clone()))?;
        registry.register(Box::new(dns_endpoints_removed.clone()))?;
        Ok(Self {
            inner: Arc::new(Families {
                endpoint_state,
                endpoints,
                tries,
                try_latency,
                ejections,
                retries,
                budget_exhausted,
                shed,
                unavailable,
                dns_refresh,
                dns_endpoints_removed,
            }),
        })
    }

    /// The handle one route records through.
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            families: Arc::clone(&self.inner),
            route: Arc::from(route),
        }
    }
}

/// Metrics bound to one route's label.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    families: Arc<Families>,
    route: Arc<str>,
}

/// One endpoint's try counters and latency histogram.
#[derive(Debug, Clone)]
pub struct EndpointMetrics {
    ok: IntCounter,
    failed: IntCounter,
    latency: Histogram,
}

impl EndpointMetrics {
    pub(crate) fn observe(&self, success: bool, elapsed: Duration) {
        if success { &self.ok } else { &self.failed }.inc();
        self.latency.observe(elapsed.as_secs_f64());
    }
}

const STATES: [&str; 3] = ["healthy", "ejected", "probing"];

impl RouteMetrics {
    pub fn route(&self) -> &str {
        &self.route
    }

    pub(crate) fn set_endpoint_state(&self, endpoint: &str, health: Health) {
        for state in STATES {
            let value = if state == health.label() { 1.0 } else { 0.0 };
            self.families
                .endpoint_state
                .with_label_values(&[&*self.route, endpoint, state])
                .set(value);
        }
    }

    pub(crate) fn remove_endpoint_state(&self, endpoint: &str) {
        for state in STATES {
            // Absent labels are fine: the endpoint may never have been recorded.
            let _ =
                self.families
                    .endpoint_state
                    .remove_label_values(&[&*self.route, endpoint, state]);
        }
        self.families
            .dns_endpoints_removed
            .with_label_values(&[&*self.route])
            .inc();
    }

    pub(crate) fn set_endpoint_count(&self, count: usize) {
        self.families
            .endpoints
            .with_label_values(&[&*self.route])
            .set(count as f64);
    }

    /// The handles one endpoint records its tries through.
    pub(crate) fn endpoint(&self, endpoint: &str) -> EndpointMetrics {
        let route = &*self.route;
        EndpointMetrics {
            ok: self
                .families
                .tries
                .with_label_values(&[route, endpoint, "success"]),
            failed: self
                .families
                .tries
                .with_label_values(&[route, endpoint, "failure"]),
            latency: self
                .families
                .try_latency
                .with_label_values(&[route, endpoint]),
        }
    }

    pub(crate) fn ejection(&self, endpoint: &str) {
        self.families
            .ejections
            .with_label_values(&[&*self.route, endpoint])
            .inc();
    }

    pub(crate) fn retry(&self, reason: &str) {
        self.families
            .retries
            .with_label_values(&[&*self.route, reason])
            .inc();
    }

    pub(crate) fn budget_exhausted(&self) {
        self.families
            .budget_exhausted
            .with_label_values(&[&*self.route])
            .inc();
    }

    pub(crate) fn shed(&self) {
        self.families.shed.with_label_values(&[&*self.route]).inc();
    }

    pub(crate) fn unavailable(&self, reason: &str) {
        self.families
            .unavailable
            .with_label_values(&[&*self.route, reason])
            .inc();
    }

    pub(crate) fn dns_refresh(&self, result: &str) {
        self.families
            .dns_refresh
            .with_label_values(&[&*self.route, result])
            .inc();
    }

    /// Reads a counter back (tests and the benchmark report use it).
    pub fn retries_total(&self) -> u64 {
        ["connect", "status", "error", "timeout"]
            .iter()
            .map(|reason| {
                self.families
                    .retries
                    .with_label_values(&[&*self.route, reason])
                    .get()
            })
            .sum()
    }

    pub fn budget_exhausted_total(&self) -> u64 {
        self.families
            .budget_exhausted
            .with_label_values(&[&*self.route])
            .get()
    }

    pub fn shed_total(&self) -> u64 {
        self.families.shed.with_label_values(&[&*self.route]).get()
    }

    pub fn ejections_total(&self, endpoint: &str) -> u64 {
        self.families
            .ejections
            .with_label_values(&[&*self.route, endpoint])
            .get()
    }
}
