//! TLS handshake floods against the inbound listener while good mTLS clients keep calling:
//! handshakes that never finish (a ClientHello, then silence) and full handshakes with
//! certificates from another CA. The good clients' success ratio and latency (p50, p99) are
//! measured before and during each flood.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::procfs::rss_kib;
use common::*;
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn counter(amb: &Ambassador, name: &str, label: &str, value: &str) -> f64 {
    amb.metric(
        name,
        &[
            ("direction", "inbound"),
            ("route", "inbound"),
            (label, value),
        ],
    )
    .unwrap_or(0.0)
}

/// The good clients' outcome over a window: each request on a new mTLS connection (a full
/// handshake, as a client without a pool makes), `workers` at a time.
struct Outcome {
    ok: usize,
    total: usize,
    p50: Duration,
    p99: Duration,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} ok, p50 {} ms, p99 {} ms",
            self.ok,
            self.total,
            self.p50.as_millis(),
            self.p99.as_millis()
        )
    }
}

async fn good_clients(
    remote: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    workers: usize,
    window: Duration,
) -> Outcome {
    let until = Instant::now() + window;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let tls = tls.clone();
        tasks.spawn(async move {
            let mut out = Vec::new();
            while Instant::now() < until {
                let started = Instant::now();
                let reply = tokio::time::timeout(
                    Duration::from_secs(30),
                    mtls_request(remote, tls.clone(), get("/")),
                )
                .await;
                let ok = matches!(reply, Ok(Ok(ref r)) if r.status == StatusCode::OK);
                out.push((ok, started.elapsed()));
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        all.extend(done.unwrap());
    }
    let ok = all.iter().filter(|(ok, _)| *ok).count();
    let mut times: Vec<Duration> = all.iter().map(|(_, t)| *t).collect();
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    Outcome {
        ok,
        total: all.len(),
        p50: at(0.50),
        p99: at(0.99),
    }
}

/// A ClientHello as `tls` would send it.
fn client_hello(tls: Arc<rustls::ClientConfig>) -> Vec<u8> {
    let mut conn = rustls::ClientConnection::new(tls, "peer.test".try_into().unwrap()).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// Runs `flood` on `tasks` tasks until the returned flag is set.
fn spawn_flood<F, Fut>(
    tasks: usize,
    flood: F,
) -> (Arc<AtomicBool>, Vec<tokio::task::JoinHandle<()>>)
where
    F: Fn(Arc<AtomicBool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let handles = (0..tasks)
        .map(|_| tokio::spawn(flood(stop.clone())))
        .collect();
    (stop, handles)
}

/// Handshakes that never finish, and full handshakes with another CA's certificate, each
/// flooding the inbound listener for 15 s while 4 good clients make requests on new mTLS
/// connections: the good clients keep >= 99% success (their p50 and p99 are printed, before
/// and during each flood); the half-open handshakes are closed (pending budget, handshake
/// timeout) and the bad certificates refused and counted; memory stays under the shipped
/// limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_floods_leave_good_clients_served() {
    let pki = Pki::new("test tls flood CA");
    let app = start_app().await;
    let (inbound, remote, _outbound, _listen) = start_pair(&pki, app, &[]);
    let me = pki.ca.good(CLIENT_ID);
    let tls = client_tls(Some(&me), pki.ca.pem(), &[b"http/1.1"]);
    let window = Duration::from_secs(15);

    let quiet = good_clients(remote, tls.clone(), 4, Duration::from_secs(5)).await;
    println!("FIGURES good clients, no flood: {quiet}");

    // 1. ClientHello, then nothing: 8 tasks opening such connections as fast as they can,
    // holding the newest 2,000.
    let hello = Arc::new(client_hello(tls.clone()));
    let held = Arc::new(Mutex::new(VecDeque::new()));
    let opened = Arc::new(AtomicUsize::new(0));
    let (stop, handles) = spawn_flood(8, |stop| {
        let (hello, held, opened) = (hello.clone(), held.clone(), opened.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(remote).await else {
                    continue;
                };
                if s.write_all(&hello).await.is_err() {
                    continue;
                }
                opened.fetch_add(1, Ordering::Relaxed);
                let mut held = held.lock().unwrap();
                held.push_back(s);
                if held.len() > 2000 {
                    held.pop_front();
                }
            }
        }
    });
    let during = good_clients(remote, tls.clone(), 4, window).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    held.lock().unwrap().clear();
    let rss_half_open = rss_kib(inbound.pid());
    let evicted = counter(
        &inbound,
        "ambassador_limits_exceeded_total",
        "limit",
        "pending_connections",
    );
    println!(
        "FIGURES never-finished handshakes: {} opened in 15 s, {evicted} closed by the pending budget; good clients {during}; inbound RSS {rss_half_open} KiB",
        opened.load(Ordering::Relaxed)
    );
    assert!(
        during.ok * 100 >= during.total * 99,
        "good clients during the half-open flood: {during}"
    );
    assert!(
        evicted > 0.0,
        "the pending budget closed half-open handshakes"
    );

    // 2. Full handshakes with a certificate from another CA: each costs the server a key
    // exchange and a signature before it is refused. 8 tasks, back to back.
    let other = test_support::certs::Ca::new("test other CA");
    let stranger = other.good(CLIENT_ID);
    let bad = client_tls(Some(&stranger), pki.ca.pem(), &[b"http/1.1"]);
    let refused = Arc::new(AtomicUsize::new(0));
    let (stop, handles) = spawn_flood(8, |stop| {
        let (bad, refused) = (bad.clone(), refused.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                if mtls_request(remote, bad.clone(), get("/")).await.is_err() {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    let during_bad = good_clients(remote, tls.clone(), 4, window).await;
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.await.unwrap();
    }
    let unknown_ca = counter(
        &inbound,
        "ambassador_tls_failures_total",
        "reason",
        "unknown_ca",
    );
    let rss_bad = rss_kib(inbound.pid());
    println!(
        "FIGURES bad-certificate handshakes: {} refused in 15 s (unknown_ca counted {unknown_ca}); good clients {during_bad}; inbound RSS {rss_bad} KiB",
        refused.load(Ordering::Relaxed)
    );
    assert!(
        during_bad.ok * 100 >= during_bad.total * 99,
        "good clients during the bad-certificate flood: {during_bad}"
    );
    assert!(unknown_ca >= 1.0, "bad certificates refused and counted");
    for rss in [rss_half_open, rss_bad] {
        assert!(rss < 64 * 1024, "inbound RSS {rss} KiB");
    }
}
