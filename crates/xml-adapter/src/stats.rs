//! The adapter's own metrics, kept across scrapes and written with the same encoder as the
//! translated samples (so both formats stay consistent on one /metrics page).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::encode::{Family, Kind, Sample, Suffix};
use crate::engine::Translation;

#[derive(Debug, Default)]
struct Inner {
    up: bool,
    last_duration: f64,
    last_bytes: u64,
    last_series: u64,
    last_records: u64,
    last_success: Option<f64>,
    scrapes: u64,
    bytes_total: u64,
    scrape_errors: BTreeMap<&'static str, u64>,
    rule_issues: BTreeMap<(String, &'static str), u64>,
    truncations: BTreeMap<&'static str, u64>,
    recovered: u64,
    reloads: BTreeMap<&'static str, u64>,
    fetched_at: Option<SystemTime>,
}

/// Shared, cheap to update.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<Inner>,
}

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn one(name: &str, help: &str, kind: Kind, value: f64) -> Family {
    let mut f = Family::new(name, help, kind);
    f.samples.push(Sample {
        suffix: Suffix::None,
        labels: vec![],
        value,
    });
    f
}

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain numbers behind: still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record_success(&self, t: &Translation, duration: Duration, bytes: u64, at: SystemTime) {
        let mut s = self.lock();
        s.up = true;
        s.scrapes += 1;
        s.last_duration = duration.as_secs_f64();
        s.last_bytes = bytes;
        s.bytes_total += bytes;
        s.last_series = t.series;
        s.last_records = t.records;
        s.last_success = Some(epoch(at));
        s.fetched_at = Some(at);
        for ((rule, reason), n) in &t.rule_issues {
            *s.rule_issues
                .entry((rule.clone(), reason.as_str()))
                .or_default() += n;
        }
        for cap in &t.truncated {
            *s.truncations.entry(cap).or_default() += 1;
        }
        s.recovered += t.recovered;
    }

    pub fn record_failure(
        &self,
        kind: &'static str,
        duration: Duration,
        bytes: u64,
        at: SystemTime,
    ) {
        let mut s = self.lock();
        s.up = false;
        s.scrapes += 1;
        s.last_duration = duration.as_secs_f64();
        s.last_bytes = bytes;
        s.bytes_total += bytes;
        s.last_series = 0;
        s.last_records = 0;
        s.fetched_at = Some(at);
        *s.scrape_errors.entry(kind).or_default() += 1;
        if kind == "body_cap" {
            *s.truncations.entry("body").or_default() += 1;
        }
    }

    pub fn record_reload(&self, ok: bool) {
        *self
            .lock()
            .reloads
            .entry(if ok { "success" } else { "error" })
            .or_default() += 1;
    }

    /// The self metrics, as families. `cache_age` is set in polling mode.
    pub fn families(&self, polling: bool) -> Vec<Family> {
        let s = self.lock();
        let mut out = vec![
            one(
                "xml_adapter_up",
                "Whether the last read of the upstream document succeeded (1) or not (0).",
                Kind::Gauge,
                if s.up { 1.0 } else { 0.0 },
            ),
            one(
                "xml_adapter_scrape_duration_seconds",
                "Duration of the last upstream fetch and translation.",
                Kind::Gauge,
                s.last_duration,
            ),
            one(
                "xml_adapter_scrape_bytes",
                "Bytes read from the upstream in the last fetch.",
                Kind::Gauge,
                s.last_bytes as f64,
            ),
            one(
                "xml_adapter_read_bytes_total",
                "Bytes read from the upstream.",
                Kind::Counter,
                s.bytes_total as f64,
            ),
            one(
                "xml_adapter_scrapes_total",
                "Upstream fetches.",
                Kind::Counter,
                s.scrapes as f64,
            ),
            one(
                "xml_adapter_series",
                "Series translated from the last good document.",
                Kind::Gauge,
                s.last_series as f64,
            ),
            one(
                "xml_adapter_records",
                "Records matched in the last good document.",
                Kind::Gauge,
                s.last_records as f64,
            ),
            one(
                "xml_adapter_last_success_timestamp_seconds",
                "When the last good document was read (0: never).",
                Kind::Gauge,
                s.last_success.unwrap_or(0.0),
            ),
            one(
                "xml_adapter_lenient_recoveries_total",
                "Missing end tags recovered in lenient mode.",
                Kind::Counter,
                s.recovered as f64,
            ),
        ];
        let mut errors = Family::new(
            "xml_adapter_scrape_errors_total",
            "Fetches that served no translated samples, by cause.",
            Kind::Counter,
        );
        for kind in [
            "fetch",
            "http_status",
            "timeout",
            "body_cap",
            "credentials",
            "malformed",
            "read",
        ] {
            errors.samples.push(Sample {
                suffix: Suffix::None,
                labels: vec![("kind".into(), kind.into())],
                value: s.scrape_errors.get(kind).copied().unwrap_or(0) as f64,
            });
        }
        out.push(errors);
        let mut rules = Family::new(
            "xml_adapter_rule_errors_total",
            "Samples a rule dropped, by reason (missing counts values absent under the skip policy).",
            Kind::Counter,
        );
        for ((rule, reason), n) in &s.rule_issues {
            rules.samples.push(Sample {
                suffix: Suffix::None,
                labels: vec![
                    ("reason".into(), (*reason).into()),
                    ("rule".into(), rule.clone()),
                ],
                value: *n as f64,
            });
        }
        out.push(rules);
        let mut caps = Family::new(
            "xml_adapter_cap_truncations_total",
            "Scrapes cut short by a cap (body, records, series).",
            Kind::Counter,
        );
        for cap in ["body", "records", "series"] {
            caps.samples.push(Sample {
                suffix: Suffix::None,
                labels: vec![("cap".into(), cap.into())],
                value: s.truncations.get(cap).copied().unwrap_or(0) as f64,
            });
        }
        out.push(caps);
        let mut reloads = Family::new(
            "xml_adapter_mapping_reloads_total",
            "Mapping reloads, by result (a refused mapping keeps the old one).",
            Kind::Counter,
        );
        for r in ["success", "error"] {
            reloads.samples.push(Sample {
                suffix: Suffix::None,
                labels: vec![("result".into(), r.into())],
                value: s.reloads.get(r).copied().unwrap_or(0) as f64,
            });
        }
        out.push(reloads);
        if polling {
            let age = s
                .fetched_at
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map_or(f64::NAN, |d| d.as_secs_f64());
            out.push(one(
                "xml_adapter_cache_age_seconds",
                "Age of the cached document served in polling mode (NaN: none yet).",
                Kind::Gauge,
                age,
            ));
        }
        out
    }
}
