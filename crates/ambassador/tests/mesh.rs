//! End-to-end tests: the real ambassador binary, certificates made at test time, a real app on
//! 127.0.0.1, and clients speaking mTLS, HTTP/1.1, HTTP/2 and WebSocket.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use test_support::wait::{self, Wait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SERVER_ID: &str = "spiffe://test.example/ns/prod/sa/server";
const CLIENT_ID: &str = "spiffe://test.example/ns/prod/sa/client";

/// An inbound ambassador in front of `app`, allowing the `client` service account.
fn start_inbound(pki: &Pki, app: SocketAddr, extra: &[&str]) -> (Ambassador, SocketAddr) {
    let secret = pki.secret(&format!("server-{}", free_port()), SERVER_ID);
    let listen = addr(free_port());
    let mut args = cert_args(&secret);
    args.extend(strings(&[
        "--inbound-listen",
        &listen.to_string(),
        "--inbound-app",
        &app.to_string(),
        "--allow-spiffe",
        "spiffe://test.example/ns/*/sa/client",
    ]));
    args.extend(strings(extra));
    (Ambassador::start(&args), listen)
}

/// An outbound ambassador whose listener leads to `remote`, expecting `identity`.
fn start_outbound(
    secret: &std::path::Path,
    remote: SocketAddr,
    identity: &str,
    extra: &[&str],
) -> (Ambassador, SocketAddr) {
    let listen = addr(free_port());
    let mut args = cert_args(secret);
    args.extend(strings(&[
        "--outbound-listen",
        &listen.to_string(),
        "--outbound-endpoints",
        &remote.to_string(),
        "--outbound-identity",
        identity,
    ]));
    args.extend(strings(extra));
    (Ambassador::start(&args), listen)
}

/// A fresh app, an inbound ambassador in front of it (`inbound_extra`) and an outbound one (the
/// `client` service account, `outbound_extra`) leading to it and expecting `SERVER_ID`:
/// (inbound, its listener, outbound, its listener).
async fn start_mesh(
    pki: &Pki,
    inbound_extra: &[&str],
    outbound_extra: &[&str],
) -> (Ambassador, SocketAddr, Ambassador, SocketAddr) {
    let app = start_app().await;
    let (inbound, remote) = start_inbound(pki, app, inbound_extra);
    let client = pki.secret("client", CLIENT_ID);
    let (outbound, listen) = start_outbound(&client, remote, SERVER_ID, outbound_extra);
    (inbound, remote, outbound, listen)
}

/// Inbound handshakes refused for `reason` (route `inbound`, from the flags).
fn refused(amb: &Ambassador, reason: &str) -> Option<f64> {
    amb.metric(
        "ambassador_tls_failures_total",
        &[
            ("direction", "inbound"),
            ("route", "inbound"),
            ("reason", reason),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_matrix_counts_each_reason_and_serves_the_allowed_peer_with_xfcc() {
    let pki = Pki::new("test mesh CA");
    let app = start_app().await;
    let (inbound, listen) = start_inbound(&pki, app, &[]);
    let ca = &pki.ca;
    let other_ca = test_support::certs::Ca::new("someone else's CA");
    let alpn: &[&[u8]] = &[b"http/1.1"];

    let cases: Vec<(&str, Arc<rustls::ClientConfig>)> = vec![
        ("no_certificate", client_tls(None, ca.pem(), alpn)),
        (
            "unknown_ca",
            client_tls(Some(&other_ca.good(CLIENT_ID)), ca.pem(), alpn),
        ),
        (
            "expired",
            client_tls(Some(&ca.peer(CLIENT_ID, "c.test", -30, -1)), ca.pem(), alpn),
        ),
        (
            "not_yet_valid",
            client_tls(Some(&ca.peer(CLIENT_ID, "c.test", 2, 30)), ca.pem(), alpn),
        ),
        (
            "identity_not_allowed",
            client_tls(
                Some(&ca.good("spiffe://test.example/ns/prod/sa/intruder")),
                ca.pem(),
                alpn,
            ),
        ),
    ];
    for (reason, config) in cases {
        let result = mtls_request(listen, config, get("/")).await;
        assert!(result.is_err(), "{reason}: the peer was served");
        // The server counts after its side of the handshake ends; allow it a moment.
        let counted = Wait::new(format_args!("{reason} counted"))
            .timeout(Duration::from_secs(5))
            .elapsed_async(async || refused(&inbound, reason) >= Some(1.0))
            .await;
        assert!(counted.is_some(), "{reason} never counted");
        assert_eq!(
            refused(&inbound, reason),
            Some(1.0),
            "{reason} not counted once:\n{}",
            inbound.metrics()
        );
    }
    // Not TLS at all: a handshake error.
    let mut plain = TcpStream::connect(listen).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut sink)).await;
    wait::until_async(
        Duration::from_secs(5),
        "handshake_error counted",
        async || refused(&inbound, "handshake_error") >= Some(1.0),
    )
    .await;
    assert_eq!(refused(&inbound, "handshake_error"), Some(1.0));
    let log = inbound.log_text();
    for reason in [
        "no_certificate",
        "unknown_ca",
        "expired",
        "not_yet_valid",
        "identity_not_allowed",
    ] {
        assert!(log.contains(reason), "log lacks {reason}:\n{log}");
    }

    // The allowed peer, over TLS 1.2 and 1.3, with a forged XFCC that must not reach the app.
    let me = ca.good(CLIENT_ID);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut config = rustls::ClientConfig::builder_with_provider(sidecar_kit::tls::provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots(ca.pem()))
            .with_client_auth_cert(certs(&me.cert_pem), key(&me.key_pem))
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let req = Request::get("/")
            .header("host", "test")
            .header("x-forwarded-client-cert", "By=forged;URI=spiffe://evil")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let reply = mtls_request(listen, Arc::new(config), req).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "hello");
        let xfcc = reply.headers["x-seen-xfcc"].to_str().unwrap();
        assert!(!xfcc.contains("forged") && !xfcc.contains(" | "), "{xfcc}");
        assert!(xfcc.starts_with(&format!("By={SERVER_ID};Hash=")), "{xfcc}");
        assert!(xfcc.contains(&format!(";URI={CLIENT_ID}")), "{xfcc}");
        assert!(xfcc.contains(";DNS=peer.test"), "{xfcc}");
    }
    assert_eq!(
        inbound.metric(
            "ambassador_requests_total",
            &[
                ("direction", "inbound"),
                ("route", "inbound"),
                ("class", "2xx")
            ]
        ),
        Some(2.0)
    );
}

fn roots(pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(pem) {
        roots.add(c).unwrap();
    }
    roots
}
fn certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}
fn key(pem: &str) -> rustls::pki_types::PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_refuses_a_server_with_the_wrong_identity_with_502() {
    let pki = Pki::new("test mesh CA");
    let app = start_app().await;
    let (_inbound, remote) = start_inbound(&pki, app, &[]);
    let client = pki.secret("client", CLIENT_ID);
    let (outbound, listen) = start_outbound(
        &client,
        remote,
        "spiffe://test.example/ns/prod/sa/billing",
        &[],
    );
    let reply = plain_request(listen, get("/")).await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    assert!(
        body.contains(
            "server identity mismatch: expected spiffe://test.example/ns/prod/sa/billing"
        ) && body.contains(SERVER_ID),
        "{body}"
    );
    assert_eq!(
        outbound.metric(
            "ambassador_tls_failures_total",
            &[
                ("direction", "outbound"),
                ("route", "outbound"),
                ("reason", "identity_mismatch")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        outbound.metric(
            "ambassador_requests_total",
            &[
                ("direction", "outbound"),
                ("route", "outbound"),
                ("class", "5xx")
            ]
        ),
        Some(1.0)
    );

    // The right identity, and the full hop works: app -> outbound -> mTLS -> inbound -> app.
    let (_good, good_listen) = start_outbound(&client, remote, SERVER_ID, &[]);
    let reply = plain_request(good_listen, get("/")).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let xfcc = reply.headers["x-seen-xfcc"].to_str().unwrap();
    assert!(xfcc.contains(&format!("URI={CLIENT_ID}")), "{xfcc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_ten_times_under_load_without_a_failed_request() {
    let pki = Pki::new("test mesh CA");
    let app = start_app().await;
    let mut server_secret = pki.volume("server", SERVER_ID);
    let mut client_secret = pki.volume("client", CLIENT_ID);
    let (server_dir, client_dir) = (
        server_secret.root().to_path_buf(),
        client_secret.root().to_path_buf(),
    );
    let listen_in = addr(free_port());
    let mut args = cert_args(&server_dir);
    args.extend(strings(&[
        "--inbound-listen",
        &listen_in.to_string(),
        "--inbound-app",
        &app.to_string(),
        "--allow-spiffe",
        CLIENT_ID,
    ]));
    let inbound = Ambassador::start(&args);
    let (outbound, listen_out) = start_outbound(&client_dir, listen_in, SERVER_ID, &[]);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..8 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            // Half the workers keep a connection, half open a new one per request.
            let keep = worker % 2 == 0;
            let mut sender = None;
            while !stop.load(Ordering::Relaxed) {
                if sender.is_none() || !keep {
                    let stream = TcpStream::connect(listen_out).await.unwrap();
                    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .unwrap();
                    tokio::spawn(conn);
                    sender = Some(send);
                }
                let send = sender.as_mut().unwrap();
                match send.send_request(get("/")).await {
                    Ok(resp) if resp.status() == StatusCode::OK => {
                        collect(resp).await.unwrap();
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(resp) => {
                        let reply = collect(resp).await.unwrap();
                        eprintln!("failed: {} {:?}", reply.status, reply.body);
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                        sender = None;
                    }
                }
            }
        }));
    }
    // A swap every 400 ms under load: the pace of the rotation, not a wait.
    for _ in 1..=10 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        server_secret.update_leaf(&pki.ca.good(SERVER_ID), pki.ca.pem());
        client_secret.update_leaf(&pki.ca.good(CLIENT_ID), pki.ca.pem());
    }
    let reloads = |a: &Ambassador| {
        a.metric("sidecar_tls_reloads_total", &[("result", "ok")])
            .unwrap_or(0.0)
    };
    // The last swap seen by both...
    let _ = Wait::new("every swap reloaded")
        .timeout(Duration::from_secs(10))
        .every(Duration::from_millis(100))
        .elapsed_async(async || reloads(&inbound) >= 10.0 && reloads(&outbound) >= 10.0)
        .await;
    // ...and served under load for a while longer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    // A burst of swaps may be read in one reload, or a reload may see the next swap early and
    // see it again later; what matters is that every swap got in and the newest one is in use.
    assert!(reloads(&inbound) >= 10.0, "{}", inbound.log_text());
    assert!(reloads(&outbound) >= 10.0, "{}", outbound.log_text());
    for a in [&inbound, &outbound] {
        let metrics = a.metrics();
        let refused: Vec<_> = metrics
            .series("sidecar_tls_reloads_total")
            .filter(|s| s.label("result") != Some("ok") && s.value != 0.0)
            .collect();
        assert!(
            refused.is_empty(),
            "a swap was refused: {refused:?}\n{}",
            a.log_text()
        );
    }
    let ok = ok.load(Ordering::Relaxed);
    assert!(ok > 100, "too little load to prove anything: {ok}");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests out of {ok} ok"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_outbound_and_inbound() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let pki = Pki::new("test mesh CA");
    let (_inbound, _remote, _outbound, listen) = start_mesh(&pki, &[], &[]).await;
    let stream = TcpStream::connect(listen).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(format!("ws://{listen}/ws"), stream)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..20 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), text);
    }
    let big = vec![7u8; 300_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let echo = ws.next().await.unwrap().unwrap();
    assert_eq!(echo.into_data().as_ref(), big.as_slice());
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_multiplexes_many_requests_on_few_connections() {
    let pki = Pki::new("test mesh CA");
    let app = start_app().await;
    let (inbound, remote) = start_inbound(&pki, app, &[]);

    // A peer speaking HTTP/2 directly: 200 concurrent streams on one mTLS connection.
    let me = pki.ca.good(CLIENT_ID);
    let tls = mtls_connect(remote, client_tls(Some(&me), pki.ca.pem(), &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get("https://peer.test/")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            collect(resp).await.unwrap()
        }));
    }
    for t in tasks {
        let reply = t.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "hello");
    }
    let inbound_connections = || {
        inbound
            .metric(
                "ambassador_connections_total",
                &[("direction", "inbound"), ("route", "inbound")],
            )
            .expect("inbound connections counted")
    };
    assert_eq!(inbound_connections(), 1.0);

    // Through an outbound ambassador: 64 app connections in parallel share few h2 connections.
    let client = pki.secret("client", CLIENT_ID);
    let (_outbound, listen) = start_outbound(&client, remote, SERVER_ID, &[]);
    let warm = plain_request(listen, get("/")).await.unwrap();
    assert_eq!(warm.status, StatusCode::OK);
    let mut tasks = Vec::new();
    for _ in 0..64 {
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let reply = plain_request(listen, get("/")).await.unwrap();
                assert_eq!(reply.status, StatusCode::OK);
                assert_eq!(reply.headers["x-seen-version"], "HTTP/1.1");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let conns = inbound_connections() - 1.0;
    assert!(
        conns <= 4.0,
        "321 requests through the outbound ambassador used {conns} mTLS connections"
    );
}

/// On-CPU time so far (ns, from schedstat) of each thread of `pid`, by thread name.
fn thread_cpu_ns(pid: u32) -> Vec<(String, u64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let schedstat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        let ns = schedstat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok());
        threads.push((name.trim().to_owned(), ns.unwrap_or(0)));
    }
    threads
}

fn cpu_ns_of(threads: &[(String, u64)], name: &str) -> u64 {
    threads
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, ns)| ns)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_over_the_worker_threads() {
    let pki = Pki::new("test mesh CA");
    let threads = ["--worker-threads", "2"];
    let (inbound, _remote, outbound, listen) = start_mesh(&pki, &threads, &threads).await;
    let before = [inbound.pid(), outbound.pid()].map(thread_cpu_ns);

    // Eight keep-alive app connections at once, 200 requests each.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(listen).await.unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            for _ in 0..200 {
                let reply = collect(send.send_request(get("/")).await.unwrap())
                    .await
                    .unwrap();
                assert_eq!(reply.status, StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    // Both processes worked on both threads: the main one (named after the binary) and the
    // second worker, which only ever runs connections handed to it.
    for (amb, before) in [&inbound, &outbound].into_iter().zip(before) {
        let after = thread_cpu_ns(amb.pid());
        for name in ["ambassador", "ambassador-w1"] {
            let ran = cpu_ns_of(&after, name).saturating_sub(cpu_ns_of(&before, name));
            assert!(
                ran > 2_000_000,
                "thread {name} of pid {} ran {ran} ns for 1,600 requests; threads: {after:?}",
                amb.pid()
            );
        }
    }
    assert!(
        inbound.log_text().contains("worker_threads=2"),
        "{}",
        inbound.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_body_streams_through_both_ways_with_bounded_memory() {
    let pki = Pki::new("test mesh CA");
    let (inbound, _remote, outbound, listen) = start_mesh(&pki, &[], &[]).await;
    let before = (inbound.peak_rss_kib(), outbound.peak_rss_kib());
    const TOTAL: u64 = 100 * 1024 * 1024;

    // Upload: the app counts the bytes.
    let stream = TcpStream::connect(listen).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/count")
        .header("host", "test")
        .body(generated_body(TOTAL))
        .unwrap();
    let reply = collect(send.send_request(req).await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{:?}\n---- inbound\n{}\n---- outbound\n{}",
        reply.body,
        inbound.log_text(),
        outbound.log_text()
    );
    assert_eq!(reply.body, TOTAL.to_string());

    // Echo: the body goes up and comes back down at the same time; read it as it arrives.
    send.ready().await.unwrap();
    let req = Request::post("/echo")
        .header("host", "test")
        .body(generated_body(TOTAL))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut n = 0u64;
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            n += data.len() as u64;
        }
    }
    assert_eq!(n, TOTAL);
    let after = (inbound.peak_rss_kib(), outbound.peak_rss_kib());
    eprintln!("peak RSS KiB before {before:?} after {after:?}");
    // 200 MB went through each; the peak grew by a few buffers at most.
    assert!(
        after.0 < before.0 + 16 * 1024,
        "inbound grew from {} to {} KiB",
        before.0,
        after.0
    );
    assert!(
        after.1 < before.1 + 16 * 1024,
        "outbound grew from {} to {} KiB",
        before.1,
        after.1
    );
}

/// A proxy paused past its header read timeout (a loaded machine, a stopped VM) judges a
/// client by what the client already sent: an oversized head is answered 431, never closed in
/// silence by a timer that ran out while the proxy could not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_while_the_proxy_was_paused_is_answered() {
    let pki = Pki::new("test mesh CA");
    let (_inbound, _remote, outbound, listen) = start_mesh(
        &pki,
        &[],
        &["--header-read-timeout", "1s", "--max-header-bytes", "8192"],
    )
    .await;
    let accepted = || {
        outbound
            .metric(
                "ambassador_connections_total",
                &[("direction", "outbound"), ("route", "outbound")],
            )
            .unwrap_or(0.0)
    };
    let before = accepted();
    // Several connections: which of two ready events a woken task looks at first is up to
    // the runtime, and each connection is one more draw.
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(TcpStream::connect(listen).await.unwrap());
    }
    Wait::new("the outbound to accept the connections")
        .timeout(Duration::from_secs(20))
        .until(|| accepted() >= before + 4.0);
    let pid = outbound.pid().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {pid}");
    };
    signal("-STOP");
    let filler = "a".repeat(20_000);
    for c in &mut conns {
        c.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {filler}\r\n\r\n").as_bytes())
            .await
            .unwrap();
    }
    // Paused past the header read timeout: the scenario, not a wait for something.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal("-CONT");
    for (i, c) in conns.iter_mut().enumerate() {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 431"),
            "connection {i}: {read:?} {answer:?}\n{}",
            outbound.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_oversized_heads_are_refused_and_counted() {
    let pki = Pki::new("test mesh CA");
    let (inbound, remote, outbound, listen) = start_mesh(
        &pki,
        &["--header-read-timeout", "1s"],
        &["--header-read-timeout", "1s", "--max-header-bytes", "8192"],
    )
    .await;

    // Slowloris on the plain outbound listener: a head that never ends is answered 408 and
    // cut after ~1 s.
    let mut slow = TcpStream::connect(listen).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    let mut answer = Vec::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if slow.write_all(b"X-a: b\r\n").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(1), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let took = started.elapsed();
    assert!(closed, "slowloris connection still open after {took:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(took < Duration::from_secs(3), "cut only after {took:?}");
    assert_eq!(
        outbound.metric(
            "ambassador_limits_exceeded_total",
            &[
                ("direction", "outbound"),
                ("route", "outbound"),
                ("limit", "header_read_timeout")
            ]
        ),
        Some(1.0)
    );
    // A keep-alive connection idle between requests is not mistaken for slowloris.
    let stream = TcpStream::connect(listen).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        send.send_request(get("/")).await.unwrap().status(),
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1600)).await;
    // ready() fails if the ambassador closed the idle connection, which is what is tested here.
    send.ready().await.unwrap();
    assert_eq!(
        send.send_request(get("/")).await.unwrap().status(),
        StatusCode::OK
    );

    // Oversized head: 431, counted.
    let mut big = TcpStream::connect(listen).await.unwrap();
    let filler = "a".repeat(20_000);
    big.write_all(format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {filler}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), big.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(
        outbound.metric(
            "ambassador_limits_exceeded_total",
            &[
                ("direction", "outbound"),
                ("route", "outbound"),
                ("limit", "header_size")
            ]
        ),
        Some(1.0)
    );

    // The same slowloris over mTLS on the inbound side.
    let me = pki.ca.good(CLIENT_ID);
    let mut tls = mtls_connect(remote, client_tls(Some(&me), pki.ca.pem(), &[b"http/1.1"]))
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(4), tls.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "inbound slowloris not cut");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(
        inbound.metric(
            "ambassador_limits_exceeded_total",
            &[
                ("direction", "inbound"),
                ("route", "inbound"),
                ("limit", "header_read_timeout")
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_requests_in_flight_finish_on_both_threads_and_exits_zero() {
    let pki = Pki::new("test mesh CA");
    let app = App::start().await;
    let (mut inbound, remote) = start_inbound(&pki, app.addr, &["--shutdown-grace", "10s"]);
    let me = pki.ca.good(CLIENT_ID);
    let config = client_tls(Some(&me), pki.ca.pem(), &[b"http/1.1"]);
    // Two connections open at once: the second goes to the other worker thread (the one with
    // fewer open connections), so the drain is checked on both.
    let mut in_flight = Vec::new();
    for _ in 0..2 {
        let tls = mtls_connect(remote, config.clone()).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        let conn_task = tokio::spawn(conn);
        let slow = tokio::spawn(async move {
            let resp = send.send_request(get("/slow")).await.unwrap();
            collect(resp).await.unwrap()
        });
        in_flight.push((slow, conn_task));
    }
    // Both requests are at the app when the signal comes.
    wait::until_async(
        Duration::from_secs(10),
        "both /slow requests at the app",
        async || app.slow_in_flight() == 2,
    )
    .await;
    inbound.signal_term();
    for (slow, conn_task) in in_flight {
        let reply = slow.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "slow done");
        assert_eq!(reply.headers["connection"], "close");
        // The connection is closed after that response.
        tokio::time::timeout(Duration::from_secs(5), conn_task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = inbound.process.wait_exit(Duration::from_secs(10));
        (status, inbound)
    })
    .await
    .unwrap()
    .0;
    assert_eq!(status.code(), Some(0));
    // New connections are refused.
    assert!(mtls_request(remote, config, get("/")).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_tcp_mode_tunnels_bytes_and_passes_half_close() {
    let pki = Pki::new("test mesh CA");
    // A TCP echo app that answers after the client half-closes: it echoes everything it read.
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                s.write_all(b"got:").await.unwrap();
                s.write_all(&all).await.unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    let (_inbound, remote) = start_inbound(&pki, echo_addr, &["--inbound-mode", "tcp"]);
    let client = pki.secret("client", CLIENT_ID);
    let (_outbound, listen) =
        start_outbound(&client, remote, SERVER_ID, &["--outbound-mode", "tcp"]);
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(b"raw bytes, not HTTP").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"got:raw bytes, not HTTP");
}

#[test]
fn bad_configuration_exits_64_naming_the_fault() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ambassador"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[
        "--inbound-listen",
        "127.0.0.1:1",
        "--inbound-app",
        "127.0.0.1:2",
    ]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("--cert"), "{err}");

    let yaml = dir.path().join("bad.yaml");
    std::fs::write(
        &yaml,
        "tls: {cert: a, key: b, ca: c}\ninbound:\n  - name: web\n    listen: 127.0.0.1:1\n    app: 127.0.0.1:2\n    allow: {spiffe: ['spiffe://td/**/x']}\n",
    )
    .unwrap();
    let (code, err) = run(&["--config", yaml.to_str().unwrap()]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("inbound[0] (web)") && err.contains("spiffe://td/**/x"),
        "{err}"
    );

    std::fs::write(&yaml, "tls: {cert: a, key: b, ca: c}\ninbund: []\n").unwrap();
    let (code, err) = run(&["--config", yaml.to_str().unwrap()]);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("inbund"), "{err}");

    let (code, out) = run(&["--help"]);
    assert_eq!(code, Some(0));
    let _ = out;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_from_a_peer_becomes_a_tunnel_to_the_app_with_half_close() {
    let pki = Pki::new("test mesh CA");
    let app = start_app().await;
    let (_inbound, remote) = start_inbound(&pki, app, &[]);
    let me = pki.ca.good(CLIENT_ID);
    let tls = mtls_connect(remote, client_tls(Some(&me), pki.ca.pem(), &[b"http/1.1"]))
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = Request::connect("db.internal:5432")
        .header("host", "db.internal:5432")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut tunnel = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    tunnel.write_all(b"select 1;").await.unwrap();
    // Half-close: the app only answers once it has seen our EOF.
    tunnel.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&back),
        "tunnel to db.internal:5432: select 1;"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_config_routes_by_host_on_the_host_router() {
    let pki = Pki::new("test mesh CA");
    let app = start_app().await;
    let (_inbound, remote) = start_inbound(&pki, app, &[]);
    let client = pki.secret("client", CLIENT_ID);
    let router = addr(free_port());
    let yaml = pki.path().join("routes.yaml");
    std::fs::write(
        &yaml,
        format!(
            "tls: {{cert: {c}/tls.crt, key: {c}/tls.key, ca: {c}/ca.crt}}\n\
             outbound:\n\
             \x20 - name: billing\n    hosts: [billing]\n    endpoints: ['{remote}']\n    identity: {SERVER_ID}\n\
             \x20 - name: wrong\n    hosts: [wrong.svc]\n    endpoints: ['{remote}']\n    identity: spiffe://test.example/ns/prod/sa/nobody\n\
             host_router: {{listen: '{router}'}}\n",
            c = client.display()
        ),
    )
    .unwrap();
    let outbound = Ambassador::start(&["--config".to_owned(), yaml.display().to_string()]);
    let with_host = |host: &str| {
        Request::get("/")
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let reply = plain_request(router, with_host("billing:9000"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "hello");
    let reply = plain_request(router, with_host("wrong.svc")).await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    let reply = plain_request(router, with_host("unknown")).await.unwrap();
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&reply.body).contains("no outbound route for host `unknown`"));
    assert_eq!(
        outbound.metric(
            "ambassador_requests_total",
            &[
                ("direction", "outbound"),
                ("route", "billing"),
                ("class", "2xx")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        outbound.metric(
            "ambassador_requests_total",
            &[
                ("direction", "outbound"),
                ("route", "wrong"),
                ("class", "5xx")
            ]
        ),
        Some(1.0)
    );
}
