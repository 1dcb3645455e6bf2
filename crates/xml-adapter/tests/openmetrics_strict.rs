//! Every OpenMetrics output the adapter can make, read by a strict parser (Python
//! prometheus_client's OpenMetrics parser, which refuses a whole scrape for one fault that
//! promtool, checking the 0.0.4 text format only, does not see), through the real binary's
//! `check`.
// Test helpers panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use common::openmetrics::{check, require_strict_parser, strict_parser};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Parses `text` strictly: how many samples it read, or the parser's error.
fn strict_parse(text: &str) -> Result<usize, String> {
    let out = strict_parser(
        "n = sum(len(f.samples) for f in p(sys.stdin.read()))\nprint(n)\n",
        text,
    )?;
    Ok(out.trim().parse().unwrap())
}

#[test]
fn shipped_and_test_mappings_pass_a_strict_openmetrics_parser() {
    require_strict_parser();
    let pairs = [
        ("examples/mappings/bind9.yaml", "bind9/server.xml"),
        ("examples/mappings/bind9.yaml", "bind9/zones.xml"),
        ("examples/mappings/bind9.yaml", "bind9/tasks.xml"),
        ("examples/mappings/bind9-json.yaml", "bind9/live-9.18.json"),
        (
            "examples/mappings/haproxy-json.yaml",
            "haproxy/live-2.6.json",
        ),
        (
            "tests/mappings/monit.yaml",
            "monit/response_servicetype_8.xml",
        ),
        (
            "tests/mappings/monit.yaml",
            "monit/response_servicetype_5.xml",
        ),
        ("tests/mappings/passenger.yaml", "misc/passenger_status.xml"),
        (
            "tests/mappings/neptune_apex.yaml",
            "misc/neptune_apex_status.xml",
        ),
        (
            "tests/mappings/quakeml.yaml",
            "xpath-cases/earthquakes.quakeml",
        ),
    ];
    for (mapping, fixture) in pairs {
        let (code, out, err) = check(
            &root().join(mapping),
            &root().join("tests/fixtures").join(fixture),
            "openmetrics",
        );
        assert_eq!(code, 0, "{mapping} on {fixture}: {err}");
        let n = strict_parse(&out).unwrap_or_else(|e| {
            panic!("{mapping} on {fixture}: refused by the strict parser: {e}")
        });
        assert!(n > 0, "{mapping} on {fixture}: no samples");
    }
}

const DISTRIBUTIONS: &str = r#"
rules:
  - name: app_latency_seconds
    help: Request latency.
    type: summary
    path: /status/latency/q
    labels: {route: "ancestor::latency/@route"}
    quantile: "@p"
    transforms: [{scale: 0.001}]
    sum: "ancestor::latency/@sum_ms"
    sum_transforms: [{scale: 0.001}]
    count: "ancestor::latency/@count"
  - name: app_size_bytes
    help: Response sizes.
    type: histogram
    path: /status/sizes/b
    labels: {route: "ancestor::sizes/@route"}
    bucket: "@le"
    buckets: {"100": 100, "1000": 1000, "inf": +Inf}
    cumulative: true
    sum: "ancestor::sizes/@sum"
  - name: app_rtt_seconds
    help: Round trips, no sum in the document.
    type: histogram
    path: /status/rtt/b
    bucket: "@le"
    buckets: {"1": 1, "inf": +Inf}
    cumulative: false
  - name: app_clock_hertz
    help: CPU clock.
    type: gauge
    path: /status/clock
    transforms: [{unit: MHz}, {scale: 1000000}]
  - name: app_load_ratio
    help: Load.
    type: gauge
    path: /status/load
    transforms: [number, {scale: 0.01}]
  - name: app_uptime_seconds
    help: Uptime.
    type: gauge
    path: /status/uptime_ms
    transforms: [{scale: 0.001}]
"#;

const DOC: &str = r#"<status>
  <latency route="/a" sum_ms="1234" count="10"><q p="0.5">80</q><q p="0.99">1005</q></latency>
  <sizes route="/a" sum="5500"><b le="100">3</b><b le="1000">7</b><b le="inf">8</b></sizes>
  <rtt><b le="1">2</b><b le="inf">1</b></rtt>
  <clock>2400.5 MHz</clock>
  <load>87%</load>
  <uptime_ms>1005</uptime_ms>
</status>"#;

#[test]
fn summaries_histogram_sums_and_units_in_every_format() {
    require_strict_parser();
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("m.yaml");
    let input = dir.path().join("d.xml");
    std::fs::write(&mapping, DISTRIBUTIONS).unwrap();
    std::fs::write(&input, DOC).unwrap();

    let (code, om, err) = check(&mapping, &input, "openmetrics");
    assert_eq!(code, 0, "{err}");
    strict_parse(&om).unwrap_or_else(|e| panic!("refused: {e}\n{om}"));
    for line in [
        "# TYPE app_latency_seconds summary",
        "app_latency_seconds{route=\"/a\",quantile=\"0.5\"} 0.08",
        "app_latency_seconds{route=\"/a\",quantile=\"0.99\"} 1.005",
        "app_latency_seconds_count{route=\"/a\"} 10",
        "app_latency_seconds_sum{route=\"/a\"} 1.234",
        "app_size_bytes_bucket{route=\"/a\",le=\"+Inf\"} 8",
        "app_size_bytes_count{route=\"/a\"} 8",
        "app_size_bytes_sum{route=\"/a\"} 5500",
        "app_rtt_seconds_bucket{le=\"+Inf\"} 3",
        "app_clock_hertz 2.4005e+09",
        "app_load_ratio 0.87",
        "app_uptime_seconds 1.005",
    ] {
        assert!(om.lines().any(|l| l == line), "no `{line}` in\n{om}");
    }
    // No sum in the document: OpenMetrics wants both or neither.
    assert!(!om.contains("app_rtt_seconds_count"), "{om}");

    let (code, text, err) = check(&mapping, &input, "text");
    assert_eq!(code, 0, "{err}");
    test_support::metrics::promtool_check(&text).unwrap();
    assert!(
        text.contains("# TYPE app_latency_seconds summary\n"),
        "{text}"
    );
    assert!(text.contains("app_rtt_seconds_count 3\n"), "{text}");

    // The /json envelope, as the server serves it.
    let (code, json, err) = check(&mapping, &input, "json");
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["up"], true, "{json}");
    assert!(doc["error"].is_null(), "{json}");
    assert!(
        doc["fetched_at"].as_f64().is_some_and(|t| t > 0.0),
        "{json}"
    );
    let samples = doc["samples"].as_array().unwrap();
    assert!(
        samples
            .iter()
            .any(|s| s["name"] == "app_latency_seconds_sum" && s["type"] == "summary"),
        "{json}"
    );
}
