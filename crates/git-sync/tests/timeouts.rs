//! `--sync-timeout` against servers that accept the connection and then send nothing, over
//! every transport: git daemon, smart HTTP with basic auth, and sshd, each behind a proxy
//! that can turn silent. The sync must fail at its deadline (not when the connection dies),
//! be counted, leave the published tree alone, and the next sync must work once the server
//! answers again.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use test_support::process::Signal;

const TIMEOUT: Duration = Duration::from_secs(2);
/// Scheduling slack on a loaded 2-core machine: the worker is killed within 100 ms of the
/// deadline, the rest is the kernel and the proxy's threads.
const SLACK: Duration = Duration::from_millis(1500);
const PASSWORD: &str = "t1meout-Pa55word-qx";

struct Case<'a> {
    url: String,
    args: Vec<String>,
    proxy: &'a SilentSwitch,
    fx: &'a Fixture,
    /// When Some, readiness must fail after this while the server stays silent.
    stale_after: Option<Duration>,
}

fn silent_server_times_out_and_the_next_sync_works(case: Case<'_>) {
    let c1 = case.fx.commit("main", &[("a", "1")], "one");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let stale_after = case.stale_after.unwrap_or(Duration::from_secs(600));
    let mut args = vec![
        "--repo".to_string(),
        case.url.clone(),
        "--ref".into(),
        "main".into(),
        "--sync-timeout".into(),
        "2s".into(),
        "--period".into(),
        "300ms".into(),
        "--backoff-max".into(),
        "300ms".into(),
        "--stale-after".into(),
        format!("{}ms", stale_after.as_millis()),
    ];
    args.extend(case.args.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gs = GitSync::start(&root, &args);
    wait::Wait::new("first publish")
        .timeout(Duration::from_secs(20))
        .context(|| gs.logs())
        .until(|| published(&root, "current").as_deref() == Some(c1.as_str()));
    wait::until(Duration::from_secs(5), "ready", || gs.ready());

    case.proxy.set_silent(true);
    let silent_at = Instant::now();
    let c2 = case.fx.commit("main", &[("a", "2")], "two");
    wait::until(Duration::from_secs(15), "a timed-out sync", || {
        gs.metric("gitsync_syncs_total{result=\"timeout\"}") >= Some(1.0)
    });
    // The worker was stopped at the deadline: the silent connection was closed by git-sync
    // about TIMEOUT after it was opened (the sync started just before it connected).
    wait::until(
        Duration::from_secs(5),
        "the silent connection closed",
        || {
            case.proxy
                .silent_connections()
                .iter()
                .any(|(_, closed)| closed.is_some())
        },
    );
    for (accepted, closed) in case.proxy.silent_connections() {
        let Some(closed) = closed else { continue };
        let held = closed - accepted;
        assert!(
            held <= TIMEOUT + SLACK && held >= TIMEOUT - Duration::from_millis(500),
            "a silent connection was held {held:?} (timeout {TIMEOUT:?})"
        );
    }
    // A timeout is not counted as an error too: no error was ever counted.
    assert_eq!(
        gs.metric("gitsync_syncs_total{result=\"error\"}"),
        None,
        "{}",
        gs.logs()
    );
    assert!(gs.metric("gitsync_consecutive_failures") >= Some(1.0));
    // the published tree is untouched
    assert_eq!(published(&root, "current").as_deref(), Some(c1.as_str()));
    assert_eq!(
        std::fs::read_to_string(root.join("current/a")).unwrap(),
        "1"
    );
    let logs = gs.logs();
    let remote = format!("127.0.0.1:{}", case.proxy.port);
    assert!(
        logs.contains("did not finish within --sync-timeout") && logs.contains(&remote),
        "the error names the remote: {logs}"
    );
    assert!(!logs.contains(PASSWORD), "a secret reached the log: {logs}");
    assert!(!gs.metrics().text().contains(PASSWORD));
    // one worker at most, however many syncs timed out
    let pid = gs.pid();
    wait::until(Duration::from_secs(10), "a second timeout", || {
        gs.metric("gitsync_syncs_total{result=\"timeout\"}") >= Some(2.0)
    });
    assert!(children_of(pid).len() <= 1, "{:?}", children_of(pid));

    match case.stale_after {
        Some(limit) => {
            // documented: ready within the staleness limit, not ready after it
            wait::until(limit + Duration::from_secs(10), "not ready", || !gs.ready());
            assert!(
                silent_at.elapsed() >= limit - Duration::from_millis(400),
                "not ready too early: {:?}",
                silent_at.elapsed()
            );
        }
        None => assert!(gs.ready(), "still ready within the staleness limit"),
    }

    // the server answers again: the next sync publishes the new revision
    case.proxy.set_silent(false);
    wait::Wait::new("publish after the timeouts")
        .timeout(Duration::from_secs(15))
        .context(|| gs.logs())
        .until(|| published(&root, "current").as_deref() == Some(c2.as_str()));
    wait::until(Duration::from_secs(5), "ready again", || gs.ready());
    assert_eq!(
        std::fs::read_to_string(root.join("current/a")).unwrap(),
        "2"
    );
    // The link is swapped inside the sync; the gauge is set once the sync returns, a moment later.
    wait::until(
        Duration::from_secs(5),
        "consecutive failures back to 0",
        || gs.metric("gitsync_consecutive_failures") == Some(0.0),
    );
    assert_eq!(gs.metric("gitsync_syncs_total{result=\"error\"}"), None);
}

#[test]
fn git_daemon_that_sends_nothing() {
    let fx = Fixture::new("cfg.git");
    let daemon = GitDaemon::start(&fx.base());
    let proxy = SilentSwitch::start(daemon.port);
    silent_server_times_out_and_the_next_sync_works(Case {
        url: format!("git://127.0.0.1:{}/cfg.git", proxy.port),
        args: vec![],
        proxy: &proxy,
        fx: &fx,
        stale_after: Some(Duration::from_secs(6)),
    });
}

#[test]
fn http_server_that_sends_nothing() {
    let fx = Fixture::new("cfg.git");
    let http = GitHttp::start(&fx.base(), Some(("alice", PASSWORD)));
    let proxy = SilentSwitch::start(http.port);
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    silent_server_times_out_and_the_next_sync_works(Case {
        url: format!("http://alice@127.0.0.1:{}/cfg.git", proxy.port),
        args: vec![
            "--username".into(),
            "alice".into(),
            "--password-file".into(),
            pw.display().to_string(),
        ],
        proxy: &proxy,
        fx: &fx,
        stale_after: None,
    });
}

/// A known_hosts file pinning the sshd's host key for the proxy's port.
fn known_hosts_for(sshd: &Sshd, port: u16, dir: &Path) -> std::path::PathBuf {
    let host_pub = std::fs::read_to_string(sshd.dir.path().join("host_key.pub")).unwrap();
    let mut fields = host_pub.split_whitespace();
    let file = dir.join("known_hosts");
    std::fs::write(
        &file,
        format!(
            "[127.0.0.1]:{port} {} {}\n",
            fields.next().unwrap(),
            fields.next().unwrap()
        ),
    )
    .unwrap();
    file
}

#[test]
fn sshd_that_never_sends_its_banner() {
    let fx = Fixture::new("cfg.git");
    let sshd = Sshd::start();
    let proxy = SilentSwitch::start(sshd.port);
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = known_hosts_for(&sshd, proxy.port, dir.path());
    silent_server_times_out_and_the_next_sync_works(Case {
        url: format!("ssh://root@127.0.0.1:{}{}", proxy.port, fx.bare.display()),
        args: vec![
            "--ssh-key-file".into(),
            sshd.client_key.display().to_string(),
            "--ssh-known-hosts-file".into(),
            known_hosts.display().to_string(),
        ],
        proxy: &proxy,
        fx: &fx,
        stale_after: None,
    });
}

#[test]
fn one_time_against_a_silent_server_exits_non_zero_at_the_timeout() {
    let fx = Fixture::new("cfg.git");
    fx.commit("main", &[("a", "1")], "one");
    let daemon = GitDaemon::start(&fx.base());
    let proxy = SilentSwitch::start(daemon.port);
    proxy.set_silent(true);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let url = format!("git://127.0.0.1:{}/cfg.git", proxy.port);
    let started = Instant::now();
    let (status, logs) = one_time(&root, &["--repo", &url, "--sync-timeout", "2s"]);
    let took = started.elapsed();
    assert_eq!(status.code(), Some(1), "{logs}");
    assert!(
        took >= TIMEOUT && took <= TIMEOUT + Duration::from_secs(4),
        "{took:?}"
    );
    assert!(
        logs.contains("did not finish within --sync-timeout") && logs.contains(&url),
        "{logs}"
    );
    assert_eq!(published(&root, "current"), None);
}

#[test]
fn shutdown_during_a_stuck_sync_exits_promptly() {
    let fx = Fixture::new("cfg.git");
    let c1 = fx.commit("main", &[("a", "1")], "one");
    let daemon = GitDaemon::start(&fx.base());
    let proxy = SilentSwitch::start(daemon.port);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let url = format!("git://127.0.0.1:{}/cfg.git", proxy.port);
    let mut gs = GitSync::start(
        &root,
        &["--repo", &url, "--sync-timeout", "60s", "--period", "200ms"],
    );
    wait::until(Duration::from_secs(20), "first publish", || {
        published(&root, "current").as_deref() == Some(c1.as_str())
    });
    proxy.set_silent(true);
    fx.commit("main", &[("a", "2")], "two");
    // The worker is the process that opened the silent connection: it exists from now on.
    wait::until(
        Duration::from_secs(10),
        "a sync stuck on the server",
        || !proxy.silent_connections().is_empty(),
    );
    let pid = gs.pid();
    let workers = children_of(pid);
    assert_eq!(workers.len(), 1, "one network worker: {workers:?}");
    let asked = Instant::now();
    gs.signal(Signal::SIGTERM);
    let status = gs.wait_exit(Duration::from_secs(10));
    let took = asked.elapsed();
    assert!(status.success(), "{status:?}\n{}", gs.logs());
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    for worker in workers {
        wait::until(Duration::from_secs(2), "the worker gone", || {
            !is_running(worker)
        });
    }
    assert_eq!(published(&root, "current").as_deref(), Some(c1.as_str()));
    // the next start works on what the killed worker left
    proxy.set_silent(false);
    let (status, logs) = one_time(&root, &["--repo", &url]);
    assert!(status.success(), "{logs}");
    assert_ne!(published(&root, "current").as_deref(), Some(c1.as_str()));
}

/// Seconds from a `Duration`'s Debug form (`2.0012s`, `950.1ms`).
fn debug_seconds(text: &str) -> Option<f64> {
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse::<f64>().ok().map(|v| v / 1000.0);
    }
    text.strip_suffix('s')?.parse().ok()
}

/// Files in the private repository that a killed fetch leaves behind.
fn leftovers(root: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.join(".git-sync/repo.git")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if path.is_dir() {
                dirs.push(path);
            } else if name.ends_with(".lock") || name.contains("_git2_") {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn a_server_trickling_the_pack_is_stopped_at_the_timeout_and_its_leftovers_removed() {
    let fx = Fixture::new("cfg.git");
    let c1 = fx.commit("main", &[("a", "1")], "one");
    let daemon = GitDaemon::start(&fx.base());
    let proxy = SilentSwitch::start(daemon.port);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let url = format!("git://127.0.0.1:{}/cfg.git", proxy.port);
    let gs = GitSync::start(
        &root,
        &[
            "--repo",
            &url,
            "--sync-timeout",
            "2s",
            "--period",
            "300ms",
            "--backoff-max",
            "300ms",
        ],
    );
    wait::until(Duration::from_secs(20), "first publish", || {
        published(&root, "current").as_deref() == Some(c1.as_str())
    });
    // a pack far larger than what passes at full speed: incompressible content
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let noise: String = (0..200_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'!' + (state % 90) as u8)
        })
        .collect();
    let c2 = fx.commit("main", &[("big", &noise)], "big");
    proxy.set_trickle();
    wait::until(Duration::from_secs(20), "two timed-out syncs", || {
        gs.metric("gitsync_syncs_total{result=\"timeout\"}") >= Some(2.0)
    });
    let logs = gs.logs();
    let took: Vec<f64> = logs
        .lines()
        .filter(|l| l.contains("did not finish within --sync-timeout"))
        .filter_map(|l| l.split("took=").nth(1))
        .filter_map(|t| debug_seconds(t.split_whitespace().next()?))
        .collect();
    assert!(took.len() >= 2, "{logs}");
    for t in &took {
        assert!(
            *t >= TIMEOUT.as_secs_f64() && *t <= (TIMEOUT + SLACK).as_secs_f64(),
            "a trickled sync took {t} s: {logs}"
        );
    }
    assert_eq!(published(&root, "current").as_deref(), Some(c1.as_str()));
    proxy.set_silent(false);
    wait::until(Duration::from_secs(20), "publish at full speed", || {
        published(&root, "current").as_deref() == Some(c2.as_str())
    });
    assert_eq!(
        std::fs::read_to_string(root.join("current/big")).unwrap(),
        noise
    );
    let left = leftovers(&root);
    assert!(
        left.is_empty(),
        "left behind by the killed workers: {left:?}"
    );
}

#[test]
fn leftovers_of_a_killed_fetch_do_not_block_the_next_one() {
    let fx = Fixture::new("cfg.git");
    fx.commit("main", &[("a", "1")], "one");
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let url = daemon.url("cfg.git");
    let (status, logs) = one_time(&root, &["--repo", &url]);
    assert!(status.success(), "{logs}");
    // what a SIGKILL in the middle of a fetch leaves: locks, a half-received pack, and an
    // index whose pack was never renamed into place
    let repo = root.join(".git-sync/repo.git");
    for file in [
        "refs/git-sync/target.lock",
        "shallow.lock",
        "packed-refs.lock",
        "objects/pack/pack_git2_0123456789abcdef",
        "objects/pack/pack-0000000000000000000000000000000000000000.idx",
    ] {
        std::fs::write(repo.join(file), b"partial").unwrap();
    }
    let c2 = fx.commit("main", &[("a", "2")], "two");
    let (status, logs) = one_time(&root, &["--repo", &url]);
    assert!(status.success(), "{logs}");
    assert_eq!(published(&root, "current").as_deref(), Some(c2.as_str()));
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
    assert!(
        !repo
            .join("objects/pack/pack-0000000000000000000000000000000000000000.idx")
            .exists()
    );
}
