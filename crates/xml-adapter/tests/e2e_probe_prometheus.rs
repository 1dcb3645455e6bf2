//! Probe mode under a real Prometheus, with the relabelling docs/xml-adapter.md shows: two
//! allowed targets scraped through `/probe`, one outside the allow-list (its scrape fails, the
//! target is never fetched), Prometheus's scrape timeout lowering the probe's deadline, and a
//! timestamp read from a document stored by Prometheus as the sample's time.
// Test helpers panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::cell::Cell;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use test_support::ports::free_port;
use test_support::process::Process;
use test_support::skip::require_program;
use test_support::wait::Wait;

const MAPPING: &str = "format: json\nrules:\n  - {name: app_requests_total, help: Requests., type: counter, path: /requests}\n  - name: app_last_backup_ok\n    help: Whether the last backup succeeded.\n    type: gauge\n    path: /backup\n    value: ok\n    timestamp: {path: finished_ms, format: milliseconds}\n";

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Prometheus {
    proc: Process,
    port: u16,
    _dir: tempfile::TempDir,
}

async fn start_prometheus(config: &str) -> Prometheus {
    require_program("prometheus", "prometheus");
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config).unwrap();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let mut proc = Process::spawn("prometheus", cmd);
        let mut exited = false;
        let up = Wait::new("prometheus")
            .timeout(Duration::from_secs(30))
            .every(Duration::from_millis(100))
            .elapsed_async(async || {
                exited = proc.try_exit().is_some();
                let ready = http()
                    .get(format!("http://127.0.0.1:{port}/-/ready"))
                    .send()
                    .await;
                exited || ready.is_ok_and(|r| r.status() == 200)
            })
            .await;
        if up.is_some() && !exited {
            return Prometheus {
                proc,
                port,
                _dir: dir,
            };
        }
        eprintln!("prometheus did not come up, retrying:\n{}", proc.log());
    }
    panic!("prometheus did not start");
}

impl Prometheus {
    /// Instant query; the single result's value, if there is exactly one series.
    async fn query_one(&self, q: &str) -> Option<f64> {
        let r = http()
            .get(format!(
                "http://127.0.0.1:{}/api/v1/query?query={}",
                self.port,
                percent_encode(q)
            ))
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
        let result = v["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }

    async fn wait_for(&self, q: &str, want: f64) {
        let last = Cell::new(None);
        Wait::new(format_args!("Prometheus query `{q}` to give {want}"))
            .timeout(Duration::from_secs(60))
            .every(Duration::from_millis(250))
            .context(|| format!("last: {:?}\n{}", last.get(), self.proc.log()))
            .until_async(async || {
                last.set(self.query_one(q).await);
                last.get() == Some(want)
            })
            .await;
    }
}

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
    let prom = start_prometheus(&format!(
        "global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\nscrape_configs:\n  - job_name: app\n    metrics_path: /probe\n    params: {{module: [app]}}\n    static_configs: [{{targets: ['{}', '{}', '{}']}}]\n    relabel_configs:\n      - {{source_labels: [__address__], target_label: __param_target}}\n      - {{source_labels: [__param_target], target_label: instance}}\n      - {{target_label: __address__, replacement: '127.0.0.1:{}'}}\n",
        targets[0], targets[1], targets[2], adapter.listen
    ))
    .await;

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
