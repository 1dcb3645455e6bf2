//! Telling the app that something it reads has changed: a webhook, a command, a signal to a
//! process (by name or by pidfile), a touched file. Debounced: changes closer together than the
//! debounce window produce one notification, which carries them merged.
//!
//! A sidecar describes its changes with a type implementing [`Change`] (what the webhook body
//! and the command's environment say, and how two changes fold into one), takes the hooks from
//! [`NotifyArgs`] (flatten it into its flags) or builds a [`NotifyConfig`] itself, and hands
//! each change to a [`Notifier`]:
//!
//! ```no_run
//! use sidecar_kit::notify::{Change, Notifier, NotifyConfig, SignalHook, SignalTarget, Signal};
//!
//! /// The files a secrets sidecar rewrote.
//! struct Rewritten { files: Vec<String> }
//!
//! impl Change for Rewritten {
//!     fn merge(&mut self, later: Self) {
//!         self.files.extend(later.files);
//!     }
//!     fn webhook_body(&self) -> serde_json::Value {
//!         serde_json::json!({ "files": self.files })
//!     }
//!     fn command_env(&self) -> Vec<(String, String)> {
//!         vec![("CHANGED_FILES".into(), self.files.join(" "))]
//!     }
//! }
//!
//! # async fn demo(sidecar: sidecar_kit::Sidecar) {
//! let config = NotifyConfig {
//!     signal: Some(SignalHook { target: SignalTarget::Name("nginx".into()), signal: Signal::SIGHUP }),
//!     ..NotifyConfig::default()
//! };
//! let notifier = Notifier::spawn(config, None, sidecar.shutdown());
//! notifier.notify(Rewritten { files: vec!["tls.crt".into(), "tls.key".into()] });
//! // On the way out: send what is still pending, then return.
//! notifier.finish().await;
//! # }
//! ```
//!
//! Each hook's outcome is logged and, given a counter labelled `kind` (`webhook`, `command`,
//! `signal`, `touch`) and `result` (`success`, `failure`), counted. A failing hook never stops
//! the others, and never the sidecar.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::unistd::Pid;
use prometheus::IntCounterVec;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::command::CommandSpec;
use crate::config::ConfigError;
use crate::shutdown::Shutdown;

pub use nix::sys::signal::Signal;

/// Something that changed, as the hooks tell it.
pub trait Change: Send + 'static {
    /// Folds `later`, which happened after `self` within the debounce window, into `self`.
    fn merge(&mut self, later: Self)
    where
        Self: Sized;

    /// True when the merged changes cancel out (a change and its revert within the window):
    /// nothing is sent then. The default is false.
    fn is_noop(&self) -> bool {
        false
    }

    /// The JSON body POSTed to the webhook.
    fn webhook_body(&self) -> serde_json::Value;

    /// Variables added to the command's environment.
    fn command_env(&self) -> Vec<(String, String)>;
}

/// POST the change's [`Change::webhook_body`] to a URL, retried with backoff.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// An `http://` or `https://` URL.
    pub url: String,
    /// The limit of one try.
    pub timeout: Duration,
    /// Tries per notification, the first included (at least 1).
    pub attempts: u32,
    /// The wait after the first failed try; it doubles after each (up to 60 s), ±20% jitter.
    pub backoff: Duration,
}

/// Run a command after a change, with [`Change::command_env`] added to its environment.
#[derive(Debug, Clone)]
pub struct HookCommand {
    /// The command line (no shell).
    pub command: CommandSpec,
    /// It is killed after this long and counted as failed.
    pub timeout: Duration,
    /// Its working directory; the sidecar's own when `None`.
    pub cwd: Option<PathBuf>,
}

/// Which processes get the signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalTarget {
    /// Every process whose name (`comm`, or `argv[0]`'s last component) is this. In a pod,
    /// this needs `shareProcessNamespace: true`.
    Name(String),
    /// The pid written in this file, read at each notification.
    Pidfile(PathBuf),
}

/// Send a signal after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalHook {
    /// Who gets it.
    pub target: SignalTarget,
    /// Which signal.
    pub signal: Signal,
}

/// The hooks to run after a change, and the debounce window.
#[derive(Debug, Clone, Default)]
pub struct NotifyConfig {
    /// POST to a URL.
    pub webhook: Option<Webhook>,
    /// Run a command.
    pub command: Option<HookCommand>,
    /// Signal processes.
    pub signal: Option<SignalHook>,
    /// Set this file's modification time (created if missing).
    pub touch: Option<PathBuf>,
    /// Changes closer together than this produce one notification. The window restarts with
    /// each change; the notification goes once it passes without one.
    pub debounce: Duration,
}

impl NotifyConfig {
    /// True when no hook is configured.
    pub fn is_empty(&self) -> bool {
        self.webhook.is_none()
            && self.command.is_none()
            && self.signal.is_none()
            && self.touch.is_none()
    }
}

/// The notification flags, the same in every sidecar. Flatten them into your own flags:
///
/// ```
/// #[derive(clap::Parser, Debug)]
/// struct Cli {
///     #[command(flatten)]
///     kit: sidecar_kit::KitArgs,
///     #[command(flatten)]
///     notify: sidecar_kit::notify::NotifyArgs,
/// }
/// ```
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Notifications")]
pub struct NotifyArgs {
    /// URL to POST a JSON description of each change to.
    #[arg(long, env = "WEBHOOK_URL", value_name = "URL")]
    pub webhook_url: Option<String>,
    /// Limit of one webhook try.
    #[arg(long, env = "WEBHOOK_TIMEOUT", value_name = "DURATION", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub webhook_timeout: Duration,
    /// Tries per notification, with backoff between them.
    #[arg(long, env = "WEBHOOK_ATTEMPTS", value_name = "N", default_value_t = 5)]
    pub webhook_attempts: u32,
    /// Command run after a change (split into words without a shell).
    #[arg(long, env = "NOTIFY_COMMAND", value_name = "COMMAND")]
    pub notify_command: Option<String>,
    /// Limit of the notify command; it is killed after it.
    #[arg(long, env = "NOTIFY_COMMAND_TIMEOUT", value_name = "DURATION", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub notify_command_timeout: Duration,
    /// Signal every process of this name after a change (needs a shared process namespace).
    #[arg(
        long,
        env = "NOTIFY_PROCESS",
        value_name = "NAME",
        conflicts_with = "notify_pidfile"
    )]
    pub notify_process: Option<String>,
    /// Signal the process whose pid is in this file after a change.
    #[arg(long, env = "NOTIFY_PIDFILE", value_name = "FILE")]
    pub notify_pidfile: Option<PathBuf>,
    /// The signal for --notify-process / --notify-pidfile: a name (HUP, SIGUSR1) or a number.
    #[arg(
        long,
        env = "NOTIFY_SIGNAL",
        value_name = "SIGNAL",
        default_value = "HUP"
    )]
    pub notify_signal: String,
    /// File whose modification time is set after a change (created if missing).
    #[arg(long, env = "NOTIFY_TOUCH_FILE", value_name = "FILE")]
    pub notify_touch_file: Option<PathBuf>,
    /// Changes closer together than this produce one notification.
    #[arg(long, env = "NOTIFY_DEBOUNCE", value_name = "DURATION", default_value = "1s",
          value_parser = humantime::parse_duration)]
    pub notify_debounce: Duration,
}

impl NotifyArgs {
    /// Checks the flags and builds the hooks. The command runs in the sidecar's working
    /// directory; set [`HookCommand::cwd`] for another.
    pub fn to_config(&self) -> Result<NotifyConfig, ConfigError> {
        let command = self
            .notify_command
            .as_deref()
            .map(|c| {
                CommandSpec::parse(c)
                    .map(|command| HookCommand {
                        command,
                        timeout: self.notify_command_timeout,
                        cwd: None,
                    })
                    .map_err(|e| ConfigError::field("--notify-command", e))
            })
            .transpose()?;
        let signal = parse_signal(&self.notify_signal)
            .map_err(|e| ConfigError::field("--notify-signal", e))?;
        let target = match (&self.notify_process, &self.notify_pidfile) {
            (Some(name), None) if !name.is_empty() => Some(SignalTarget::Name(name.clone())),
            (None, Some(file)) => Some(SignalTarget::Pidfile(file.clone())),
            (None, None) => None,
            _ => {
                return Err(ConfigError::value(
                    "give one of --notify-process or --notify-pidfile",
                ));
            }
        };
        let webhook = match &self.webhook_url {
            Some(url) => {
                let parsed = reqwest::Url::parse(url)
                    .map_err(|e| ConfigError::field(format!("--webhook-url {url:?}"), e))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(ConfigError::field(
                        format!("--webhook-url {url:?}"),
                        "must be http:// or https://",
                    ));
                }
                Some(Webhook {
                    url: url.clone(),
                    timeout: self.webhook_timeout,
                    attempts: self.webhook_attempts.max(1),
                    backoff: Duration::from_millis(500),
                })
            }
            None => None,
        };
        Ok(NotifyConfig {
            webhook,
            command,
            signal: target.map(|target| SignalHook { target, signal }),
            touch: self.notify_touch_file.clone(),
            debounce: self.notify_debounce,
        })
    }
}

/// Parses `HUP`, `SIGHUP`, `hup` or a signal number.
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

/// The running notifier: hand it changes with [`Notifier::notify`].
#[derive(Debug)]
pub struct Notifier<C> {
    tx: mpsc::UnboundedSender<C>,
    handle: JoinHandle<()>,
}

impl<C: Change> Notifier<C> {
    /// Starts the notifier task on `shutdown`'s tracker, so the sidecar's drain waits for it.
    /// When the shutdown token is cancelled it sends what is pending at once and ends.
    ///
    /// `outcomes`, if given, must be labelled `kind` and `result` (in that order); see the
    /// module docs.
    pub fn spawn(
        config: NotifyConfig,
        outcomes: Option<IntCounterVec>,
        shutdown: &Shutdown,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            config,
            outcomes,
            client: None,
        };
        let handle = shutdown.tracker().spawn(task.run(rx, shutdown.token()));
        Self { tx, handle }
    }

    /// Queues a change. It is sent once the debounce window passes without another.
    pub fn notify(&self, change: C) {
        // The task ends only after the sender is dropped or at shutdown; a change that comes
        // after that has no one left to tell.
        let _ = self.tx.send(change);
    }

    /// Sends what is pending (without waiting for the debounce window to end) and waits for the
    /// hooks to finish.
    pub async fn finish(self) {
        drop(self.tx);
        let _ = self.handle.await;
    }
}

struct Task {
    config: NotifyConfig,
    outcomes: Option<IntCounterVec>,
    client: Option<reqwest::Client>,
}

impl Task {
    async fn run<C: Change>(mut self, mut rx: mpsc::UnboundedReceiver<C>, stop: CancellationToken) {
        if self.config.webhook.is_some() {
            // `run` installs it too; this covers a notifier started outside it (tests,
            // embedding): reqwest has no crypto provider of its own and would panic.
            crate::tls::install_default_provider();
            match reqwest::Client::builder().build() {
                Ok(client) => self.client = Some(client),
                Err(e) => tracing::error!(
                    error = %e,
                    "cannot build the webhook HTTP client; webhooks will fail"
                ),
            }
        }
        loop {
            let mut pending = tokio::select! {
                change = rx.recv() => match change {
                    Some(change) => change,
                    None => return,
                },
                () = stop.cancelled() => match rx.try_recv() {
                    Ok(change) => change,
                    Err(_) => return,
                },
            };
            // Debounce: keep folding changes in until the window passes without one.
            let mut closed = false;
            loop {
                tokio::select! {
                    change = rx.recv() => match change {
                        Some(change) => pending.merge(change),
                        None => {
                            closed = true;
                            break;
                        }
                    },
                    () = tokio::time::sleep(self.config.debounce) => break,
                    () = stop.cancelled() => {
                        while let Ok(change) = rx.try_recv() {
                            pending.merge(change);
                        }
                        break;
                    }
                }
            }
            if !pending.is_noop() {
                self.fire(pending).await;
            }
            if closed {
                return;
            }
        }
    }

    fn record(&self, kind: &str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        if let Some(counter) = &self.outcomes {
            match counter.get_metric_with_label_values(&[kind, result]) {
                Ok(c) => c.inc(),
                Err(e) => {
                    tracing::debug!(error = %e, "the notify outcome counter has other labels")
                }
            }
        }
    }

    async fn fire<C: Change>(&self, change: C) {
        let config = &self.config;
        // Taken before any await: a change need not be Sync.
        let env = config.command.as_ref().map(|_| change.command_env());
        let body = config.webhook.as_ref().map(|_| change.webhook_body());
        drop(change);
        if let Some(path) = &config.touch {
            let result = touch(path);
            if let Err(e) = &result {
                tracing::warn!(file = %path.display(), error = %e, "cannot touch the notify file");
            }
            self.record("touch", result.is_ok());
        }
        if let Some(hook) = &config.signal {
            let result = send_signal(&hook.target, hook.signal);
            match &result {
                Ok(n) => tracing::info!(processes = n, signal = %hook.signal, "signalled the app"),
                Err(e) => tracing::warn!(error = %e, "cannot signal the app"),
            }
            self.record("signal", result.is_ok());
        }
        if let (Some(hook), Some(env)) = (&config.command, env) {
            let hook = hook.clone();
            let result = tokio::task::spawn_blocking(move || {
                let env: Vec<(&str, String)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                let cwd = hook.cwd.as_deref().unwrap_or(Path::new("."));
                hook.command.run(cwd, &env, hook.timeout, &|| false)
            })
            .await;
            let ok = matches!(result, Ok(Ok(())));
            match result {
                Ok(Err(e)) => tracing::warn!(error = %e, "the notify command failed"),
                Err(e) => tracing::warn!(error = %e, "the notify command's task failed"),
                Ok(Ok(())) => {}
            }
            self.record("command", ok);
        }
        if let (Some(hook), Some(body)) = (&config.webhook, body) {
            let ok = match &self.client {
                Some(client) => post_webhook(client, hook, &body).await,
                None => false,
            };
            self.record("webhook", ok);
        }
    }
}

async fn post_webhook(client: &reqwest::Client, hook: &Webhook, body: &serde_json::Value) -> bool {
    let mut delay = hook.backoff;
    for attempt in 1..=hook.attempts.max(1) {
        let result = client
            .post(&hook.url)
            .timeout(hook.timeout)
            .json(body)
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
            // The URL is operator config, not a credential store, but it may carry userinfo:
            // keep it out of the log.
            Err(e) => tracing::warn!(
                attempt,
                error = %crate::telemetry::redact_url(&e.without_url().to_string()),
                "webhook failed"
            ),
        }
        if attempt < hook.attempts {
            tokio::time::sleep(jittered(delay, 0.2)).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    }
    false
}

/// `base` spread by ±`fraction`, so that retries from many pods do not arrive in step.
fn jittered(base: Duration, fraction: f64) -> Duration {
    use rand::Rng;
    if base.is_zero() {
        return base;
    }
    base.mul_f64(rand::rng().random_range((1.0 - fraction)..=(1.0 + fraction)))
}

fn touch(path: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    file.set_modified(std::time::SystemTime::now())
}

/// Sends `signal` to the target now; returns how many processes got it. An error says why
/// none did (an unreadable pidfile, no process of that name, `kill` refused).
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

/// Processes (other than this one) whose `comm` or `argv[0]`'s last component is `name`.
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
        assert!(parse_signal("999").is_err());
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

    #[test]
    fn jitter_stays_within_bounds() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10), 0.2);
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
        assert_eq!(jittered(Duration::ZERO, 0.2), Duration::ZERO);
    }

    #[test]
    fn signal_errors_name_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.pid");
        let err = send_signal(&SignalTarget::Pidfile(missing), Signal::SIGHUP).unwrap_err();
        assert!(err.contains("none.pid"), "{err}");
        let garbage = dir.path().join("bad.pid");
        std::fs::write(&garbage, "not a pid\n").unwrap();
        let err = send_signal(&SignalTarget::Pidfile(garbage), Signal::SIGHUP).unwrap_err();
        assert!(err.contains("does not hold a pid"), "{err}");
        let err = send_signal(
            &SignalTarget::Name("no-such-process-name-x".into()),
            Signal::SIGHUP,
        )
        .unwrap_err();
        assert!(err.contains("no-such-process-name-x"), "{err}");
    }

    fn args(extra: &[&str]) -> Result<NotifyConfig, String> {
        use clap::Parser;
        #[derive(clap::Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            notify: NotifyArgs,
        }
        let mut all = vec!["t"];
        all.extend_from_slice(extra);
        let cli = Cli::try_parse_from(all).map_err(|e| e.to_string())?;
        cli.notify.to_config().map_err(|e| e.to_string())
    }

    #[test]
    fn flags_make_hooks_and_bad_ones_name_the_flag() {
        let c = args(&[]).unwrap();
        assert!(c.is_empty());
        assert_eq!(c.debounce, Duration::from_secs(1));
        let c = args(&[
            "--webhook-url",
            "http://127.0.0.1:1/hook",
            "--webhook-attempts",
            "0",
            "--notify-command",
            "sh -c 'kill -HUP 1'",
            "--notify-pidfile",
            "/run/app.pid",
            "--notify-signal",
            "usr1",
            "--notify-touch-file",
            "/tmp/t",
        ])
        .unwrap();
        assert_eq!(c.webhook.as_ref().unwrap().attempts, 1);
        assert_eq!(
            c.command.as_ref().unwrap().command.args,
            ["-c", "kill -HUP 1"]
        );
        assert_eq!(
            c.signal,
            Some(SignalHook {
                target: SignalTarget::Pidfile("/run/app.pid".into()),
                signal: Signal::SIGUSR1
            })
        );
        assert!(!c.is_empty());
        for (bad, flag) in [
            (&["--notify-signal", "BOGUS"][..], "--notify-signal"),
            (&["--webhook-url", "ftp://x"][..], "--webhook-url"),
            (&["--webhook-url", "not a url"][..], "--webhook-url"),
            (&["--notify-command", "sh -c 'x"][..], "--notify-command"),
            (
                &["--notify-process", "a", "--notify-pidfile", "b"][..],
                "--notify-pidfile",
            ),
        ] {
            let err = args(bad).unwrap_err();
            assert!(err.contains(flag), "{bad:?}: {err}");
        }
    }
}
