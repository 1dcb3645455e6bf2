//! End-to-end tests of inbound rate limits: a bucket per route or per caller identity, a
//! refused request answered 429 with `Retry-After` and counted. The real binary, certificates
//! made at test time. The rate is one request per 100 s, so that no bucket refills while a test
//! runs, however slow the machine.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;

use common::*;

const SERVER_ID: &str = "spiffe://test.example/ns/prod/sa/server";
const ALICE: &str = "spiffe://test.example/ns/prod/sa/alice";
const BOB: &str = "spiffe://test.example/ns/prod/sa/bob";

fn rate_limited(amb: &Ambassador, route: &str) -> Option<f64> {
    amb.metric(
        "ambassador_limits_exceeded_total",
        &[
            ("direction", "inbound"),
            ("route", route),
            ("limit", "rate_limit"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_per_route_and_per_peer() {
    let pki = Pki::new("ratelimit");
    let app = start_app().await;
    let server = pki.secret("server", SERVER_ID);
    let (per_peer, per_route) = (addr(free_port()), addr(free_port()));
    let config = pki.path().join("inbound.yaml");
    std::fs::write(
        &config,
        format!(
            "inbound:\n\
             - name: per-peer\n  listen: {per_peer}\n  app: {app}\n  allow: {{spiffe: ['spiffe://test.example/ns/prod/sa/*']}}\n  \
               rate_limit: {{requests_per_second: 0.01, burst: 3, key: peer}}\n\
             - name: per-route\n  listen: {per_route}\n  app: {app}\n  allow: {{spiffe: ['spiffe://test.example/ns/prod/sa/*']}}\n  \
               rate_limit: {{requests_per_second: 0.01, burst: 2}}\n"
        ),
    )
    .unwrap();
    let mut args = cert_args(&server);
    args.extend(strings(&["--config", config.to_str().unwrap()]));
    let inbound = Ambassador::start(&args);
    let alice = client_tls(Some(&pki.ca.good(ALICE)), pki.ca.pem(), &[]);
    let bob = client_tls(Some(&pki.ca.good(BOB)), pki.ca.pem(), &[]);
    let call = async |listen: SocketAddr, who: &std::sync::Arc<rustls::ClientConfig>| {
        mtls_request(listen, who.clone(), get("/")).await.unwrap()
    };

    // Per peer: each caller has its own burst of 3.
    for _ in 0..3 {
        assert_eq!(call(per_peer, &alice).await.status, 200);
    }
    let refused = call(per_peer, &alice).await;
    assert_eq!(refused.status, 429);
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=100).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    assert!(
        String::from_utf8_lossy(&refused.body).contains("rate limit"),
        "{:?}",
        refused.body
    );
    assert_eq!(rate_limited(&inbound, "per-peer"), Some(1.0));
    for _ in 0..3 {
        assert_eq!(call(per_peer, &bob).await.status, 200);
    }
    assert_eq!(call(per_peer, &bob).await.status, 429);
    assert_eq!(call(per_peer, &alice).await.status, 429);
    assert_eq!(rate_limited(&inbound, "per-peer"), Some(3.0));

    // Per route: one bucket of 2 for everybody.
    assert_eq!(rate_limited(&inbound, "per-route"), None);
    assert_eq!(call(per_route, &alice).await.status, 200);
    assert_eq!(call(per_route, &bob).await.status, 200);
    assert_eq!(call(per_route, &bob).await.status, 429);
    assert_eq!(call(per_route, &alice).await.status, 429);
    assert_eq!(rate_limited(&inbound, "per-route"), Some(2.0));

    // Refusals are 4xx in the request counts, not the app's answers.
    let class = |c: &str| {
        inbound.metric(
            "ambassador_requests_total",
            &[
                ("direction", "inbound"),
                ("route", "per-route"),
                ("class", c),
            ],
        )
    };
    assert_eq!(class("4xx"), Some(2.0));
    assert_eq!(class("2xx"), Some(2.0));
}

#[test]
fn a_bad_rate_limit_is_refused_by_name() {
    let pki = Pki::new("ratelimit-config");
    let server = pki.secret("server", SERVER_ID);
    let config = pki.path().join("bad.yaml");
    std::fs::write(
        &config,
        "inbound:\n- name: web\n  listen: 127.0.0.1:1\n  app: 127.0.0.1:2\n  allow: {dns: [a.b]}\n  \
         rate_limit: {requests_per_second: 0}\n",
    )
    .unwrap();
    let mut args = cert_args(&server);
    args.extend(strings(&["--config", config.to_str().unwrap()]));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ambassador"))
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rate_limit.requests_per_second"), "{err}");

    std::fs::write(
        &config,
        "inbound:\n- name: web\n  listen: 127.0.0.1:1\n  app: 127.0.0.1:2\n  allow: {dns: [a.b]}\n  \
         rate_limit: {requests_per_second: 1, key: caller}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ambassador"))
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}
