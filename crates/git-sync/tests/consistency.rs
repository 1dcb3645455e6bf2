//! A reader walks the published tree while 500 revisions are published under it: every walk
//! must see exactly one revision (zero mixed reads) and never a missing file.

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;

const FILES: usize = 24;
const SYNCS: usize = 500;

fn syncs() -> usize {
    std::env::var("GITSYNC_CONSISTENCY_SYNCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SYNCS)
}

fn file_body(i: usize, rev: usize) -> String {
    // different sizes so a torn tree would also show in lengths
    format!("rev {rev}\n{}", "x".repeat((i * 97 + rev) % 3000))
}

/// Builds revisions 0..=n in one `git fast-import` run (fast, unlike 500 commits with the
/// porcelain) on branch `all` of the bare repository; returns each revision's SHA.
fn build_revisions(bare: &Path, n: usize) -> Vec<String> {
    use std::io::Write;
    let marks = bare.join("marks");
    let mut child = std::process::Command::new("git")
        .args([
            "fast-import",
            "--quiet",
            &format!("--export-marks={}", marks.display()),
        ])
        .current_dir(bare)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("git fast-import");
    let mut stream = Vec::new();
    for rev in 0..=n {
        writeln!(
            stream,
            "commit refs/heads/all\nmark :{}\ncommitter t <t@example.invalid> {} +0000",
            rev + 1,
            1_700_000_000 + rev
        )
        .unwrap();
        let msg = format!("rev {rev}");
        writeln!(stream, "data {}\n{msg}", msg.len()).unwrap();
        if rev > 0 {
            writeln!(stream, "from :{rev}").unwrap();
        }
        for i in 0..FILES {
            let body = file_body(i, rev);
            writeln!(
                stream,
                "M 100644 inline dir{}/file{i}.conf\ndata {}\n{body}",
                i % 4,
                body.len()
            )
            .unwrap();
        }
        writeln!(stream).unwrap();
    }
    child.stdin.take().unwrap().write_all(&stream).unwrap();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&marks).unwrap();
    let mut shas = vec![String::new(); n + 1];
    for line in text.lines() {
        let (mark, sha) = line.split_once(' ').unwrap();
        let idx: usize = mark.trim_start_matches(':').parse().unwrap();
        shas[idx - 1] = sha.to_string();
    }
    shas
}

/// Resolves the link once, then reads every file under that directory. Returns the set of
/// revisions seen, or the error.
fn walk_once(link: &Path) -> Result<(Vec<usize>, usize), String> {
    let tree = std::fs::canonicalize(link).map_err(|e| format!("resolve: {e}"))?;
    let mut revs = Vec::new();
    let mut files = 0;
    let mut stack = vec![tree];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).map_err(|e| format!("read_dir {}: {e}", dir.display()))?
        {
            let entry = entry.map_err(|e| e.to_string())?;
            let path = entry.path();
            if entry.file_type().map_err(|e| e.to_string())?.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("read {}: {e}", path.display()))?;
            let rev: usize = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("rev "))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("unparsable {}", path.display()))?;
            files += 1;
            if !revs.contains(&rev) {
                revs.push(rev);
            }
        }
    }
    Ok((revs, files))
}

#[test]
fn reader_never_sees_a_mix_of_revisions_across_500_syncs() {
    let fx = Fixture::new("cfg.git");
    let shas = build_revisions(&fx.bare, syncs());
    // the branch moves on the server's disk, as a push would move it
    let move_main = |sha: &str| git(&fx.bare, &["update-ref", "refs/heads/main", sha]);
    move_main(&shas[0]);
    let first = shas[0].clone();
    let daemon = GitDaemon::start(&fx.base());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let gs = GitSync::start(
        &root,
        &[
            "--repo",
            &daemon.url("cfg.git"),
            "--period",
            "1h",
            "--grace-period",
            "3s",
            "--depth",
            "1",
        ],
    );
    wait::until(Duration::from_secs(10), "first publish", || {
        published(&root, "current").as_deref() == Some(first.as_str())
    });

    let stop = Arc::new(AtomicBool::new(false));
    let walks = Arc::new(AtomicU64::new(0));
    let mixed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let (stop, walks, mixed, errors) =
            (stop.clone(), walks.clone(), mixed.clone(), errors.clone());
        let link = root.join("current");
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match walk_once(&link) {
                    Ok((revs, files)) => {
                        if revs.len() != 1 {
                            mixed.fetch_add(1, Ordering::SeqCst);
                        }
                        if files != FILES {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("walk saw {files} files"));
                        }
                    }
                    Err(e) => errors.lock().unwrap().push(e),
                }
                walks.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    for sha in &shas[1..] {
        move_main(sha);
        assert_eq!(
            http_request(gs.admin_port, "POST", "/sync", &[], b"").0,
            202
        );
        wait::until(Duration::from_secs(20), "publish", || {
            published(&root, "current").as_deref() == Some(sha.as_str())
        });
    }
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();

    let walks = walks.load(Ordering::SeqCst);
    let errors = errors.lock().unwrap();
    assert_eq!(
        mixed.load(Ordering::SeqCst),
        0,
        "mixed reads in {walks} walks"
    );
    assert!(
        errors.is_empty(),
        "{} failed walks of {walks}, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert!(
        walks >= syncs() as u64,
        "the reader walked only {walks} times"
    );
    assert!(gs.metric("gitsync_syncs_total{result=\"published\"}") >= Some(syncs() as f64));
    // old trees are collected after the grace period: far fewer than 500 remain
    let trees = std::fs::read_dir(root.join(".git-sync/trees"))
        .unwrap()
        .count();
    assert!(trees < syncs() / 2 + 2, "{trees} trees kept");
    eprintln!("{walks} walks over {} publishes, 0 mixed", syncs());
}
