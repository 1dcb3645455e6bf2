#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The README's main command, as a user runs it: the local demo with its built-in defaults must
//! pass every one of its own checks (both pods' certificates issued by OpenBao through
//! secrets-agent, mesh call over mTLS with identities, refusal without a certificate, XML status
//! as metrics, a git commit reaching the app's config, a certificate rotation picked up by both
//! ambassadors without a failed request, every line of the app's access log in the log store).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use test_support::ports::free_port_range;
use test_support::wait::Wait;

/// The workspace's binaries, built by `scripts/test.sh` before the tests run.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .to_owned()
}

/// One demo at a time: two would pick the same free ports.
static ONE_DEMO: Mutex<()> = Mutex::new(());

#[test]
fn the_demo_passes_all_its_checks() {
    let _one = ONE_DEMO.lock().unwrap_or_else(|p| p.into_inner());
    let demo = bin_dir().join("demo");
    assert!(
        demo.exists(),
        "{} missing: build the workspace's binaries first (scripts/test.sh does)",
        demo.display()
    );
    let dir = tempfile_dir();
    let out = Command::new(&demo)
        .args(["--check", "--dir", dir.to_str().unwrap()])
        .args(["--port-base", &free_port_range(20).to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("14 of 14 checks passed."), "{stdout}");
    assert!(
        !stdout.contains("killed"),
        "a process did not stop on SIGTERM:\n{stdout}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a user sees on pressing Ctrl-C in the terminal that runs `scripts/demo.sh`: the terminal
/// sends SIGINT to the whole foreground process group. Every sidecar must drain and exit 0 (a
/// sidecar that took that SIGINT on top of the demo's SIGTERM would exit at once with 130).
#[test]
fn ctrl_c_in_the_terminal_stops_every_sidecar_gracefully() {
    let stopped = ctrl_c_after("Press Ctrl-C to stop.");
    for line in &stopped {
        assert!(line.contains("exit status: 0"), "{line}\n\n{stopped:#?}");
    }
}

/// A Ctrl-C while the sidecars are still starting stops them too (the sidecars have process
/// groups of their own, so only the demo can).
#[test]
fn ctrl_c_while_starting_stops_every_sidecar() {
    ctrl_c_after("Waiting for the sidecars to be ready...");
}

/// Runs the demo as a terminal would, sends its process group SIGINT once `line` is printed,
/// and returns the "stopped" lines after checking that every process reported one.
fn ctrl_c_after(line: &str) -> Vec<String> {
    let _one = ONE_DEMO.lock().unwrap_or_else(|p| p.into_inner());
    let demo = bin_dir().join("demo");
    assert!(demo.exists(), "{} missing", demo.display());
    let dir = std::env::temp_dir().join(format!("sidecars-demo-ctrl-c-{}", std::process::id()));
    let mut child = Command::new(&demo)
        .args(["--dir", dir.to_str().unwrap()])
        .args(["--port-base", &free_port_range(20).to_string()])
        .process_group(0) // the terminal's foreground group, with the demo as its leader
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let group = child.id();
    let signal_group = |sig: &str| {
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{group}")])
            .status();
    };
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !seen.iter().any(|l: &String| l.contains(line)) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => seen.push(l),
            Err(_) => {
                signal_group("-KILL");
                panic!("the demo never printed {line:?}:\n{}", seen.join("\n"));
            }
        }
    }
    signal_group("-INT");
    let stopped = Wait::new("the demo to stop after Ctrl-C")
        .timeout(Duration::from_secs(30))
        .every(Duration::from_millis(50))
        .elapsed(|| child.try_wait().unwrap().is_some());
    if stopped.is_none() {
        signal_group("-KILL");
        panic!("the demo did not stop after Ctrl-C:\n{}", seen.join("\n"));
    }
    // The reader thread ends with the demo's stdout.
    seen.extend(rx.iter());
    let _ = std::fs::remove_dir_all(&dir);
    let stopped: Vec<String> = seen
        .iter()
        .filter(|l| l.contains("stopped"))
        .cloned()
        .collect();
    // OpenBao, two secrets-agents, pod B's app, the log store, pod B's log-shipper, ambassador,
    // xml-adapter and git-sync, pod A's ambassador.
    assert_eq!(
        stopped.len(),
        10,
        "every process reports its end:\n{}",
        seen.join("\n")
    );
    assert!(
        !seen.iter().any(|l| l.contains("killed")),
        "a process did not stop on SIGTERM:\n{}",
        seen.join("\n")
    );
    stopped
}

fn tempfile_dir() -> PathBuf {
    std::env::temp_dir().join(format!("sidecars-demo-test-{}", std::process::id()))
}
