//! The adapter's own metrics: registered in the kit's registry (the admin server's `/metrics`
//! has them), and written on the adapter's `/metrics` with the same encoder as the translated
//! samples, so both formats stay consistent on one page.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, Registry};
use sidecar_kit::metrics::{counter, counter_vec, float_gauge, gauge, register};

use crate::encode::{Family, Kind, Sample, Suffix};
use crate::engine::Translation;

/// `kind` of `xml_adapter_scrape_errors_total`, in the order they are written.
const SCRAPE_ERRORS: [&str; 7] = [
    "fetch",
    "http_status",
    "timeout",
    "body_cap",
    "credentials",
    "malformed",
    "read",
];
/// `cap` of `xml_adapter_cap_truncations_total`.
const CAPS: [&str; 3] = ["body", "records", "series"];
/// `result` of `xml_adapter_mapping_reloads_total`.
const RELOADS: [&str; 2] = ["success", "error"];

/// The adapter's own metrics. Cheap to clone; every clone updates the same series.
#[derive(Debug, Clone)]
pub struct Stats {
    up: IntGauge,
    scrape_duration: Gauge,
    scrape_bytes: IntGauge,
    read_bytes: IntCounter,
    scrapes: IntCounter,
    series: IntGauge,
    records: IntGauge,
    last_success: Gauge,
    recoveries: IntCounter,
    scrape_errors: IntCounterVec,
    rule_errors: IntCounterVec,
    truncations: IntCounterVec,
    reloads: IntCounterVec,
    /// Polling mode only.
    cache_age: Option<CacheAge>,
}

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Stats {
    /// Registers the metrics in `registry`; `polling` adds `xml_adapter_cache_age_seconds`.
    pub fn register(registry: &Registry, polling: bool) -> prometheus::Result<Stats> {
        let stats = Stats {
            up: gauge(
                registry,
                "xml_adapter_up",
                "Whether the last read of the upstream document succeeded (1) or not (0).",
            )?,
            scrape_duration: float_gauge(
                registry,
                "xml_adapter_scrape_duration_seconds",
                "Duration of the last upstream fetch and translation.",
            )?,
            scrape_bytes: gauge(
                registry,
                "xml_adapter_scrape_bytes",
                "Bytes read from the upstream in the last fetch.",
            )?,
            read_bytes: counter(
                registry,
                "xml_adapter_read_bytes_total",
                "Bytes read from the upstream.",
            )?,
            scrapes: counter(registry, "xml_adapter_scrapes_total", "Upstream fetches.")?,
            series: gauge(
                registry,
                "xml_adapter_series",
                "Series translated from the last good document.",
            )?,
            records: gauge(
                registry,
                "xml_adapter_records",
                "Records matched in the last good document.",
            )?,
            last_success: float_gauge(
                registry,
                "xml_adapter_last_success_timestamp_seconds",
                "When the last good document was read (0: never).",
            )?,
            recoveries: counter(
                registry,
                "xml_adapter_lenient_recoveries_total",
                "Missing end tags recovered in lenient mode.",
            )?,
            scrape_errors: counter_vec(
                registry,
                "xml_adapter_scrape_errors_total",
                "Fetches that served no translated samples, by cause.",
                &["kind"],
            )?,
            rule_errors: counter_vec(
                registry,
                "xml_adapter_rule_errors_total",
                "Samples a rule dropped, by reason (missing counts values absent under the skip policy).",
                &["reason", "rule"],
            )?,
            truncations: counter_vec(
                registry,
                "xml_adapter_cap_truncations_total",
                "Scrapes cut short by a cap (body, records, series).",
                &["cap"],
            )?,
            reloads: counter_vec(
                registry,
                "xml_adapter_mapping_reloads_total",
                "Mapping reloads, by result (a refused mapping keeps the old one).",
                &["result"],
            )?,
            cache_age: if polling {
                Some(register(registry, CacheAge::new()?)?)
            } else {
                None
            },
        };
        // The fixed label values are served at 0 before they first happen.
        for (vec, values) in [
            (&stats.scrape_errors, &SCRAPE_ERRORS[..]),
            (&stats.truncations, &CAPS[..]),
            (&stats.reloads, &RELOADS[..]),
        ] {
            for value in values {
                vec.with_label_values(&[*value]);
            }
        }
        Ok(stats)
    }

    pub fn record_success(&self, t: &Translation, duration: Duration, bytes: u64, at: SystemTime) {
        self.up.set(1);
        self.scrapes.inc();
        self.scrape_duration.set(duration.as_secs_f64());
        self.scrape_bytes.set(saturating_i64(bytes));
        self.read_bytes.inc_by(bytes);
        self.series.set(saturating_i64(t.series));
        self.records.set(saturating_i64(t.records));
        self.last_success.set(epoch(at));
        self.fetched(at);
        for ((rule, reason), n) in &t.rule_issues {
            self.rule_errors
                .with_label_values(&[reason.as_str(), rule.as_str()])
                .inc_by(*n);
        }
        for cap in &t.truncated {
            self.truncations.with_label_values(&[*cap]).inc();
        }
        self.recoveries.inc_by(t.recovered);
    }

    pub fn record_failure(
        &self,
        kind: &'static str,
        duration: Duration,
        bytes: u64,
        at: SystemTime,
    ) {
        self.up.set(0);
        self.scrapes.inc();
        self.scrape_duration.set(duration.as_secs_f64());
        self.scrape_bytes.set(saturating_i64(bytes));
        self.read_bytes.inc_by(bytes);
        self.series.set(0);
        self.records.set(0);
        self.fetched(at);
        self.scrape_errors.with_label_values(&[kind]).inc();
        if kind == "body_cap" {
            self.truncations.with_label_values(&["body"]).inc();
        }
    }

    pub fn record_reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "error" }])
            .inc();
    }

    fn fetched(&self, at: SystemTime) {
        if let Some(age) = &self.cache_age {
            age.fetched_at.store(epoch(at).to_bits(), Ordering::Relaxed);
        }
    }

    /// The metrics as the encoder's families, in a fixed order.
    pub fn families(&self) -> Vec<Family> {
        let mut out = vec![
            family(&self.up, Kind::Gauge, &[]),
            family(&self.scrape_duration, Kind::Gauge, &[]),
            family(&self.scrape_bytes, Kind::Gauge, &[]),
            family(&self.read_bytes, Kind::Counter, &[]),
            family(&self.scrapes, Kind::Counter, &[]),
            family(&self.series, Kind::Gauge, &[]),
            family(&self.records, Kind::Gauge, &[]),
            family(&self.last_success, Kind::Gauge, &[]),
            family(&self.recoveries, Kind::Counter, &[]),
            family(&self.scrape_errors, Kind::Counter, &SCRAPE_ERRORS),
            family(&self.rule_errors, Kind::Counter, &[]),
            family(&self.truncations, Kind::Counter, &CAPS),
            family(&self.reloads, Kind::Counter, &RELOADS),
        ];
        if let Some(age) = &self.cache_age {
            out.push(family(age, Kind::Gauge, &[]));
        }
        out
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One collector's samples as an encoder family. A vec's series come out of the registry in
/// no particular order: they are written in a fixed one, so that two scrapes read alike: the
/// values listed in `fixed` (of the first label) first, in that order, then by label values,
/// the last label first (`rule_errors{reason,rule}` is listed by rule, then reason).
fn family(collector: &dyn Collector, kind: Kind, fixed: &[&str]) -> Family {
    let desc = collector.desc()[0];
    let mut family = Family::new(&desc.fq_name, &desc.help, kind);
    let mut samples: Vec<Sample> = collector
        .collect()
        .iter()
        .flat_map(MetricFamily::get_metric)
        .map(|m| Sample {
            suffix: Suffix::None,
            labels: m
                .get_label()
                .iter()
                .map(|l| (l.name().to_owned(), l.value().to_owned()))
                .collect(),
            value: match kind {
                Kind::Counter => m.get_counter().get_value(),
                _ => m.get_gauge().get_value(),
            },
            timestamp: None,
        })
        .collect();
    samples.sort_by_cached_key(|s| {
        let first = s.labels.first().map(|(_, v)| v.as_str());
        let position = fixed.iter().position(|f| Some(*f) == first);
        let values: Vec<String> = s.labels.iter().rev().map(|(_, v)| v.clone()).collect();
        (position.unwrap_or(usize::MAX), values)
    });
    family.samples = samples;
    family
}

/// `xml_adapter_cache_age_seconds`: the age of the cached document, computed when scraped.
#[derive(Debug, Clone)]
struct CacheAge {
    gauge: Gauge,
    /// Unix time of the last fetch as f64 bits; NaN before the first.
    fetched_at: Arc<AtomicU64>,
}

impl CacheAge {
    fn new() -> prometheus::Result<CacheAge> {
        Ok(CacheAge {
            gauge: Gauge::new(
                "xml_adapter_cache_age_seconds",
                "Age of the cached document served in polling mode (NaN: none yet).",
            )?,
            fetched_at: Arc::new(AtomicU64::new(f64::NAN.to_bits())),
        })
    }
}

impl Collector for CacheAge {
    fn desc(&self) -> Vec<&Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let fetched_at = f64::from_bits(self.fetched_at.load(Ordering::Relaxed));
        let age = epoch(SystemTime::now()) - fetched_at;
        // NaN before the first fetch, and if the clock went back since.
        self.gauge.set(if age >= 0.0 { age } else { f64::NAN });
        self.gauge.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{Format, encode};

    fn page(stats: &Stats) -> String {
        let families = stats.families();
        let all: Vec<&Family> = families.iter().collect();
        encode(&all, Format::Text004)
    }

    #[test]
    fn served_on_both_pages_with_fixed_series_at_zero() {
        let registry = Registry::new();
        let stats = Stats::register(&registry, false).unwrap();
        let text = page(&stats);
        for line in [
            "xml_adapter_up 0",
            "xml_adapter_scrapes_total 0",
            "xml_adapter_scrape_errors_total{kind=\"fetch\"} 0",
            "xml_adapter_scrape_errors_total{kind=\"read\"} 0",
            "xml_adapter_cap_truncations_total{cap=\"series\"} 0",
            "xml_adapter_mapping_reloads_total{result=\"error\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert!(!text.contains("cache_age"));
        // The same series are in the kit's registry (the admin /metrics).
        stats.record_failure("body_cap", Duration::from_millis(5), 10, SystemTime::now());
        stats.record_reload(false);
        let gathered = registry.gather();
        let value = |name: &str, label: &str| {
            gathered
                .iter()
                .find(|f| f.name() == name)
                .and_then(|f| {
                    f.get_metric()
                        .iter()
                        .find(|m| m.get_label().iter().any(|l| l.value() == label))
                })
                .map(|m| m.get_counter().get_value())
        };
        assert_eq!(
            value("xml_adapter_scrape_errors_total", "body_cap"),
            Some(1.0)
        );
        assert_eq!(
            value("xml_adapter_cap_truncations_total", "body"),
            Some(1.0)
        );
        assert_eq!(
            value("xml_adapter_mapping_reloads_total", "error"),
            Some(1.0)
        );
        let text = page(&stats);
        assert!(text.contains("xml_adapter_scrape_bytes 10\n"), "{text}");
        assert!(text.contains("xml_adapter_read_bytes_total 10\n"), "{text}");
    }

    #[test]
    fn series_are_written_in_a_fixed_order() {
        let stats = Stats::register(&Registry::new(), false).unwrap();
        for kind in ["read", "fetch", "timeout"] {
            stats.record_failure(kind, Duration::ZERO, 0, SystemTime::now());
        }
        let kinds: Vec<String> = stats.families()[9]
            .samples
            .iter()
            .map(|s| s.labels[0].1.clone())
            .collect();
        assert_eq!(kinds, SCRAPE_ERRORS);
        stats
            .rule_errors
            .with_label_values(&["missing", "b_rule"])
            .inc();
        stats
            .rule_errors
            .with_label_values(&["bad_value", "b_rule"])
            .inc();
        stats
            .rule_errors
            .with_label_values(&["missing", "a_rule"])
            .inc();
        let rules: Vec<(String, String)> = stats.families()[10]
            .samples
            .iter()
            .map(|s| (s.labels[1].1.clone(), s.labels[0].1.clone()))
            .collect();
        assert_eq!(
            rules,
            [
                ("a_rule".into(), "missing".into()),
                ("b_rule".into(), "bad_value".into()),
                ("b_rule".into(), "missing".into())
            ]
        );
    }

    #[test]
    fn cache_age_is_nan_until_the_first_fetch_then_grows() {
        let stats = Stats::register(&Registry::new(), true).unwrap();
        let age = |stats: &Stats| stats.families().last().unwrap().samples[0].value;
        assert!(age(&stats).is_nan());
        let at = SystemTime::now() - Duration::from_secs(30);
        stats.record_failure("fetch", Duration::ZERO, 0, at);
        let a = age(&stats);
        assert!((29.0..120.0).contains(&a), "{a}");
    }
}
