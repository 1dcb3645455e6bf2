//! Authenticated transports: smart HTTP with basic auth (password file read on every sync,
//! never logged) and ssh with a pinned host key and no HOME.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

const PASSWORD: &str = "s3cr3t-Pa55word-zq";

#[test]
fn http_basic_auth_password_file_reread_and_never_logged() {
    let fx = Fixture::new("cfg.git");
    let first = fx.commit("main", &[("a", "1")], "one");
    let http = GitHttp::start(&fx.base(), Some(("alice", PASSWORD)));
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "wrong\n").unwrap();
    let root = dir.path().join("root");
    let url = http.url("cfg.git");
    let gs = GitSync::start(
        &root,
        &[
            "--repo",
            &url,
            "--ref",
            "main",
            "--username",
            "alice",
            "--password-file",
            pw.to_str().unwrap(),
            "--period",
            "200ms",
        ],
    );
    // wrong password: failures counted, nothing published, not ready
    wait::until(Duration::from_secs(10), "a failed sync", || {
        gs.metric("gitsync_syncs_total{result=\"error\"}") >= Some(1.0)
    });
    assert_eq!(published(&root, "current"), None);
    assert!(!gs.ready());
    // rotate the secret file: picked up without a restart
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    wait::until(Duration::from_secs(10), "publish after rotation", || {
        published(&root, "current").as_deref() == Some(first.as_str())
    });
    wait::until(Duration::from_secs(5), "ready", || gs.ready());
    let second = fx.commit("main", &[("a", "2")], "two");
    wait::until(Duration::from_secs(10), "second publish", || {
        published(&root, "current").as_deref() == Some(second.as_str())
    });
    assert_eq!(
        std::fs::read_to_string(root.join("current/a")).unwrap(),
        "2"
    );
    let logs = gs.logs();
    let metrics = gs.metrics();
    assert!(!logs.contains(PASSWORD), "password leaked into logs");
    assert!(
        !metrics.text().contains(PASSWORD),
        "password leaked into metrics"
    );
    assert!(!logs.contains("wrong"), "old password leaked into logs");
    assert!(logs.contains("published"), "{logs}");
}

#[test]
fn ssh_key_auth_with_pinned_host_key_and_no_home() {
    let fx = Fixture::new("cfg.git");
    let sha = fx.commit("main", &[("a", "ssh")], "one");
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let url = sshd.url(&fx.bare);
    let key = sshd.client_key.to_str().unwrap();
    let root = dir.path().join("root");
    let (status, logs) = one_time(
        &root,
        &[
            "--repo",
            &url,
            "--ssh-key-file",
            key,
            "--ssh-known-hosts-file",
            sshd.known_hosts.to_str().unwrap(),
            "--depth",
            "1",
        ],
    );
    assert!(status.success(), "{logs}");
    assert_eq!(published(&root, "current").as_deref(), Some(sha.as_str()));
    assert_eq!(
        std::fs::read_to_string(root.join("current/a")).unwrap(),
        "ssh"
    );

    // a known_hosts pinning another key: refused, nothing published
    let wrong = dir.path().join("wrong_known_hosts");
    let other_pub = std::fs::read_to_string(sshd.dir.path().join("client_key.pub")).unwrap();
    let mut f = other_pub.split_whitespace();
    std::fs::write(
        &wrong,
        format!(
            "[127.0.0.1]:{} {} {}\n",
            sshd.port,
            f.next().unwrap(),
            f.next().unwrap()
        ),
    )
    .unwrap();
    let root2 = dir.path().join("root2");
    let (status, logs) = one_time(
        &root2,
        &[
            "--repo",
            &url,
            "--ssh-key-file",
            key,
            "--ssh-known-hosts-file",
            wrong.to_str().unwrap(),
        ],
    );
    assert!(!status.success());
    assert!(logs.contains("does not match"), "{logs}");
    assert_eq!(published(&root2, "current"), None);

    // no known_hosts at all: refused at start with exit 64
    let (status, logs) = one_time(&root2, &["--repo", &url, "--ssh-key-file", key]);
    assert_eq!(status.code(), Some(64), "{logs}");
    assert!(logs.contains("--ssh-known-hosts-file"), "{logs}");
}
