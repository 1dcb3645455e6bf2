//! HTTP/2 attacks on the ambassador: rapid reset, CONTINUATION flood, HPACK bomb, SETTINGS and
//! PING floods. Frames made by hand (raw bytes) or with the `h2` crate,
//! against the outbound listener (h2c, prior knowledge) and the inbound one (h2 over mTLS);
//! well-behaved clients (h2load from nghttp2-client) keep being served meanwhile.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// ---------- frames by hand ----------

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// An HPACK integer with an `n`-bit prefix whose other bits are `first`.
fn hpack_int(first: u8, n: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

fn hpack_str(s: &[u8], out: &mut Vec<u8>) {
    hpack_int(0, 7, s.len(), out);
    out.extend_from_slice(s);
}

/// `:method GET`, `:scheme http`, `:path <path>`, `:authority x`, from the static table.
fn request_block(path: &str) -> Vec<u8> {
    let mut out = vec![0x82, 0x86];
    // :path, literal without indexing, indexed name 4.
    out.push(0x04);
    hpack_str(path.as_bytes(), &mut out);
    // :authority, literal without indexing, indexed name 1.
    out.push(0x01);
    hpack_str(b"x", &mut out);
    out
}

/// A literal header without indexing, new name.
fn literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    hpack_str(name, out);
    hpack_str(value, out);
}

async fn h2c(listen: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s
}

/// Writes `bytes` in pieces until done, the server closes, or `within` passes; then reads what
/// the server sends until it closes or goes quiet. (bytes written, bytes read)
async fn flood(mut s: TcpStream, bytes: Vec<u8>, within: Duration) -> (usize, Vec<u8>) {
    let (mut rd, mut wr) = s.split();
    let reader = async {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rd.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => return got,
            }
        }
    };
    let writer = async {
        let mut sent = 0;
        for piece in bytes.chunks(16 * 1024) {
            match tokio::time::timeout(within, wr.write_all(piece)).await {
                Ok(Ok(())) => sent += piece.len(),
                _ => break,
            }
        }
        sent
    };
    let (sent, got) = tokio::join!(writer, reader);
    (sent, got)
}

/// The frame types (and for GOAWAY and RST_STREAM the error code) in what the server sent.
fn frames_of(mut bytes: &[u8]) -> Vec<(u8, u32)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len =
            (usize::from(bytes[0]) << 16) | (usize::from(bytes[1]) << 8) | usize::from(bytes[2]);
        let kind = bytes[3];
        if bytes.len() < 9 + len {
            break;
        }
        let payload = &bytes[9..9 + len];
        let code = match kind {
            7 if len >= 8 => u32::from_be_bytes(payload[4..8].try_into().unwrap()),
            3 if len >= 4 => u32::from_be_bytes(payload[..4].try_into().unwrap()),
            _ => 0,
        };
        out.push((kind, code));
        bytes = &bytes[9 + len..];
    }
    out
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

fn protocol_errors(amb: &Ambassador, direction: &str, kind: &str) -> f64 {
    amb.metric(
        "ambassador_protocol_errors_total",
        &[
            ("direction", direction),
            ("route", direction),
            ("kind", kind),
        ],
    )
    .unwrap_or(0.0)
}

/// Good clients: h2load over h2c through the outbound listener; (succeeded, total, summary).
fn h2load(listen: SocketAddr, requests: usize) -> (usize, usize, String) {
    test_support::skip::require_program("h2load", "nghttp2-client");
    let out = Command::new("h2load")
        .args([
            "-n",
            &requests.to_string(),
            "-c",
            "4",
            "-m",
            "8",
            "-T",
            "30",
            &format!("http://{listen}/"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "requests: 2000 total, 2000 started, 2000 done, 1998 succeeded, 2 failed, ..."
    let line = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("h2load said: {text}"))
        .to_owned();
    let number = |word: &str| -> usize {
        let words: Vec<&str> = line.split_whitespace().collect();
        let i = words
            .iter()
            .position(|w| w.trim_end_matches(',') == word)
            .unwrap();
        words[i - 1].parse().unwrap()
    };
    let latency = text
        .lines()
        .find(|l| l.starts_with("time for request:"))
        .unwrap_or_default()
        .to_owned();
    (number("succeeded"), requests, format!("{line} | {latency}"))
}

/// Runs `attack` (several times, on fresh connections) while h2load's well-behaved clients run;
/// the good clients keep >= 99% success, the process stays up and its memory bounded.
async fn under_attack<F, Fut>(name: &str, listen: SocketAddr, amb: &Ambassador, attack: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = String> + Send,
{
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let attacker = {
        let (stop, rounds) = (stop.clone(), rounds.clone());
        tokio::spawn(async move {
            let mut last = String::new();
            while !stop.load(Ordering::SeqCst) && rounds.load(Ordering::SeqCst) < 50 {
                last = attack().await;
                rounds.fetch_add(1, Ordering::SeqCst);
            }
            last
        })
    };
    let good = tokio::task::spawn_blocking(move || h2load(listen, 3000))
        .await
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let last = attacker.await.unwrap();
    let rss = rss_kib(amb.pid());
    println!(
        "{name}: {} attack rounds ({last}); good clients {}/{} ({}); RSS {rss} KiB",
        rounds.load(Ordering::SeqCst),
        good.0,
        good.1,
        good.2
    );
    assert!(
        good.0 * 100 >= good.1 * 99,
        "{name}: good clients {}/{}: {}",
        good.0,
        good.1,
        good.2
    );
    assert!(rss < 64 * 1024, "{name}: RSS {rss} KiB");
    let reply = plain_request(listen, get("/")).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{name}: no longer serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_floods_are_cut_and_good_clients_keep_being_served() {
    let pki = Pki::new("test attacks CA");
    let app = start_app().await;
    let (_inbound, _remote, outbound, listen) = start_pair(&pki, app, &[]);

    // CONTINUATION flood: a header block that never ends, 1 KB at a time, 8 MB in all.
    under_attack(
        "CONTINUATION flood",
        listen,
        &outbound,
        move || async move {
            let s = h2c(listen).await;
            let mut bytes = frame(HEADERS, 0, 1, &request_block("/"));
            let mut one = Vec::new();
            literal(b"x-flood", &[b'a'; 1000], &mut one);
            for _ in 0..8000 {
                bytes.extend(frame(CONTINUATION, 0, 1, &one));
            }
            let total = bytes.len();
            let (sent, got) = flood(s, bytes, Duration::from_secs(10)).await;
            format!(
                "{sent}/{total} bytes taken, answered {:?}",
                frames_of(&got)
                    .iter()
                    .filter(|f| f.0 == 7 || f.0 == 3)
                    .collect::<Vec<_>>()
            )
        },
    )
    .await;

    // HPACK bomb: one 4 KB header put in the dynamic table, then referenced 4,000 times in one
    // small block (16 MB once decoded).
    under_attack("HPACK bomb", listen, &outbound, move || async move {
        let s = h2c(listen).await;
        let mut block = request_block("/");
        block.push(0x40);
        hpack_str(b"x-bomb", &mut block);
        hpack_str(&[b'b'; 4000], &mut block);
        block.extend(std::iter::repeat_n(0xbe_u8, 4000)); // indexed 62: the newest entry
        let bytes = frame(HEADERS, END_HEADERS | END_STREAM, 1, &block);
        let (_, got) = flood(s, bytes, Duration::from_secs(10)).await;
        format!(
            "answered {:?}",
            frames_of(&got).iter().map(|f| f.0).collect::<Vec<_>>()
        )
    })
    .await;

    // SETTINGS and PING floods: 50,000 of each, never reading the ACKs.
    under_attack(
        "SETTINGS and PING flood",
        listen,
        &outbound,
        move || async move {
            let mut s = TcpStream::connect(listen).await.unwrap();
            s.write_all(PREFACE).await.unwrap();
            let mut bytes = Vec::new();
            for i in 0..50_000u64 {
                bytes.extend(frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]));
                bytes.extend(frame(PING, 0, 0, &i.to_be_bytes()));
            }
            let total = bytes.len();
            // Not reading: the server must stop reading too rather than queue the answers.
            let mut sent = 0;
            for piece in bytes.chunks(16 * 1024) {
                match tokio::time::timeout(Duration::from_secs(3), s.write_all(piece)).await {
                    Ok(Ok(())) => sent += piece.len(),
                    _ => break,
                }
            }
            format!("{sent}/{total} bytes taken while not reading the answers")
        },
    )
    .await;

    // Rapid reset (CVE-2023-44487): HEADERS then RST_STREAM, 5,000 streams in one write.
    under_attack("rapid reset", listen, &outbound, move || async move {
        let s = h2c(listen).await;
        let mut bytes = Vec::new();
        for i in 0..5000u32 {
            let id = 1 + 2 * i;
            bytes.extend(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                id,
                &request_block("/"),
            ));
            bytes.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        let (sent, got) = flood(s, bytes, Duration::from_secs(10)).await;
        let goaways: Vec<u32> = frames_of(&got)
            .iter()
            .filter(|f| f.0 == 7)
            .map(|f| f.1)
            .collect();
        format!("{sent} bytes taken, GOAWAY codes {goaways:?}")
    })
    .await;
    assert!(
        protocol_errors(&outbound, "outbound", "goaway_enhance_your_calm") >= 1.0,
        "the rapid-reset GOAWAYs are counted"
    );
}
