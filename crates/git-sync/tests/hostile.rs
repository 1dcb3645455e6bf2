//! Hostile repositories against the real git-sync binary, with repositories made by the git
//! CLI: links out of the published tree, names that could escape or mislead, files and trees
//! over the size limits, a pack bigger than allowed, a server that streams a pack forever,
//! submodules pointing at internal addresses. Whatever the repository holds, the app must not
//! be able to read outside the published tree through it, a refused revision keeps the old
//! tree, and the refusal is logged with its reason and counted.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;

const DEADLINE: Duration = Duration::from_secs(30);

/// Runs `change` in the fixture's working clone, commits everything and pushes main.
fn commit_with(fx: &Fixture, message: &str, change: impl FnOnce(&Path)) -> String {
    change(&fx.work);
    git(&fx.work, &["add", "-A"]);
    git(&fx.work, &["commit", "-q", "--allow-empty", "-m", message]);
    git(&fx.work, &["push", "-q", "-f", "origin", "main"]);
    git(&fx.work, &["rev-parse", "HEAD"])
}

/// A commit on main whose tree is `ok` plus `entries` (mktree lines: `mode type sha\tname`),
/// made with git's plumbing (what `git add` refuses to make); pushed with force.
fn commit_tree(fx: &Fixture, entries: &[String], message: &str) -> String {
    let ok = blob(fx, "fine\n");
    let mut lines = vec![format!("100644 blob {ok}\tok")];
    lines.extend(entries.iter().cloned());
    let tree = mktree(fx, &lines);
    let parent = git(&fx.work, &["rev-parse", "HEAD"]);
    let commit = git(
        &fx.work,
        &["commit-tree", &tree, "-p", &parent, "-m", message],
    );
    git(&fx.work, &["update-ref", "refs/heads/main", &commit]);
    git(&fx.work, &["push", "-q", "-f", "origin", "main"]);
    commit
}

fn blob(fx: &Fixture, content: &str) -> String {
    let file = fx.dir.path().join("blob.tmp");
    std::fs::write(&file, content).unwrap();
    git(&fx.work, &["hash-object", "-w", file.to_str().unwrap()])
}

fn mktree(fx: &Fixture, lines: &[String]) -> String {
    let input = fx.dir.path().join("mktree.tmp");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = std::process::Command::new("git")
        .args(["mktree"])
        .current_dir(&fx.work)
        .stdin(std::fs::File::open(&input).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every path under the published tree that resolves (following links as the app would)
/// stays inside it; returns how many entries were checked.
fn assert_confined(root: &Path) -> usize {
    let tree = std::fs::canonicalize(root.join("current")).unwrap();
    let mut checked = 0;
    let mut stack = vec![tree.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            checked += 1;
            // a dangling link or a loop resolves to nothing: nothing can be read through it
            if let Ok(real) = std::fs::canonicalize(&path) {
                assert!(
                    real.starts_with(&tree),
                    "{} leads to {} outside the published tree",
                    path.display(),
                    real.display()
                );
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    checked
}

/// A running git-sync on `fx` over git daemon, its first revision published.
struct Running {
    gs: GitSync,
    root: PathBuf,
    first: String,
    _dir: tempfile::TempDir,
    _daemon: GitDaemon,
}

fn running(fx: &Fixture, extra: &[&str]) -> Running {
    let first = fx.commit("main", &[("app.conf", "v1\n")], "one");
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let url = daemon.url("cfg.git");
    let mut args = vec![
        "--repo",
        &url,
        "--period",
        "300ms",
        "--backoff-max",
        "300ms",
    ];
    args.extend_from_slice(extra);
    let gs = GitSync::start(&root, &args);
    wait::until(DEADLINE, "first publish", || {
        published(&root, "current").as_deref() == Some(first.as_str())
    });
    Running {
        gs,
        root,
        first,
        _dir: dir,
        _daemon: daemon,
    }
}

impl Running {
    fn refusals(&self, reason: &str) -> f64 {
        self.gs
            .metric(&format!(
                "gitsync_tree_refusals_total{{reason=\"{reason}\"}}"
            ))
            .unwrap()
    }

    /// Waits for a refusal for `reason`, then for two more syncs: the revision stays held
    /// back (counted once) and the first tree stays published.
    fn assert_refused(&self, reason: &str, detail: &str) {
        wait::until(DEADLINE, format!("a {reason} refusal"), || {
            self.refusals(reason) >= 1.0
        });
        let held = |gs: &GitSync| {
            gs.metric("gitsync_syncs_total{result=\"held_back\"}")
                .unwrap_or(0.0)
        };
        let before = held(&self.gs);
        wait::until(DEADLINE, "two syncs holding the revision back", || {
            held(&self.gs) >= before + 2.0
        });
        assert_eq!(self.refusals(reason), 1.0);
        assert_eq!(
            published(&self.root, "current").as_deref(),
            Some(self.first.as_str())
        );
        assert_eq!(read(&self.root, "current/app.conf"), "v1\n");
        let logs = self.gs.logs();
        assert!(
            logs.contains(&format!("reason=\"{reason}\""))
                || logs.contains(&format!("reason={reason}")),
            "{logs}"
        );
        assert!(logs.contains(detail), "no {detail:?} in {logs}");
        assert!(!self.gs.ready() || self.gs.metric("gitsync_consecutive_failures") == Some(0.0));
    }
}

fn read(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path)).unwrap()
}

#[test]
fn a_link_to_etc_passwd_is_refused_and_the_next_good_revision_is_published() {
    let fx = Fixture::new("cfg.git");
    let run = running(&fx, &[]);
    commit_with(&fx, "leak", |w| {
        symlink("/etc/passwd", w.join("leak")).unwrap()
    });
    run.assert_refused("symlink_escape", "/etc/passwd");
    assert!(!run.root.join("current/leak").exists());
    // the ref moves to a clean revision: published
    let good = commit_with(&fx, "fixed", |w| {
        std::fs::remove_file(w.join("leak")).unwrap();
        std::fs::write(w.join("app.conf"), "v2\n").unwrap();
    });
    wait::until(DEADLINE, "the clean revision", || {
        published(&run.root, "current").as_deref() == Some(good.as_str())
    });
    assert_eq!(read(&run.root, "current/app.conf"), "v2\n");
    assert_confined(&run.root);
}

/// Each way out, alone in a revision, with --one-time: refused, the first tree stays.
#[test]
fn every_way_out_of_the_tree_is_refused() {
    let fx = Fixture::new("cfg.git");
    let first = fx.commit("main", &[("app.conf", "v1\n"), ("a/b/x", "x")], "one");
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let url = daemon.url("cfg.git");
    let (status, logs) = one_time(&root, &["--repo", &url]);
    assert!(status.success(), "{logs}");
    let cases: [(&str, &str, &str); 5] = [
        (
            "token",
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            "absolute",
        ),
        ("a/b/up", "../../../root", "climbs out"),
        ("a/deep", "b/../../../../etc/passwd", "climbs out"),
        ("loop1", "loop2", "loop"),
        ("sneaky", "self/..", "climbs out"),
    ];
    for (link, target, why) in cases {
        let bad = commit_with(&fx, link, |w| {
            symlink(target, w.join(link)).unwrap();
            if link == "loop1" {
                symlink("loop1", w.join("loop2")).unwrap();
            }
            if link == "sneaky" {
                symlink(".", w.join("self")).unwrap();
            }
        });
        let (status, logs) = one_time(&root, &["--repo", &url]);
        assert!(
            !status.success(),
            "{link} -> {target} was published: {logs}"
        );
        assert!(logs.contains("leaves the published tree"), "{logs}");
        assert!(logs.contains(why), "{link}: no {why:?} in {logs}");
        assert!(logs.contains(&bad[..7]) || logs.contains(&bad), "{logs}");
        assert_eq!(published(&root, "current").as_deref(), Some(first.as_str()));
        // back to the first tree's content for the next case
        git(&fx.work, &["reset", "-q", "--hard", &first]);
        git(&fx.work, &["push", "-q", "-f", "origin", "main"]);
    }
    assert!(
        !root.join(".git-sync").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("staging")),
        "a refused tree was left staged"
    );
}

#[test]
fn drop_leaves_escaping_links_out_and_keeps_the_others() {
    let fx = Fixture::new("cfg.git");
    let run = running(&fx, &["--symlinks", "drop"]);
    let c2 = commit_with(&fx, "links", |w| {
        std::fs::create_dir_all(w.join("conf")).unwrap();
        std::fs::write(w.join("conf/real.yaml"), "real\n").unwrap();
        symlink("real.yaml", w.join("conf/alias.yaml")).unwrap();
        symlink("../app.conf", w.join("conf/up.conf")).unwrap();
        symlink("/etc/passwd", w.join("leak")).unwrap();
        symlink("../../../../etc/shadow", w.join("conf/shadow")).unwrap();
        symlink(".", w.join("self")).unwrap();
        symlink("self/..", w.join("parent")).unwrap();
        symlink("b", w.join("a")).unwrap();
        symlink("a", w.join("b")).unwrap();
    });
    wait::until(DEADLINE, "the revision with its links dropped", || {
        published(&run.root, "current").as_deref() == Some(c2.as_str())
    });
    // counted once the sync is done, just after the link moved
    wait::until(DEADLINE, "5 links counted as dropped", || {
        run.gs.metric("gitsync_symlinks_dropped_total") == Some(5.0)
    });
    let tree = run.root.join("current");
    for gone in ["leak", "conf/shadow", "parent", "a", "b"] {
        assert!(
            std::fs::symlink_metadata(tree.join(gone)).is_err(),
            "{gone} was published"
        );
    }
    assert_eq!(read(&run.root, "current/conf/alias.yaml"), "real\n");
    assert_eq!(read(&run.root, "current/conf/up.conf"), "v1\n");
    assert!(assert_confined(&run.root) >= 5);
    assert_eq!(run.refusals("symlink_escape"), 0.0);
}

#[test]
fn allow_publishes_links_as_they_are() {
    let fx = Fixture::new("cfg.git");
    let run = running(&fx, &["--symlinks", "allow"]);
    let c2 = commit_with(&fx, "leak", |w| {
        symlink("/etc/passwd", w.join("leak")).unwrap()
    });
    wait::until(DEADLINE, "the revision with its link", || {
        published(&run.root, "current").as_deref() == Some(c2.as_str())
    });
    assert_eq!(
        std::fs::read_link(run.root.join("current/leak")).unwrap(),
        Path::new("/etc/passwd")
    );
}

#[test]
fn names_that_could_escape_or_mislead_are_refused() {
    let fx = Fixture::new("cfg.git");
    let first = fx.commit("main", &[("ok", "fine\n")], "one");
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let url = daemon.url("cfg.git");
    let (status, logs) = one_time(&root, &["--repo", &url]);
    assert!(status.success(), "{logs}");
    let content = blob(&fx, "owned\n");
    let inner = mktree(&fx, &[format!("100644 blob {content}\tconfig")]);
    let cases = [
        (vec![format!("100644 blob {content}\t..")], "\"..\""),
        (
            vec![format!(
                "040000 tree {}\tsub",
                mktree(&fx, &[format!("040000 tree {inner}\t.git")])
            )],
            "\".git\"",
        ),
        (vec![format!("040000 tree {inner}\t.GIT")], "\".GIT\""),
    ];
    for (entries, shown) in cases {
        let bad = commit_tree(&fx, &entries, "hostile name");
        let (status, logs) = one_time(&root, &["--repo", &url]);
        assert!(!status.success(), "{entries:?} was published: {logs}");
        assert!(logs.contains("unsafe name"), "{logs}");
        assert!(logs.contains(shown), "no {shown} in {logs}");
        assert!(!logs.contains(&format!("sha={bad}")), "{logs}");
        assert_eq!(published(&root, "current").as_deref(), Some(first.as_str()));
        assert!(!root.join("current/sub").exists() && !root.join("config").exists());
    }
    // a newline in a name, made the ordinary way
    git(&fx.work, &["reset", "-q", "--hard", &first]);
    commit_with(&fx, "newline", |w| {
        std::fs::write(w.join("evil\nname"), "x").unwrap()
    });
    let (status, logs) = one_time(&root, &["--repo", &url]);
    assert!(!status.success(), "{logs}");
    assert!(logs.contains("control characters"), "{logs}");
    assert_eq!(published(&root, "current").as_deref(), Some(first.as_str()));
}

#[test]
fn case_colliding_names_are_two_files_and_never_overwrite_each_other() {
    let fx = Fixture::new("cfg.git");
    fx.commit("main", &[("ok", "fine\n")], "one");
    let c2 = commit_with(&fx, "case", |w| {
        std::fs::write(w.join("README"), "upper\n").unwrap();
        std::fs::write(w.join("readme"), "lower\n").unwrap();
        std::fs::create_dir_all(w.join("Conf")).unwrap();
        std::fs::write(w.join("Conf/a"), "dir\n").unwrap();
        std::fs::write(w.join("conf"), "file\n").unwrap();
    });
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let (status, logs) = one_time(&root, &["--repo", &daemon.url("cfg.git")]);
    assert!(status.success(), "{logs}");
    assert_eq!(published(&root, "current").as_deref(), Some(c2.as_str()));
    assert_eq!(read(&root, "current/README"), "upper\n");
    assert_eq!(read(&root, "current/readme"), "lower\n");
    assert_eq!(read(&root, "current/Conf/a"), "dir\n");
    assert_eq!(read(&root, "current/conf"), "file\n");
}

/// Incompressible text of `len` bytes.
fn noise(len: usize, seed: u64) -> String {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'!' + (state % 90) as u8)
        })
        .collect()
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

#[test]
fn a_file_over_max_file_size_is_refused_before_it_is_read() {
    let fx = Fixture::new("cfg.git");
    let run = running(&fx, &["--max-file-size", "1M"]);
    // 64 MiB of zeros: a pack of a few tens of KiB (what a quota-filling repository looks like)
    let zeros = "\0".repeat(64 << 20);
    commit_with(&fx, "bomb", |w| {
        std::fs::write(w.join("bomb.bin"), &zeros).unwrap()
    });
    run.assert_refused("file_size", "bomb.bin");
    assert!(
        dir_size(&run.root) < 16 << 20,
        "{} bytes under --root",
        dir_size(&run.root)
    );
}

#[test]
fn a_tree_over_max_tree_size_is_refused() {
    let fx = Fixture::new("cfg.git");
    let run = running(&fx, &["--max-tree-size", "1M"]);
    commit_with(&fx, "many", |w| {
        for i in 0..6 {
            std::fs::write(w.join(format!("part{i}")), noise(300 << 10, i)).unwrap();
        }
    });
    run.assert_refused("tree_size", "--max-tree-size");
}

#[test]
fn a_pack_over_max_fetch_size_stops_the_fetch() {
    let fx = Fixture::new("cfg.git");
    let run = running(&fx, &["--max-fetch-size", "512K"]);
    commit_with(&fx, "big", |w| {
        std::fs::write(w.join("big"), noise(8 << 20, 7)).unwrap()
    });
    run.assert_refused("fetch_size", "--max-fetch-size");
    let repo = dir_size(&run.root.join(".git-sync"));
    assert!(
        repo < 4 << 20,
        "{repo} bytes left in the private repository"
    );
}

/// A smart-HTTP "server" that advertises a branch and answers every fetch with a pack that
/// never ends: valid objects (stored-deflate blobs), each one different, as fast as the client
/// reads. Hostile by design; the client is the real git-sync.
struct EndlessPack {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl EndlessPack {
    fn start() -> EndlessPack {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let stopping = stopping.clone();
                std::thread::spawn(move || serve_endless(stream, &stopping));
            }
        });
        EndlessPack { port, stop }
    }
}

impl Drop for EndlessPack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pkt(line: &str) -> String {
    format!("{:04x}{line}", line.len() + 4)
}

fn serve_endless(mut stream: std::net::TcpStream, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    // git:// : the request line, then the advertisement
    if read_pkt(&mut stream).is_none() {
        return;
    }
    let sha = "1111111111111111111111111111111111111111";
    let advert = format!(
        "{}{}0000",
        pkt(&format!(
            "{sha} HEAD\0symref=HEAD:refs/heads/main agent=endless\n"
        )),
        pkt(&format!("{sha} refs/heads/main\n")),
    );
    if stream.write_all(advert.as_bytes()).is_err() {
        return;
    }
    // wants, a flush, then rounds of haves (each flush answered NAK) until "done"
    let mut wants_done = false;
    loop {
        match read_pkt(&mut stream) {
            None => return,
            Some(None) if !wants_done => wants_done = true,
            Some(None) => {
                if stream.write_all(b"0008NAK\n").is_err() {
                    return;
                }
            }
            Some(Some(line)) if line.starts_with(b"done") => break,
            Some(Some(_)) => {}
        }
    }
    if stream
        // a million 32 KiB objects: 32 GiB, never reached (libgit2 sizes its tables by the count)
        .write_all(b"0008NAK\nPACK\0\0\0\x02\0\x10\0\0")
        .is_err()
    {
        return;
    }
    let mut counter = 0u64;
    while !stop.load(Ordering::SeqCst) {
        counter += 1;
        if stream.write_all(&stored_blob(counter)).is_err() {
            return;
        }
    }
}

/// One pkt-line: Some(None) for a flush, None at the end of the stream.
fn read_pkt(stream: &mut std::net::TcpStream) -> Option<Option<Vec<u8>>> {
    use std::io::Read;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let len = usize::from_str_radix(std::str::from_utf8(&len).ok()?, 16).ok()?;
    if len < 4 {
        return Some(None);
    }
    let mut body = vec![0u8; len - 4];
    stream.read_exact(&mut body).ok()?;
    Some(Some(body))
}

/// One pack entry: a 32 KiB blob (unique by its counter) deflated with a stored block.
fn stored_blob(counter: u64) -> Vec<u8> {
    let mut data = vec![b'x'; 32 << 10];
    data[..8].copy_from_slice(&counter.to_be_bytes());
    let len = data.len();
    // type 3 (blob), size in the varint of pack entry headers
    let mut out = vec![0x80 | (3 << 4) | (len & 0x0f) as u8];
    let mut rest = len >> 4;
    while rest > 0 {
        let more = if rest >> 7 > 0 { 0x80 } else { 0 };
        out.push(more | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.extend_from_slice(&[0x78, 0x01, 0x01]);
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&(!(len as u16)).to_le_bytes());
    out.extend_from_slice(&data);
    let (mut a, mut b) = (1u32, 0u32);
    for byte in &data {
        a = (a + u32::from(*byte)) % 65521;
        b = (b + a) % 65521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

#[test]
fn a_server_streaming_a_pack_forever_is_stopped_by_the_timeout_or_the_fetch_limit() {
    let server = EndlessPack::start();
    let fx = Fixture::new("cfg.git");
    let first = fx.commit("main", &[("app.conf", "v1\n")], "one");
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let (status, logs) = one_time(&root, &["--repo", &daemon.url("cfg.git")]);
    assert!(status.success(), "{logs}");
    let endless = format!("git://127.0.0.1:{}/cfg.git", server.port);
    // the deadline alone
    let (status, logs) = one_time(
        &root,
        &["--repo", &endless, "--depth", "0", "--sync-timeout", "3s"],
    );
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains("did not finish within --sync-timeout"),
        "{logs}"
    );
    assert_eq!(published(&root, "current").as_deref(), Some(first.as_str()));
    // the fetch limit stops it long before the deadline
    let started = std::time::Instant::now();
    let (status, logs) = one_time(
        &root,
        &[
            "--repo",
            &endless,
            "--depth",
            "0",
            "--sync-timeout",
            "120s",
            "--max-fetch-size",
            "2M",
        ],
    );
    assert!(!status.success(), "{logs}");
    assert!(logs.contains("--max-fetch-size"), "{logs}");
    assert!(started.elapsed() < Duration::from_secs(60), "{logs}");
    assert_eq!(published(&root, "current").as_deref(), Some(first.as_str()));
    let repo = dir_size(&root.join(".git-sync"));
    assert!(repo < 16 << 20, "{repo} bytes left under .git-sync");
}

/// A gitlink and a .gitmodules entry pointing at `url`, added to main.
fn add_submodule(fx: &Fixture, path: &str, url: &str, commit: &str) -> String {
    std::fs::write(
        fx.work.join(".gitmodules"),
        format!("[submodule \"{path}\"]\n\tpath = {path}\n\turl = {url}\n"),
    )
    .unwrap();
    git(&fx.work, &["add", ".gitmodules"]);
    git(
        &fx.work,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{commit},{path}"),
        ],
    );
    git(&fx.work, &["commit", "-q", "-m", "submodule"]);
    git(&fx.work, &["push", "-q", "origin", "main"]);
    git(&fx.work, &["rev-parse", "HEAD"])
}

#[test]
fn a_submodule_at_an_internal_address_is_refused() {
    let fx = Fixture::new("cfg.git");
    let run = running(&fx, &[]);
    // a cloud metadata endpoint; nothing listens there, and nothing must try
    add_submodule(
        &fx,
        "meta",
        "http://169.254.169.254/latest/meta-data/",
        &run.first,
    );
    run.assert_refused("submodule_url", "link-local");
}

#[test]
fn submodule_url_allow_admits_its_prefixes_only() {
    let fx = Fixture::new("cfg.git");
    // a library repository beside the fixture, served by the same daemon
    let lib = fx.base().join("lib.git");
    git(
        fx.dir.path(),
        &["init", "-q", "--bare", "-b", "main", lib.to_str().unwrap()],
    );
    let lib_work = fx.dir.path().join("lib-work");
    git(
        fx.dir.path(),
        &["init", "-q", "-b", "main", lib_work.to_str().unwrap()],
    );
    std::fs::write(lib_work.join("lib.conf"), "lib\n").unwrap();
    git(&lib_work, &["add", "-A"]);
    git(&lib_work, &["commit", "-q", "-m", "lib"]);
    git(&lib_work, &["push", "-q", lib.to_str().unwrap(), "main"]);
    let lib_commit = git(&lib_work, &["rev-parse", "HEAD"]);
    fx.commit("main", &[("app.conf", "v1\n")], "one");
    let daemon = GitDaemon::start(&fx.base());
    let allowed = format!("git://127.0.0.1:{}/", daemon.port);
    let c2 = add_submodule(&fx, "vendor/lib", &format!("{allowed}lib.git"), &lib_commit);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let url = daemon.url("cfg.git");
    let (status, logs) = one_time(&root, &["--repo", &url, "--submodule-url-allow", &allowed]);
    assert!(status.success(), "{logs}");
    assert_eq!(published(&root, "current").as_deref(), Some(c2.as_str()));
    assert_eq!(read(&root, "current/vendor/lib/lib.conf"), "lib\n");
    // the same submodule under another prefix: refused
    // the ref moves (the gitlink stays): the submodule is needed again
    std::fs::write(fx.work.join("app.conf"), "v2\n").unwrap();
    git(&fx.work, &["add", "app.conf"]);
    git(&fx.work, &["commit", "-q", "-m", "two"]);
    git(&fx.work, &["push", "-q", "origin", "main"]);
    let c3 = git(&fx.work, &["rev-parse", "HEAD"]);
    let (status, logs2) = one_time(
        &root,
        &[
            "--repo",
            &url,
            "--submodule-url-allow",
            "https://git.example.com/",
        ],
    );
    assert!(!status.success(), "{logs2}");
    assert!(logs2.contains("--submodule-url-allow"), "{logs2}");
    assert_ne!(published(&root, "current").as_deref(), Some(c3.as_str()));
    assert_eq!(published(&root, "current").as_deref(), Some(c2.as_str()));
}
