//! End-to-end test of the access log: an app calls through an outbound ambassador to an inbound
//! one and its app; each writes one JSON line per request (`--log-format json`), read back from
//! the processes' output and checked field by field, a refused request included. The real
//! binaries, certificates made at test time.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use serde_json::Value;
use test_support::process::Process;
use test_support::wait;

const SERVER_ID: &str = "spiffe://test.example/ns/prod/sa/server";
const CLIENT_ID: &str = "spiffe://test.example/ns/prod/sa/client";
const DEADLINE: Duration = Duration::from_secs(20);

/// The binary with `args`, logging JSON.
fn start_json(args: &[String]) -> Ambassador {
    let admin = addr(free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ambassador"));
    cmd.env("AMBASSADOR_WORKER_THREADS", "2")
        .args(args)
        .arg("--admin-addr")
        .arg(admin.to_string())
        .args(["--log-format", "json", "--log-level", "info"]);
    let mut process = Process::spawn("ambassador", cmd);
    process.wait_ready(admin, DEADLINE);
    Ambassador { process, admin }
}

/// The access-log lines written so far, parsed.
fn access_lines(amb: &Ambassador) -> Vec<Value> {
    amb.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect()
}

/// Waits for the `n`th access-log line and returns them all.
fn wait_lines(amb: &Ambassador, n: usize) -> Vec<Value> {
    wait::value(DEADLINE, format!("{n} access-log lines"), || {
        let lines = access_lines(amb);
        (lines.len() >= n).then_some(lines)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_logged_with_every_field() {
    let pki = Pki::new("access-log");
    let app = start_app().await;

    let server = pki.secret("server", SERVER_ID);
    let remote = addr(free_port());
    let config = pki.path().join("inbound.yaml");
    std::fs::write(
        &config,
        format!(
            "access_log: true\naccess_log_query: true\n\
             inbound:\n- name: web\n  listen: {remote}\n  app: {app}\n  allow: {{spiffe: ['{CLIENT_ID}']}}\n  \
             rate_limit: {{requests_per_second: 0.01, burst: 2, key: peer}}\n"
        ),
    )
    .unwrap();
    let mut args = cert_args(&server);
    args.extend(strings(&["--config", config.to_str().unwrap()]));
    let inbound = start_json(&args);

    let client = pki.secret("client", CLIENT_ID);
    let listen = addr(free_port());
    let mut args = cert_args(&client);
    args.extend(strings(&[
        "--outbound-listen",
        &listen.to_string(),
        "--outbound-endpoints",
        &remote.to_string(),
        "--outbound-identity",
        SERVER_ID,
        "--access-log",
    ]));
    let outbound = start_json(&args);

    // 1: a POST with a body and a trace context.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let body = Bytes::from(vec![b'x'; 1000]);
    let req = Request::post("/echo?token=secret")
        .header("host", "billing.test")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body(Full::new(body.clone()))
        .unwrap();
    let reply = plain_request(listen, req).await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, body);

    let out = &wait_lines(&outbound, 1)[0];
    let inn = &wait_lines(&inbound, 1)[0];
    for (line, direction) in [(out, "outbound"), (inn, "inbound")] {
        assert_eq!(line["direction"], direction, "{line}");
        assert_eq!(line["method"], "POST", "{line}");
        assert_eq!(line["authority"], "billing.test", "{line}");
        assert_eq!(line["path"], "/echo", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["request_bytes"], 1000, "{line}");
        assert_eq!(line["response_bytes"], 1000, "{line}");
        assert_eq!(line["retries"], 0, "{line}");
        assert_eq!(line["trace_id"], trace, "{line}");
        assert_eq!(line["completed"], true, "{line}");
        assert!(line.get("refusal").is_none_or(Value::is_null), "{line}");
        assert!(line.get("user").is_none_or(Value::is_null), "{line}");
        assert!(line["duration_ms"].as_f64().unwrap() > 0.0, "{line}");
        let time = line["time"].as_str().unwrap();
        let at = humantime::parse_rfc3339(time).unwrap();
        let age = std::time::SystemTime::now().duration_since(at).unwrap();
        assert!(age < Duration::from_secs(600), "{time}");
    }
    assert_eq!(out["route"], "outbound");
    assert_eq!(out["peer"], "app");
    assert_eq!(out["upstream"], remote.to_string());
    // Query strings only where asked for.
    assert!(out.get("query").is_none_or(Value::is_null), "{out}");
    assert_eq!(inn["query"], "token=secret");
    assert_eq!(inn["route"], "web");
    assert_eq!(inn["peer"], CLIENT_ID);
    assert_eq!(inn["upstream"], app.to_string());
    let request_id = inn["request_id"].as_str().unwrap();
    assert_eq!(request_id.len(), 36, "{inn}");

    // 2: without a trace context, the outbound starts one and both log its id.
    let reply = plain_request(listen, get("/")).await.unwrap();
    assert_eq!(reply.status, 200);
    let out = &wait_lines(&outbound, 2)[1];
    let inn = &wait_lines(&inbound, 2)[1];
    let started = out["trace_id"].as_str().unwrap();
    assert_eq!(started.len(), 32);
    assert_ne!(started, trace);
    assert_eq!(inn["trace_id"], started);
    assert_eq!(inn["method"], "GET");
    assert_eq!(inn["request_bytes"], 0);
    assert_eq!(inn["response_bytes"], 5, "hello: {inn}");

    // 3: refused by the inbound's rate limit: the reason is logged on that side, the status on
    // both.
    let reply = plain_request(listen, get("/")).await.unwrap();
    assert_eq!(reply.status, 429);
    let out = &wait_lines(&outbound, 3)[2];
    let inn = &wait_lines(&inbound, 3)[2];
    assert_eq!(inn["status"], 429);
    assert_eq!(inn["refusal"], "rate_limited");
    assert_eq!(out["status"], 429);
    assert_eq!(out["upstream"], remote.to_string());
    assert!(inn["response_bytes"].as_u64().unwrap() > 0);
    assert_eq!(access_lines(&inbound).len(), 3);
    assert_eq!(access_lines(&outbound).len(), 3);
}
