//! Golden outputs for real documents: each mapping in `tests/mappings` (and the shipped BIND 9
//! mapping) run over real status pages, compared with `tests/golden/*.prom`, and each golden
//! checked by `promtool check metrics`. Regenerate with `UPDATE_GOLDEN=1 cargo test --test golden`.
// Test helpers panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use test_support::metrics::Metrics;
use xml_adapter::encode::{Format, encode};
use xml_adapter::engine::Engine;
use xml_adapter::mapping::Mapping;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn engine(mapping: &str) -> Engine {
    Engine::new(Mapping::load(&root().join(mapping)).expect("mapping loads"))
}

fn translate(engine: &Engine, fixture: &str) -> xml_adapter::engine::Translation {
    let f = std::fs::File::open(root().join("tests/fixtures").join(fixture)).expect("fixture");
    engine
        .translate(std::io::BufReader::new(f))
        .unwrap_or_else(|e| panic!("{fixture}: {e}"))
}

fn promtool_check(text: &str, what: &str) {
    if let Err(e) = test_support::metrics::promtool_check(text) {
        panic!("{what}: {e}");
    }
}

fn golden(name: &str, text: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(text, want, "output differs from {}", path.display());
    promtool_check(text, name);
}

/// Checks the golden and returns the page, parsed.
fn check_golden(mapping: &str, fixture: &str, golden_name: &str) -> Metrics {
    let e = engine(mapping);
    let t = translate(&e, fixture);
    let fams: Vec<_> = t.families.iter().collect();
    let text = encode(&fams, Format::Text004);
    golden(golden_name, &text);
    // The OpenMetrics rendering of the same samples must be accepted too.
    let om = encode(&fams, Format::OpenMetrics);
    assert!(om.ends_with("# EOF\n"));
    Metrics::parse(&text).unwrap_or_else(|e| panic!("{golden_name}: {e}"))
}

#[test]
fn bind9_reproduces_bind_exporter_samples() {
    let mapping = "examples/mappings/bind9.yaml";
    let mut served = Vec::new();
    for (fixture, g) in [
        ("bind9/server.xml", "bind9_server.prom"),
        ("bind9/zones.xml", "bind9_zones.prom"),
        ("bind9/tasks.xml", "bind9_tasks.prom"),
    ] {
        served.push(check_golden(mapping, fixture, g));
    }
    let path = root().join("tests/fixtures/bind9/bind_exporter_expected_subset.txt");
    let expected = Metrics::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(expected.samples().len() > 30);
    for sample in expected.samples() {
        let labels: Vec<(&str, &str)> = sample
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert!(
            served
                .iter()
                .any(|page| page.get(&sample.name, &labels) == Some(sample.value)),
            "bind_exporter serves `{sample:?}`; the adapter does not"
        );
    }
}

#[test]
fn monit_every_service_type() {
    for t in 0..=8 {
        let text = check_golden(
            "tests/mappings/monit.yaml",
            &format!("monit/response_servicetype_{t}.xml"),
            &format!("monit_servicetype_{t}.prom"),
        );
        assert_eq!(text.value("monit_up"), Some(1.0));
        assert!(
            text.series("monit_service_status")
                .any(|s| s.label("name").is_some()),
            "type {t}: {text}"
        );
    }
    let fs = check_golden(
        "tests/mappings/monit.yaml",
        "monit/response_servicetype_0.xml",
        "monit_servicetype_0.prom",
    );
    assert_eq!(
        fs.value("monit_filesystem_block_used_ratio{name=\"test\"}"),
        Some(0.295)
    );
    for variant in [
        "8_failure",
        "8_initializingmode",
        "8_passivemode",
        "8_pendingaction",
    ] {
        check_golden(
            "tests/mappings/monit.yaml",
            &format!("monit/response_servicetype_{variant}.xml"),
            &format!("monit_servicetype_{variant}.prom"),
        );
    }
}

#[test]
fn passenger_position_leaves_and_concat() {
    let text = check_golden(
        "tests/mappings/passenger_features.yaml",
        "misc/passenger_status.xml",
        "passenger_features.prom",
    );
    let group = "/var/app/current/public (default=true)";
    assert_eq!(
        text.value(&format!(
            "passenger_group_option{{group=\"{group}\",option=\"min_processes\"}}"
        )),
        Some(22.0)
    );
    // Leaves whose text is no number are not records; elements with children never are.
    assert!(
        !text.text().contains("option=\"app_root\"") && !text.text().contains("option=\"options\""),
        "{text}"
    );
    assert_eq!(
        text.value(
            "passenger_process_slot_info{id=\"QQUrbCVYxbJYpfgyDOwJ/1\",pid=\"11553\",slot=\"1\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        text.value("passenger_first_process_pid{group=\"QQUrbCVYxbJYpfgyDOwJ\"}"),
        Some(11553.0)
    );
}

#[test]
fn passenger_two_declarations_and_ancestor_labels() {
    let text = check_golden(
        "tests/mappings/passenger.yaml",
        "misc/passenger_status.xml",
        "passenger.prom",
    );
    assert_eq!(
        text.value("passenger_process_processed_requests_total{group=\"/var/app/current/public\",pid=\"11553\"}"
        ),
        Some(951.0)
    );
    assert_eq!(
        text.value(
            "passenger_process_uptime_seconds{group=\"/var/app/current/public\",pid=\"11553\"}"
        ),
        Some(2.0 * 86400.0 + 5.0 * 3600.0 + 3.0 * 60.0 + 46.0)
    );
    assert_eq!(text.value("passenger_processes"), Some(23.0));
}

#[test]
fn neptune_apex_padded_values_and_us_dates() {
    let text = check_golden(
        "tests/mappings/neptune_apex.yaml",
        "misc/neptune_apex_status.xml",
        "neptune_apex.prom",
    );
    assert_eq!(
        text.value("neptune_apex_probe_value{name=\"RETURN_2_1W\",type=\"\"}"),
        Some(35.0)
    );
    // 12/22/2018 21:55:37 at UTC-8.
    assert_eq!(
        text.value("neptune_apex_clock_timestamp_seconds"),
        Some(1545544537.0)
    );
    assert_eq!(
        text.value("neptune_apex_outlet_state{device_id=\"base_Var1\",name=\"VarSpd1_I1\",neptune_apex_outlet_state=\"PF1\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        text.value("neptune_apex_info{hardware=\"1.0\",hostname=\"apex\",serial=\"AC5:12345\",software=\"5.04_7A18\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        text.value("neptune_apex_outlet_has_xstatus{name=\"RVortech_3_1\"}"),
        Some(1.0)
    );
    assert_eq!(
        text.value("neptune_apex_outlet_has_xstatus{name=\"LEAK\"}"),
        Some(0.0)
    );
}

#[test]
fn quakeml_namespaces_through_the_mappings_prefixes() {
    let text = check_golden(
        "tests/mappings/quakeml.yaml",
        "xpath-cases/earthquakes.quakeml",
        "quakeml.prom",
    );
    // Expected values from telegraf's earthquakes.conf for the same file.
    for (eventid, mag, depth, lat, lon, ts_ns) in [
        (
            "7000dg8x",
            6.3,
            13000.0,
            -37.6099,
            179.6102,
            1614989782185000000i64,
        ),
        (
            "7000dfku",
            5.8,
            10000.0,
            39.7886,
            22.1189,
            1614883099415000000,
        ),
        (
            "2021dmpg",
            4.2,
            7000.0,
            36.96366667,
            -98.09383333,
            1613743017950000000,
        ),
    ] {
        assert!(
            text.series("earthquake_magnitude")
                .any(|s| s.label("eventid") == Some(eventid) && s.value == mag),
            "{eventid}"
        );
        assert_eq!(
            text.value(&format!("earthquake_depth_meters{{eventid=\"{eventid}\"}}")),
            Some(depth)
        );
        assert_eq!(
            text.value(&format!(
                "earthquake_latitude_degrees{{eventid=\"{eventid}\"}}"
            )),
            Some(lat)
        );
        assert_eq!(
            text.value(&format!(
                "earthquake_longitude_degrees{{eventid=\"{eventid}\"}}"
            )),
            Some(lon)
        );
        let ts = text
            .value(&format!(
                "earthquake_origin_timestamp_seconds{{eventid=\"{eventid}\"}}"
            ))
            .unwrap();
        assert!((ts - ts_ns as f64 / 1e9).abs() < 1e-3, "{eventid}: {ts}");
    }
    assert_eq!(text.series("earthquake_magnitude").count(), 15);
    // The event without a station count has no sample (and the rule counts it as missing).
    assert_eq!(text.series("earthquake_stations_used").count(), 14);
    // A mapping whose prefix points at another namespace URI matches nothing.
    let wrong = Mapping::parse(
        "namespaces: {bed: 'urn:not-quakeml'}\nrules:\n  - {name: x, type: gauge, path: '//bed:event', value: '@publicID'}\n",
        "wrong.yaml",
    )
    .unwrap();
    let f =
        std::fs::File::open(root().join("tests/fixtures/xpath-cases/earthquakes.quakeml")).unwrap();
    let t = Engine::new(wrong)
        .translate(std::io::BufReader::new(f))
        .unwrap();
    assert_eq!(t.records, 0);
}

#[test]
fn threegpp_types_zip_with_results_in_lenient_mode() {
    let text = check_golden(
        "tests/mappings/3gpp.yaml",
        "misc/3gpp_pmdata.xml",
        "3gpp.prom",
    );
    assert_eq!(
        text.value("pm_measurement{info=\"RRC\",object=\"ENBFunction=ORAN-XXXX-TB,EUtranCellFDD=TL08-123456-31\",type=\"VS.RRC.EutrantoNRRedirAttNbr\"}"
        ),
        Some(30.0)
    );
    assert_eq!(
        text.value("pm_file_begin_timestamp_seconds"),
        Some(1647511200.0)
    );
    let e = engine("tests/mappings/3gpp.yaml");
    let t = translate(&e, "misc/3gpp_pmdata.xml");
    assert_eq!(t.recovered, 1, "one missing </measData> recovered");
    // FDDL lists one type for five results: never zipped by guess, counted per record.
    assert_eq!(
        t.rule_issues.get(&(
            "pm_measurement".to_string(),
            xml_adapter::engine::Reason::Zip
        )),
        Some(&6)
    );
    assert!(!text.text().contains("FDDL"));
}

#[test]
fn threegpp_is_refused_in_strict_mode() {
    let src = std::fs::read_to_string(root().join("tests/mappings/3gpp.yaml")).unwrap();
    let strict = Mapping::parse(
        &src.replace("lenient: true", "lenient: false"),
        "strict.yaml",
    )
    .unwrap();
    let f = std::fs::File::open(root().join("tests/fixtures/misc/3gpp_pmdata.xml")).unwrap();
    let err = Engine::new(strict)
        .translate(std::io::BufReader::new(f))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expected </measData>, found </measCollecFile>"),
        "{err}"
    );
}

#[test]
fn monit_invalid_documents_are_refused_with_reasons() {
    let e = engine("tests/mappings/monit.yaml");
    for (fixture, want) in [
        (
            "monit/response_invalidxml_1.xml",
            "expected </block>, found </service>",
        ),
        (
            "monit/response_invalidxml_3.xml",
            "unsupported encoding `UTF-16`",
        ),
    ] {
        let f = std::fs::File::open(root().join("tests/fixtures").join(fixture)).unwrap();
        let err = e
            .translate(std::io::BufReader::new(f))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{fixture}: {err}");
    }
    // invalidxml_2 is well-formed XML: `0.0` where Monit's schema wants an integer is a fine
    // number here, so the document is read (telegraf refuses it for its Go types).
    let t = translate(&e, "monit/response_invalidxml_2.xml");
    assert!(t.series > 0);
}

/// The series a page serves, keyed by name and labels.
fn series(page: &Metrics) -> std::collections::BTreeMap<String, f64> {
    page.samples()
        .iter()
        .map(|s| (format!("{}{:?}", s.name, s.labels), s.value))
        .collect()
}

#[test]
fn bind9_json_channel_reads_as_its_xml_channel() {
    let json = check_golden(
        "examples/mappings/bind9-json.yaml",
        "bind9/live-9.18.json",
        "bind9_live_json.prom",
    );
    let xml = check_golden(
        "examples/mappings/bind9.yaml",
        "bind9/live-9.18.xml",
        "bind9_live_xml.prom",
    );
    assert_eq!(
        json.get("bind_incoming_queries_total", &[("type", "A")]),
        Some(6.0)
    );
    assert_eq!(
        json.get("bind_response_rcodes_total", &[("rcode", "NXDOMAIN")]),
        Some(6.0)
    );
    // Captured a moment apart from the same server: only the statistics channel's own tasks
    // may have moved. BIND's JSON channel leaves out the server and resolver counters that are
    // zero, which its XML channel prints.
    let (j, x) = (series(&json), series(&xml));
    assert!(j.len() > 40, "{json}");
    let moved: Vec<_> = j
        .keys()
        .chain(x.keys())
        .filter(|k| j.get(*k) != x.get(*k))
        .filter(|k| j.contains_key(*k) || x.get(*k) != Some(&0.0))
        .collect();
    assert!(
        moved.iter().all(|k| k.starts_with("bind_tasks[")),
        "differ: {moved:?}\nJSON:\n{json}\nXML:\n{xml}"
    );
}

#[test]
fn haproxy_json_stats_page() {
    let page = check_golden(
        "examples/mappings/haproxy-json.yaml",
        "haproxy/live-2.6.json",
        "haproxy_live_json.prom",
    );
    assert_eq!(
        page.get("haproxy_frontend_http_requests_total", &[("proxy", "web")]),
        Some(4.0),
        "{page}"
    );
    assert_eq!(
        page.get(
            "haproxy_server_sessions_total",
            &[("proxy", "app"), ("server", "s1")]
        ),
        Some(4.0),
        "{page}"
    );
}
