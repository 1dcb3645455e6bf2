//! What gets published for each kind of ref, over git daemon (git://), file:// and shallow.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::*;

fn read(root: &Path, file: &str) -> String {
    std::fs::read_to_string(root.join("current").join(file))
        .unwrap_or_else(|e| panic!("reading {file}: {e}"))
}

#[test]
fn branch_tag_annotated_tag_and_sha_pin_over_git_daemon() {
    let fx = Fixture::new("cfg.git");
    let first = fx.commit(
        "main",
        &[("app.conf", "v1"), ("sub/dir/x.txt", "x1")],
        "one",
    );
    git(&fx.work, &["tag", "light", &first]);
    git(&fx.work, &["tag", "-a", "-m", "release", "rel-1", &first]);
    let second = fx.commit("main", &[("app.conf", "v2")], "two");
    git(&fx.work, &["push", "-q", "origin", "--tags"]);
    let daemon = GitDaemon::start(&fx.base());
    let url = daemon.url("cfg.git");
    let out = tempfile::tempdir().unwrap();

    // branch
    let root = out.path().join("branch");
    let (status, logs) = one_time(&root, &["--repo", &url, "--ref", "main"]);
    assert!(status.success(), "{logs}");
    assert_eq!(
        published(&root, "current").as_deref(),
        Some(second.as_str())
    );
    assert_eq!(read(&root, "app.conf"), "v2");
    assert_eq!(read(&root, "sub/dir/x.txt"), "x1");
    assert!(
        !root.join("current/.git").exists(),
        "the published tree must not hold .git"
    );

    // lightweight tag
    let root = out.path().join("tag");
    let (status, logs) = one_time(&root, &["--repo", &url, "--ref", "light"]);
    assert!(status.success(), "{logs}");
    assert_eq!(published(&root, "current").as_deref(), Some(first.as_str()));
    assert_eq!(read(&root, "app.conf"), "v1");

    // annotated tag: the link names the commit, not the tag object
    let root = out.path().join("annotated");
    let (status, logs) = one_time(&root, &["--repo", &url, "--ref", "rel-1"]);
    assert!(status.success(), "{logs}");
    assert_eq!(published(&root, "current").as_deref(), Some(first.as_str()));

    // SHA pin of a commit that is not a branch tip (git daemon refuses want-by-id: fallback path)
    let root = out.path().join("sha");
    let (status, logs) = one_time(&root, &["--repo", &url, "--ref", &first]);
    assert!(status.success(), "{logs}");
    assert_eq!(published(&root, "current").as_deref(), Some(first.as_str()));
    assert_eq!(read(&root, "app.conf"), "v1");

    // HEAD
    let root = out.path().join("head");
    let (status, logs) = one_time(&root, &["--repo", &url]);
    assert!(status.success(), "{logs}");
    assert_eq!(
        published(&root, "current").as_deref(),
        Some(second.as_str())
    );

    // a ref that does not exist: non-zero with a message naming it
    let root = out.path().join("missing");
    let (status, logs) = one_time(&root, &["--repo", &url, "--ref", "nope"]);
    assert!(!status.success());
    assert!(logs.contains("\"nope\" is not advertised"), "{logs}");
}

#[test]
fn shallow_fetch_over_git_daemon_and_full_over_file_url() {
    let fx = Fixture::new("deep.git");
    for i in 0..5 {
        fx.commit("main", &[("n", &i.to_string())], &format!("c{i}"));
    }
    let daemon = GitDaemon::start(&fx.base());
    let out = tempfile::tempdir().unwrap();
    let root = out.path().join("shallow");
    let (status, logs) = one_time(&root, &["--repo", &daemon.url("deep.git"), "--depth", "1"]);
    assert!(status.success(), "{logs}");
    let private = root.join(".git-sync/repo.git");
    assert!(
        private.join("shallow").exists(),
        "depth 1 over git:// must give a shallow private repo"
    );
    let count = git(&private, &["rev-list", "--count", "refs/git-sync/target"]);
    assert_eq!(count, "1");
    assert_eq!(
        std::fs::read_to_string(root.join("current/n")).unwrap(),
        "4"
    );

    // file:// cannot be fetched shallow by libgit2: depth is ignored, the sync still works
    let root = out.path().join("file");
    let url = format!("file://{}", fx.bare.display());
    let (status, logs) = one_time(&root, &["--repo", &url, "--depth", "1"]);
    assert!(status.success(), "{logs}");
    assert!(logs.contains("--depth is ignored"), "{logs}");
    assert!(!root.join(".git-sync/repo.git/shallow").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("current/n")).unwrap(),
        "4"
    );
}

#[test]
fn branch_switch_on_restart_and_executable_bits_and_symlinks() {
    let fx = Fixture::new("sw.git");
    let a = fx.commit("main", &[("which", "main")], "main");
    std::fs::write(fx.work.join("run.sh"), "#!/bin/sh\n").unwrap();
    std::os::unix::fs::symlink("which", fx.work.join("alias")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        fx.work.join("run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let b = fx.commit("other", &[("which", "other")], "other");
    let daemon = GitDaemon::start(&fx.base());
    let out = tempfile::tempdir().unwrap();
    let root = out.path().join("root");
    let url = daemon.url("sw.git");
    let (status, logs) = one_time(
        &root,
        &["--repo", &url, "--ref", "main", "--force-push", "refuse"],
    );
    assert!(status.success(), "{logs}");
    assert_eq!(published(&root, "current").as_deref(), Some(a.as_str()));
    // a different --ref after a restart is a switch, not a force-push, even with refuse
    let (status, logs) = one_time(
        &root,
        &["--repo", &url, "--ref", "other", "--force-push", "refuse"],
    );
    assert!(status.success(), "{logs}");
    assert_eq!(published(&root, "current").as_deref(), Some(b.as_str()));
    assert_eq!(
        std::fs::read_to_string(root.join("current/which")).unwrap(),
        "other"
    );
    let mode = std::fs::metadata(root.join("current/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "executable bit kept");
    assert_eq!(
        std::fs::read_link(root.join("current/alias"))
            .unwrap()
            .to_str(),
        Some("which")
    );
}
