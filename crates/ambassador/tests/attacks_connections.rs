//! Attacks on connections rather than on requests: floods of silent connections (the pending
//! budget and its memory), connections that drip bytes and never make a request, idle
//! connections in waves (memory returns, no fd leak). The real binary with its default limits
//! unless a test says otherwise; memory from /proc/<pid>/status, fds from /proc/<pid>/fd.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::procfs::{fds, rss_kib};
use common::*;
use http::StatusCode;
use test_support::wait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The memory limit of the shipped Kubernetes component (deploy/kubernetes/components/ambassador).
const SHIPPED_LIMIT_KIB: u64 = 64 * 1024;

/// CPU seconds (user + system) the process used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // USER_HZ is 100 on Linux.
    ticks / 100.0
}

/// Opens `n` TCP connections to `to` that send nothing.
async fn silent(to: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        match TcpStream::connect(to).await {
            Ok(s) => out.push(s),
            Err(e) => panic!("connection {} of {n} to {to} failed: {e}", out.len()),
        }
    }
    out
}

/// One GET through the outbound listener on a new connection.
async fn get_ok(listen: SocketAddr) -> bool {
    matches!(plain_request(listen, get("/")).await, Ok(r) if r.status == StatusCode::OK)
}

/// Defect 1 and 3: 4,000 silent connections to each listener with the default limits. Memory
/// stays well inside the shipped 64 MiB limit (the pending budget keeps 256 of them per
/// listener and closes the oldest), and good clients keep being served while they are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_stay_within_the_pending_budget_and_the_shipped_memory_limit() {
    let pki = Pki::new("test attacks CA");
    let app = start_app().await;
    let (inbound, remote, outbound, listen) = start_pair(&pki, app, &[]);
    let me = pki.ca.good(CLIENT_ID);
    let tls = client_tls(Some(&me), pki.ca.pem(), &[b"http/1.1"]);
    assert!(get_ok(listen).await, "the path works before the flood");
    let base_in = rss_kib(inbound.pid());
    let base_out = rss_kib(outbound.pid());

    let flood_in = silent(remote, 4000).await;
    let flood_out = silent(listen, 4000).await;
    wait::until(
        Duration::from_secs(60),
        "the pending budgets to close the oldest silent connections",
        || {
            limit(&inbound, "inbound", "pending_connections") >= 3000.0
                && limit(&outbound, "outbound", "pending_connections") >= 3000.0
        },
    );
    // Good clients during the flood: over mTLS to the inbound and through the outbound.
    let mut ok = 0;
    for _ in 0..50 {
        let reply = mtls_request(remote, tls.clone(), get("/")).await;
        if matches!(reply, Ok(ref r) if r.status == StatusCode::OK) {
            ok += 1;
        }
        if get_ok(listen).await {
            ok += 1;
        }
    }
    let rss_in = rss_kib(inbound.pid());
    let rss_out = rss_kib(outbound.pid());
    println!(
        "4000 silent connections each: inbound RSS {base_in} -> {rss_in} KiB, outbound {base_out} -> {rss_out} KiB; good requests {ok}/100"
    );
    assert!(ok >= 99, "good clients served during the flood: {ok}/100");
    // What the flood adds is bounded by the budget (256 pending connections of about 14 KB,
    // 3.5 MiB), with plenty of allocator slack; and the whole stays under three quarters of the
    // shipped limit, a quarter left for real traffic (a debug build starts at about 25 MiB, a
    // release build at about 11).
    for (who, base, rss) in [
        ("inbound", base_in, rss_in),
        ("outbound", base_out, rss_out),
    ] {
        assert!(
            rss.saturating_sub(base) < 16 * 1024,
            "{who}: {base} -> {rss} KiB with 4,000 silent connections"
        );
        assert!(
            rss < SHIPPED_LIMIT_KIB * 3 / 4,
            "{who}: {rss} KiB with 4,000 silent connections"
        );
    }
    drop(flood_in);
    drop(flood_out);
}

/// Defect 4: a connection that sends `PRI` and then a byte now and then, or nothing at all, is
/// closed by the header read timeout (no request came), not held for ever (or for the idle
/// timeout); connections that stopped after `P` or `PR` cost no CPU while they wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dripping_and_silent_connections_are_closed_and_cost_no_cpu_while_they_wait() {
    let pki = Pki::new("test attacks CA");
    let app = start_app().await;
    let (_inbound, _remote, outbound, listen) = start_pair(
        &pki,
        app,
        &[
            "--header-read-timeout",
            "2s",
            "--idle-timeout",
            "3s",
            "--max-pending-connections",
            "5000",
        ],
    );

    // The preface a byte at a time, one every 500 ms: activity, but never a request.
    let mut drip = TcpStream::connect(listen).await.unwrap();
    drip.write_all(b"PRI").await.unwrap();
    let mut silent_one = TcpStream::connect(listen).await.unwrap();
    let started = Instant::now();
    let preface = b" * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut closed = false;
    let mut buf = [0u8; 256];
    for byte in preface.iter().cycle().take(200) {
        if drip.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        match tokio::time::timeout(Duration::from_millis(500), drip.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    let took = started.elapsed();
    assert!(closed, "a dripping connection was never closed");
    assert!(took < Duration::from_secs(30), "closed after {took:?}");
    let n = tokio::time::timeout(Duration::from_secs(30), silent_one.read(&mut buf))
        .await
        .expect("a silent connection was held past the header read timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "a silent connection gets no bytes, just the close");
    assert!(limit(&outbound, "outbound", "header_read_timeout") >= 2.0);

    // 2,000 connections that sent `P` or `PR`: waiting for their third byte costs nothing.
    let pki = Pki::new("test attacks CA 2");
    let (_i, _r, outbound, listen) = start_pair(
        &pki,
        app,
        &[
            "--header-read-timeout",
            "60s",
            "--max-connections",
            "5000",
            "--max-pending-connections",
            "5000",
        ],
    );
    let mut partial = Vec::new();
    for i in 0..2000 {
        let mut s = TcpStream::connect(listen).await.unwrap();
        s.write_all(if i % 2 == 0 { b"P" } else { b"PR" })
            .await
            .unwrap();
        partial.push(s);
    }
    wait::until(
        Duration::from_secs(30),
        "2,000 connections accepted",
        || {
            outbound.metric(
                "ambassador_open_connections",
                &[("direction", "outbound"), ("route", "outbound")],
            ) >= Some(2000.0)
        },
    );
    let cpu_before = cpu_seconds(outbound.pid());
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await; // the measured window, not a synchronisation
    let cpu = cpu_seconds(outbound.pid()) - cpu_before;
    let share = cpu / window.elapsed().as_secs_f64();
    println!(
        "2,000 connections stuck after P/PR: {:.1}% of a core",
        share * 100.0
    );
    // Polling each every 5 ms cost 21-33% of a core; waiting on readiness costs ~0.
    assert!(share < 0.10, "{:.1}% of a core", share * 100.0);
    drop(partial);
}

/// Defect 9: RSS across five waves of idle connections (each wave opened, held, closed) comes
/// back to a plateau: no leak, only what the allocator keeps for reuse. glibc's malloc keeps
/// one arena per thread that allocated, and does not give freed memory back to the system, so
/// a later wave whose connections land on other threads fills other arenas once; the level
/// after close then climbs towards a plateau, by less each wave (measured on a debug build:
/// 131, 166, 177, 184, 185 MiB). A leak grows by the same amount every wave instead. So: every
/// wave ends within 60% above the first wave's post-close level (the arenas of the two worker
/// threads and tokio's blocking threads, each filled once), and the last two waves together
/// add at most half what the second wave added (or 8 MiB): a leak of 2 KB per connection,
/// 10 MB a wave, fails both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_fds_come_back_after_waves_of_idle_connections() {
    let pki = Pki::new("test attacks CA");
    let app = start_app().await;
    let (_inbound, _remote, outbound, listen) = start_pair(
        &pki,
        app,
        &[
            "--max-connections",
            "6000",
            "--max-pending-connections",
            "5000",
            "--idle-timeout",
            "10m",
        ],
    );
    let pid = outbound.pid();
    assert!(get_ok(listen).await);
    let fds_before = fds(pid);
    let mut after_close = Vec::new();
    let mut peak = Vec::new();
    for wave in 0..5 {
        let mut conns = Vec::new();
        // Idle after a request: each holds its connection state and buffers.
        for _ in 0..5000 {
            let mut s = TcpStream::connect(listen).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            conns.push(s);
        }
        let mut buf = vec![0u8; 4096];
        for s in &mut conns {
            let mut got = Vec::new();
            while !got.ends_with(b"hello") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "wave {wave}: closed before its answer");
                got.extend_from_slice(&buf[..n]);
            }
        }
        peak.push(rss_kib(pid));
        drop(conns);
        wait::until(
            Duration::from_secs(60),
            "the wave's connections to close",
            || {
                outbound.metric(
                    "ambassador_open_connections",
                    &[("direction", "outbound"), ("route", "outbound")],
                ) == Some(0.0)
            },
        );
        after_close.push(rss_kib(pid));
    }
    let fds_after = fds(pid);
    println!(
        "5 waves of 5,000 idle connections: RSS at peak {peak:?} KiB, after close {after_close:?} KiB; fds {fds_before} -> {fds_after}"
    );
    for (wave, rss) in after_close.iter().enumerate().skip(1) {
        assert!(
            *rss <= after_close[0] * 16 / 10,
            "wave {wave}: {rss} KiB after close, first wave {} KiB",
            after_close[0]
        );
    }
    let early = after_close[1].saturating_sub(after_close[0]);
    let late = after_close[4].saturating_sub(after_close[2]);
    assert!(
        late <= (early / 2).max(8 * 1024),
        "still growing: the last two waves added {late} KiB, the second {early} KiB"
    );
    // Pooled connections to the remote may come and go; client connections must not stay.
    assert!(
        fds_after <= fds_before + 8,
        "fds {fds_before} -> {fds_after}"
    );
}
