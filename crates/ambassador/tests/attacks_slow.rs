//! HTTP/1.1 abuse of one connection: a request body trickled a byte at a time (slowloris on
//! the body, after a complete head), and pipelining floods (thousands of requests written
//! back to back, read in order or never read). The real binaries; raw bytes on the outbound's
//! plain listener and over mTLS on the inbound's.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::procfs::rss_kib;
use common::*;
use test_support::wait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.1 response read off `s` (after whatever of it is in `buf` already): its status
/// and body. Content-Length and chunked bodies.
async fn read_response<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        fill(s, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse::<usize>().unwrap());
    buf.drain(..head_end);
    let mut body = Vec::new();
    match length {
        Some(n) => {
            while buf.len() < n {
                fill(s, buf).await?;
            }
            body.extend(buf.drain(..n));
        }
        None if head.contains("transfer-encoding: chunked") => loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                fill(s, buf).await?;
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&buf[..line_end])
                    .split(';')
                    .next()
                    .unwrap()
                    .trim(),
                16,
            )
            .map_err(|e| e.to_string())?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                fill(s, buf).await?;
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        },
        None => {}
    }
    Ok((status, body))
}

/// Sends a complete head for a 1,000-byte body, then the body one byte every 2 s. Returns the
/// answer and how long after the head it came, and whether the connection was closed after it.
async fn trickle<S>(mut s: S) -> (u16, Duration, bool)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    s.write_all(b"POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        for _ in 0..1000 {
            if wr.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let mut buf = Vec::new();
    let answer = tokio::time::timeout(Duration::from_secs(120), read_response(&mut rd, &mut buf))
        .await
        .expect("a trickled body was held for two minutes")
        .unwrap();
    let took = started.elapsed();
    let mut rest = [0u8; 64];
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(30), rd.read(&mut rest)).await,
        Ok(Ok(0)) | Ok(Err(_))
    );
    writer.abort();
    (answer.0, took, closed)
}

/// A body trickled one byte every 2 s after a complete head is cut by the minimum body rate
/// (1,024 bytes a second by default, after a grace of --header-read-timeout, here 3 s): the
/// client gets 408 and the connection is closed, the app's connection that carried the
/// request is closed too, and the cut is counted. Both directions: a peer over mTLS, the app
/// on the outbound's plain listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_request_body_is_cut_and_the_app_connection_freed() {
    let pki = Pki::new("test slow CA");
    let app = App::start().await;
    let (inbound, remote, outbound, listen) =
        start_pair(&pki, app.addr, &["--header-read-timeout", "3s"]);
    let me = pki.ca.good(CLIENT_ID);
    let tls = client_tls(Some(&me), pki.ca.pem(), &[b"http/1.1"]);
    let app_conns = || app.counters().open_connections.load(Ordering::SeqCst);
    // The app must not be the one holding the body back: /count reads as fast as it comes.
    assert_eq!(
        plain_request(listen, get("/")).await.unwrap().status,
        http::StatusCode::OK
    );

    for (who, direction) in [("peer over mTLS", "inbound"), ("app, plain", "outbound")] {
        let before = app_conns();
        let (status, took, closed) = if direction == "inbound" {
            trickle(mtls_connect(remote, tls.clone()).await.unwrap()).await
        } else {
            trickle(TcpStream::connect(listen).await.unwrap()).await
        };
        println!(
            "FIGURES slowloris body, {who}: answered {status} after {:.1} s, connection closed: {closed}",
            took.as_secs_f64()
        );
        assert_eq!(status, 408, "{who}: a trickled body is answered 408");
        assert!(closed, "{who}: the connection is closed after the 408");
        let amb = if direction == "inbound" {
            &inbound
        } else {
            &outbound
        };
        assert!(
            limit(amb, direction, "min_body_rate") >= 1.0,
            "{who}: counted"
        );
        // The app's connection that carried the cut request is closed, not kept busy.
        wait::until(
            Duration::from_secs(60),
            "the app's connection for the cut request to close",
            || app_conns() <= before,
        );
    }
    // Still serving, and a normal upload is not cut.
    let reply = plain_request(
        listen,
        http::Request::post("/count")
            .header("host", "x")
            .body(http_body_util::Full::new(bytes::Bytes::from(vec![
                b'u';
                100_000
            ])))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(reply.body, "100000");
}

/// Writes `requests` pipelined `POST /count`s (the k-th with a body of k % 200 bytes) while a
/// reader checks each answer comes back in order. (answered in order, total)
async fn pipeline_in_order<S>(s: S, requests: usize) -> (usize, usize)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        let mut all = Vec::new();
        for k in 0..requests {
            let n = k % 200;
            all.extend_from_slice(
                format!("POST /count HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n")
                    .as_bytes(),
            );
            all.extend(std::iter::repeat_n(b'p', n));
        }
        for piece in all.chunks(64 * 1024) {
            if wr.write_all(piece).await.is_err() {
                break;
            }
        }
        wr
    });
    let mut buf = Vec::new();
    let mut in_order = 0;
    for k in 0..requests {
        match tokio::time::timeout(Duration::from_secs(60), read_response(&mut rd, &mut buf)).await
        {
            Ok(Ok((200, body))) if body == (k % 200).to_string().as_bytes() => in_order += 1,
            Ok(Ok((status, body))) => {
                panic!(
                    "answer {k}: {status} {:?}, out of order or refused",
                    String::from_utf8_lossy(&body)
                )
            }
            Ok(Err(_)) | Err(_) => break, // cut off: allowed, but only at the end
        }
    }
    drop(writer.await);
    (in_order, requests)
}

/// Pipelining floods: 5,000 requests written back to back on one connection are answered in
/// order, each with its own answer (through the outbound, then over mTLS to the inbound);
/// 2,000,000 requests (54 MB) written by a client that never reads are not all taken: the
/// ambassador stops reading once its answers are not read, its memory stays flat, and with
/// nothing moving for the idle timeout (8 s here) it closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_an_unread_flood_stays_bounded() {
    let pki = Pki::new("test slow CA");
    let app = start_app().await;
    let (inbound, remote, outbound, listen) = start_pair(&pki, app, &["--idle-timeout", "8s"]);
    let me = pki.ca.good(CLIENT_ID);
    let tls = client_tls(Some(&me), pki.ca.pem(), &[b"http/1.1"]);

    let (ok, total) = pipeline_in_order(TcpStream::connect(listen).await.unwrap(), 5000).await;
    println!("FIGURES pipelining through the outbound: {ok}/{total} answered in order");
    assert_eq!(ok, total, "every pipelined request answered, in order");
    let tls_stream = mtls_connect(remote, tls).await.unwrap();
    let (ok, total) = pipeline_in_order(tls_stream, 5000).await;
    println!("FIGURES pipelining over mTLS to the inbound: {ok}/{total} answered in order");
    assert_eq!(ok, total, "every pipelined request answered, in order");

    // Never reading: the flood must meet back-pressure, not a growing buffer.
    let before = rss_kib(outbound.pid());
    let mut s = TcpStream::connect(listen).await.unwrap();
    let one = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000);
    let mut written = 0usize;
    let started = Instant::now();
    for _ in 0..2000 {
        match tokio::time::timeout(Duration::from_secs(5), s.write_all(&one)).await {
            Ok(Ok(())) => written += one.len(),
            _ => break, // blocked: the ambassador stopped reading
        }
    }
    let total = one.len() * 2000;
    let after = rss_kib(outbound.pid());
    println!(
        "FIGURES unread pipelining flood: {written}/{total} bytes taken in {:.1} s; outbound RSS {before} -> {after} KiB",
        started.elapsed().as_secs_f64()
    );
    assert!(
        written < total,
        "the ambassador kept reading requests whose answers were not read"
    );
    assert!(
        after.saturating_sub(before) < 16 * 1024,
        "RSS {before} -> {after} KiB"
    );
    // Still not reading: the ambassador gives up on the connection by itself.
    let open = || {
        outbound.metric(
            "ambassador_open_connections",
            &[("direction", "outbound"), ("route", "outbound")],
        )
    };
    wait::until(
        Duration::from_secs(90),
        "the ambassador to close the connection that never reads",
        || open() == Some(0.0),
    );
    assert!(limit(&outbound, "outbound", "idle_timeout") >= 1.0);
    drop(s);
    // Still serving.
    assert_eq!(
        plain_request(listen, get("/")).await.unwrap().status,
        http::StatusCode::OK
    );
    drop(inbound);
}
