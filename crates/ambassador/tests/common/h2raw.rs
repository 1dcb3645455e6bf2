//! HTTP/2 by hand for the attack tests: frames as raw bytes, h2c connections, floods written
//! while the answers are read; h2load's well-behaved clients, and a harness that runs an
//! attack over and over while they do.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::procfs::rss_kib;
use super::{Ambassador, get, plain_request};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// ---------- frames by hand ----------

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;
/// RST_STREAM's REFUSED_STREAM: the stream was not processed at all.
pub const REFUSED_STREAM: u32 = 7;
pub const END_STREAM: u8 = 1;
pub const END_HEADERS: u8 = 4;

/// An HPACK integer with an `n`-bit prefix whose other bits are `first`.
pub fn hpack_int(first: u8, n: u32, mut value: usize, out: &mut Vec<u8>) {
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

pub fn hpack_str(s: &[u8], out: &mut Vec<u8>) {
    hpack_int(0, 7, s.len(), out);
    out.extend_from_slice(s);
}

/// `:method GET`, `:scheme http`, `:path <path>`, `:authority x`, from the static table.
pub fn request_block(path: &str) -> Vec<u8> {
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
pub fn literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    hpack_str(name, out);
    hpack_str(value, out);
}

pub async fn h2c(listen: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(listen).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s
}

/// Writes `bytes` in pieces until done, the server closes, or `within` passes; then reads what
/// the server sends until it closes or goes quiet. (bytes written, bytes read)
pub async fn flood(mut s: TcpStream, bytes: Vec<u8>, within: Duration) -> (usize, Vec<u8>) {
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
pub fn frames_of(mut bytes: &[u8]) -> Vec<(u8, u32)> {
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

pub fn protocol_errors(amb: &Ambassador, direction: &str, kind: &str) -> f64 {
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
pub fn h2load(listen: SocketAddr, requests: usize) -> (usize, usize, String) {
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
pub async fn under_attack<F, Fut>(name: &str, listen: SocketAddr, amb: &Ambassador, attack: F)
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
        "{name}: good clients {}/{}: {}; the ambassador's answers and errors: {:?}; its log: {}",
        good.0,
        good.1,
        good.2,
        amb.metrics()
            .text()
            .lines()
            .filter(|l| l.starts_with("ambassador_requests_total")
                || l.starts_with("ambassador_upstream_errors_total"))
            .collect::<Vec<_>>(),
        amb.log_text()
    );
    assert!(rss < 64 * 1024, "{name}: RSS {rss} KiB");
    let reply = plain_request(listen, get("/")).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{name}: no longer serving");
}
