//! How the adapter asks its upstream, the real binary against real servers on 127.0.0.1: through
//! an HTTP proxy (a real tinyproxy; `--proxy`, `--no-proxy`, and the environment's HTTP_PROXY
//! only with `--proxy-from-env`), and with a method and body for a status endpoint that only
//! answers a POST with the expected body (flags and probe modules).
// Test helpers panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::tinyproxy::{Tinyproxy, available};
use common::*;
use test_support::ports::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JSON_MAPPING: &str = "format: json\nup_metric: app_up\nrules:\n  - {name: app_requests_total, help: Requests., type: counter, path: /requests}\n";

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test]
async fn fetches_through_an_http_proxy_only_when_told_to() {
    if !available("tinyproxy", "tinyproxy") {
        return;
    }
    let proxy = Tinyproxy::start();
    let bind = manifest_path("examples/mappings/bind9.yaml");
    let body = Arc::new(fixture("bind9/server.xml"));

    // --proxy: the fetch goes through tinyproxy.
    let up = start_upstream(Behaviour::Body(body.clone())).await;
    let a = start_adapter(&bind, &up.url(), &["--proxy", &proxy.url()]).await;
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("bind_up"), Some(1.0), "{page}");
    assert!(proxy.carried(&up.url()), "{:?}", proxy.requests());
    drop(a);

    // The environment's HTTP_PROXY is ignored without --proxy-from-env...
    let up = start_upstream(Behaviour::Body(body.clone())).await;
    let env = [("HTTP_PROXY", proxy.url()), ("http_proxy", proxy.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = start_adapter_with_env(&bind, &up.url(), &[], &env).await;
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("bind_up"), Some(1.0));
    assert!(!proxy.carried(&up.url()), "{:?}", proxy.requests());
    drop(a);
    // ...and followed with it.
    let a = start_adapter_with_env(&bind, &up.url(), &["--proxy-from-env"], &env).await;
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("bind_up"), Some(1.0));
    assert!(proxy.carried(&up.url()), "{:?}", proxy.requests());
    drop(a);

    // --no-proxy: this host is fetched directly.
    let up = start_upstream(Behaviour::Body(body.clone())).await;
    let a = start_adapter(
        &bind,
        &up.url(),
        &["--proxy", &proxy.url(), "--no-proxy", "127.0.0.1"],
    )
    .await;
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("bind_up"), Some(1.0));
    assert!(!proxy.carried(&up.url()), "{:?}", proxy.requests());
    drop(a);

    // A proxy that is down: up 0, counted as a fetch error, and the log names the proxy.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let a = start_adapter(&bind, &up.url(), &["--proxy", &dead]).await;
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("bind_up"), Some(0.0));
    assert_eq!(
        page.value("xml_adapter_scrape_errors_total{kind=\"fetch\"}"),
        Some(1.0)
    );
    a.proc.wait_log(
        &format!("through the proxy {dead}/"),
        Duration::from_secs(10),
    );
    drop(a);

    // A probe module with its own proxy.
    let up = start_upstream(Behaviour::Body(body)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "probe.yaml",
        &format!(
            "allowed_targets: ['127.0.0.1:{}']\nmodules:\n  proxied:\n    mapping: {}\n    http: {{proxy: '{}'}}\n",
            up.port,
            bind.display(),
            proxy.url()
        ),
    );
    let a = start_adapter(
        &bind,
        &up.url(),
        &["--probe-config", file.to_str().unwrap()],
    )
    .await;
    let target = format!("http://127.0.0.1:{}/probed.xml", up.port);
    let page = scrape(&a.url(&format!("/probe?module=proxied&target={target}"))).await;
    assert_eq!(page.value("probe_success"), Some(1.0), "{page}");
    assert!(proxy.carried(&target), "{:?}", proxy.requests());
}

/// An upstream that answers 200 with `doc` only to a POST carrying `body` and `content_type`,
/// and 405 or 400 otherwise; it keeps every request head it saw.
async fn post_only(
    body: &'static str,
    content_type: &'static str,
    doc: &'static str,
) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    buf.drain(..end);
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < length {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let got: Vec<u8> = buf.drain(..length).collect();
                    seen.lock().unwrap().push(head.clone());
                    let ct_ok = head.lines().any(|l| {
                        l.strip_prefix("content-type:")
                            .is_some_and(|v| v.trim() == content_type)
                    });
                    let resp = if !head.starts_with("post ") {
                        "HTTP/1.1 405 Method Not Allowed\r\nAllow: POST\r\nContent-Length: 0\r\n\r\n".to_string()
                    } else if got != body.as_bytes() || !ct_ok {
                        "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".to_string()
                    } else {
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{doc}",
                            doc.len()
                        )
                    };
                    if sock.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, heads)
}

/// The adapter sending a POST with `body` (`--body-file FILE` or `--body TEXT`) and
/// `content_type`, plus `extra` flags.
async fn start_posting(
    mapping: &Path,
    url: &str,
    body: [&str; 2],
    content_type: &str,
    extra: &[&str],
) -> Adapter {
    let mut args = vec![
        "--method",
        "POST",
        body[0],
        body[1],
        "--content-type",
        content_type,
    ];
    args.extend_from_slice(extra);
    start_adapter(mapping, url, &args).await
}

#[tokio::test]
async fn posts_the_configured_body_to_a_post_only_status_endpoint() {
    const BODY: &str = r#"{"command": "status", "verbose": true}"#;
    let (port, heads) = post_only(BODY, "application/json", r#"{"requests": 42}"#).await;
    let url = format!("http://127.0.0.1:{port}/api");
    let dir = tempfile::tempdir().unwrap();
    let mapping = write(dir.path(), "app.yaml", JSON_MAPPING);
    let body_file = write(dir.path(), "request.json", BODY);

    // A GET is refused by this endpoint: up 0, an HTTP status error.
    let a = start_adapter(&mapping, &url, &[]).await;
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("app_up"), Some(0.0));
    assert_eq!(
        page.value("xml_adapter_scrape_errors_total{kind=\"http_status\"}"),
        Some(1.0)
    );
    a.proc
        .wait_log("answered HTTP 405", Duration::from_secs(10));
    drop(a);

    // POST with the body from a file, its Content-Type and a header: served, on each scrape.
    let a = start_posting(
        &mapping,
        &url,
        ["--body-file", body_file.to_str().unwrap()],
        "application/json",
        &["--header", "X-Api-Key: k1"],
    )
    .await;
    for _ in 0..3 {
        let page = scrape(&a.url("/metrics")).await;
        assert_eq!(page.value("app_up"), Some(1.0), "{page}");
        assert_eq!(page.value("app_requests_total"), Some(42.0));
    }
    let last = heads.lock().unwrap().last().cloned().unwrap();
    assert!(last.starts_with("post /api http/1.1"), "{last}");
    assert!(last.contains("x-api-key: k1"), "{last}");
    drop(a);

    // The body inline, with a wrong Content-Type: the endpoint refuses it (400).
    let a = start_posting(&mapping, &url, ["--body", BODY], "text/plain", &[]).await;
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("app_up"), Some(0.0));
    a.proc
        .wait_log("answered HTTP 400", Duration::from_secs(10));
    drop(a);

    // A probe module that POSTs its inline body.
    let file = write(
        dir.path(),
        "probe.yaml",
        &format!(
            "allowed_targets: ['http://127.0.0.1:{port}/api']\nmodules:\n  status:\n    mapping: app.yaml\n    http:\n      method: POST\n      body: '{BODY}'\n      content_type: application/json\n      headers: {{X-Api-Key: k2}}\n"
        ),
    );
    let a = start_adapter(&mapping, &url, &["--probe-config", file.to_str().unwrap()]).await;
    let page = scrape(&a.url(&format!("/probe?module=status&target={url}"))).await;
    assert_eq!(page.value("probe_success"), Some(1.0), "{page}");
    assert_eq!(page.value("app_requests_total"), Some(42.0));
    let last = heads.lock().unwrap().last().cloned().unwrap();
    assert!(
        last.contains("x-api-key: k2"),
        "the module's header: {last}"
    );
    // The default module GETs, as the flags say.
    let page = scrape(&a.url(&format!("/probe?target={url}"))).await;
    assert_eq!(page.value("probe_success"), Some(0.0));
    assert_eq!(page.value("probe_http_status_code"), Some(405.0));
}

#[test]
fn a_body_without_a_method_that_takes_one_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = write(dir.path(), "app.yaml", JSON_MAPPING);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_xml-adapter"))
            .arg("--config")
            .arg(&mapping)
            .args(["--listen", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--body", "x"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("--method: a request body needs a method"),
        "{err}"
    );
    let (code, err) = run(&["--body-file", "/nonexistent/body", "--method", "POST"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--body-file /nonexistent/body"), "{err}");
    let (code, err) = run(&["--proxy", "http://user:secret@127.0.0.1:3128"]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("credentials in the proxy URL are refused"),
        "{err}"
    );
    assert!(!err.contains("secret"), "the password is not echoed: {err}");
}
