//! JSON status pages from real servers through the real adapter binary: BIND 9's JSON
//! statistics channel against its XML channel on the same live `named` (the shipped mappings
//! must serve the same series with the same values), and HAProxy's stats page in JSON against
//! HAProxy's own Prometheus exporter.
// Test helpers panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::*;
use test_support::metrics::Metrics;
use test_support::ports::{free_port, free_udp_tcp_port};
use test_support::process::Process;
use test_support::skip::require_program;
use test_support::wait::Wait;

/// A real server on free ports, killed on drop, with its directory.
struct Server {
    proc: Process,
    ports: (u16, u16),
    _dir: tempfile::TempDir,
}

/// Starts a server whose config `conf(dir, port_a, port_b)` writes, until `ready` answers at
/// `http://127.0.0.1:{port_b}{ready}` (retrying on a port race).
/// Starts `name` and waits until `ready` answers 200 and, when given, its log shows
/// `log_ready` (named serves its statistics before its zones are loaded, and answers SERVFAIL
/// until then).
async fn start(
    name: &str,
    conf: impl Fn(&std::path::Path, u16, u16) -> Command,
    ready: &str,
    log_ready: Option<&str>,
) -> Server {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        // The first port may be a UDP one too (named's DNS port).
        let ports = (free_udp_tcp_port(), free_port());
        let mut proc = Process::spawn(name, conf(dir.path(), ports.0, ports.1));
        let mut exited = false;
        let url = format!("http://127.0.0.1:{}{ready}", ports.1);
        let up = Wait::new(name)
            .timeout(Duration::from_secs(30))
            .every(Duration::from_millis(100))
            .elapsed_async(async || {
                exited = proc.try_exit().is_some();
                let r = http().get(&url).send().await;
                exited
                    || (r.is_ok_and(|r| r.status() == 200)
                        && log_ready.is_none_or(|line| proc.log().contains(line)))
            })
            .await;
        if up.is_some() && !exited {
            return Server {
                proc,
                ports,
                _dir: dir,
            };
        }
        eprintln!("{name} did not come up, retrying:\n{}", proc.log());
    }
    panic!("{name} did not start");
}

/// The page's series whose name starts with `prefix`, keyed by name and labels.
fn series(page: &Metrics, prefix: &str) -> BTreeMap<String, f64> {
    page.samples()
        .iter()
        .filter(|s| s.name.starts_with(prefix))
        .map(|s| (format!("{}{:?}", s.name, s.labels), s.value))
        .collect()
}

#[tokio::test]
async fn bind9_json_channel_serves_what_its_xml_channel_serves() {
    require_program("named", "bind9");
    let named = start(
        "named",
        named_conf,
        "/json/v1/server",
        Some("all zones loaded"),
    )
    .await;
    let (dns, stats) = named.ports;
    for i in 0..5 {
        assert_eq!(dns_query(dns, "www.example.test", i + 1), 0, "NOERROR");
    }
    for i in 0..2 {
        assert_eq!(dns_query(dns, "nope.example.test", 100 + i), 3, "NXDOMAIN");
    }
    let xml = start_adapter(
        &manifest_path("examples/mappings/bind9.yaml"),
        &format!("http://127.0.0.1:{stats}/xml/v3"),
        &[],
    )
    .await;
    let json = start_adapter(
        &manifest_path("examples/mappings/bind9-json.yaml"),
        &format!("http://127.0.0.1:{stats}/json/v1"),
        &[],
    )
    .await;

    // The JSON scrape between two XML scrapes: a value that moved meanwhile (a task's state,
    // the statistics channel's own traffic) lies between the two; the rest are equal.
    let before = scrape(&xml.url("/metrics")).await;
    let page = scrape(&json.url("/metrics")).await;
    let after = scrape(&xml.url("/metrics")).await;
    assert_eq!(
        page.value("bind_up"),
        Some(1.0),
        "{page}\n{}",
        json.proc.log()
    );
    assert_eq!(before.value("bind_up"), Some(1.0), "{before}");
    let (x0, j, x1) = (
        series(&before, "bind_"),
        series(&page, "bind_"),
        series(&after, "bind_"),
    );
    // Enough of the document to mean something: every section the server has.
    for name in [
        "bind_boot_time_seconds",
        "bind_version_info",
        "bind_incoming_queries_total",
        "bind_incoming_requests_total",
        "bind_response_rcodes_total",
        "bind_responses_total",
        "bind_zone_serial",
        "bind_tasks",
    ] {
        assert!(
            j.keys().any(|k| k.starts_with(&format!("{name}["))),
            "{name} missing from the JSON channel's series:\n{page}"
        );
    }
    assert_eq!(
        page.get("bind_incoming_queries_total", &[("type", "A")]),
        Some(7.0)
    );
    assert_eq!(
        page.get(
            "bind_zone_serial",
            &[("view", "_default"), ("zone_name", "example.test")]
        ),
        Some(2024061501.0)
    );
    for (k, v) in &j {
        let (a, b) = (x0.get(k), x1.get(k));
        assert!(
            a.is_some() || b.is_some(),
            "{k} = {v} from JSON only\nXML:\n{before}\nJSON:\n{page}"
        );
        let lo = a
            .unwrap_or(&f64::NEG_INFINITY)
            .min(*b.unwrap_or(&f64::INFINITY));
        let hi = a
            .unwrap_or(&f64::INFINITY)
            .max(*b.unwrap_or(&f64::NEG_INFINITY));
        assert!(
            (lo..=hi).contains(v),
            "{k}: JSON {v}, XML {a:?} then {b:?}\nXML:\n{before}\nJSON:\n{page}"
        );
    }
    // BIND's JSON channel leaves out the server and resolver counters that are zero, which its
    // XML channel prints: those are the only series the XML channel may serve alone.
    let mut zeros = 0;
    for (k, v) in &x0 {
        if j.contains_key(k) || !x1.contains_key(k) {
            continue;
        }
        assert_eq!(
            *v, 0.0,
            "{k} = {v} from XML only\nXML:\n{before}\nJSON:\n{page}"
        );
        zeros += 1;
    }
    eprintln!("{zeros} zero counters served from XML only");
    eprintln!("{} series compared", j.len());
}

fn haproxy_conf(dir: &std::path::Path, web: u16, stats: u16) -> Command {
    std::fs::write(
        dir.join("haproxy.cfg"),
        format!(
            "global\n  maxconn 100\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
             frontend stats\n  bind 127.0.0.1:{stats}\n  stats enable\n  stats uri /stats\n  http-request use-service prometheus-exporter if {{ path /metrics }}\n\
             frontend web\n  bind 127.0.0.1:{web}\n  http-request return status 200 content-type text/plain string ok if {{ path /ok }}\n  default_backend app\n\
             backend app\n  server s1 127.0.0.1:{stats}\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(dir.join("haproxy.cfg"));
    cmd
}

#[tokio::test]
async fn haproxy_json_stats_page_matches_its_own_exporter() {
    require_program("haproxy", "haproxy");
    let haproxy = start("haproxy", haproxy_conf, "/stats;json", None).await;
    let (web, stats) = haproxy.ports;
    // Requests answered by the frontend itself, and some through the backend's server.
    let (direct, proxied) = (6u32, 4u32);
    for _ in 0..direct {
        let r = get(&format!("http://127.0.0.1:{web}/ok"), &[]).await;
        assert_eq!(r.status(), 200);
    }
    for _ in 0..proxied {
        let r = get(&format!("http://127.0.0.1:{web}/stats"), &[]).await;
        assert_eq!(r.status(), 200);
    }
    let adapter = start_adapter(
        &manifest_path("examples/mappings/haproxy-json.yaml"),
        &format!("http://127.0.0.1:{stats}/stats;json"),
        &[],
    )
    .await;
    let page = scrape(&adapter.url("/metrics")).await;
    assert_eq!(
        page.value("haproxy_up"),
        Some(1.0),
        "{page}\n{}\n{}",
        adapter.proc.log(),
        haproxy.proc.log()
    );
    // The web frontend saw no traffic but the test's: its counters are exact.
    assert_eq!(
        page.get("haproxy_frontend_http_requests_total", &[("proxy", "web")]),
        Some(f64::from(direct + proxied)),
        "{page}"
    );
    assert_eq!(
        page.get(
            "haproxy_frontend_http_responses_total",
            &[("proxy", "web"), ("code", "2xx")]
        ),
        Some(f64::from(direct + proxied)),
        "{page}"
    );
    assert_eq!(
        page.get(
            "haproxy_server_sessions_total",
            &[("proxy", "app"), ("server", "s1")]
        ),
        Some(f64::from(proxied)),
        "{page}"
    );
    // HAProxy's own exporter, for every series of the web frontend and the app backend
    // (the stats frontend counts the scrapes themselves).
    let own = scrape(&format!("http://127.0.0.1:{stats}/metrics")).await;
    let mut compared = 0;
    for s in page.samples() {
        // The adapter's own metrics and `haproxy_up` are not HAProxy's.
        if !s.name.starts_with("haproxy_")
            || s.name == "haproxy_up"
            || s.label("proxy") == Some("stats")
        {
            continue;
        }
        let labels: Vec<(&str, &str)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            own.get(&s.name, &labels),
            Some(s.value),
            "{} {labels:?}\nadapter:\n{page}\nHAProxy:\n{own}",
            s.name
        );
        compared += 1;
    }
    assert!(compared >= 10, "{compared} series compared:\n{page}");
}
