//! Lint warnings about a mapping, in the spirit of `promtool check metrics` (promlint): names,
//! units, `_total`. Warnings never stop a mapping from loading; `check` prints them.

use crate::encode::Kind;
use crate::mapping::Mapping;

/// Non-base units promlint complains about, and the base unit to use instead.
const NON_BASE_UNITS: &[(&str, &str)] = &[
    ("milliseconds", "seconds"),
    ("microseconds", "seconds"),
    ("nanoseconds", "seconds"),
    ("minutes", "seconds"),
    ("hours", "seconds"),
    ("days", "seconds"),
    ("ms", "seconds"),
    ("kilobytes", "bytes"),
    ("megabytes", "bytes"),
    ("gigabytes", "bytes"),
    ("kb", "bytes"),
    ("mb", "bytes"),
    ("bits", "bytes"),
    ("percent", "ratio"),
];

/// One finding, naming the metric at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub metric: String,
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.metric, self.message)
    }
}

fn camel(s: &str) -> bool {
    s.chars().any(|c| c.is_ascii_uppercase())
}

pub fn lint(mapping: &Mapping) -> Vec<Warning> {
    let mut out = Vec::new();
    let mut warn = |metric: &str, message: String| {
        out.push(Warning {
            metric: metric.to_string(),
            message,
        })
    };
    for f in &mapping.families {
        let n = f.name.as_str();
        if f.help.trim().is_empty() {
            warn(n, "no help text".into());
        }
        if camel(n) {
            warn(
                n,
                "metric names should be written in 'snake_case' not 'camelCase'".into(),
            );
        }
        match f.kind {
            Kind::Counter if !n.ends_with("_total") => warn(
                n,
                "counter metrics should have \"_total\" suffix (OpenMetrics output adds it)".into(),
            ),
            Kind::Counter => {}
            _ if n.ends_with("_total") => warn(
                n,
                "non-counter metrics should not have \"_total\" suffix".into(),
            ),
            _ => {}
        }
        if f.kind == Kind::Info && !n.ends_with("_info") {
            warn(n, "info metrics should have \"_info\" suffix".into());
        }
        if f.kind != Kind::Info && n.ends_with("_info") {
            warn(
                n,
                "\"_info\" suffix on a metric that is not `type: info`".into(),
            );
        }
        for reserved in ["_count", "_sum", "_bucket", "_created"] {
            if n.ends_with(reserved) && f.kind != Kind::Counter {
                warn(
                    n,
                    format!(
                        "metric names should not end in \"{reserved}\" (a histogram/summary suffix)"
                    ),
                );
            }
        }
        let stem = n.strip_suffix("_total").unwrap_or(n);
        for (unit, base) in NON_BASE_UNITS {
            if stem.ends_with(&format!("_{unit}")) || stem.contains(&format!("_{unit}_")) {
                warn(n, format!("use base unit \"{base}\" instead of \"{unit}\""));
            }
        }
        if let Some(u) = &f.unit
            && !stem.ends_with(&format!("_{u}"))
        {
            warn(
                n,
                format!("unit \"{u}\" should be the last part of the name (before _total)"),
            );
        }
    }
    for r in &mapping.rules {
        for l in &r.labels {
            if camel(&l.name) {
                warn(
                    &r.name,
                    format!("label name `{}` should be snake_case", l.name),
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_names_units_and_total() {
        let m = Mapping::parse(
            r#"
rules:
  - {name: app_requests, help: x, type: counter, path: /a}
  - {name: app_up_total, help: x, type: gauge, path: /a}
  - {name: app_latency_milliseconds, help: x, type: gauge, path: /a}
  - {name: appHeapBytes, type: gauge, path: /a}
  - {name: app_build, help: x, type: info, path: /a}
  - {name: app_ok_total, help: fine, type: counter, path: /a, labels: {okName: "@n"}}
  - {name: app_size_bytes, help: fine, type: gauge, path: /a}
  - {name: app_temperature_celsius, help: fine, type: gauge, path: /a}
"#,
            "m.yaml",
        )
        .unwrap();
        let w: Vec<String> = lint(&m).iter().map(|w| w.to_string()).collect();
        let has = |s: &str| w.iter().any(|x| x.contains(s));
        assert!(
            has("app_requests: counter metrics should have \"_total\""),
            "{w:?}"
        );
        assert!(has("app_up_total: non-counter"), "{w:?}");
        assert!(
            has("app_latency_milliseconds: use base unit \"seconds\""),
            "{w:?}"
        );
        assert!(has("appHeapBytes: no help text"), "{w:?}");
        assert!(
            has("appHeapBytes: metric names should be written in 'snake_case'"),
            "{w:?}"
        );
        assert!(
            has("app_build: info metrics should have \"_info\""),
            "{w:?}"
        );
        assert!(has("label name `okName`"), "{w:?}");
        assert!(!w.iter().any(|x| x.starts_with("app_size_bytes")), "{w:?}");
        // Prometheus' naming guide uses celsius for temperatures.
        assert!(!has("app_temperature_celsius"), "{w:?}");
    }
}
