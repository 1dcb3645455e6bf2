//! A real Prometheus server for the end-to-end tests (its own config and storage in a temporary
//! directory, killed on drop), queried through its HTTP API.

use std::cell::Cell;
use std::process::Command;
use std::time::Duration;

use test_support::ports::free_port;
use test_support::process::Process;
use test_support::skip::require_program;
use test_support::wait::Wait;

use super::http;

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

pub struct Prometheus {
    pub proc: Process,
    pub port: u16,
    /// How long `wait_for` waits for a query's value.
    pub wait: Duration,
    _dir: tempfile::TempDir,
}

/// Starts Prometheus with `config` (its `prometheus.yml`) and waits until it is ready
/// (retrying on a port race).
pub async fn start_prometheus(config: &str) -> Prometheus {
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
                wait: Duration::from_secs(30),
                _dir: dir,
            };
        }
        eprintln!("prometheus did not come up, retrying:\n{}", proc.log());
    }
    panic!("prometheus did not start");
}

impl Prometheus {
    /// Instant query; the single result's value, if there is exactly one series.
    pub async fn query_one(&self, q: &str) -> Option<f64> {
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

    /// Waits (up to `self.wait`) until query `q` gives `want`.
    pub async fn wait_for(&self, q: &str, want: f64) {
        let last = Cell::new(None);
        Wait::new(format_args!("Prometheus query `{q}` to give {want}"))
            .timeout(self.wait)
            .every(Duration::from_millis(250))
            .context(|| format!("last: {:?}\n{}", last.get(), self.proc.log()))
            .until_async(async || {
                last.set(self.query_one(q).await);
                last.get() == Some(want)
            })
            .await;
    }
}
