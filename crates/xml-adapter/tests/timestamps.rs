//! Sample timestamps read from the document (off by default): epoch seconds, milliseconds and
//! RFC 3339, through the real binary (`check` and a served `/metrics`), checked by promtool (the
//! 0.0.4 text) and by a strict OpenMetrics parser (Python's prometheus_client), which also says
//! which timestamp each sample carries. An unreadable or missing timestamp drops only itself.
// Test helpers panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::openmetrics::{check, require_strict_parser, strict_parser};
use common::*;

const DOC: &str = r#"{"jobs": [
  {"name": "backup", "ok": 1, "finished": 1765000000, "finished_ms": "1765000000123", "finished_at": "2025-12-06T05:46:40.5Z"},
  {"name": "report", "ok": 0, "finished": "yesterday", "finished_ms": 1765000001000, "finished_at": "06/12/2025"},
  {"name": "index", "ok": 1}
]}"#;

const MAPPING: &str = r#"format: json
rules:
  - name: job_success
    help: Whether the job's last run succeeded.
    type: gauge
    path: /jobs/*
    labels: {name: name}
    value: ok
    timestamp: finished
  - name: job_success_stamped
    help: The same, stamped in milliseconds.
    type: gauge
    path: /jobs/*
    labels: {name: name}
    value: ok
    timestamp: {path: finished_ms, format: milliseconds}
  - name: job_success_dated
    help: The same, stamped in RFC 3339.
    type: gauge
    path: /jobs/*
    labels: {name: name}
    value: ok
    timestamp: {path: finished_at, format: rfc3339}
  - name: job_untimed
    help: No timestamp (the default).
    type: gauge
    path: /jobs/*
    labels: {name: name}
    value: ok
"#;

/// The lines the 0.0.4 text format must hold (timestamps in milliseconds).
const TEXT_LINES: &[&str] = &[
    "job_success{name=\"backup\"} 1 1765000000000\n",
    "job_success{name=\"report\"} 0\n",
    "job_success{name=\"index\"} 1\n",
    "job_success_stamped{name=\"backup\"} 1 1765000000123\n",
    "job_success_stamped{name=\"report\"} 0 1765000001000\n",
    "job_success_dated{name=\"backup\"} 1 1765000000500\n",
    "job_success_dated{name=\"report\"} 0\n",
    "job_untimed{name=\"backup\"} 1\n",
];

fn setup(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mapping = dir.join("jobs.yaml");
    std::fs::write(&mapping, MAPPING).unwrap();
    let input = dir.join("jobs.json");
    std::fs::write(&input, DOC).unwrap();
    (mapping, input)
}

/// Every sample the strict OpenMetrics parser reads: `name{labels} value timestamp` (the
/// timestamp as the parser's float, or `-`).
fn strict_samples(text: &str) -> Result<Vec<String>, String> {
    let out = strict_parser(
        "for f in p(sys.stdin.read()):\n\
        \x20   for s in f.samples:\n\
        \x20       ls = ','.join('%s=\"%s\"' % kv for kv in sorted(s.labels.items()))\n\
        \x20       ts = '-' if s.timestamp is None else repr(float(s.timestamp))\n\
        \x20       print('%s{%s} %r %s' % (s.name, ls, s.value, ts))\n",
        text,
    )?;
    Ok(out.lines().map(str::to_owned).collect())
}

#[test]
fn check_writes_timestamps_both_formats_accept() {
    require_strict_parser();
    let dir = tempfile::tempdir().unwrap();
    let (mapping, input) = setup(dir.path());

    let (code, text, err) = check(&mapping, &input, "text");
    assert_eq!(code, 0, "{err}");
    for line in TEXT_LINES {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    promtool_check(&text).unwrap();
    // The bad ones are counted, and the samples were served all the same.
    assert!(
        err.contains(
            "note: rule `job_success`: 2 sample(s) served without their timestamp (bad_timestamp)"
        ),
        "{err}"
    );
    assert!(err.contains("timestamp `yesterday`"), "{err}");
    assert!(
        err.contains("note: rule `job_success_dated`: 2 sample(s) served without their timestamp"),
        "{err}"
    );

    let (code, om, err) = check(&mapping, &input, "openmetrics");
    assert_eq!(code, 0, "{err}");
    assert!(
        om.contains("job_success{name=\"backup\"} 1 1765000000\n"),
        "{om}"
    );
    assert!(
        om.contains("job_success_stamped{name=\"backup\"} 1 1765000000.123\n"),
        "{om}"
    );
    assert!(
        om.contains("job_success_dated{name=\"backup\"} 1 1765000000.5\n"),
        "{om}"
    );
    let samples = strict_samples(&om).unwrap_or_else(|e| panic!("refused: {e}\n{om}"));
    for want in [
        "job_success{name=\"backup\"} 1 1765000000.0",
        "job_success{name=\"report\"} 0 -",
        "job_success{name=\"index\"} 1 -",
        "job_success_stamped{name=\"backup\"} 1 1765000000.123",
        "job_success_dated{name=\"backup\"} 1 1765000000.5",
        "job_untimed{name=\"backup\"} 1 -",
    ] {
        assert!(
            samples.iter().any(|s| s == want),
            "{want} not in {samples:#?}"
        );
    }

    let (code, json, err) = check(&mapping, &input, "json");
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    let backup = doc["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "job_success_stamped" && s["labels"]["name"] == "backup")
        .unwrap();
    assert_eq!(backup["timestamp"], 1765000000.123);
}

#[test]
fn a_timestamp_on_a_histogram_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("h.yaml");
    std::fs::write(
        &mapping,
        "rules:\n  - {name: a_seconds, type: histogram, path: /a, bucket: '@n', buckets: {x: +Inf}, timestamp: '@t'}\n",
    )
    .unwrap();
    let input = dir.path().join("a.xml");
    std::fs::write(&input, "<a/>").unwrap();
    let (code, _, err) = check(&mapping, &input, "text");
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("rules[0].timestamp"), "{err}");
    assert!(
        err.contains("a timestamp works with counter, gauge"),
        "{err}"
    );
}

#[tokio::test]
async fn served_metrics_carry_the_documents_timestamps() {
    require_strict_parser();
    let dir = tempfile::tempdir().unwrap();
    let (mapping, _) = setup(dir.path());
    let up = start_upstream(Behaviour::Body(Arc::new(DOC.as_bytes().to_vec()))).await;
    let a = start_adapter(&mapping, &up.url(), &[]).await;

    let text = get_text(&a.url("/metrics")).await;
    for line in TEXT_LINES {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    promtool_check(&text).unwrap();
    let page = test_support::metrics::Metrics::parse(&text).unwrap();
    assert_eq!(
        page.value("xml_adapter_rule_errors_total{reason=\"bad_timestamp\",rule=\"job_success\"}"),
        Some(2.0)
    );
    assert_eq!(page.value("xml_adapter_up"), Some(1.0));

    let r = get(
        &a.url("/metrics"),
        &[("Accept", "application/openmetrics-text;version=1.0.0")],
    )
    .await;
    let om = r.text().await.unwrap();
    let samples = strict_samples(&om).unwrap_or_else(|e| panic!("refused: {e}\n{om}"));
    assert!(
        samples
            .iter()
            .any(|s| s == "job_success_stamped{name=\"report\"} 0 1765000001.0"),
        "{samples:#?}"
    );
}
