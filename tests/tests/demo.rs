#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The README's main command, as a user runs it: the local demo with its built-in defaults must
//! pass every one of its own checks (mesh call over mTLS with identities, refusal without a
//! certificate, XML status as metrics, a git commit reaching the app's config).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

/// The workspace's binaries, built by `scripts/test.sh` before the tests run.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .to_owned()
}

/// A base port with the 20 ports after it free right now.
fn free_port_base() -> u16 {
    (20_000..60_000)
        .step_by(97)
        .find(|base| (0..20).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .unwrap()
}

#[test]
fn the_demo_passes_all_its_checks() {
    let demo = bin_dir().join("demo");
    assert!(
        demo.exists(),
        "{} missing: build the workspace's binaries first (scripts/test.sh does)",
        demo.display()
    );
    let dir = tempfile_dir();
    let out = Command::new(&demo)
        .args(["--check", "--dir", dir.to_str().unwrap()])
        .args(["--port-base", &free_port_base().to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("9 of 9 checks passed."), "{stdout}");
    assert!(
        !stdout.contains("killed"),
        "a process did not stop on SIGTERM:\n{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> PathBuf {
    std::env::temp_dir().join(format!("sidecars-demo-test-{}", std::process::id()))
}
