//! Metrics in one line each: make a counter, gauge or histogram (or a labelled vec of them) and
//! register it, in the registry the admin server's `/metrics` serves ([`crate::Sidecar::registry`]).
//!
//! ```
//! use sidecar_kit::metrics;
//!
//! #[derive(Debug, Clone)]
//! struct Metrics {
//!     requests: prometheus::IntCounterVec,
//!     in_flight: prometheus::IntGauge,
//!     latency: prometheus::Histogram,
//! }
//!
//! impl Metrics {
//!     fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
//!         Ok(Self {
//!             requests: metrics::counter_vec(registry, "demo_requests_total", "Requests by result", &["result"])?,
//!             in_flight: metrics::gauge(registry, "demo_in_flight", "Requests being served")?,
//!             latency: metrics::histogram(registry, "demo_duration_seconds", "Time per request", metrics::LATENCY_BUCKETS)?,
//!         })
//!     }
//! }
//!
//! let registry = prometheus::Registry::new();
//! let m = Metrics::register(&registry).unwrap();
//! m.requests.with_label_values(&["ok"]).inc();
//! assert_eq!(registry.gather().len(), 3);
//! // The same name twice in one registry is an error, not a second series.
//! assert!(Metrics::register(&registry).is_err());
//! ```
//!
//! Names follow Prometheus' conventions: a prefix naming the sidecar, `_total` on counters, the
//! unit (`_seconds`, `_bytes`) where there is one. No label may carry a secret, a URL with
//! credentials or an unbounded set of values.

use prometheus::core::Collector;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Buckets for request and operation latencies, in seconds: 1 ms to 2 minutes.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Registers `metric` in `registry` and hands it back, for collectors made elsewhere.
pub fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    metric: C,
) -> prometheus::Result<C> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// A counter.
pub fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    register(registry, IntCounter::new(name, help)?)
}

/// A counter per combination of `labels`' values.
pub fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

/// An integer gauge.
pub fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    register(registry, IntGauge::new(name, help)?)
}

/// An integer gauge per combination of `labels`' values.
pub fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

/// A floating-point gauge (timestamps, durations, ratios).
pub fn float_gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<Gauge> {
    register(registry, Gauge::new(name, help)?)
}

/// A floating-point gauge per combination of `labels`' values.
pub fn float_gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<GaugeVec> {
    register(registry, GaugeVec::new(Opts::new(name, help), labels)?)
}

/// A histogram with these bucket upper bounds (`+Inf` is implied).
pub fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
) -> prometheus::Result<Histogram> {
    register(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?,
    )
}

/// A histogram per combination of `labels`' values.
pub fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::Result<HistogramVec> {
    register(
        registry,
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, TextEncoder};

    #[test]
    fn every_kind_is_registered_and_served() {
        let registry = Registry::new();
        counter(&registry, "t_a_total", "a").unwrap().inc();
        counter_vec(&registry, "t_b_total", "b", &["x"])
            .unwrap()
            .with_label_values(&["1"])
            .inc_by(2);
        gauge(&registry, "t_c", "c").unwrap().set(-3);
        gauge_vec(&registry, "t_d", "d", &["x"])
            .unwrap()
            .with_label_values(&["1"])
            .set(4);
        float_gauge(&registry, "t_e", "e").unwrap().set(0.5);
        float_gauge_vec(&registry, "t_f", "f", &["x"])
            .unwrap()
            .with_label_values(&["1"])
            .set(1.5);
        histogram(&registry, "t_g_seconds", "g", &[0.1, 1.0])
            .unwrap()
            .observe(0.2);
        histogram_vec(&registry, "t_h_seconds", "h", &["x"], LATENCY_BUCKETS)
            .unwrap()
            .with_label_values(&["1"])
            .observe(0.2);
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        for line in [
            "t_a_total 1",
            "t_b_total{x=\"1\"} 2",
            "t_c -3",
            "t_d{x=\"1\"} 4",
            "t_e 0.5",
            "t_f{x=\"1\"} 1.5",
            "t_g_seconds_bucket{le=\"0.1\"} 0",
            "t_g_seconds_bucket{le=\"1\"} 1",
            "t_h_seconds_count{x=\"1\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn a_name_used_twice_or_a_bad_name_is_an_error() {
        let registry = Registry::new();
        counter(&registry, "t_total", "a").unwrap();
        assert!(counter(&registry, "t_total", "a").is_err());
        assert!(gauge(&registry, "bad name", "a").is_err());
        assert!(counter_vec(&registry, "t2_total", "a", &["bad label"]).is_err());
    }
}
