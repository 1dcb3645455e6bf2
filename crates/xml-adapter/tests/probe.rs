//! Probe mode (`/probe?module=NAME&target=URL`), the real binary against several upstreams on
//! 127.0.0.1: each module's own mapping and request settings, the allow-list (a target outside
//! it is refused and never fetched, also through a redirect), the per-probe metrics, Prometheus's
//! scrape timeout header, and probe mode refused at start without an allow-list.
// Test helpers panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use test_support::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JSON_MAPPING: &str = "up_metric: app_up\nrules:\n  - {name: app_requests_total, help: Requests., type: counter, path: /requests}\n  - {name: app_errors_total, help: Errors., type: counter, path: /errors}\n";

fn probe_url(a: &Adapter, module: Option<&str>, target: &str) -> String {
    let mut q = String::new();
    if let Some(m) = module {
        q.push_str(&format!("module={m}&"));
    }
    // The target is a query parameter: its own `?`, `&` and `=` are escaped.
    let t: String = target
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    a.url(&format!("/probe?{q}target={t}"))
}

async fn probe(url: &str, headers: &[(&str, &str)]) -> Metrics {
    let r = get(url, headers).await;
    assert_eq!(r.status(), 200, "GET {url}");
    let text = r.text().await.unwrap();
    Metrics::parse(&text).unwrap_or_else(|e| panic!("{url}: {e}\n{text}"))
}

/// Answers every request with a redirect to `location`.
async fn redirector(location: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let location = location.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn probes_allowed_targets_with_each_modules_mapping_and_settings() {
    let bind = start_upstream(Behaviour::Body(Arc::new(fixture("bind9/server.xml")))).await;
    let app = start_upstream(Behaviour::Body(Arc::new(
        br#"{"requests": 1027, "errors": 3}"#.to_vec(),
    )))
    .await;
    let slow = start_upstream(Behaviour::Slow(
        Duration::from_secs(30),
        Arc::new(br#"{"requests": 1}"#.to_vec()),
    ))
    .await;
    let broken = start_upstream(Behaviour::Status(503)).await;
    let forbidden = start_upstream(Behaviour::Body(Arc::new(fixture("bind9/server.xml")))).await;
    let redirect = redirector(forbidden.url()).await;

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "app.yaml", JSON_MAPPING);
    // The upstream says `Content-Type: application/xml`: only the module's `format` makes the
    // document JSON.
    let probe_file = write(
        dir.path(),
        "probe.yaml",
        &format!(
            "allowed_targets:\n  - http://127.0.0.1:{bind}/status.xml\n  - 127.0.0.1:{app}\n  - 127.0.0.1:{slow}\n  - 127.0.0.1:{broken}\n  - 127.0.0.1:{redirect}\n\
             modules:\n  app:\n    mapping: app.yaml\n    format: json\n    http: {{timeout: 20s}}\n  \
             quick:\n    mapping: app.yaml\n    format: json\n    http: {{timeout: 1s}}\n",
            bind = bind.port,
            app = app.port,
            slow = slow.port,
            broken = broken.port,
        ),
    );
    let a = start_adapter(
        &manifest_path("examples/mappings/bind9.yaml"),
        &bind.url(),
        &["--probe-config", probe_file.to_str().unwrap()],
    )
    .await;

    // The default module: the --config mapping, on a URL under an allowed prefix.
    let page = probe(&probe_url(&a, None, &bind.url()), &[]).await;
    assert_eq!(page.value("bind_up"), Some(1.0), "{page}");
    assert_eq!(
        page.value("bind_incoming_queries_total{type=\"A\"}"),
        Some(128417.0)
    );
    assert_eq!(page.value("probe_success"), Some(1.0));
    assert_eq!(page.value("probe_http_status_code"), Some(200.0));
    assert!(page.value("probe_duration_seconds").unwrap() > 0.0);
    assert!(page.value("probe_parse_duration_seconds").unwrap() > 0.0);
    assert!(page.value("probe_http_headers_duration_seconds").unwrap() > 0.0);
    assert_eq!(
        page.value("probe_body_bytes"),
        Some(fixture("bind9/server.xml").len() as f64)
    );
    assert_eq!(page.value("probe_timeout_seconds"), Some(10.0));
    assert_eq!(page.value("probe_error{kind=\"timeout\"}"), None);
    // The probe serves the target's samples and its own, not the adapter's self metrics.
    assert!(!page.text().contains("xml_adapter_"), "{page}");
    promtool_check(page.text()).unwrap();
    let fetched = bind.requests.load(Ordering::SeqCst);

    // A module with its own mapping and format, on a host:port entry of the allow-list.
    let url = format!("http://127.0.0.1:{}/anything.json", app.port);
    let page = probe(&probe_url(&a, Some("app"), &url), &[]).await;
    assert_eq!(page.value("app_up"), Some(1.0), "{page}");
    assert_eq!(page.value("app_requests_total"), Some(1027.0));
    assert_eq!(page.value("app_errors_total"), Some(3.0));
    assert_eq!(page.value("probe_success"), Some(1.0));
    assert_eq!(page.value("probe_timeout_seconds"), Some(20.0));
    promtool_check(page.text()).unwrap();

    // Prometheus's scrape timeout lowers the deadline (minus --timeout-offset, 500ms)...
    let page = probe(
        &probe_url(&a, Some("app"), &url),
        &[("X-Prometheus-Scrape-Timeout-Seconds", "3")],
    )
    .await;
    assert_eq!(page.value("probe_timeout_seconds"), Some(2.5));
    // ...and never raises it above the module's timeout.
    let slow_url = format!("http://127.0.0.1:{}/status", slow.port);
    let started = Instant::now();
    let page = probe(
        &probe_url(&a, Some("quick"), &slow_url),
        &[("X-Prometheus-Scrape-Timeout-Seconds", "30")],
    )
    .await;
    let took = started.elapsed();
    assert_eq!(page.value("probe_timeout_seconds"), Some(1.0));
    assert_eq!(page.value("probe_success"), Some(0.0));
    assert_eq!(page.value("app_up"), Some(0.0));
    assert_eq!(page.value("probe_error{kind=\"timeout\"}"), Some(1.0));
    assert_eq!(page.value("probe_http_status_code"), Some(0.0));
    assert!(!page.text().contains("app_requests_total"), "{page}");
    // The slow upstream answers after 30 s: the probe gave up at its 1 s deadline.
    assert!(took < Duration::from_secs(15), "the probe took {took:?}");

    // An HTTP error is a failed probe that says the status.
    let page = probe(
        &probe_url(
            &a,
            Some("app"),
            &format!("http://127.0.0.1:{}/", broken.port),
        ),
        &[],
    )
    .await;
    assert_eq!(page.value("probe_success"), Some(0.0));
    assert_eq!(page.value("probe_http_status_code"), Some(503.0));
    assert_eq!(page.value("probe_error{kind=\"http_status\"}"), Some(1.0));

    // Outside the allow-list: 403, and the target never sees a request.
    for target in [
        forbidden.url(),
        format!("http://127.0.0.1:{}/admin", bind.port),
        format!("http://127.0.0.1:{}/status/../admin", bind.port),
        format!("http://localhost:{}/status.xml", bind.port),
    ] {
        let r = get(&probe_url(&a, None, &target), &[]).await;
        assert_eq!(r.status(), 403, "{target}");
        let body = r.text().await.unwrap();
        assert!(
            body.contains("is not in the allow-list"),
            "{target}: {body}"
        );
        assert!(body.contains("not fetched"), "{body}");
    }
    assert_eq!(bind.requests.load(Ordering::SeqCst), fetched);
    // An allowed target that redirects out of the allow-list: the redirect is not followed.
    let page = probe(
        &probe_url(&a, None, &format!("http://127.0.0.1:{redirect}/status.xml")),
        &[],
    )
    .await;
    assert_eq!(page.value("probe_success"), Some(0.0), "{page}");
    assert_eq!(page.value("probe_error{kind=\"fetch\"}"), Some(1.0));
    a.proc.wait_log(
        "which the allow-list does not allow",
        Duration::from_secs(10),
    );
    assert_eq!(forbidden.requests.load(Ordering::SeqCst), 0);

    // Unknown module, missing or bad target: 400 naming what is wrong.
    let r = get(&probe_url(&a, Some("nope"), &url), &[]).await;
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("unknown module `nope`"), "{body}");
    assert!(body.contains("app, default, quick"), "{body}");
    let r = get(&a.url("/probe?module=app"), &[]).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("`target`"));
    let r = get(&probe_url(&a, None, "file:///etc/passwd"), &[]).await;
    assert_eq!(r.status(), 400);

    // OpenMetrics, as Prometheus asks for it.
    let r = get(
        &probe_url(&a, Some("app"), &url),
        &[("Accept", "application/openmetrics-text;version=1.0.0")],
    )
    .await;
    let om = r.text().await.unwrap();
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("\nprobe_success 1\n"), "{om}");

    // The adapter counts probes on its admin server.
    let admin = scrape(&a.admin_url("/metrics")).await;
    assert!(
        admin
            .value("xml_adapter_probes_total{module=\"default\",result=\"success\"}")
            .unwrap()
            >= 1.0,
        "{admin}"
    );
    assert!(
        admin
            .value("xml_adapter_probes_total{module=\"default\",result=\"refused\"}")
            .unwrap()
            >= 4.0
    );
    assert_eq!(
        admin.value("xml_adapter_probes_total{module=\"quick\",result=\"failure\"}"),
        Some(1.0)
    );
    // /metrics still serves the fixed --upstream.
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("bind_up"), Some(1.0));
}

#[tokio::test]
async fn concurrent_probes_of_different_targets_run_side_by_side() {
    // Two targets that each take 2 s: probed together, the pair takes about 2 s, not 4.
    let body = Arc::new(br#"{"requests": 5, "errors": 0}"#.to_vec());
    let one = start_upstream(Behaviour::Slow(Duration::from_secs(2), body.clone())).await;
    let two = start_upstream(Behaviour::Slow(Duration::from_secs(2), body)).await;
    let dir = tempfile::tempdir().unwrap();
    let mapping = write(
        dir.path(),
        "app.yaml",
        &format!("format: json\n{JSON_MAPPING}"),
    );
    let a = start_adapter(
        &mapping,
        &one.url(),
        &[
            "--probe",
            "--probe-allow",
            &format!("127.0.0.1:{},127.0.0.1:{}", one.port, two.port),
            "--timeout",
            "60s",
        ],
    )
    .await;
    let (u1, u2) = (
        probe_url(&a, None, &one.url()),
        probe_url(&a, None, &two.url()),
    );
    let started = Instant::now();
    let (p1, p2) = tokio::join!(probe(&u1, &[]), probe(&u2, &[]));
    let took = started.elapsed();
    assert_eq!(p1.value("app_requests_total"), Some(5.0));
    assert_eq!(p2.value("app_requests_total"), Some(5.0));
    let each = p1
        .value("probe_duration_seconds")
        .unwrap()
        .min(p2.value("probe_duration_seconds").unwrap());
    // Serialised, the second would have waited for the first: the pair would take twice one.
    assert!(
        took.as_secs_f64() < 2.0 * each,
        "the pair took {took:?}, one probe {each} s"
    );
}

/// The adapter's exit code and stderr for these arguments (it must refuse to start).
fn refused(args: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xml-adapter"));
    cmd.args(args)
        .args(["--listen", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"]);
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn probe_mode_without_an_allow_list_or_with_a_bad_file_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = write(dir.path(), "app.yaml", JSON_MAPPING);
    let m = mapping.to_str().unwrap();

    let (code, err) = refused(&["--config", m, "--probe"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("probe mode needs an allow-list"), "{err}");
    assert!(err.contains("--probe-allow"), "{err}");

    let file = write(
        dir.path(),
        "probe.yaml",
        "modules:\n  app: {mapping: app.yaml}\n",
    );
    let (code, err) = refused(&["--config", m, "--probe-config", file.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("allowed_targets"), "{err}");

    let file = write(
        dir.path(),
        "probe.yaml",
        "allowed_targets: [h]\nmodules:\n  app: {mapping: app.yaml, http: {timeot: 1s}}\n",
    );
    let (code, err) = refused(&["--config", m, "--probe-config", file.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(
        err.contains("probe.yaml") && err.contains("timeot"),
        "{err}"
    );

    let file = write(
        dir.path(),
        "probe.yaml",
        "allowed_targets: [h]\nmodules:\n  app: {mapping: missing.yaml}\n",
    );
    let (code, err) = refused(&["--config", m, "--probe-config", file.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("missing.yaml"), "{err}");

    let (code, err) = refused(&["--config", m, "--probe", "--probe-allow", "ftp://h/"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--probe-allow `ftp://h/`"), "{err}");

    // Without probe mode, /probe is not served and an allow-list alone is a mistake.
    let (code, err) = refused(&["--config", m, "--probe-allow", "h"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--probe-allow needs --probe"), "{err}");
}

#[tokio::test]
async fn the_probe_file_and_module_mappings_reload_and_a_bad_one_keeps_the_old() {
    let app = start_upstream(Behaviour::Body(Arc::new(
        br#"{"requests": 1027, "errors": 3}"#.to_vec(),
    )))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let module_mapping = write(dir.path(), "app.yaml", JSON_MAPPING);
    let allowed = format!("allowed_targets: ['127.0.0.1:{}']\n", app.port);
    let probe_file = write(
        dir.path(),
        "probe.yaml",
        &format!("{allowed}modules:\n  app: {{mapping: app.yaml, format: json}}\n"),
    );
    let a = start_adapter(
        &manifest_path("examples/mappings/bind9.yaml"),
        &app.url(),
        &["--probe-config", probe_file.to_str().unwrap()],
    )
    .await;
    let url = format!("http://127.0.0.1:{}/", app.port);
    let page = probe(&probe_url(&a, Some("app"), &url), &[]).await;
    assert_eq!(page.value("app_requests_total"), Some(1027.0));

    // The module's mapping changes: the next probes use the new one.
    std::fs::write(
        &module_mapping,
        JSON_MAPPING.replace("app_requests_total", "app_hits_total"),
    )
    .unwrap();
    let target = probe_url(&a, Some("app"), &url);
    test_support::wait::Wait::new("the module's new mapping")
        .timeout(Duration::from_secs(30))
        .every(Duration::from_millis(200))
        .until_async(async || probe(&target, &[]).await.value("app_hits_total") == Some(1027.0))
        .await;

    // A broken probe file is refused: the modules in force keep serving.
    std::fs::write(
        &probe_file,
        format!("{allowed}modules:\n  app: {{mapping: app.yaml, http: {{timeot: 1s}}}}\n"),
    )
    .unwrap();
    a.proc
        .wait_log("new probe configuration refused", Duration::from_secs(30));
    let page = probe(&target, &[]).await;
    assert_eq!(page.value("app_hits_total"), Some(1027.0));
    let admin = scrape(&a.admin_url("/metrics")).await;
    assert!(
        admin
            .value("xml_adapter_probe_reloads_total{result=\"error\"}")
            .unwrap()
            >= 1.0,
        "{admin}"
    );

    // A new module, and a new mapping file it brings, are picked up too.
    write(
        dir.path(),
        "other.yaml",
        &JSON_MAPPING.replace("app_errors_total", "other_errors_total"),
    );
    std::fs::write(
        &probe_file,
        format!(
            "{allowed}modules:\n  app: {{mapping: app.yaml, format: json}}\n  other: {{mapping: other.yaml, format: json}}\n"
        ),
    )
    .unwrap();
    let other = probe_url(&a, Some("other"), &url);
    test_support::wait::Wait::new("the new module")
        .timeout(Duration::from_secs(30))
        .every(Duration::from_millis(200))
        .until_async(async || {
            let r = get(&other, &[]).await;
            r.status() == 200
                && Metrics::parse(&r.text().await.unwrap())
                    .unwrap()
                    .value("other_errors_total")
                    == Some(3.0)
        })
        .await;
}
