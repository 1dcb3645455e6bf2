//! HTTP/2 stream abuse against the real binaries, while h2load's well-behaved clients run:
//! "made you reset" (streams reset after the ambassador accepted and forwarded them), stream
//! windows held at zero by the client, and more streams at once than
//! SETTINGS_MAX_CONCURRENT_STREAMS allows. h2c to the outbound listener.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::h2raw::*;
use common::procfs::rss_kib;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Polls `done` every 20 ms until it holds or `within` passes; whether it held.
async fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

/// One "made you reset" connection (the `h2` crate as client): batches of 50 `GET /slow`, each
/// batch reset (RST_STREAM CANCEL, by dropping the streams) once the app has received all of
/// it, so every reset comes after the ambassador accepted and forwarded the stream. Until the
/// ambassador closes the connection, or 1,000 resets. (resets sent, whether it was cut)
async fn made_you_reset(listen: SocketAddr, app: Arc<AppCounters>) -> (usize, bool) {
    let tcp = TcpStream::connect(listen).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut resets = 0;
    'batches: for _ in 0..20 {
        let seen = app.slow_started.load(Ordering::SeqCst);
        let mut held = Vec::new();
        for _ in 0..50 {
            let Ok(ready) = tokio::time::timeout(Duration::from_secs(10), client.ready()).await
            else {
                break 'batches;
            };
            let Ok(ready) = ready else { break 'batches };
            client = ready;
            let req = http::Request::get(format!("http://{listen}/slow"))
                .body(())
                .unwrap();
            match client.send_request(req, true) {
                Ok(stream) => held.push(stream),
                Err(_) => break 'batches,
            }
        }
        let n = held.len();
        let accepted = eventually(Duration::from_secs(30), || {
            conn.is_finished() || app.slow_started.load(Ordering::SeqCst) >= seen + n
        })
        .await;
        if conn.is_finished() {
            break;
        }
        drop(held);
        // Counted only when the app had them all: a stream answered (or refused) before it
        // got there is no reset after acceptance.
        if accepted {
            resets += n;
        }
    }
    let cut = eventually(Duration::from_secs(30), || conn.is_finished()).await;
    conn.abort();
    (resets, cut)
}

/// Made you reset: a client that resets every stream after the ambassador accepted it is cut
/// off once its resets pass 100 and outnumber its answered requests; counted in
/// `limits_exceeded{limit="stream_resets"}` (and each reset in `protocol_errors{kind=
/// "stream_reset"}`); good clients keep >= 99% meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_you_reset_connections_are_cut_and_counted() {
    let pki = Pki::new("test h2 streams CA");
    let app = App::start().await;
    let (_inbound, _remote, outbound, listen) = start_pair(&pki, app.addr, &[]);
    let counters = app.counters();
    let not_cut = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (nc, m) = (not_cut.clone(), most.clone());
    under_attack("made you reset", listen, &outbound, move || {
        let (counters, not_cut, most) = (counters.clone(), nc.clone(), m.clone());
        async move {
            let (resets, cut) = made_you_reset(listen, counters).await;
            most.fetch_max(resets, Ordering::SeqCst);
            if !cut {
                not_cut.fetch_add(1, Ordering::SeqCst);
            }
            format!("{resets} streams reset after acceptance, cut: {cut}")
        }
    })
    .await;
    let closed = limit(&outbound, "outbound", "stream_resets");
    let counted = protocol_errors(&outbound, "outbound", "stream_reset");
    println!(
        "FIGURES made you reset: connections closed for resets {closed}, resets counted {counted}, at most {} resets sent on one connection",
        most.load(Ordering::SeqCst)
    );
    assert_eq!(
        not_cut.load(Ordering::SeqCst),
        0,
        "a made-you-reset connection was never cut"
    );
    assert!(closed >= 1.0, "closing for resets is counted");
    assert!(counted >= 100.0, "the resets are counted: {counted}");
    // Cut soon after the allowance (100), not after 1,000.
    assert!(most.load(Ordering::SeqCst) <= 300);
}

/// A client connection that sets SETTINGS_INITIAL_WINDOW_SIZE to 0 and asks for `/big` (64 MiB)
/// on `streams` streams, never opening a window: nothing can be sent to it. (the stream, DATA
/// bytes received within 2 s)
async fn zero_window(listen: SocketAddr, streams: u32) -> (TcpStream, usize) {
    let mut s = TcpStream::connect(listen).await.unwrap();
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 0]));
    for i in 0..streams {
        bytes.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1 + 2 * i,
            &request_block("/big"),
        ));
    }
    s.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let until = Instant::now() + Duration::from_secs(2);
    while let Ok(Ok(n)) = tokio::time::timeout(
        until.saturating_duration_since(Instant::now()),
        s.read(&mut buf),
    )
    .await
    {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let data = frames_with_len(&got)
        .iter()
        .filter(|(kind, _)| *kind == DATA)
        .map(|(_, len)| len)
        .sum();
    (s, data)
}

/// Each frame's type and payload length.
fn frames_with_len(mut bytes: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len =
            (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
        if bytes.len() < 9 + len {
            break;
        }
        out.push((bytes[3], len));
        bytes = &bytes[9 + len..];
    }
    out
}

/// Stream windows held at zero: 4 connections each with 100 streams of `/big` (64 MiB each,
/// 25 GiB in all) whose client never opens a window. Nothing is sent into a zero window;
/// nothing is buffered for them beyond the flow-control windows: the inbound (HTTP/1 to the
/// app) stays under the shipped limit, the outbound holds at most one stream window (64 KiB)
/// of the remote's data per stalled stream, plus the stream's state. Good clients keep >= 99%
/// meanwhile (the stalled streams' data no longer uses up the pooled connection's window).
/// With nothing moving for the idle timeout (10 s here) the ambassador closes the stalled
/// connections itself, and their requests to the app are let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_held_at_zero_window_buffer_nothing_and_stall_no_one_else() {
    let pki = Pki::new("test h2 streams CA");
    let app = App::start().await;
    let (inbound, _remote, outbound, listen) =
        start_pair(&pki, app.addr, &["--idle-timeout", "10s"]);
    let counters = app.counters();
    let conns_before = counters.open_connections.load(Ordering::SeqCst);
    assert!(plain_request(listen, get("/")).await.is_ok());
    let out_before = rss_kib(outbound.pid());
    let opened = futures_util::future::join_all((0..4).map(|_| zero_window(listen, 100))).await;
    let data: usize = opened.iter().map(|(_, n)| n).sum();
    let mut stalled: Vec<TcpStream> = opened.into_iter().map(|(s, _)| s).collect();
    let rss = |amb: &Ambassador| rss_kib(amb.pid());
    let (rss_in, rss_out) = (rss(&inbound), rss(&outbound));
    let good = tokio::task::spawn_blocking(move || h2load(listen, 3000))
        .await
        .unwrap();
    let held_at_app = counters
        .open_connections
        .load(Ordering::SeqCst)
        .saturating_sub(conns_before);
    let per_stream = rss_out.saturating_sub(out_before) / 400;
    println!(
        "FIGURES zero window: 400 stalled /big streams, {data} DATA bytes sent to them; good clients {}/{} ({}); RSS inbound {rss_in} KiB, outbound {out_before} -> {rss_out} KiB ({per_stream} KiB a stalled stream); app connections held {held_at_app}",
        good.0, good.1, good.2
    );
    assert_eq!(data, 0, "DATA sent into a zero window");
    assert!(
        good.0 * 100 >= good.1 * 99,
        "good clients {}/{}: {}",
        good.0,
        good.1,
        good.2
    );
    assert!(
        rss_in < 64 * 1024,
        "inbound: RSS {rss_in} KiB with 400 stalled streams"
    );
    // One 64 KiB window of data, the stream's state on both sides of the outbound (a debug
    // build's futures are large) and the allocator's slack; a body buffered past the window
    // would be megabytes a stream.
    assert!(
        per_stream < 256,
        "outbound: {per_stream} KiB a stalled stream ({out_before} -> {rss_out} KiB)"
    );
    // The stalled clients stay; the ambassador closes them (they read what it sent before,
    // its GOAWAY or nothing, then the end).
    let started = Instant::now();
    for s in &mut stalled {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(120), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
                Err(_) => {
                    panic!("a stalled connection was held for two minutes past its idle timeout")
                }
            }
        }
    }
    println!(
        "FIGURES zero window: the stalled connections closed by the ambassador {:.1} s after h2load ended",
        started.elapsed().as_secs_f64()
    );
    assert!(limit(&outbound, "outbound", "idle_timeout") >= 4.0);
    test_support::wait::until(
        Duration::from_secs(60),
        "the stalled streams' app requests to be let go",
        || counters.open_connections.load(Ordering::SeqCst) <= conns_before + 64,
    );
    drop(stalled);
}

/// More streams than SETTINGS_MAX_CONCURRENT_STREAMS (256): 300 `GET /slow` opened at once on
/// one connection, ignoring the server's setting. The excess is refused (RST_STREAM
/// REFUSED_STREAM, or the connection closed with a GOAWAY), never more than 256 are answered,
/// the process stays up, and good clients keep >= 99% meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_concurrency_limit_are_refused_and_others_unaffected() {
    let pki = Pki::new("test h2 streams CA");
    let app = start_app().await;
    let (_inbound, _remote, outbound, listen) = start_pair(&pki, app, &[]);
    let over = Arc::new(AtomicUsize::new(0));
    let counted = over.clone();
    under_attack("300 streams at once", listen, &outbound, move || {
        let over = counted.clone();
        async move {
            let s = h2c(listen).await;
            let mut bytes = Vec::new();
            for i in 0..300u32 {
                bytes.extend(frame(
                    HEADERS,
                    END_HEADERS | END_STREAM,
                    1 + 2 * i,
                    &request_block("/slow"),
                ));
            }
            let (_, got) = flood(s, bytes, Duration::from_secs(10)).await;
            let frames = frames_of(&got);
            let answered = frames.iter().filter(|f| f.0 == HEADERS).count();
            let refused = frames
                .iter()
                .filter(|f| f.0 == RST_STREAM && f.1 == REFUSED_STREAM)
                .count();
            let goaway: Vec<u32> = frames
                .iter()
                .filter(|f| f.0 == GOAWAY)
                .map(|f| f.1)
                .collect();
            if answered > 256 || (refused == 0 && goaway.is_empty()) {
                over.fetch_add(1, Ordering::SeqCst);
            }
            format!("{answered} answered, {refused} refused, GOAWAY {goaway:?}")
        }
    })
    .await;
    assert_eq!(
        over.load(Ordering::SeqCst),
        0,
        "a round had more than 256 streams answered, or the excess neither refused nor cut"
    );
}
