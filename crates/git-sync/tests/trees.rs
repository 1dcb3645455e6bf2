//! What the published tree holds: submodules (recursive, shallow where the server allows),
//! `--subpath` and `--sparse-path`; and what else git-sync leaves for the pod: `--error-file`
//! for the termination message, `--group-write` modes.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn is_published(root: &Path, sha: &str) -> bool {
    published(root, "current").as_deref() == Some(sha)
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Another bare repository (and a working clone) beside the fixture's, served by the same
/// servers; returns the working clone.
fn add_repo(fx: &Fixture, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let bare = fx.base().join(format!("{name}.git"));
    git(
        fx.dir.path(),
        &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
    );
    let work = fx.dir.path().join(format!("{name}-work"));
    git(
        fx.dir.path(),
        &["init", "-q", "-b", "main", work.to_str().unwrap()],
    );
    git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    commit_all(&work, files, "initial");
    work
}

/// Writes the files, commits everything and pushes main; returns the commit.
fn commit_all(work: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (path, content) in files {
        let p = work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "--allow-empty", "-m", message]);
    git(work, &["push", "-q", "origin", "main"]);
    git(work, &["rev-parse", "HEAD"])
}

/// `git submodule add ../<name>.git <path>` in `work` (the working clones' remotes are local
/// paths, which git's submodule commands accept only when told).
fn submodule_add(work: &Path, name: &str, path: &str) {
    git(
        work,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            &format!("../{name}.git"),
            path,
        ],
    );
}

/// Points the submodule at `path` in `work` at its remote's main, commits and pushes.
fn submodule_update(work: &Path, path: &str) -> String {
    git(
        work,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "update",
            "-q",
            "--remote",
            path,
        ],
    );
    commit_all(work, &[], "update the submodule")
}

#[test]
fn submodules_recursive_shallow_and_updated() {
    let fx = Fixture::new("cfg.git");
    let deep = add_repo(&fx, "deep", &[("deep.txt", "deep 1")]);
    let lib = add_repo(&fx, "lib", &[("lib.txt", "lib 1")]);
    submodule_add(&lib, "deep", "nested");
    commit_all(&lib, &[], "nested submodule");
    fx.commit("main", &[("main.txt", "main")], "one");
    submodule_add(&fx.work, "lib", "vendor/lib");
    let c1 = fx.commit("main", &[], "submodule");
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let url = daemon.url("cfg.git");
    let gs = GitSync::start(&root, &["--repo", &url, "--period", "100ms"]);
    wait::Wait::new("published with its submodules")
        .timeout(Duration::from_secs(20))
        .context(|| gs.logs())
        .until(|| is_published(&root, &c1));
    assert_eq!(read(root.join("current/main.txt")), "main");
    assert_eq!(read(root.join("current/vendor/lib/lib.txt")), "lib 1");
    assert_eq!(
        read(root.join("current/vendor/lib/nested/deep.txt")),
        "deep 1"
    );
    assert!(!root.join("current/vendor/lib/.git").exists());
    // fetched at depth 1 (git daemon serves the tip of HEAD, not commits by id)
    let modules: Vec<PathBuf> = std::fs::read_dir(root.join(".git-sync/modules"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(modules.len(), 2, "{modules:?}");
    assert!(
        modules.iter().all(|m| m.join("shallow").exists()),
        "the submodules were fetched shallow: {modules:?}"
    );

    // The submodule moves on and the superproject follows: published.
    commit_all(&lib, &[("lib.txt", "lib 2")], "two");
    let c2 = submodule_update(&fx.work, "vendor/lib");
    wait::until(Duration::from_secs(10), "the submodule update", || {
        is_published(&root, &c2)
    });
    assert_eq!(read(root.join("current/vendor/lib/lib.txt")), "lib 2");
    assert_eq!(
        read(root.join("current/vendor/lib/nested/deep.txt")),
        "deep 1"
    );

    // A pinned submodule commit that is no longer its remote's tip: found in the history.
    commit_all(&lib, &[("lib.txt", "lib 3")], "three");
    let fresh = dir.path().join("fresh");
    let (status, logs) = one_time(&fresh, &["--repo", &url]);
    assert!(status.success(), "{logs}");
    assert!(is_published(&fresh, &c2));
    assert_eq!(read(fresh.join("current/vendor/lib/lib.txt")), "lib 2");

    // top-level: the superproject's own submodules only; off: none.
    let top = dir.path().join("top");
    let (status, logs) = one_time(&top, &["--repo", &url, "--submodules", "top-level"]);
    assert!(status.success(), "{logs}");
    assert_eq!(read(top.join("current/vendor/lib/lib.txt")), "lib 2");
    assert!(!top.join("current/vendor/lib/nested").exists());
    let off = dir.path().join("off");
    let (status, logs) = one_time(&off, &["--repo", &url, "--submodules", "off"]);
    assert!(status.success(), "{logs}");
    assert!(!off.join("current/vendor/lib").exists());
    assert!(off.join("current/main.txt").exists());
    drop(deep);
}

#[test]
fn a_submodule_url_reaching_into_the_container_is_refused() {
    let fx = Fixture::new("cfg.git");
    let good = fx.commit("main", &[("a", "1")], "one");
    // A gitlink written by hand, its .gitmodules URL a local path.
    std::fs::write(
        fx.work.join(".gitmodules"),
        "[submodule \"evil\"]\n\tpath = evil\n\turl = file:///etc\n",
    )
    .unwrap();
    git(
        &fx.work,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{good},evil"),
        ],
    );
    git(&fx.work, &["add", ".gitmodules"]);
    git(&fx.work, &["commit", "-q", "-m", "evil submodule"]);
    git(&fx.work, &["push", "-q", "origin", "main"]);
    let evil = git(&fx.work, &["rev-parse", "HEAD"]);
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let (status, logs) = one_time(&root, &["--repo", &daemon.url("cfg.git"), "--ref", &good]);
    assert!(status.success(), "{logs}");
    let (status, logs) = one_time(&root, &["--repo", &daemon.url("cfg.git"), "--ref", &evil]);
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains("submodule evil") && logs.contains("protocol.file.allow"),
        "{logs}"
    );
    assert!(is_published(&root, &good));
}

#[test]
fn subpath_and_sparse_paths_publish_only_the_wanted_paths() {
    let fx = Fixture::new("cfg.git");
    let c1 = fx.commit(
        "main",
        &[
            ("README", "top"),
            ("apps/web/conf/a.yaml", "a1"),
            ("apps/web/index.html", "html"),
            ("apps/shared.yaml", "shared"),
            ("apps/api/conf/x.yaml", "x"),
        ],
        "monorepo",
    );
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let errors = dir.path().join("termination-log");
    let gs = GitSync::start(
        &root,
        &[
            "--repo",
            &daemon.url("cfg.git"),
            "--period",
            "100ms",
            "--subpath",
            "apps",
            "--sparse-path",
            "web/conf",
            "--sparse-path",
            "shared.yaml",
            "--error-file",
            errors.to_str().unwrap(),
        ],
    );
    wait::until(Duration::from_secs(10), "published", || {
        is_published(&root, &c1)
    });
    let mut files: Vec<String> = Vec::new();
    let current = root.join("current");
    let mut stack = vec![current.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p.strip_prefix(&current).unwrap().display().to_string());
            }
        }
    }
    files.sort();
    assert_eq!(files, ["shared.yaml", "web/conf/a.yaml"]);
    assert!(!errors.exists(), "no error, no error file");

    // A change outside the selection publishes the revision; the wanted files are the same.
    let c2 = fx.commit("main", &[("apps/api/conf/x.yaml", "x2")], "api only");
    wait::until(Duration::from_secs(10), "published", || {
        is_published(&root, &c2)
    });
    assert_eq!(read(root.join("current/web/conf/a.yaml")), "a1");

    // The subpath disappears: the sync fails naming it, the tree stays, the error file says why.
    git(&fx.work, &["rm", "-r", "-q", "apps"]);
    let c3 = fx.commit("main", &[("other/file", "o")], "moved away");
    wait::until(Duration::from_secs(10), "a failed sync", || {
        gs.metric("gitsync_syncs_total{result=\"error\"}") >= Some(1.0)
    });
    assert!(is_published(&root, &c2));
    let message = read(errors.clone());
    assert!(
        message.contains(&format!("--subpath \"apps\" is not in commit {c3}")),
        "{message}"
    );
    // back: published, the error file emptied
    let c4 = fx.commit(
        "main",
        &[("apps/web/conf/a.yaml", "a4"), ("apps/shared.yaml", "s")],
        "back",
    );
    wait::until(Duration::from_secs(10), "published again", || {
        is_published(&root, &c4)
    });
    wait::until(Duration::from_secs(5), "the error file emptied", || {
        std::fs::read_to_string(&errors)
            .unwrap_or_default()
            .is_empty()
    });
    assert_eq!(read(root.join("current/web/conf/a.yaml")), "a4");
}

#[test]
fn group_write_and_the_error_file_of_a_failed_one_time_sync() {
    let fx = Fixture::new("cfg.git");
    std::fs::create_dir_all(fx.work.join("bin")).unwrap();
    std::fs::create_dir_all(fx.work.join("conf")).unwrap();
    std::fs::write(fx.work.join("bin/run"), "#!/bin/sh\n").unwrap();
    std::fs::write(fx.work.join("conf/app.yaml"), "x").unwrap();
    git(&fx.work, &["add", "-A"]);
    // an executable, whatever the test's file system says of executable bits
    git(&fx.work, &["update-index", "--chmod=+x", "bin/run"]);
    git(&fx.work, &["commit", "-q", "-m", "one"]);
    git(&fx.work, &["push", "-q", "origin", "main"]);
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let url = daemon.url("cfg.git");
    let (status, logs) = one_time(&root, &["--repo", &url, "--group-write"]);
    assert!(status.success(), "{logs}");
    let mode = |p: PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    let tree = std::fs::canonicalize(root.join("current")).unwrap();
    assert_eq!(mode(tree.clone()), 0o775);
    assert_eq!(mode(tree.join("conf")), 0o775);
    assert_eq!(mode(tree.join("conf/app.yaml")), 0o664);
    assert_eq!(mode(tree.join("bin/run")), 0o775);
    assert_eq!(mode(root.join(".git-sync/repo.git/objects")) & 0o020, 0o020);

    // A one-time sync that fails leaves its reason in the error file (relative to --root).
    let (status, logs) = one_time(
        &root,
        &[
            "--repo",
            &url,
            "--ref",
            "no-such-branch",
            "--error-file",
            "error.log",
        ],
    );
    assert!(!status.success(), "{logs}");
    let message = read(root.join("error.log"));
    assert!(
        message.contains("\"no-such-branch\" is not advertised by the remote"),
        "{message}"
    );
    assert!(message.len() <= 4096);
}
