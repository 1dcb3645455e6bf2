//! Attacks made of HTTP/1.1 requests: bodies the caller breaks (they must not eject a healthy
//! remote), smuggling (ambiguous framing and headers: refused, and the app never receives the
//! ambiguous request), h2c upgrades, too many requests for the app. Raw bytes over TCP to the
//! outbound listener and over mTLS to the inbound one; the real binaries, a recording app.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use test_support::wait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the app received: method, path, and the body as read (or the error reading it).
#[derive(Debug, Clone)]
struct Seen {
    #[allow(dead_code)]
    method: String,
    path: String,
    hosts: usize,
    upgrade: Option<String>,
    body: Result<Vec<u8>, String>,
}

/// An app that records every request it gets; `/slow` answers after 2 s.
struct RecordingApp {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    slow: Arc<std::sync::atomic::AtomicUsize>,
}

impl RecordingApp {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let slow = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, sl) = (seen.clone(), slow.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, sl) = (s.clone(), sl.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (s, sl) = (s.clone(), sl.clone());
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_owned();
                            let hosts = req.headers().get_all("host").iter().count();
                            let upgrade = req
                                .headers()
                                .get("upgrade")
                                .map(|v| v.to_str().unwrap_or("?").to_owned());
                            if path == "/slow" {
                                sl.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_secs(2)).await;
                                sl.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .map_err(|e| e.to_string());
                            s.lock().unwrap().push(Seen {
                                method,
                                path,
                                hosts,
                                upgrade,
                                body,
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"hello",
                            ))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen, slow }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

struct Mesh {
    pki: Pki,
    inbound: Ambassador,
    remote: SocketAddr,
    outbound: Ambassador,
    listen: SocketAddr,
}

fn start_pair(pki: Pki, app: SocketAddr, extra: &[&str]) -> Mesh {
    let (inbound, remote, outbound, listen) = common::start_pair(&pki, app, extra);
    Mesh {
        pki,
        inbound,
        remote,
        outbound,
        listen,
    }
}

/// Sends `bytes` and reads everything until the server closes (or 15 s pass).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, bytes: &[u8]) -> String {
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        // Once an answer came, a keep-alive connection that goes quiet is done too.
        let until = if out.is_empty() {
            deadline
        } else {
            deadline.min(tokio::time::Instant::now() + Duration::from_secs(2))
        };
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn raw(to: SocketAddr, bytes: &[u8]) -> String {
    exchange(TcpStream::connect(to).await.unwrap(), bytes).await
}

fn status_of(answer: &str) -> Option<u16> {
    answer.get(9..12).and_then(|s| s.parse().ok())
}

fn ejected(amb: &Ambassador) -> f64 {
    amb.metrics()
        .series("ambassador_upstream_ejections_total")
        .map(|s| s.value)
        .sum()
}

/// Defect 2: requests whose body the caller broke (a malformed chunk size, an upload cut
/// short) are the caller's fault: answered 400 (not 502), never retried, and they do not eject
/// the healthy remote: the next plain GET is answered by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_caller_broke_never_eject_a_healthy_remote() {
    let app = RecordingApp::start().await;
    let mesh = start_pair(Pki::new("test attacks CA"), app.addr, &[]);
    for i in 0..12 {
        // A chunk size that is not hex, after a good chunk (so the body is already streaming).
        let answer = raw(
            mesh.listen,
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\nbroken\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&answer), Some(400), "try {i}: {answer:?}");
        // An upload cut short: 10 bytes of 1 MB, then the client goes away.
        let mut s = TcpStream::connect(mesh.listen).await.unwrap();
        s.write_all(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n0123456789",
        )
        .await
        .unwrap();
        drop(s);
        let reply = plain_request(mesh.listen, get("/")).await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "after {} broken requests a GET got {:?}",
            (i + 1) * 2,
            reply.body
        );
    }
    assert_eq!(ejected(&mesh.outbound), 0.0, "the remote was ejected");
    // The inbound side says the same of a peer's broken body: 400, not 502.
    let me = mesh.pki.ca.good(CLIENT_ID);
    let tls = mtls_connect(
        mesh.remote,
        client_tls(Some(&me), mesh.pki.ca.pem(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let answer = exchange(
        tls,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\nbroken\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), Some(400), "{answer:?}");
    let _ = &mesh.inbound;
}

/// The smuggling variants, each followed by a request the attacker hopes the next hop reads as
/// a second one. Refused (or at least never forwarded as two requests), the app never sees the
/// smuggled one, and the path keeps working.
const SMUGGLING: &[(&str, &str)] = &[
    (
        "CL.TE",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "TE.CL",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n",
    ),
    (
        "two Content-Lengths",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 41\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "obs-fold in Transfer-Encoding",
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 41\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "bare LF",
        "POST / HTTP/1.1\nHost: x\nContent-Length: 41\nTransfer-Encoding: chunked\n\n0\n\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "Transfer-Encoding: xchunked",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: 41\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "invalid chunk size",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "chunk size overflow",
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nx\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ),
    (
        "two Host headers",
        "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    ),
    (
        "h2c upgrade",
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    ),
];

/// Requests the app got that it must never get: the smuggled one, two Hosts, an h2c upgrade.
fn ambiguous_seen(app: &RecordingApp) -> Vec<Seen> {
    app.seen()
        .into_iter()
        .filter(|s| {
            s.path == "/smuggled"
                || s.hosts > 1
                || s.upgrade.as_deref().is_some_and(|u| u.contains("h2c"))
                || s.body
                    .as_ref()
                    .is_ok_and(|b| b.windows(4).any(|w| w == b"GET "))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_two_hosts_and_h2c_upgrades_never_reach_the_app() {
    let app = RecordingApp::start().await;
    let mesh = start_pair(Pki::new("test attacks CA"), app.addr, &[]);
    let me = mesh.pki.ca.good(CLIENT_ID);
    let tls = client_tls(Some(&me), mesh.pki.ca.pem(), &[b"http/1.1"]);
    let mut lines = Vec::new();
    for (name, bytes) in SMUGGLING {
        let via_outbound = raw(mesh.listen, bytes.as_bytes()).await;
        let via_inbound = exchange(
            mtls_connect(mesh.remote, tls.clone()).await.unwrap(),
            bytes.as_bytes(),
        )
        .await;
        for (side, answer) in [("outbound", &via_outbound), ("inbound", &via_inbound)] {
            let statuses: Vec<u16> = answer
                .match_indices("HTTP/1.1 ")
                .filter_map(|(i, _)| status_of(&answer[i..]))
                .collect();
            lines.push(format!("{name} via {side}: {statuses:?}"));
            if matches!(*name, "two Host headers" | "h2c upgrade") {
                assert_eq!(statuses, vec![400], "{name} via {side}: {answer:?}");
            } else {
                // Whatever the first answer, there is never a second one from the smuggled
                // request.
                assert!(statuses.len() <= 1, "{name} via {side}: {answer:?}");
            }
        }
        let seen = ambiguous_seen(&app);
        assert!(seen.is_empty(), "{name}: the app received {seen:?}");
    }
    println!("{}", lines.join("\n"));
    assert!(
        mesh.outbound
            .metric(
                "ambassador_protocol_errors_total",
                &[
                    ("direction", "outbound"),
                    ("route", "outbound"),
                    ("kind", "ambiguous_request")
                ],
            )
            .unwrap_or(0.0)
            >= 2.0
    );
    assert!(
        mesh.outbound
            .metric(
                "ambassador_protocol_errors_total",
                &[
                    ("direction", "outbound"),
                    ("route", "outbound"),
                    ("kind", "bad_request")
                ],
            )
            .unwrap_or(0.0)
            >= 1.0,
        "hyper's 400s are counted"
    );
    // Still serving.
    let reply = plain_request(mesh.listen, get("/")).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let _ = &mesh.inbound;
}

/// Defect 6: the inbound keeps at most --max-app-requests requests in flight to the app; more
/// are answered 503 at once (and counted), whatever the number of peers' streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_never_gets_more_than_max_app_requests_at_once() {
    let app = RecordingApp::start().await;
    let mesh = start_pair(
        Pki::new("test attacks CA"),
        app.addr,
        &["--max-app-requests", "4"],
    );
    let me = mesh.pki.ca.good(CLIENT_ID);
    let tls = mtls_connect(
        mesh.remote,
        client_tls(Some(&me), mesh.pki.ca.pem(), &[b"h2"]),
    )
    .await
    .unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let r = send
                .send_request(
                    Request::get("https://peer.test/slow")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
                .unwrap();
            r.status()
        }));
    }
    wait::until(Duration::from_secs(20), "4 requests at the app", || {
        app.slow.load(std::sync::atomic::Ordering::SeqCst) == 4
    });
    let mut refused = 0;
    for _ in 0..20 {
        let mut send = send.clone();
        let r = send
            .send_request(
                Request::get("https://peer.test/slow")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert!(app.slow.load(std::sync::atomic::Ordering::SeqCst) <= 4);
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(r.headers()["x-ambassador-error"], "overloaded");
            refused += 1;
        }
    }
    // The first four may have finished meanwhile on a slow machine; most of these overlapped.
    assert!(refused >= 1, "none of 20 requests over the cap was refused");
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert!(
        mesh.inbound
            .metric(
                "ambassador_limits_exceeded_total",
                &[
                    ("direction", "inbound"),
                    ("route", "inbound"),
                    ("limit", "max_app_requests")
                ],
            )
            .unwrap_or(0.0)
            >= refused as f64
    );
    let _ = &mesh.outbound;
}
