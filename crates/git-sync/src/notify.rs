//! Telling the app after a publish: webhook, command, signal, touch. Debounced: a burst of
//! publishes within the debounce window produces one notification (old = before the burst,
//! new = the last one).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::command::CommandSpec;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub timeout: Duration,
    /// Total tries, the first included.
    pub attempts: u32,
    pub backoff: Duration,
}

#[derive(Debug, Clone)]
pub enum SignalTarget {
    /// Every process whose name (comm, or argv[0]'s last component) is this.
    Name(String),
    /// The pid written in this file, read at each notification.
    Pidfile(PathBuf),
}

#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub webhook: Option<WebhookConfig>,
    pub command: Option<CommandSpec>,
    pub command_timeout: Duration,
    pub signal: Option<(SignalTarget, Signal)>,
    pub touch: Option<PathBuf>,
    pub debounce: Duration,
    /// The published link, handed to hooks.
    pub link: PathBuf,
    pub reference: String,
}

impl NotifyConfig {
    pub fn is_empty(&self) -> bool {
        self.webhook.is_none()
            && self.command.is_none()
            && self.signal.is_none()
            && self.touch.is_none()
    }
}

/// One publish: the SHA before (None on the first) and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub old: Option<String>,
    pub new: String,
}

/// Parses `HUP`, `SIGHUP` or a number.
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("{n} is not a signal number"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| format!("{s:?} is not a signal name (try HUP, USR1, TERM)"))
}

/// Starts the notifier. Publishes are sent on the returned channel; dropping the sender (or
/// cancelling `stop`) flushes what is pending and ends the task.
pub fn spawn(
    config: NotifyConfig,
    metrics: Metrics,
    stop: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) -> (
    mpsc::UnboundedSender<Published>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = tracker.spawn(run(config, metrics, rx, stop));
    (tx, handle)
}

async fn run(
    config: NotifyConfig,
    metrics: Metrics,
    mut rx: mpsc::UnboundedReceiver<Published>,
    stop: CancellationToken,
) {
    // runtime::run installs it too; this covers a client built outside run (tests): reqwest
    // has no provider of its own and would panic.
    sidecar_kit::tls::install_default_provider();
    let client = reqwest::Client::builder().build();
    let client = match client {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook HTTP client; webhooks will fail");
            None
        }
    };
    loop {
        let first = tokio::select! {
            ev = rx.recv() => match ev { Some(ev) => ev, None => return },
            () = stop.cancelled() => match rx.try_recv() { Ok(ev) => ev, Err(_) => return },
        };
        let mut pending = first;
        // Debounce: keep taking publishes until the window passes without one.
        let mut closed = false;
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => { pending.new = ev.new; continue; }
                    None => { closed = true; break; }
                },
                () = tokio::time::sleep(config.debounce) => break,
                () = stop.cancelled() => break,
            }
        }
        if pending.old.as_deref() != Some(pending.new.as_str()) {
            fire(&config, &metrics, client.as_ref(), &pending).await;
        }
        if closed {
            return;
        }
    }
}

async fn fire(
    config: &NotifyConfig,
    metrics: &Metrics,
    client: Option<&reqwest::Client>,
    ev: &Published,
) {
    let record = |kind: &str, ok: bool| {
        metrics
            .hooks
            .with_label_values(&[kind, if ok { "success" } else { "failure" }])
            .inc()
    };
    if let Some(path) = &config.touch {
        let result = touch(path);
        if let Err(e) = &result {
            tracing::warn!(file = %path.display(), error = %e, "cannot touch the notify file");
        }
        record("touch", result.is_ok());
    }
    if let Some((target, signal)) = &config.signal {
        let result = send_signal(target, *signal);
        match &result {
            Ok(n) => tracing::info!(processes = n, signal = %signal, "signalled the app"),
            Err(e) => tracing::warn!(error = %e, "cannot signal the app"),
        }
        record("signal", result.is_ok());
    }
    if let Some(command) = &config.command {
        let command = command.clone();
        let env = hook_env(config, ev);
        let cwd = config.link.clone();
        let timeout = config.command_timeout;
        let result = tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.clone())).collect();
            command.run(&cwd, &env, timeout, &|| false)
        })
        .await;
        let ok = matches!(result, Ok(Ok(())));
        match result {
            Ok(Err(e)) => tracing::warn!(error = %e, "the notify command failed"),
            Err(e) => tracing::warn!(error = %e, "the notify command's task failed"),
            Ok(Ok(())) => {}
        }
        record("command", ok);
    }
    if let (Some(hook), Some(client)) = (&config.webhook, client) {
        let ok = post_webhook(client, hook, config, ev).await;
        record("webhook", ok);
    } else if config.webhook.is_some() {
        record("webhook", false);
    }
}

fn hook_env(config: &NotifyConfig, ev: &Published) -> Vec<(&'static str, String)> {
    vec![
        ("GIT_SYNC_OLD", ev.old.clone().unwrap_or_default()),
        ("GIT_SYNC_NEW", ev.new.clone()),
        ("GIT_SYNC_REF", config.reference.clone()),
        ("GIT_SYNC_LINK", config.link.display().to_string()),
    ]
}

async fn post_webhook(
    client: &reqwest::Client,
    hook: &WebhookConfig,
    config: &NotifyConfig,
    ev: &Published,
) -> bool {
    let body = serde_json::json!({
        "old": ev.old,
        "new": ev.new,
        "ref": config.reference,
        "link": config.link.display().to_string(),
    });
    let mut delay = hook.backoff;
    for attempt in 1..=hook.attempts.max(1) {
        let result = client
            .post(&hook.url)
            .timeout(hook.timeout)
            .json(&body)
            .send()
            .await;
        match result {
            Ok(resp) if resp.status().is_success() => {
                tracing::info!(
                    attempt,
                    status = resp.status().as_u16(),
                    "webhook delivered"
                );
                return true;
            }
            Ok(resp) => tracing::warn!(
                attempt,
                status = resp.status().as_u16(),
                "webhook answered an error"
            ),
            // reqwest errors may quote the URL; the webhook URL is operator config, not a credential store,
            // but strip any userinfo all the same.
            Err(e) => {
                tracing::warn!(attempt, error = %crate::credentials::redact_url(&e.without_url().to_string()), "webhook failed")
            }
        }
        if attempt < hook.attempts {
            tokio::time::sleep(crate::schedule::jittered(delay, 0.2)).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    }
    false
}

fn touch(path: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    file.set_modified(std::time::SystemTime::now())
}

/// Sends `signal` to the target; returns how many processes got it.
pub fn send_signal(target: &SignalTarget, signal: Signal) -> Result<usize, String> {
    let pids = match target {
        SignalTarget::Pidfile(file) => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read the pidfile {}: {e}", file.display()))?;
            let pid: i32 = text
                .trim()
                .parse()
                .map_err(|_| format!("the pidfile {} does not hold a pid", file.display()))?;
            vec![pid]
        }
        SignalTarget::Name(name) => {
            let pids = pids_named(name);
            if pids.is_empty() {
                return Err(format!(
                    "no process named {name:?} (is the pod's process namespace shared?)"
                ));
            }
            pids
        }
    };
    let mut sent = 0;
    let mut last_error = None;
    for pid in pids {
        match nix::sys::signal::kill(Pid::from_raw(pid), signal) {
            Ok(()) => sent += 1,
            Err(e) => last_error = Some(format!("kill({pid}, {signal}): {e}")),
        }
    }
    match (sent, last_error) {
        (0, Some(e)) => Err(e),
        _ => Ok(sent),
    }
}

fn pids_named(name: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let argv0_name = String::from_utf8_lossy(argv0)
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        if comm.trim_end() == name || argv0_name == name {
            pids.push(pid);
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("HUP").unwrap(), Signal::SIGHUP);
        assert_eq!(parse_signal("sigusr1").unwrap(), Signal::SIGUSR1);
        assert_eq!(parse_signal("15").unwrap(), Signal::SIGTERM);
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn touch_creates_and_updates() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        touch(&f).unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        touch(&f).unwrap();
        assert!(
            std::fs::metadata(&f).unwrap().modified().unwrap() > old + Duration::from_secs(1800)
        );
    }
}
