//! Probe mode under a real Prometheus, with the relabelling docs/xml-adapter.md shows: two
//! allowed targets scraped through `/probe`, one outside the allow-list (its scrape fails, the
//! target is never fetched), Prometheus's scrape timeout lowering the probe's deadline, and a
//! timestamp read from a document stored by Prometheus as the sample's time.
// Test helpers panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::prometheus::start_prometheus;
use common::*;

const MAPPING: &str = "format: json\nrules:\n  - {name: app_requests_total, help: Requests., type: counter, path: /requests}\n  - name: app_last_backup_ok\n    help: Whether the last backup succeeded.\n    type: gauge\n    path: /backup\n    value: ok\n    timestamp: {path: finished_ms, format: milliseconds}\n";

#[tokio::test]
async fn prometheus_scrapes_allowed_targets_through_probe() {
    // A backup that finished 30.25 s ago: recent enough for Prometheus's head block.
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let finished_ms = (now_ms - 30_000) / 1000 * 1000 - 250;
    let one = start_upstream(Behaviour::Body(Arc::new(
        format!(r#"{{"requests": 1027, "backup": {{"ok": 1, "finished_ms": {finished_ms}}}}}"#)
            .into_bytes(),
    )))
    .await;
    let two = start_upstream(Behaviour::Body(Arc::new(br#"{"requests": 5}"#.to_vec()))).await;
    let outside = start_upstream(Behaviour::Body(Arc::new(br#"{"requests": 9}"#.to_vec()))).await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.yaml"), MAPPING).unwrap();
    let probe_file = dir.path().join("probe.yaml");
    std::fs::write(
        &probe_file,
        format!(
            "allowed_targets: ['127.0.0.1:{}', '127.0.0.1:{}']\nmodules:\n  app: {{mapping: app.yaml}}\n",
            one.port, two.port
        ),
    )
    .unwrap();
    let adapter = start_adapter(
        &dir.path().join("app.yaml"),
        &one.url(),
        &["--probe-config", probe_file.to_str().unwrap()],
    )
    .await;

    let targets: Vec<String> = [one.port, two.port, outside.port]
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}/status"))
        .collect();
    let mut prom = start_prometheus(&format!(
        "global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\nscrape_configs:\n  - job_name: app\n    metrics_path: /probe\n    params: {{module: [app]}}\n    static_configs: [{{targets: ['{}', '{}', '{}']}}]\n    relabel_configs:\n      - {{source_labels: [__address__], target_label: __param_target}}\n      - {{source_labels: [__param_target], target_label: instance}}\n      - {{target_label: __address__, replacement: '127.0.0.1:{}'}}\n",
        targets[0], targets[1], targets[2], adapter.listen
    ))
    .await;
    prom.wait = Duration::from_secs(60);

    let q = |metric: &str, target: &str| format!("{metric}{{instance=\"{target}\"}}");
    prom.wait_for(&q("app_requests_total", &targets[0]), 1027.0)
        .await;
    prom.wait_for(&q("app_requests_total", &targets[1]), 5.0)
        .await;
    prom.wait_for(&q("probe_success", &targets[1]), 1.0).await;
    // Prometheus's 2 s scrape timeout, minus --timeout-offset (500ms), is the probe's deadline.
    prom.wait_for(&q("probe_timeout_seconds", &targets[0]), 1.5)
        .await;
    // Outside the allow-list: the scrape fails (403), and that target never saw a request.
    prom.wait_for(&q("up", &targets[2]), 0.0).await;
    assert_eq!(
        prom.query_one(&q("app_requests_total", &targets[2])).await,
        None
    );
    assert_eq!(outside.requests.load(Ordering::SeqCst), 0);
    // The document's time is the sample's time in Prometheus, to the millisecond.
    prom.wait_for(
        &format!("timestamp({})", q("app_last_backup_ok", &targets[0])),
        finished_ms as f64 / 1000.0,
    )
    .await;
}
