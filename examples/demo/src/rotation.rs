//! Watching a certificate rotation: calls through the mesh all along, and what the sidecars'
//! metrics say about the certificates in use.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Requests through the mesh, one after the other, until stopped.
pub struct Load {
    running: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Outcome>,
}

/// What the load saw.
pub struct Outcome {
    pub sent: u64,
    pub failures: Vec<String>,
}

impl Load {
    /// GETs `url` every 20 ms; an answer other than 200 with `expect` in its body is a failure.
    pub fn start(http: reqwest::Client, url: String, expect: String) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let flag = running.clone();
        let task = tokio::spawn(async move {
            let mut outcome = Outcome {
                sent: 0,
                failures: Vec::new(),
            };
            while flag.load(Ordering::Relaxed) {
                outcome.sent += 1;
                match crate::pods::get(&http, &url).await {
                    Ok((200, body)) if body.contains(&expect) => {}
                    other => outcome.failures.push(format!("{other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcome
        });
        Self { running, task }
    }

    pub async fn stop(self) -> Outcome {
        self.running.store(false, Ordering::Relaxed);
        self.task.await.unwrap_or_else(|e| Outcome {
            sent: 0,
            failures: vec![format!("the load task failed: {e}")],
        })
    }
}

/// The serial of the certificate an ambassador has in use for `pod` (its reloader's expiry
/// gauge: `sidecar_certificate_expiry_timestamp_seconds{role="identity",serial=...,subject="CN=<pod>"}`).
pub fn serial_in_use(page: &str, pod: &str) -> Option<String> {
    let subject = format!("subject=\"CN={pod}\"");
    page.lines()
        .filter(|l| l.starts_with("sidecar_certificate_expiry_timestamp_seconds{"))
        .filter(|l| l.contains("role=\"identity\"") && l.contains(&subject))
        .find_map(|l| {
            let start = l.find("serial=\"")? + "serial=\"".len();
            let len = l[start..].find('"')?;
            Some(l[start..start + len].to_owned())
        })
}

/// A serial, shortened for a terminal line.
pub fn short(serial: &str) -> &str {
    &serial[..serial.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# TYPE sidecar_certificate_expiry_timestamp_seconds gauge
sidecar_certificate_expiry_timestamp_seconds{role=\"ca\",serial=\"0a\",subject=\"CN=sidecars demo CA (OpenBao)\"} 1.8e9
sidecar_certificate_expiry_timestamp_seconds{role=\"identity\",serial=\"0a\",subject=\"CN=sidecars demo CA (OpenBao)\"} 1.8e9
sidecar_certificate_expiry_timestamp_seconds{role=\"identity\",serial=\"5f0ad5da46ab\",subject=\"CN=pod-a\"} 1.7e9
sidecar_tls_reloads_total{result=\"ok\"} 3
secrets_agent_publishes_total 4
";

    #[test]
    fn the_leaf_serial_is_the_pods_identity_not_the_ca() {
        assert_eq!(
            serial_in_use(PAGE, "pod-a").as_deref(),
            Some("5f0ad5da46ab")
        );
        assert_eq!(serial_in_use(PAGE, "pod-b"), None);
    }
}
