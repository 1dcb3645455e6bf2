#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The notifier against real receivers: an HTTP server for the webhook, a real command, a real
//! process for the signal (by pidfile and by name), a file to touch. Bursts are debounced into
//! one notification, a change and its revert send nothing, failures are retried and counted,
//! and shutdown sends what is pending at once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use prometheus::IntCounterVec;
use sidecar_kit::command::CommandSpec;
use sidecar_kit::notify::{
    Change, HookCommand, Notifier, NotifyConfig, Signal, SignalHook, SignalTarget, Webhook,
};
use sidecar_kit::shutdown::Shutdown;
use test_support::process::Process;
use test_support::wait;

/// A revision moving from `old` to `new`; a burst keeps the first `old` and the last `new`.
#[derive(Debug)]
struct Moved {
    old: Option<u32>,
    new: u32,
}

impl Change for Moved {
    fn merge(&mut self, later: Self) {
        self.new = later.new;
    }
    fn is_noop(&self) -> bool {
        self.old == Some(self.new)
    }
    fn webhook_body(&self) -> serde_json::Value {
        serde_json::json!({ "old": self.old, "new": self.new })
    }
    fn command_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "MOVED_OLD".into(),
                self.old.map(|o| o.to_string()).unwrap_or_default(),
            ),
            ("MOVED_NEW".into(), self.new.to_string()),
        ]
    }
}

fn moved(old: Option<u32>, new: u32) -> Moved {
    Moved { old, new }
}

/// A webhook receiver: answers `statuses` in turn, then 200; records every body.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    async fn start(statuses: Vec<u16>) -> Receiver {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let statuses = Arc::new(Mutex::new(statuses.into_iter()));
        let recorded = bodies.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let recorded = recorded.clone();
                let statuses = statuses.clone();
                async move {
                    recorded
                        .lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                    let status = statuses.lock().unwrap().next().unwrap_or(200);
                    StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, bodies }
    }

    fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }
}

/// A process that appends a line to `<dir>/<name>.hups` on each SIGHUP; started as a copy of
/// `sh` named `name`, so it can be found by name too. Killed on drop.
struct TrapProcess {
    process: Process,
    hups: PathBuf,
}

impl TrapProcess {
    fn start(dir: &Path, name: &str) -> TrapProcess {
        let program = dir.join(name);
        std::fs::copy("/bin/sh", &program).unwrap();
        let hups = dir.join(format!("{name}.hups"));
        let ready = dir.join(format!("{name}.ready"));
        let script = format!(
            "trap 'echo hup >> {}' HUP; touch {}; while :; do sleep 0.05; done",
            hups.display(),
            ready.display()
        );
        let mut cmd = Command::new(&program);
        cmd.arg("-c").arg(script);
        let process = Process::spawn(name, cmd);
        wait::until(WAIT, "the trap process is ready", || ready.exists());
        TrapProcess { process, hups }
    }

    fn hups(&self) -> usize {
        std::fs::read_to_string(&self.hups)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }
}

const WAIT: Duration = Duration::from_secs(15);

async fn wait_until_async(what: &str, mut done: impl FnMut() -> bool) {
    wait::until_async(WAIT, what, async || done()).await;
}

fn outcomes() -> IntCounterVec {
    let registry = prometheus::Registry::new();
    sidecar_kit::metrics::counter_vec(&registry, "hooks_total", "test", &["kind", "result"])
        .unwrap()
}

fn count(outcomes: &IntCounterVec, kind: &str, result: &str) -> u64 {
    outcomes.with_label_values(&[kind, result]).get()
}

fn webhook(url: &str, attempts: u32) -> Webhook {
    Webhook {
        url: url.to_owned(),
        timeout: Duration::from_secs(5),
        attempts,
        backoff: Duration::from_millis(20),
    }
}

#[tokio::test]
async fn a_burst_is_one_notification_through_every_hook() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(vec![500]).await; // the first try fails: retried
    let app = TrapProcess::start(dir.path(), "kitpidapp");
    let pidfile = dir.path().join("app.pid");
    std::fs::write(&pidfile, format!("{}\n", app.process.pid())).unwrap();
    let out = dir.path().join("cmd.out");
    let touched = dir.path().join("touched");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let command = CommandSpec::parse(&format!(
        "sh -c 'echo \"$MOVED_OLD $MOVED_NEW $(pwd)\" >> {}'",
        out.display()
    ))
    .unwrap();
    let config = NotifyConfig {
        webhook: Some(webhook(&receiver.url, 3)),
        command: Some(HookCommand {
            command,
            timeout: Duration::from_secs(10),
            cwd: Some(work.clone()),
        }),
        signal: Some(SignalHook {
            target: SignalTarget::Pidfile(pidfile),
            signal: Signal::SIGHUP,
        }),
        touch: Some(touched.clone()),
        debounce: Duration::from_millis(300),
    };
    let counter = outcomes();
    let shutdown = Shutdown::new();
    let notifier = Notifier::spawn(config, Some(counter.clone()), &shutdown);

    notifier.notify(moved(None, 1));
    wait_until_async("the first notification", || receiver.bodies().len() == 2).await;
    assert!(touched.exists());
    wait_until_async("the first signal", || app.hups() == 1).await;

    // Three changes at once: one notification, from before the burst to its end.
    for (old, new) in [(1, 2), (2, 3), (3, 4)] {
        notifier.notify(moved(Some(old), new));
    }
    notifier.finish().await;

    let bodies = receiver.bodies();
    assert_eq!(
        bodies,
        vec![
            serde_json::json!({"old": null, "new": 1}),
            serde_json::json!({"old": null, "new": 1}),
            serde_json::json!({"old": 1, "new": 4}),
        ]
    );
    let lines = std::fs::read_to_string(&out).unwrap();
    let work = work.canonicalize().unwrap();
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        vec![
            format!(" 1 {}", work.display()),
            format!("1 4 {}", work.display())
        ]
    );
    // The signal is sent; the trap runs once the app's current `sleep` ends.
    wait_until_async("the second signal", || app.hups() == 2).await;
    for kind in ["webhook", "command", "signal", "touch"] {
        assert_eq!(count(&counter, kind, "success"), 2, "{kind}");
        assert_eq!(count(&counter, kind, "failure"), 0, "{kind}");
    }
}

#[tokio::test]
async fn a_change_and_its_revert_send_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let touched = dir.path().join("touched");
    let config = NotifyConfig {
        touch: Some(touched.clone()),
        debounce: Duration::from_millis(200),
        ..NotifyConfig::default()
    };
    let counter = outcomes();
    let notifier = Notifier::spawn(config, Some(counter.clone()), &Shutdown::new());
    notifier.notify(moved(Some(1), 2));
    notifier.notify(moved(Some(2), 1));
    notifier.finish().await;
    assert!(!touched.exists());
    assert_eq!(count(&counter, "touch", "success"), 0);
}

#[tokio::test]
async fn failures_are_retried_then_counted_and_the_other_hooks_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start(vec![503, 503, 503]).await;
    let touched = dir.path().join("touched");
    let config = NotifyConfig {
        webhook: Some(webhook(&receiver.url, 3)),
        command: Some(HookCommand {
            command: CommandSpec::parse("sh -c 'exit 3'").unwrap(),
            timeout: Duration::from_secs(10),
            cwd: None,
        }),
        signal: Some(SignalHook {
            target: SignalTarget::Pidfile(dir.path().join("missing.pid")),
            signal: Signal::SIGHUP,
        }),
        touch: Some(touched.clone()),
        debounce: Duration::from_millis(10),
    };
    let counter = outcomes();
    let notifier = Notifier::spawn(config, Some(counter.clone()), &Shutdown::new());
    notifier.notify(moved(None, 1));
    notifier.finish().await;
    assert_eq!(receiver.bodies().len(), 3, "three tries");
    assert_eq!(count(&counter, "webhook", "failure"), 1);
    assert_eq!(count(&counter, "command", "failure"), 1);
    assert_eq!(count(&counter, "signal", "failure"), 1);
    assert_eq!(count(&counter, "touch", "success"), 1);
    assert!(touched.exists());
}

#[tokio::test]
async fn signal_by_process_name() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("kitapp{}", std::process::id());
    let app = TrapProcess::start(dir.path(), &name);
    let config = NotifyConfig {
        signal: Some(SignalHook {
            target: SignalTarget::Name(name),
            signal: Signal::SIGHUP,
        }),
        debounce: Duration::from_millis(10),
        ..NotifyConfig::default()
    };
    let counter = outcomes();
    let notifier = Notifier::spawn(config, Some(counter.clone()), &Shutdown::new());
    notifier.notify(moved(None, 1));
    notifier.finish().await;
    assert_eq!(count(&counter, "signal", "success"), 1);
    wait_until_async("the signal", || app.hups() == 1).await;
}

#[tokio::test]
async fn shutdown_sends_what_is_pending_without_waiting_for_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let touched = dir.path().join("touched");
    let config = NotifyConfig {
        touch: Some(touched.clone()),
        debounce: Duration::from_secs(3600),
        ..NotifyConfig::default()
    };
    let shutdown = Shutdown::new();
    let notifier = Notifier::spawn(config, None, &shutdown);
    notifier.notify(moved(None, 1));
    notifier.notify(moved(Some(1), 2));
    shutdown.token().cancel();
    shutdown.tracker().close();
    tokio::time::timeout(Duration::from_secs(10), shutdown.tracker().wait())
        .await
        .expect("the notifier ends at shutdown");
    assert!(touched.exists());
    // The notifier is gone; a late change is dropped, not a panic.
    notifier.notify(moved(Some(2), 3));
}
