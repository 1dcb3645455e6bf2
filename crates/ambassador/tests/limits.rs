//! End-to-end tests of the protection limits: every limit that is hit is answered (431, 408,
//! 503) and counted, and the answer reaches the client; HTTP/2 (over mTLS and h2c) included.
//! The real binary, certificates made at test time.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use test_support::wait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How often the limit `name` was hit on the route of the flags (`inbound` or `outbound`,
/// named after its direction); None if never.
fn limit(amb: &Ambassador, direction: &str, name: &str) -> Option<f64> {
    amb.metric(
        "ambassador_limits_exceeded_total",
        &[
            ("direction", direction),
            ("route", direction),
            ("limit", name),
        ],
    )
}

/// A POST whose head is over 8192 bytes, followed by an 8 MiB body.
fn oversized_post(
    uri: &str,
) -> Request<impl http_body::Body<Data = Bytes, Error = std::convert::Infallible>> {
    Request::post(uri)
        .header("host", "test")
        .header("x-big", "a".repeat(20_000))
        .body(generated_body(8 * 1024 * 1024))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_head_with_a_body_following_always_gets_its_431() {
    let pki = Pki::new("test limits CA");
    let app = start_app().await;
    let (inbound, remote, outbound, listen) =
        start_pair(&pki, app, &["--max-header-bytes", "8192"]);
    const ROUNDS: usize = 12;

    // Plain HTTP/1.1 to the outbound listener: the client is still sending its body when the
    // 431 is written; closing with those bytes unread would reset the connection and could
    // take the answer with it.
    for round in 0..ROUNDS {
        let stream = TcpStream::connect(listen).await.unwrap();
        expect_431(stream, &format!("round {round}")).await;
    }
    // A raw client that writes everything before it reads, ignoring write errors.
    for round in 0..ROUNDS {
        let mut s = TcpStream::connect(listen).await.unwrap();
        let mut head = format!(
            "POST /count HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\ncontent-length: 4194304\r\n\r\n",
            "a".repeat(20_000)
        )
        .into_bytes();
        head.extend(std::iter::repeat_n(b'b', 4 * 1024 * 1024));
        let _ = s.write_all(&head).await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 431"),
            "round {round}: {read:?} {text}"
        );
    }
    assert_eq!(
        limit(&outbound, "outbound", "header_size"),
        Some((2 * ROUNDS) as f64)
    );

    // The same over mTLS to the inbound listener.
    let me = pki.ca.good(CLIENT_ID);
    let tls = client_tls(Some(&me), pki.ca.pem(), &[b"http/1.1"]);
    for round in 0..ROUNDS {
        let stream = mtls_connect(remote, tls.clone()).await.unwrap();
        expect_431(stream, &format!("mTLS round {round}")).await;
    }
    assert_eq!(
        limit(&inbound, "inbound", "header_size"),
        Some(ROUNDS as f64)
    );
}

/// Sends an oversized POST with hyper's client on `stream` and requires the 431 to arrive
/// (not a reset while the body is still being written).
async fn expect_431<S>(stream: S, what: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        send.send_request(oversized_post("/count")),
    )
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{what}: no 431 but {e:?}"));
    assert_eq!(
        resp.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{what}"
    );
}

/// Reads what the server sends until it closes (or 5 s pass).
async fn read_all<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_gets_408_and_an_idle_keep_alive_connection_is_closed_quietly() {
    let pki = Pki::new("test limits CA");
    let app = start_app().await;
    let (inbound, remote, outbound, listen) = start_pair(
        &pki,
        app,
        // 2 s, not less: the limit also bounds the TLS handshake, which a loaded machine can
        // take a second to finish, and the mTLS case below needs the handshake done.
        &["--header-read-timeout", "2s", "--idle-timeout", "4s"],
    );

    // Slowloris on the plain listener: 408 with Connection: close, then the close.
    let mut slow = TcpStream::connect(listen).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_all(&mut slow).await;
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer:?}"
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{answer:?}"
    );
    assert!(answer.contains("header_read_timeout"), "{answer:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(
        limit(&outbound, "outbound", "header_read_timeout"),
        Some(1.0)
    );

    // Over mTLS on the inbound listener, the same.
    let me = pki.ca.good(CLIENT_ID);
    let mut tls = mtls_connect(remote, client_tls(Some(&me), pki.ca.pem(), &[b"http/1.1"]))
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-a: b\r\n")
        .await
        .unwrap();
    let answer = read_all(&mut tls).await;
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer:?}"
    );
    assert_eq!(limit(&inbound, "inbound", "header_read_timeout"), Some(1.0));

    // A keep-alive connection between requests is not slow: past the header-read limit it
    // still takes a request; past the idle limit it is closed without a byte.
    let mut keep = TcpStream::connect(listen).await.unwrap();
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        keep.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"hello") {
            let n = tokio::time::timeout(Duration::from_secs(5), keep.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    let idle_started = Instant::now();
    let rest = read_all(&mut keep).await;
    assert_eq!(
        rest, "",
        "an idle keep-alive connection got bytes instead of a quiet close"
    );
    assert!(idle_started.elapsed() < Duration::from_secs(4));
    assert_eq!(
        limit(&outbound, "outbound", "header_read_timeout"),
        Some(1.0)
    );
    assert_eq!(limit(&outbound, "outbound", "idle_timeout"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_streaming_after_its_response_began_is_not_taken_for_a_slow_head() {
    let pki = Pki::new("test limits CA");
    let app = start_app().await;
    let (_inbound, _remote, outbound, listen) =
        start_pair(&pki, app, &["--header-read-timeout", "1s"]);
    // /echo answers at once and streams the body back as it comes: 2.5 s of slow upload.
    let stream = TcpStream::connect(listen).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let chunks = futures_util::stream::unfold(0u32, |i| async move {
        if i == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        Some((
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(
                b"0123456789",
            ))),
            i + 1,
        ))
    });
    let req = Request::post("/echo")
        .header("host", "test")
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let reply = collect(send.send_request(req).await.unwrap())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), 100);
    assert_eq!(
        limit(&outbound, "outbound", "header_read_timeout"),
        None,
        "counted as a slow head"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_a_peer_is_answered_503_over_mtls() {
    let pki = Pki::new("test limits CA");
    let app = start_app().await;
    let server = pki.secret("server", SERVER_ID);
    let remote = addr(free_port());
    let mut args = cert_args(&server);
    args.extend(strings(&[
        "--inbound-listen",
        &remote.to_string(),
        "--inbound-app",
        &app.to_string(),
        "--allow-spiffe",
        "spiffe://test.example/ns/*/sa/client",
        "--max-connections",
        "2",
    ]));
    let inbound = Ambassador::start(&args);
    let me = pki.ca.good(CLIENT_ID);
    let h1 = client_tls(Some(&me), pki.ca.pem(), &[b"http/1.1"]);

    // Two connections held open, each serving.
    let mut held = Vec::new();
    for _ in 0..2 {
        let tls = mtls_connect(remote, h1.clone()).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let reply = collect(send.send_request(get("/")).await.unwrap())
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        held.push(send);
    }

    // The third: a real answer over mTLS.
    let reply = mtls_request(remote, h1.clone(), get("/")).await.unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers["connection"], "close");
    let body = String::from_utf8_lossy(&reply.body);
    assert!(body.contains("max_connections 2"), "{body}");
    assert_eq!(limit(&inbound, "inbound", "max_connections"), Some(1.0));

    // Over HTTP/2 too.
    let tls = mtls_connect(remote, client_tls(Some(&me), pki.ca.pem(), &[b"h2"]))
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let h2_connection = tokio::spawn(conn);
    let req = Request::get("https://peer.test/")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = collect(send.send_request(req).await.unwrap())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(limit(&inbound, "inbound", "max_connections"), Some(2.0));
    // It leaves the overflow once the connection is over.
    drop(send);
    let _ = tokio::time::timeout(Duration::from_secs(10), h2_connection)
        .await
        .expect("the refused HTTP/2 connection ended");

    // Past the overflow budget (16 handshakes; these never start theirs), connections are
    // closed unanswered, and still counted.
    let mut stuck = Vec::new();
    for _ in 0..16 {
        stuck.push(TcpStream::connect(remote).await.unwrap());
    }
    wait::until_async(Duration::from_secs(10), "the 16 accepted", async || {
        limit(&inbound, "inbound", "max_connections") == Some(18.0)
    })
    .await;
    let refused = mtls_request(remote, h1.clone(), get("/")).await;
    assert!(
        refused.is_err(),
        "past the overflow: {:?}",
        refused.map(|r| r.status)
    );
    assert_eq!(limit(&inbound, "inbound", "max_connections"), Some(19.0));

    // The held connections were never disturbed.
    for send in &mut held {
        send.ready().await.unwrap();
        let reply = collect(send.send_request(get("/")).await.unwrap())
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    }
}

/// An HTTP/2 request with a header of `size` bytes.
fn h2_get(uri: &str, size: usize) -> Request<Full<Bytes>> {
    Request::get(uri)
        .header("x-big", "a".repeat(size))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_http2_head_is_answered_431_and_counted() {
    let pki = Pki::new("test limits CA");
    let app = start_app().await;
    let (inbound, remote, _outbound, _listen) =
        start_pair(&pki, app, &["--max-header-bytes", "8192"]);
    let me = pki.ca.good(CLIENT_ID);
    let tls = mtls_connect(remote, client_tls(Some(&me), pki.ca.pem(), &[b"h2"]))
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let reply = collect(
        send.send_request(h2_get("https://peer.test/", 12_000))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(String::from_utf8_lossy(&reply.body).contains("max_header_bytes (8192)"));
    assert_eq!(limit(&inbound, "inbound", "header_size"), Some(1.0));
    // Under the limit, on the same connection: served.
    let reply = collect(
        send.send_request(h2_get("https://peer.test/", 6_000))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(limit(&inbound, "inbound", "header_size"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbound_listener_takes_h2c_with_prior_knowledge() {
    let pki = Pki::new("test limits CA");
    let app = start_app().await;
    let (_inbound, _remote, outbound, listen) =
        start_pair(&pki, app, &["--max-header-bytes", "8192"]);

    // An app speaking HTTP/2 cleartext from its first byte (as gRPC clients do).
    let stream = TcpStream::connect(listen).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let reply = collect(send.send_request(h2_get("http://test/", 10)).await.unwrap())
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "hello");
    // Many streams on the one connection, bodies both ways.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::post("http://test/echo")
                .body(Full::new(Bytes::from(format!("body {i}"))))
                .unwrap();
            let reply = collect(send.send_request(req).await.unwrap())
                .await
                .unwrap();
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.body, format!("body {i}"));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Its oversized heads are answered and counted as HTTP/1's are.
    let reply = collect(
        send.send_request(h2_get("http://test/", 12_000))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(limit(&outbound, "outbound", "header_size"), Some(1.0));
    // HTTP/1.1 on the same listener still works.
    let reply = plain_request(listen, get("/")).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        outbound.metric(
            "ambassador_connections_total",
            &[("direction", "outbound"), ("route", "outbound")]
        ),
        Some(2.0)
    );
}
