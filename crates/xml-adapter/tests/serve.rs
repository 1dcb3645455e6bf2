//! The real adapter binary against a scripted upstream on 127.0.0.1: what /metrics and /json
//! serve, and how bad upstreams are reported (never a crash, never a partial set as complete).
// Test helpers panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use test_support::metrics::Metrics;
use test_support::wait::{self, Wait};

fn bind_mapping() -> std::path::PathBuf {
    manifest_path("examples/mappings/bind9.yaml")
}

#[tokio::test]
async fn serves_translated_samples_self_metrics_and_json() {
    let up = start_upstream(Behaviour::Body(Arc::new(fixture("bind9/server.xml")))).await;
    let a = start_adapter(&bind_mapping(), &up.url(), &[]).await;
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("bind_up"), Some(1.0));
    assert_eq!(
        page.value("bind_incoming_queries_total{type=\"A\"}"),
        Some(128417.0)
    );
    assert_eq!(
        page.value("bind_resolver_query_duration_seconds_bucket{view=\"_default\",le=\"+Inf\"}"),
        Some(227755.0)
    );
    assert_eq!(page.value("xml_adapter_up"), Some(1.0));
    assert!(page.value("xml_adapter_series").unwrap() > 100.0);
    assert!(
        page.value("xml_adapter_scrape_bytes").unwrap() >= fixture("bind9/server.xml").len() as f64
    );
    assert!(
        page.value("xml_adapter_last_success_timestamp_seconds")
            .unwrap()
            > 1.7e9
    );
    assert!(page.value("xml_adapter_scrape_duration_seconds").unwrap() > 0.0);
    promtool_check(page.text()).unwrap();

    let json: serde_json::Value = serde_json::from_str(&get_text(&a.url("/json")).await).unwrap();
    assert_eq!(json["up"], true);
    let samples = json["samples"].as_array().unwrap();
    assert!(
        samples
            .iter()
            .any(|s| s["name"] == "bind_recursive_clients" && s["value"] == 76.0)
    );
    // The kit's admin server: ready once the mapping is loaded.
    assert_eq!(get(&a.admin_url("/readyz"), &[]).await.status(), 200);
}

#[tokio::test]
async fn openmetrics_negotiation_and_gzip() {
    let up = start_upstream(Behaviour::Body(Arc::new(fixture("bind9/server.xml")))).await;
    let a = start_adapter(&bind_mapping(), &up.url(), &[]).await;
    let accept =
        "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    let r = get(&a.url("/metrics"), &[("Accept", accept)]).await;
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
    let om = r.text().await.unwrap();
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE bind_incoming_queries counter\n"));
    assert!(om.contains("\nbind_incoming_queries_total{type=\"A\"} 128417\n"));
    assert!(om.contains("# TYPE bind_version info\nbind_version_info{version=\"9.11.31\"} 1\n"));
    assert!(om.contains("# TYPE xml_adapter_scrapes counter\n"));

    let r = get(&a.url("/metrics"), &[("Accept-Encoding", "gzip")]).await;
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let body = r.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut text)
        .unwrap();
    assert!(text.contains("# TYPE bind_incoming_queries_total counter\n"));
    assert!(!text.contains("# EOF"));
}

#[tokio::test]
async fn malformed_upstream_serves_up_0_and_nothing_partial() {
    let up = start_upstream(Behaviour::Body(Arc::new(fixture(
        "monit/response_invalidxml_1.xml",
    ))))
    .await;
    let a = start_adapter(&manifest_path("tests/mappings/monit.yaml"), &up.url(), &[]).await;
    let r = get(&a.url("/metrics"), &[]).await;
    assert_eq!(r.status(), 200);
    let page = Metrics::parse(&r.text().await.unwrap()).unwrap();
    assert_eq!(page.value("monit_up"), Some(0.0));
    assert_eq!(page.value("xml_adapter_up"), Some(0.0));
    // The service records before the broken element were fine, and are still not served.
    assert!(
        !page.text().contains("monit_server_uptime_seconds"),
        "{page}"
    );
    assert!(!page.text().contains("monit_service_status"), "{page}");
    assert_eq!(
        page.value("xml_adapter_scrape_errors_total{kind=\"malformed\"}"),
        Some(1.0)
    );
    promtool_check(page.text()).unwrap();
    a.proc.wait_log(
        "expected </block>, found </service>",
        Duration::from_secs(10),
    );
    // The JSON view says why.
    let json: serde_json::Value = serde_json::from_str(&get_text(&a.url("/json")).await).unwrap();
    assert_eq!(json["up"], false);
    assert!(json["error"].as_str().unwrap().contains("</block>"));
    // Then the upstream recovers: so does the adapter, without a restart.
    up.set(Behaviour::Body(Arc::new(fixture(
        "monit/response_servicetype_3.xml",
    ))));
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("monit_up"), Some(1.0));
}

#[tokio::test]
async fn dtd_entities_are_never_expanded() {
    let laughs = br#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<statistics><server><counters type="qtype"><counter name="A">&lol2;</counter></counters></server></statistics>"#;
    let up = start_upstream(Behaviour::Body(Arc::new(laughs.to_vec()))).await;
    let a = start_adapter(&bind_mapping(), &up.url(), &[]).await;
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("bind_up"), Some(0.0));
    a.proc
        .wait_log("undefined entity `&lol2;`", Duration::from_secs(10));
    up.set(Behaviour::Body(Arc::new(
        br#"<?xml version="1.0"?><!DOCTYPE s [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><statistics><server><version>&xxe;</version></server></statistics>"#.to_vec(),
    )));
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("bind_up"), Some(0.0));
    assert!(!page.text().contains("root:"), "{page}");
}

#[tokio::test]
async fn a_bad_value_drops_only_its_sample_and_labels_are_escaped() {
    let doc = "<?xml version=\"1.0\"?><statistics><server><counters type=\"qtype\">\
        <counter name=\"A\">10</counter>\
        <counter name=\"AAAA\">ten</counter>\
        <counter name=\"we&quot;ird\\ &#10;ünï\">3</counter>\
        </counters></server></statistics>";
    let up = start_upstream(Behaviour::Body(Arc::new(doc.as_bytes().to_vec()))).await;
    let a = start_adapter(&bind_mapping(), &up.url(), &[]).await;
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("bind_up"), Some(1.0));
    assert_eq!(
        page.value("bind_incoming_queries_total{type=\"A\"}"),
        Some(10.0)
    );
    assert!(!page.text().contains("type=\"AAAA\""));
    assert_eq!(
        page.value("bind_incoming_queries_total{type=\"we\\\"ird\\\\ \\nünï\"}"),
        Some(3.0),
        "{page}"
    );
    assert_eq!(
        page.value("xml_adapter_rule_errors_total{reason=\"bad_value\",rule=\"bind_incoming_queries_total\"}"
        ),
        Some(1.0)
    );
    promtool_check(page.text()).unwrap();
}

#[tokio::test]
async fn one_kept_alive_connection_for_many_scrapes() {
    let up = start_upstream(Behaviour::Body(Arc::new(fixture("bind9/server.xml")))).await;
    let a = start_adapter(&bind_mapping(), &up.url(), &[]).await;
    for _ in 0..10 {
        let page = scrape(&a.url("/metrics")).await;
        assert_eq!(page.value("bind_up"), Some(1.0));
    }
    // Concurrent scrapes are serialised onto the same connection.
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let url = a.url("/metrics");
        tasks.push(tokio::spawn(async move { scrape(&url).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().value("bind_up"), Some(1.0));
    }
    assert_eq!(up.requests.load(Ordering::SeqCst), 15);
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn slow_upstream_answers_within_prometheus_scrape_timeout() {
    let up = start_upstream(Behaviour::Slow(
        Duration::from_secs(5),
        Arc::new(fixture("bind9/server.xml")),
    ))
    .await;
    let a = start_adapter(
        &bind_mapping(),
        &up.url(),
        &["--timeout", "30s", "--timeout-offset", "200ms"],
    )
    .await;
    let started = Instant::now();
    let r = get(
        &a.url("/metrics"),
        &[("X-Prometheus-Scrape-Timeout-Seconds", "1.5")],
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status(), 200);
    let page = Metrics::parse(&r.text().await.unwrap()).unwrap();
    assert!(
        took < Duration::from_millis(2500),
        "answered after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(1200),
        "answered after {took:?}"
    );
    assert_eq!(page.value("bind_up"), Some(0.0));
    assert_eq!(
        page.value("xml_adapter_scrape_errors_total{kind=\"timeout\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn upstream_closing_mid_body_is_a_failed_scrape() {
    let body = Arc::new(fixture("bind9/server.xml"));
    let cut = body.len() / 2;
    let up = start_upstream(Behaviour::CloseMidBody(body, cut)).await;
    let a = start_adapter(&bind_mapping(), &up.url(), &[]).await;
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("bind_up"), Some(0.0));
    assert!(
        !page.text().contains("bind_incoming_queries_total{"),
        "{page}"
    );
    assert_eq!(
        page.value("xml_adapter_scrape_errors_total{kind=\"fetch\"}"),
        Some(1.0)
    );
    a.proc
        .wait_log("the body broke off", Duration::from_secs(10));
    // HTTP errors are failures too.
    up.set(Behaviour::Status(503));
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(
        page.value("xml_adapter_scrape_errors_total{kind=\"http_status\"}"),
        Some(1.0)
    );
    assert_eq!(page.value("bind_up"), Some(0.0));
}

#[tokio::test]
async fn body_cap_refuses_and_counts() {
    let up = start_upstream(Behaviour::Generated(5_000_000)).await;
    let a = start_adapter(&bind_mapping(), &up.url(), &["--max-body-bytes", "1000000"]).await;
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("bind_up"), Some(0.0));
    assert_eq!(
        page.value("xml_adapter_scrape_errors_total{kind=\"body_cap\"}"),
        Some(1.0)
    );
    assert_eq!(
        page.value("xml_adapter_cap_truncations_total{cap=\"body\"}"),
        Some(1.0)
    );
    // With a Content-Length above the cap, nothing is read at all.
    up.set(Behaviour::Body(Arc::new(vec![b' '; 2_000_000])));
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(
        page.value("xml_adapter_scrape_errors_total{kind=\"body_cap\"}"),
        Some(2.0)
    );
}

#[tokio::test]
async fn a_200_mb_document_streams_through() {
    let size = 200_000_000u64;
    let up = start_upstream(Behaviour::Generated(size)).await;
    let a = start_adapter(
        &bind_mapping(),
        &up.url(),
        &["--max-body-bytes", "300000000", "--timeout", "300s"],
    )
    .await;
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("bind_up"), Some(1.0), "{}", a.proc.log());
    assert_eq!(
        page.value("bind_tasks{state=\"idle\"}"),
        Some(generated_tasks(size) as f64)
    );
    assert_eq!(page.value("bind_worker_threads"), Some(16.0));
    assert!(page.value("xml_adapter_scrape_bytes").unwrap() > size as f64 * 0.99);
}

#[tokio::test]
async fn series_cap_truncates_visibly() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read_to_string(bind_mapping()).unwrap();
    let capped = dir.path().join("capped.yaml");
    std::fs::write(&capped, format!("limits: {{max_series: 5}}\n{src}")).unwrap();
    let up = start_upstream(Behaviour::Body(Arc::new(fixture("bind9/server.xml")))).await;
    let a = start_adapter(&capped, &up.url(), &[]).await;
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("xml_adapter_series"), Some(5.0));
    assert_eq!(
        page.value("xml_adapter_cap_truncations_total{cap=\"series\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn credentials_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let body = Arc::new(fixture("bind9/zones.xml"));
    let up = start_upstream(Behaviour::RequireAuth("Bearer s3cret".into(), body.clone())).await;
    let a = start_adapter(
        &bind_mapping(),
        &up.url(),
        &["--bearer-token-file", token.to_str().unwrap()],
    )
    .await;
    assert_eq!(scrape(&a.url("/metrics")).await.value("bind_up"), Some(1.0));
    // Rotated on disk: the next fetch uses the new token.
    std::fs::write(&token, "rotated").unwrap();
    up.set(Behaviour::RequireAuth(
        "Bearer rotated".into(),
        body.clone(),
    ));
    assert_eq!(scrape(&a.url("/metrics")).await.value("bind_up"), Some(1.0));
    drop(a);

    let pw = dir.path().join("pw");
    std::fs::write(&pw, "hunter2").unwrap();
    // "user:hunter2" in base64.
    up.set(Behaviour::RequireAuth(
        "Basic dXNlcjpodW50ZXIy".into(),
        body,
    ));
    let a = start_adapter(
        &bind_mapping(),
        &up.url(),
        &[
            "--basic-auth-user",
            "user",
            "--basic-auth-password-file",
            pw.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(scrape(&a.url("/metrics")).await.value("bind_up"), Some(1.0));
    std::fs::write(&pw, "wrong").unwrap();
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("bind_up"), Some(0.0));
    assert_eq!(
        page.value("xml_adapter_scrape_errors_total{kind=\"http_status\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn polling_mode_serves_the_cache_and_its_age() {
    let up = start_upstream(Behaviour::Body(Arc::new(fixture("bind9/server.xml")))).await;
    let a = start_adapter(&bind_mapping(), &up.url(), &["--poll-interval", "5s"]).await;
    // Ready once the first fetch was attempted.
    wait::until_async(Duration::from_secs(10), "/readyz 200", async || {
        get(&a.admin_url("/readyz"), &[]).await.status() == 200
    })
    .await;
    let (started, fetched_before) = (
        std::time::Instant::now(),
        up.requests.load(Ordering::SeqCst),
    );
    for _ in 0..20 {
        let page = scrape(&a.url("/metrics")).await;
        assert_eq!(page.value("bind_up"), Some(1.0), "{page}\n{}", a.proc.log());
        let age = page.value("xml_adapter_cache_age_seconds").unwrap();
        // Bounded by the poll interval plus one fetch (generous: this machine is shared).
        assert!(
            (0.0..11.0).contains(&age),
            "age {age}\n{page}\n{}",
            a.proc.log()
        );
    }
    // The scrapes are answered from the cache: the upstream is fetched once per poll interval
    // however many scrapes come (and however slowly this machine serves them).
    let fetched = up.requests.load(Ordering::SeqCst) - fetched_before;
    let polls = started.elapsed().as_secs() / 5;
    assert!(
        fetched <= polls as usize + 2,
        "{fetched} fetches during 20 scrapes over {:?} with a 5 s poll",
        started.elapsed()
    );
}

#[tokio::test]
async fn mapping_reload_refuses_a_broken_mapping_and_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("mapping.yaml");
    std::fs::write(&m, "rules:\n  - {name: app_queries_total, help: Queries., type: counter, path: '/statistics/server/counters[@type=\"qtype\"]/counter', labels: {type: '@name'}}\n").unwrap();
    let up = start_upstream(Behaviour::Body(Arc::new(fixture("bind9/server.xml")))).await;
    let a = start_adapter(&m, &up.url(), &[]).await;
    assert_eq!(
        scrape(&a.url("/metrics"))
            .await
            .value("app_queries_total{type=\"A\"}"),
        Some(128417.0)
    );

    std::fs::write(
        &m,
        "rules:\n  - {name: app_queries_total, type: countr, path: /x}\n",
    )
    .unwrap();
    let page = Wait::new("a refused reload of the broken mapping")
        .timeout(Duration::from_secs(15))
        .every(Duration::from_millis(200))
        .value_async(async || {
            let page = scrape(&a.url("/metrics")).await;
            let error = page.value("xml_adapter_mapping_reloads_total{result=\"error\"}");
            (error == Some(1.0)).then_some(page)
        })
        .await;
    assert_eq!(page.value("app_queries_total{type=\"A\"}"), Some(128417.0));
    a.proc
        .wait_log("new mapping refused", Duration::from_secs(10));

    std::fs::write(&m, "rules:\n  - {name: app_requests_total, help: Requests., type: counter, path: '/statistics/server/counters[@type=\"opcode\"]/counter', labels: {opcode: '@name'}}\n").unwrap();
    let page = Wait::new("the new mapping in use")
        .timeout(Duration::from_secs(15))
        .every(Duration::from_millis(200))
        .value_async(async || {
            let page = scrape(&a.url("/metrics")).await;
            let served = page.value("app_requests_total{opcode=\"QUERY\"}").is_some();
            served.then_some(page)
        })
        .await;
    assert_eq!(
        page.value("app_requests_total{opcode=\"QUERY\"}"),
        Some(37634.0)
    );
    assert!(!page.text().contains("app_queries_total"));
    assert_eq!(
        page.value("xml_adapter_mapping_reloads_total{result=\"success\"}"),
        Some(1.0)
    );
}

#[test]
fn a_bad_mapping_is_refused_at_start_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("bad.yaml");
    std::fs::write(
        &m,
        "rules:\n  - name: x\n    type: gauge\n    path: /a\n    labls: {}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xml-adapter"))
        .arg("--config")
        .arg(&m)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml") && err.contains("labls"), "{err}");
}

#[test]
fn check_prints_the_scrape_and_lint_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.yaml");
    std::fs::write(&m, "rules:\n  - {name: bind_queries, type: counter, path: '/statistics/server/counters[@type=\"qtype\"]/counter', labels: {type: '@name'}}\n  - {name: bind_boot_time_milliseconds, help: x, type: gauge, path: /statistics/server/boot-time, transforms: [{date: rfc3339}, {scale: 1000}]}\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xml-adapter"))
        .args(["check", "--config"])
        .arg(&m)
        .arg("--input")
        .arg(manifest_path("tests/fixtures/bind9/server.xml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("bind_queries{type=\"A\"} 128417\n"),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: bind_queries: counter metrics should have \"_total\" suffix"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: bind_queries: no help text"),
        "{stderr}"
    );
    assert!(
        stderr.contains("use base unit \"seconds\" instead of \"milliseconds\""),
        "{stderr}"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xml-adapter"))
        .args(["check", "--config"])
        .arg(&m)
        .arg("--input")
        .arg(manifest_path("tests/fixtures/misc/3gpp_pmdata.xml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected </measData>"));
}
