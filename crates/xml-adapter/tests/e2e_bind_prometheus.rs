//! End to end: a real BIND 9 `named` (Debian's bind9) with a statistics channel on 127.0.0.1,
//! read through the real adapter binary with the shipped BIND 9 mapping, scraped by a real
//! Prometheus server; the series are checked through Prometheus's HTTP API.
// Test helpers panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::prometheus::Prometheus;
use common::*;
use test_support::ports::{free_port, free_udp_tcp_port};
use test_support::process::Process;
use test_support::skip::require_program;
use test_support::wait::Wait;

/// `named` on free ports with one authoritative zone; killed on drop.
struct Named {
    _proc: Process,
    dns_port: u16,
    stats_port: u16,
    _dir: tempfile::TempDir,
}

async fn start_named() -> Named {
    require_program("named", "bind9");
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let (dns_port, stats_port) = (free_udp_tcp_port(), free_port());
        let cmd = named_conf(dir.path(), dns_port, stats_port);
        let mut proc = Process::spawn("named", cmd);
        let mut exited = false;
        let up = Wait::new("named")
            .timeout(Duration::from_secs(20))
            .every(Duration::from_millis(100))
            .elapsed_async(async || {
                exited = proc.try_exit().is_some();
                let stats = common::http()
                    .get(format!("http://127.0.0.1:{stats_port}/xml/v3/server"))
                    .send()
                    .await;
                exited
                    || (stats.is_ok_and(|r| r.status() == 200)
                        && proc.log().contains("all zones loaded"))
            })
            .await;
        if up.is_some() && !exited {
            return Named {
                _proc: proc,
                dns_port,
                stats_port,
                _dir: dir,
            };
        }
        eprintln!("named did not come up, retrying:\n{}", proc.log());
    }
    panic!("named did not start");
}

/// Prometheus scraping the adapter on `target_port` every second.
async fn start_prometheus(target_port: u16) -> Prometheus {
    common::prometheus::start_prometheus(&format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: bind\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
    ))
    .await
}

#[tokio::test]
async fn real_bind9_through_the_adapter_into_real_prometheus() {
    let named = start_named().await;
    let (ok, nx) = (7u16, 3u16);
    for i in 0..ok {
        assert_eq!(
            dns_query(named.dns_port, "www.example.test", i + 1),
            0,
            "NOERROR"
        );
    }
    for i in 0..nx {
        assert_eq!(
            dns_query(named.dns_port, "nope.example.test", 100 + i),
            3,
            "NXDOMAIN"
        );
    }
    let upstream = format!("http://127.0.0.1:{}/xml/v3", named.stats_port);
    let adapter = start_adapter(
        &manifest_path("examples/mappings/bind9.yaml"),
        &upstream,
        &[],
    )
    .await;

    // Directly: the adapter's page for the live named.
    let page = scrape(&adapter.url("/metrics")).await;
    assert_eq!(
        page.value("bind_up"),
        Some(1.0),
        "{page}\n{}",
        adapter.proc.log()
    );
    assert_eq!(
        page.value("bind_incoming_queries_total{type=\"A\"}"),
        Some(f64::from(ok + nx))
    );
    assert_eq!(
        page.value("bind_incoming_requests_total{opcode=\"QUERY\"}"),
        Some(f64::from(ok + nx))
    );
    assert_eq!(
        page.value("bind_response_rcodes_total{rcode=\"NXDOMAIN\"}"),
        Some(f64::from(nx))
    );
    assert_eq!(
        page.value("bind_zone_serial{view=\"_default\",zone_name=\"example.test\"}"),
        Some(2024061501.0)
    );
    let boot = page.value("bind_boot_time_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!((now - boot).abs() < 300.0, "boot time {boot} vs now {now}");
    promtool_check(page.text()).unwrap();

    // Through Prometheus (which negotiates OpenMetrics with the adapter).
    let prom = start_prometheus(adapter.listen).await;
    prom.wait_for("up{job=\"bind\"}", 1.0).await;
    prom.wait_for("bind_up", 1.0).await;
    prom.wait_for("xml_adapter_up", 1.0).await;
    prom.wait_for(
        "bind_incoming_queries_total{type=\"A\"}",
        f64::from(ok + nx),
    )
    .await;
    prom.wait_for(
        "bind_response_rcodes_total{rcode=\"NXDOMAIN\"}",
        f64::from(nx),
    )
    .await;
    prom.wait_for("bind_zone_serial{zone_name=\"example.test\"}", 2024061501.0)
        .await;
    // The histogram reaches Prometheus whole: over OpenMetrics a histogram without a sum has
    // no `_count` (both or neither), its `+Inf` bucket is the count.
    prom.wait_for(
        "bind_resolver_query_duration_seconds_bucket{view=\"_default\",le=\"+Inf\"}",
        0.0,
    )
    .await;
    prom.wait_for(
        "count(bind_resolver_query_duration_seconds_count) or vector(0)",
        0.0,
    )
    .await;
    // More traffic shows up on the next scrapes.
    for i in 0..5 {
        dns_query(named.dns_port, "www.example.test", 200 + i);
    }
    prom.wait_for(
        "bind_incoming_queries_total{type=\"A\"}",
        f64::from(ok + nx + 5),
    )
    .await;

    // named goes away: the adapter says so (up 0), it does not serve stale numbers.
    drop(named);
    prom.wait_for("bind_up", 0.0).await;
    prom.wait_for("xml_adapter_up", 0.0).await;
    prom.wait_for("up{job=\"bind\"}", 1.0).await;
    let page = scrape(&adapter.url("/metrics")).await;
    assert!(!page.text().contains("bind_incoming_queries_total{"));
}
