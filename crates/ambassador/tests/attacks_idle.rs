//! Many idle connections: what each costs in memory, that their descriptors all come back once
//! they close, and that with the default limits one ambassador holding as many idle
//! connections as it admits on both its listeners (the shipped configuration: an inbound and an
//! outbound route) stays inside the shipped memory limit, refusing the excess cleanly.
//! Memory from /proc/<pid>/status, fds from /proc/<pid>/fd.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::procfs::{fds, rss_kib, status_kib};
use common::*;
use test_support::wait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The memory limit of the shipped Kubernetes component (deploy/kubernetes/components/ambassador).
const SHIPPED_LIMIT_KIB: u64 = 64 * 1024;
/// What a release build of the ambassador holds before any connection (code pages, runtime),
/// as `docs/ambassador.md` budgets it; a debug build holds more, so the tests budget growth.
const RELEASE_START_KIB: u64 = 12 * 1024;
/// The default `--max-connections`, per listener.
const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// The soft limit on open files of this process (the ambassadors it starts inherit it).
fn nofile_soft_limit() -> usize {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX)
}

fn open_connections(amb: &Ambassador, direction: &str, route: &str) -> f64 {
    amb.metric(
        "ambassador_open_connections",
        &[("direction", direction), ("route", route)],
    )
    .unwrap_or(-1.0)
}

fn limit(amb: &Ambassador, direction: &str, route: &str, name: &str) -> f64 {
    amb.metric(
        "ambassador_limits_exceeded_total",
        &[("direction", direction), ("route", route), ("limit", name)],
    )
    .unwrap_or(0.0)
}

/// Sends one keep-alive request on `s` and reads its answer ("hello"): the connection then sits
/// idle with its state and buffers, as a pooled client connection does.
async fn one_request<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<(), String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"hello") {
        let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {:?}", String::from_utf8_lossy(&got)));
        }
        got.extend_from_slice(&buf[..n]);
    }
    if !got.starts_with(b"HTTP/1.1 200") {
        return Err(format!("answered {:?}", String::from_utf8_lossy(&got)));
    }
    Ok(())
}

/// A connection held idle after one request.
#[allow(dead_code)] // held open, never read again
enum Idle {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Opens `n` connections to `to` (mTLS with `tls`, else plain), each idle after one request,
/// 32 being set up at a time.
async fn open_idle(
    to: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    n: usize,
) -> Result<Vec<Idle>, String> {
    let gate = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::<Result<Idle, String>>::new();
    for _ in 0..n {
        let (gate, tls) = (gate.clone(), tls.clone());
        tasks.spawn(async move {
            let _turn = gate.acquire_owned().await.unwrap();
            let work = async {
                match tls {
                    Some(tls) => {
                        let mut s = mtls_connect(to, tls)
                            .await
                            .map_err(|e| format!("handshake: {e}"))?;
                        one_request(&mut s).await?;
                        Ok(Idle::Tls(Box::new(s)))
                    }
                    None => {
                        let mut s = TcpStream::connect(to)
                            .await
                            .map_err(|e| format!("connect: {e}"))?;
                        one_request(&mut s).await?;
                        Ok(Idle::Plain(s))
                    }
                }
            };
            tokio::time::timeout(Duration::from_secs(60), work)
                .await
                .unwrap_or_else(|_| Err("no answer within 60 s".into()))
        });
    }
    let mut out = Vec::with_capacity(n);
    while let Some(done) = tasks.join_next().await {
        out.push(done.unwrap()?);
    }
    Ok(out)
}

/// Whether a connection beyond the limit is refused cleanly: a `503` (then the close) or a
/// close, within the deadline, never a hang or a `200`.
async fn refused_cleanly(to: SocketAddr, tls: Option<Arc<rustls::ClientConfig>>) -> bool {
    let attempt = async {
        match tls {
            Some(tls) => match mtls_connect(to, tls).await {
                Ok(mut s) => refused_answer(&mut s).await,
                Err(_) => true, // closed before the handshake
            },
            None => match TcpStream::connect(to).await {
                Ok(mut s) => refused_answer(&mut s).await,
                Err(_) => false,
            },
        }
    };
    tokio::time::timeout(Duration::from_secs(60), attempt)
        .await
        .unwrap_or(false)
}

async fn refused_answer<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> bool {
    if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return true;
    }
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got).await;
    got.is_empty() || got.starts_with(b"HTTP/1.1 503")
}

/// One listener's idle connections: memory per connection and fds back to the baseline, but for
/// the keep-alive connections to the app the ambassador pools (`pooled`: how many the app has
/// open).
async fn measure(
    who: &str,
    amb: &Ambassador,
    direction: &str,
    to: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    n: usize,
    pooled: &dyn Fn() -> usize,
) -> u64 {
    let pid = amb.pid();
    let fds_before = fds(pid);
    let pooled_before = pooled();
    let before = rss_kib(pid);
    let conns = open_idle(to, tls, n).await.unwrap();
    wait::until(Duration::from_secs(60), "every connection counted", || {
        open_connections(amb, direction, direction) >= n as f64
    });
    let held = rss_kib(pid);
    let fds_held = fds(pid);
    drop(conns);
    wait::until(Duration::from_secs(120), "the connections to close", || {
        open_connections(amb, direction, direction) == 0.0
    });
    // Every client's descriptor must be gone; what stays is the pool of keep-alive
    // connections to the app (the app counts them), and at most a few pooled HTTP/2
    // connections to the remote ambassador.
    let allowed = || fds_before + pooled().saturating_sub(pooled_before) + 4;
    wait::until(Duration::from_secs(60), "fds back to the baseline", || {
        fds(pid) <= allowed()
    });
    let per = (held.saturating_sub(before)) * 1024 / n as u64;
    println!(
        "FIGURES {who}: {n} idle connections: RSS {before} -> {held} KiB ({per} bytes each), fds {fds_before} -> {fds_held} -> {} after close ({} pooled to the app)",
        fds(pid),
        pooled().saturating_sub(pooled_before)
    );
    per
}

/// 2,000 idle connections on each listener (set AMBASSADOR_IDLE_CONNECTIONS for more, e.g.
/// 10000): each costs a bounded amount of memory, and every descriptor comes back once they
/// close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cost_bounded_memory_and_leave_no_fds_behind() {
    let n: usize = std::env::var("AMBASSADOR_IDLE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let soft = nofile_soft_limit();
    // This process holds n client sockets at once, the ambassador n plus its own few; both
    // have this soft limit (the child inherits it). Raising it would take unsafe code or a
    // crate for setrlimit: run under `ulimit -n` instead.
    assert!(
        soft >= n + 256,
        "{n} idle connections need {} open files, the soft limit is {soft}: raise it with `ulimit -n`",
        n + 256
    );
    let pki = Pki::new("test idle CA");
    let app = App::start().await;
    let max = (n + 100).to_string();
    let (inbound, remote, outbound, listen) = start_pair(
        &pki,
        app.addr,
        &["--max-connections", &max, "--idle-timeout", "10m"],
    );
    let pooled = || app.counters().open_connections.load(Ordering::SeqCst);
    let me = pki.ca.good(CLIENT_ID);
    let tls = client_tls(Some(&me), pki.ca.pem(), &[b"http/1.1"]);

    let per_in = measure(
        "inbound (mTLS)",
        &inbound,
        "inbound",
        remote,
        Some(tls),
        n,
        &pooled,
    )
    .await;
    // The outbound's own pool leads to the inbound ambassador, not to the app.
    let per_out = measure(
        "outbound (plain)",
        &outbound,
        "outbound",
        listen,
        None,
        n,
        &|| 0,
    )
    .await;
    // A connection's state, its TLS session and its buffers: tens of KB, not hundreds.
    assert!(per_in < 64 * 1024, "inbound: {per_in} bytes per connection");
    assert!(
        per_out < 64 * 1024,
        "outbound: {per_out} bytes per connection"
    );
}

/// The shipped configuration's shape (one process, an inbound and an outbound route) with the
/// default limits: as many idle connections as each listener admits, then more. The excess is
/// refused cleanly (503 or closed, counted), and the memory the admitted ones take fits what
/// the shipped 64 MiB limit leaves beside a release build's start, with a quarter to spare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_default_connection_limit_both_listeners_fit_the_shipped_memory_limit() {
    let m = DEFAULT_MAX_CONNECTIONS;
    let soft = nofile_soft_limit();
    assert!(
        soft >= 2 * m + 512,
        "{} connections need more open files than the soft limit {soft}: raise it with `ulimit -n`",
        2 * m
    );
    let pki = Pki::new("test idle CA");
    let app = start_app().await;
    // The peer the outbound route leads to: an inbound ambassador of its own.
    let server = pki.secret("server", SERVER_ID);
    let peer = addr(free_port());
    let mut args = cert_args(&server);
    args.extend(strings(&[
        "--inbound-listen",
        &peer.to_string(),
        "--inbound-app",
        &app.to_string(),
        "--allow-spiffe",
        CLIENT_ID,
    ]));
    let _peer = Ambassador::start(&args);
    // The ambassador under test: both routes, default limits.
    let pod = pki.secret("pod", CLIENT_ID);
    let inbound = addr(free_port());
    let outbound = addr(free_port());
    let mut args = cert_args(&pod);
    args.extend(strings(&[
        "--inbound-listen",
        &inbound.to_string(),
        "--inbound-app",
        &app.to_string(),
        "--allow-spiffe",
        CLIENT_ID,
        "--outbound-listen",
        &outbound.to_string(),
        "--outbound-endpoints",
        &peer.to_string(),
        "--outbound-identity",
        SERVER_ID,
    ]));
    let amb = Ambassador::start(&args);
    let me = pki.ca.good(CLIENT_ID);
    let tls = client_tls(Some(&me), pki.ca.pem(), &[b"http/1.1"]);
    let pid = amb.pid();
    let before = rss_kib(pid);

    let held_in = open_idle(inbound, Some(tls.clone()), m).await.unwrap();
    let held_out = open_idle(outbound, None, m).await.unwrap();
    wait::until(Duration::from_secs(60), "every connection counted", || {
        open_connections(&amb, "inbound", "inbound") >= m as f64
            && open_connections(&amb, "outbound", "outbound") >= m as f64
    });
    let mut refused = 0;
    for _ in 0..20 {
        refused += usize::from(refused_cleanly(inbound, Some(tls.clone())).await);
        refused += usize::from(refused_cleanly(outbound, None).await);
    }
    let rss = rss_kib(pid);
    let peak = status_kib(pid, "VmHWM:");
    let growth = peak.saturating_sub(before);
    println!(
        "FIGURES default limits, {m} idle connections on each listener: RSS {before} -> {rss} KiB (peak {peak}, growth {growth} KiB, {} bytes a connection); {refused}/40 beyond the limit refused cleanly; max_connections counted inbound {}, outbound {}",
        growth * 1024 / (2 * m as u64),
        limit(&amb, "inbound", "inbound", "max_connections"),
        limit(&amb, "outbound", "outbound", "max_connections"),
    );
    assert_eq!(refused, 40, "connections beyond the limit refused cleanly");
    assert!(limit(&amb, "inbound", "inbound", "max_connections") >= 20.0);
    assert!(limit(&amb, "outbound", "outbound", "max_connections") >= 20.0);
    // The shipped limit less a quarter of spare, less what a release build starts with.
    let budget = SHIPPED_LIMIT_KIB * 3 / 4 - RELEASE_START_KIB;
    assert!(
        growth < budget,
        "{m} connections on each listener took {growth} KiB, the budget is {budget} KiB"
    );
    drop(held_in);
    drop(held_out);
}
