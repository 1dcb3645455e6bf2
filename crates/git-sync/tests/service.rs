//! The long-running service against a real git daemon / smart HTTP server: triggers,
//! force-push policies, deleted refs, the validation gate, notifications, repair, shutdown
//! in the middle of a sync and an unreachable remote.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use test_support::ports::free_port;
use test_support::process::{Process, Signal};

const LONG: &str = "1h";

fn is_published(root: &Path, sha: &str) -> bool {
    published(root, "current").as_deref() == Some(sha)
}

#[test]
fn post_sync_authenticated_by_token_or_hmac_and_sighup() {
    let fx = Fixture::new("cfg.git");
    let c1 = fx.commit("main", &[("a", "1")], "one");
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "hook-secret\n").unwrap();
    let root = dir.path().join("root");
    let gs = GitSync::start(
        &root,
        &[
            "--repo",
            &daemon.url("cfg.git"),
            "--period",
            LONG,
            "--sync-secret-file",
            secret.to_str().unwrap(),
        ],
    );
    wait::until(Duration::from_secs(10), "first publish", || {
        is_published(&root, &c1)
    });

    let c2 = fx.commit("main", &[("a", "2")], "two");
    let body = br#"{"ref":"refs/heads/main"}"#;
    let (status, _) = http_request(
        gs.admin_port,
        "POST",
        "/sync",
        &[("X-Sync-Token", "wrong")],
        body,
    );
    assert_eq!(status, 401);
    let (status, _) = http_request(
        gs.admin_port,
        "POST",
        "/sync",
        &[("X-Hub-Signature-256", "sha256=00")],
        body,
    );
    assert_eq!(status, 401);
    // Nothing happens, so nothing later can show it never will: watch for a while.
    wait::holds_for(
        Duration::from_millis(500),
        "an unauthenticated request must not sync",
        || is_published(&root, &c1),
    );

    let mut mac = Hmac::<Sha256>::new_from_slice(b"hook-secret").unwrap();
    mac.update(body);
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let (status, _) = http_request(
        gs.admin_port,
        "POST",
        "/sync",
        &[("X-Hub-Signature-256", &sig)],
        body,
    );
    assert_eq!(status, 202);
    wait::until(
        Duration::from_secs(10),
        "publish after signed POST /sync",
        || is_published(&root, &c2),
    );

    let c3 = fx.commit("main", &[("a", "3")], "three");
    let (status, _) = http_request(
        gs.admin_port,
        "POST",
        "/sync",
        &[("Authorization", "Bearer hook-secret")],
        b"",
    );
    assert_eq!(status, 202);
    wait::until(
        Duration::from_secs(10),
        "publish after bearer POST /sync",
        || is_published(&root, &c3),
    );

    let c4 = fx.commit("main", &[("a", "4")], "four");
    gs.signal(Signal::SIGHUP);
    wait::until(Duration::from_secs(10), "publish after SIGHUP", || {
        is_published(&root, &c4)
    });
    assert_eq!(
        gs.metric("gitsync_sync_requests_total{result=\"refused\"}"),
        Some(2.0)
    );
    assert_eq!(
        gs.metric("gitsync_sync_requests_total{result=\"accepted\"}"),
        Some(2.0)
    );
    assert_eq!(
        gs.metric(&format!("gitsync_published_revision_info{{sha=\"{c4}\"}}")),
        Some(1.0)
    );
    // The revision published before is not served at 0: its series is gone.
    assert_eq!(
        gs.metric(&format!("gitsync_published_revision_info{{sha=\"{c3}\"}}")),
        None
    );
    assert!(gs.metric("gitsync_last_success_timestamp_seconds") > Some(1.7e9));
}

#[test]
fn post_sync_without_secret_is_loopback_only_and_works() {
    let fx = Fixture::new("cfg.git");
    let c1 = fx.commit("main", &[("a", "1")], "one");
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let gs = GitSync::start(&root, &["--repo", &daemon.url("cfg.git"), "--period", LONG]);
    wait::until(Duration::from_secs(10), "first publish", || {
        is_published(&root, &c1)
    });
    let c2 = fx.commit("main", &[("a", "2")], "two");
    assert_eq!(
        http_request(gs.admin_port, "POST", "/sync", &[], b"").0,
        202
    );
    wait::until(Duration::from_secs(10), "publish", || {
        is_published(&root, &c2)
    });
}

#[test]
fn force_push_follow_is_published_and_counted_while_fast_forwards_are_not() {
    let fx = Fixture::new("cfg.git");
    fx.commit("main", &[("a", "1")], "one");
    let c2 = fx.commit("main", &[("a", "2")], "two");
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let gs = GitSync::start(
        &root,
        &[
            "--repo",
            &daemon.url("cfg.git"),
            "--ref",
            "main",
            "--depth",
            "1",
            "--period",
            "100ms",
        ],
    );
    wait::until(Duration::from_secs(10), "first publish", || {
        is_published(&root, &c2)
    });
    // a fast-forward by several commits at once, on a depth-1 repository: not a force-push
    fx.commit("main", &[("a", "3")], "three");
    fx.commit("main", &[("a", "4")], "four");
    let c5 = fx.commit("main", &[("a", "5")], "five");
    wait::until(Duration::from_secs(10), "fast-forward publish", || {
        is_published(&root, &c5)
    });
    let metrics = gs.metrics();
    assert_eq!(
        metrics.series("gitsync_force_pushes_total").count(),
        0,
        "a fast-forward was counted as a force-push: {metrics}"
    );
    let rewritten = fx.force_push_rewrite("main", &[("a", "rewritten")]);
    wait::until(Duration::from_secs(10), "force-push followed", || {
        is_published(&root, &rewritten)
    });
    assert_eq!(
        std::fs::read_to_string(root.join("current/a")).unwrap(),
        "rewritten"
    );
    wait::until(Duration::from_secs(5), "counted", || {
        gs.metric("gitsync_force_pushes_total{policy=\"follow\"}") == Some(1.0)
    });
}

#[test]
fn force_push_refuse_keeps_the_tree_until_history_continues() {
    let fx = Fixture::new("cfg.git");
    fx.commit("main", &[("a", "1")], "one");
    let c2 = fx.commit("main", &[("a", "2")], "two");
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let gs = GitSync::start(
        &root,
        &[
            "--repo",
            &daemon.url("cfg.git"),
            "--ref",
            "main",
            "--depth",
            "1",
            "--period",
            "100ms",
            "--force-push",
            "refuse",
        ],
    );
    wait::until(Duration::from_secs(10), "first publish", || {
        is_published(&root, &c2)
    });
    let rewritten = fx.force_push_rewrite("main", &[("a", "rewritten")]);
    wait::until(Duration::from_secs(10), "refusal counted", || {
        gs.metric("gitsync_force_pushes_total{policy=\"refuse\"}") >= Some(1.0)
    });
    assert!(
        is_published(&root, &c2),
        "refused history must not be published"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("current/a")).unwrap(),
        "2"
    );
    // held back at the next polls (every 100 ms), not re-counted at each of them
    wait::until(
        Duration::from_secs(10),
        "held back at the next three polls",
        || gs.metric("gitsync_syncs_total{result=\"held_back\"}") >= Some(3.0),
    );
    assert!(
        is_published(&root, &c2),
        "refused history must not be published"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("current/a")).unwrap(),
        "2"
    );
    assert_eq!(
        gs.metric("gitsync_force_pushes_total{policy=\"refuse\"}"),
        Some(1.0)
    );
    assert!(gs.logs().contains(&rewritten));
    // history continues from the published revision again: published
    git(&fx.work, &["reset", "-q", "--hard", &c2]);
    std::fs::write(fx.work.join("a"), "3").unwrap();
    git(&fx.work, &["commit", "-q", "-am", "three"]);
    git(&fx.work, &["push", "-q", "-f", "origin", "main"]);
    let c3 = git(&fx.work, &["rev-parse", "HEAD"]);
    wait::until(Duration::from_secs(10), "descendant published", || {
        is_published(&root, &c3)
    });
}

#[test]
fn deleted_branch_keeps_the_last_tree_and_counts_errors() {
    let fx = Fixture::new("cfg.git");
    fx.commit("main", &[("a", "main")], "main");
    let f1 = fx.commit("feature", &[("a", "feature")], "feature");
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let gs = GitSync::start(
        &root,
        &[
            "--repo",
            &daemon.url("cfg.git"),
            "--ref",
            "feature",
            "--period",
            "100ms",
            "--backoff-max",
            "200ms",
        ],
    );
    wait::until(Duration::from_secs(10), "first publish", || {
        is_published(&root, &f1)
    });
    git(&fx.work, &["push", "-q", "origin", "--delete", "feature"]);
    wait::until(Duration::from_secs(10), "errors", || {
        gs.metric("gitsync_syncs_total{result=\"error\"}") >= Some(2.0)
    });
    assert!(is_published(&root, &f1));
    assert_eq!(
        std::fs::read_to_string(root.join("current/a")).unwrap(),
        "feature"
    );
    assert!(
        gs.logs().contains("\"feature\" is not advertised"),
        "{}",
        gs.logs()
    );
    assert!(gs.metric("gitsync_consecutive_failures") >= Some(2.0));
}

#[test]
fn validation_refusal_publishes_nothing_and_holds_the_revision_back() {
    let fx = Fixture::new("cfg.git");
    let good1 = fx.commit("main", &[("app.conf", "good 1")], "good");
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ran = dir.path().join("validations");
    let validate = format!(
        "sh -c 'echo $GIT_SYNC_REV >> {}; grep -q good app.conf'",
        ran.display()
    );
    let gs = GitSync::start(
        &root,
        &[
            "--repo",
            &daemon.url("cfg.git"),
            "--period",
            "100ms",
            "--validate-command",
            &validate,
        ],
    );
    wait::until(Duration::from_secs(10), "first publish", || {
        is_published(&root, &good1)
    });
    let bad = fx.commit("main", &[("app.conf", "broken")], "bad");
    wait::until(Duration::from_secs(10), "refusal", || {
        gs.metric("gitsync_validations_refused_total") == Some(1.0)
    });
    assert!(is_published(&root, &good1));
    assert_eq!(
        std::fs::read_to_string(root.join("current/app.conf")).unwrap(),
        "good 1"
    );
    // validated once, then held back until the ref moves
    wait::until(
        Duration::from_secs(10),
        "held back at the next polls",
        || gs.metric("gitsync_syncs_total{result=\"held_back\"}") >= Some(2.0),
    );
    let runs = std::fs::read_to_string(&ran).unwrap();
    assert_eq!(runs.lines().filter(|l| *l == bad).count(), 1, "{runs}");
    assert_eq!(gs.metric("gitsync_validations_refused_total"), Some(1.0));
    assert!(is_published(&root, &good1));
    assert!(gs.logs().contains("validation refused"), "{}", gs.logs());
    // no staging directory left behind
    let trees: Vec<_> = std::fs::read_dir(root.join(".git-sync/trees"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        trees
            .iter()
            .all(|n| !n.to_string_lossy().starts_with(".staging")),
        "{trees:?}"
    );
    let good2 = fx.commit("main", &[("app.conf", "good 2")], "fixed");
    wait::until(Duration::from_secs(10), "fixed revision published", || {
        is_published(&root, &good2)
    });
}

fn spawn_trap_process(dir: &Path, name: &str) -> (Process, std::path::PathBuf) {
    let marker = dir.join(format!("{name}.hups"));
    let script = format!(
        "trap 'echo hup >> {}' HUP; while :; do sleep 0.05; done",
        marker.display()
    );
    // A HUP ignored on entry cannot be trapped by bash (a run under nohup ignores it), so the
    // child starts with the default disposition whatever the test runner inherited.
    let mut cmd = Command::new("env");
    cmd.args(["--default-signal=HUP", "bash", "-c"])
        .arg(format!("exec -a {name} bash -c \"{script}\""));
    let app = Process::spawn(name, cmd);
    // wait until bash has installed the trap (SIGHUP is bit 0 of the caught mask)
    let status = format!("/proc/{}/status", app.pid());
    wait::until(Duration::from_secs(10), "the trap", || {
        std::fs::read_to_string(&status)
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("SigCgt:"))?.to_string();
                u64::from_str_radix(line.trim_start_matches("SigCgt:").trim(), 16).ok()
            })
            .is_some_and(|mask| mask & 1 == 1)
    });
    (app, marker)
}

#[test]
fn notifications_webhook_with_retry_command_signal_by_name_touch_debounced() {
    let fx = Fixture::new("cfg.git");
    let c1 = fx.commit("main", &[("a", "1")], "one");
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let hook = Recorder::start(vec![500]); // the first delivery fails: retried
    let cmd_out = dir.path().join("cmd.out");
    let touch = dir.path().join("touched");
    let name = format!("gsapp{}", std::process::id());
    let (_app, hups) = spawn_trap_process(dir.path(), &name);
    let cmd = format!(
        "sh -c 'echo \"$GIT_SYNC_OLD $GIT_SYNC_NEW $(cat a)\" >> {}'",
        cmd_out.display()
    );
    let gs = GitSync::start(
        &root,
        &[
            "--repo",
            &daemon.url("cfg.git"),
            "--period",
            LONG,
            "--webhook-url",
            &format!("http://127.0.0.1:{}/reload", hook.port),
            "--notify-command",
            &cmd,
            "--notify-process",
            &name,
            "--notify-touch-file",
            touch.to_str().unwrap(),
            "--notify-debounce",
            "2s",
        ],
    );
    wait::until(Duration::from_secs(10), "first publish", || {
        is_published(&root, &c1)
    });
    wait::until(Duration::from_secs(10), "first webhook delivered", || {
        hook.requests.lock().unwrap().len() == 2
    });
    wait::until(Duration::from_secs(5), "signal", || {
        std::fs::read_to_string(&hups)
            .map(|s| s.lines().count())
            .unwrap_or(0)
            == 1
    });
    assert!(touch.exists());
    // three publishes in quick succession: one notification, old = before the burst
    let mut last = String::new();
    for i in 2..=4 {
        last = fx.commit("main", &[("a", &i.to_string())], "burst");
        assert_eq!(
            http_request(gs.admin_port, "POST", "/sync", &[], b"").0,
            202
        );
        wait::until(Duration::from_secs(10), "burst publish", || {
            is_published(&root, &last)
        });
    }
    wait::until(Duration::from_secs(10), "second webhook", || {
        hook.requests.lock().unwrap().len() == 3
    });
    // The hooks run in turn, the webhook last: once it is counted, the notification is done
    // (the trapped signal is written down by bash a moment later).
    wait::until(Duration::from_secs(10), "second webhook counted", || {
        gs.metric("gitsync_hooks_total{kind=\"webhook\",result=\"success\"}") == Some(2.0)
    });
    let hup_lines = || {
        std::fs::read_to_string(&hups)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    wait::until(Duration::from_secs(5), "second signal", || hup_lines() == 2);
    {
        let reqs = hook.requests.lock().unwrap();
        assert_eq!(reqs.len(), 3, "debounce: one notification for the burst");
        assert_eq!(reqs[0].method, "POST");
        assert_eq!(reqs[0].path, "/reload");
        let first: serde_json::Value = serde_json::from_slice(&reqs[1].body).unwrap();
        assert_eq!(first["old"], serde_json::Value::Null);
        assert_eq!(first["new"], c1.as_str());
        let burst: serde_json::Value = serde_json::from_slice(&reqs[2].body).unwrap();
        assert_eq!(burst["old"], c1.as_str());
        assert_eq!(burst["new"], last.as_str());
    }
    let lines = std::fs::read_to_string(&cmd_out).unwrap();
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        vec![format!(" {c1} 1"), format!("{c1} {last} 4")]
    );
    assert_eq!(hup_lines(), 2);
    for kind in ["webhook", "command", "signal", "touch"] {
        assert_eq!(
            gs.metric(&format!(
                "gitsync_hooks_total{{kind=\"{kind}\",result=\"success\"}}"
            )),
            Some(2.0),
            "{kind}"
        );
    }
    // Nothing else was sent after the burst's notification: the notifier sends in order, so
    // the next publish's notification is the next request, and it starts from the burst's end.
    let after = fx.commit("main", &[("a", "5")], "after the burst");
    assert_eq!(
        http_request(gs.admin_port, "POST", "/sync", &[], b"").0,
        202
    );
    wait::until(Duration::from_secs(10), "the next webhook", || {
        hook.requests.lock().unwrap().len() >= 4
    });
    let reqs = hook.requests.lock().unwrap();
    assert_eq!(reqs.len(), 4, "debounce: one notification for the burst");
    let next: serde_json::Value = serde_json::from_slice(&reqs[3].body).unwrap();
    assert_eq!(next["old"], last.as_str());
    assert_eq!(next["new"], after.as_str());
}

#[test]
fn notification_signal_by_pidfile_and_failures_counted() {
    let fx = Fixture::new("cfg.git");
    let c1 = fx.commit("main", &[("a", "1")], "one");
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let (app, hups) = spawn_trap_process(dir.path(), "pidfileapp");
    let pidfile = dir.path().join("app.pid");
    std::fs::write(&pidfile, format!("{}\n", app.pid())).unwrap();
    let dead = Recorder::start(vec![503, 503, 503]);
    let gs = GitSync::start(
        &root,
        &[
            "--repo",
            &daemon.url("cfg.git"),
            "--period",
            LONG,
            "--notify-pidfile",
            pidfile.to_str().unwrap(),
            "--notify-signal",
            "HUP",
            "--notify-debounce",
            "10ms",
            "--webhook-url",
            &format!("http://127.0.0.1:{}/", dead.port),
            "--webhook-attempts",
            "3",
        ],
    );
    wait::until(Duration::from_secs(10), "publish", || {
        is_published(&root, &c1)
    });
    wait::until(Duration::from_secs(5), "signal", || {
        std::fs::read_to_string(&hups)
            .map(|s| s.lines().count())
            .unwrap_or(0)
            == 1
    });
    wait::until(Duration::from_secs(15), "webhook failure counted", || {
        gs.metric("gitsync_hooks_total{kind=\"webhook\",result=\"failure\"}") == Some(1.0)
    });
    assert_eq!(dead.requests.lock().unwrap().len(), 3, "three attempts");
    assert_eq!(
        gs.metric("gitsync_hooks_total{kind=\"signal\",result=\"success\"}"),
        Some(1.0)
    );
}

#[test]
fn corrupt_private_repo_and_broken_link_are_repaired_on_start() {
    let fx = Fixture::new("cfg.git");
    let c1 = fx.commit("main", &[("a", "1")], "one");
    let daemon = GitDaemon::start(&fx.base());
    let url = daemon.url("cfg.git");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let (status, logs) = one_time(&root, &["--repo", &url]);
    assert!(status.success(), "{logs}");
    // overwrite every object file of the private repository with garbage
    let objects = root.join(".git-sync/repo.git/objects");
    let mut damaged = 0;
    for entry in walk(&objects) {
        std::fs::write(&entry, b"garbage").unwrap();
        damaged += 1;
    }
    assert!(damaged > 0);
    let c2 = fx.commit("main", &[("a", "2")], "two");
    let (status, logs) = one_time(&root, &["--repo", &url]);
    assert!(status.success(), "{logs}");
    assert!(is_published(&root, &c2));
    assert!(logs.contains("damaged"), "{logs}");

    // the private repository removed entirely, and the published tree deleted: broken link
    std::fs::remove_dir_all(root.join(".git-sync/repo.git")).unwrap();
    std::fs::remove_dir_all(root.join(".git-sync/trees").join(&c2)).unwrap();
    let (status, logs) = one_time(&root, &["--repo", &url]);
    assert!(status.success(), "{logs}");
    assert!(is_published(&root, &c2));
    assert_eq!(
        std::fs::read_to_string(root.join("current/a")).unwrap(),
        "2"
    );
    assert!(logs.contains("removed_broken_link: true"), "{logs}");
    assert_eq!(c1.len(), 40);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn remote_down_keeps_the_tree_and_fails_readiness_after_the_staleness_limit() {
    let fx = Fixture::new("cfg.git");
    let c1 = fx.commit("main", &[("a", "1")], "one");
    let http = GitHttp::start(&fx.base(), None);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let gs = GitSync::start(
        &root,
        &[
            "--repo",
            &http.url("cfg.git"),
            "--period",
            "100ms",
            "--stale-after",
            "1500ms",
            "--backoff-max",
            "200ms",
        ],
    );
    wait::until(Duration::from_secs(10), "publish", || {
        is_published(&root, &c1)
    });
    wait::until(Duration::from_secs(5), "ready", || gs.ready());
    http.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let down_at = Instant::now();
    wait::until(Duration::from_secs(5), "failures", || {
        gs.metric("gitsync_syncs_total{result=\"error\"}") >= Some(1.0)
    });
    assert!(gs.ready(), "still ready within the staleness limit");
    wait::until(Duration::from_secs(10), "not ready after the limit", || {
        !gs.ready()
    });
    assert!(
        down_at.elapsed() >= Duration::from_millis(1300),
        "not ready too early: {:?}",
        down_at.elapsed()
    );
    assert!(is_published(&root, &c1), "the last good tree stays");
    assert_eq!(
        std::fs::read_to_string(root.join("current/a")).unwrap(),
        "1"
    );
    let (_, verbose) = http_get(gs.admin_port, "/readyz?verbose");
    assert!(verbose.contains("no successful sync"), "{verbose}");
    http.down.store(false, std::sync::atomic::Ordering::SeqCst);
    wait::until(Duration::from_secs(10), "ready again", || gs.ready());
}

#[test]
fn sigterm_in_the_middle_of_a_sync_never_leaves_a_broken_link() {
    let fx = Fixture::new("big.git");
    // a few thousand files so that fetch + export take a while
    for i in 0..1500 {
        let d = fx.work.join(format!("d{}", i % 30));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("f{i}")), format!("{i}\n").repeat(2000)).unwrap();
    }
    let c1 = fx.commit("main", &[], "big");
    let http = GitHttp::start(&fx.base(), None);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let check_link = |root: &Path| {
        match std::fs::symlink_metadata(root.join("current")) {
            Err(_) => {} // nothing published yet: fine
            Ok(_) => {
                let n = std::fs::read_dir(root.join("current/d0"))
                    .expect("link resolves to a complete tree")
                    .count();
                assert_eq!(n, 50, "a published tree is complete");
            }
        }
    };
    let mut interrupted = 0;
    for (i, delay_ms) in [30u64, 80, 150, 250, 400].into_iter().enumerate() {
        if i == 3 {
            // a sync of a new revision on top of a published one
            fx.commit("main", &[("d0/f0", "changed")], "change");
        }
        let mut gs = GitSync::start(&root, &["--repo", &http.url("big.git"), "--period", LONG]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        gs.signal(Signal::SIGTERM);
        let status = gs.wait_exit(Duration::from_secs(30));
        assert!(
            status.success(),
            "exit after SIGTERM: {status:?}\n{}",
            gs.logs()
        );
        if !gs.logs().contains(" published ") {
            interrupted += 1;
        }
        check_link(&root);
    }
    assert!(
        interrupted >= 1,
        "no run was stopped in the middle of a sync"
    );
    let (status, logs) = one_time(&root, &["--repo", &http.url("big.git")]);
    assert!(status.success(), "{logs}");
    check_link(&root);
    assert_ne!(published(&root, "current").as_deref(), Some(c1.as_str()));
    let leftovers: Vec<_> = std::fs::read_dir(root.join(".git-sync/trees"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".staging"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn max_failures_exits_non_zero_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    // a port nothing listens on
    let url = format!("git://127.0.0.1:{}/none.git", free_port());
    let mut gs = GitSync::start(
        &root,
        &[
            "--repo",
            &url,
            "--max-failures",
            "2",
            "--backoff-max",
            "100ms",
            "--period",
            "100ms",
        ],
    );
    let status = gs.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1));
    let logs = gs.logs();
    assert!(
        logs.contains("giving up after 3 consecutive failed syncs"),
        "{logs}"
    );
    assert_eq!(logs.matches("sync failed").count(), 3, "{logs}");
    assert_eq!(published(&root, "current"), None);
}
