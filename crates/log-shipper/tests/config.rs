#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Bad configuration is refused at start with exit code 64 and a message naming the setting;
//! the YAML file is read again when it changes, and a bad new file keeps the running one.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{BIN, LineWriter, Receiver, Shipper};
use test_support::wait;

/// Runs the binary to its exit; returns the exit code and stderr.
fn refused(state: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args([
            "--state-dir",
            state.to_str().unwrap(),
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_settings_exit_64_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let base = [
        "--file",
        "/var/log/app/*.log",
        "--sink-url",
        "http://127.0.0.1:9/ingest",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with(&["--redact", "card=(\\d+"]), "--redact: invalid regex"),
        (
            with(&["--parser", "regex", "--regex", "no captures"]),
            "--regex",
        ),
        (
            with(&["--multiline-start", "[unclosed"]),
            "--multiline-start: invalid regex",
        ),
        (
            with(&["--env-field", "pod=NO_SUCH_VARIABLE_HERE"]),
            "NO_SUCH_VARIABLE_HERE is not set",
        ),
        (
            with(&["--timestamp-field", "t", "--timestamp-format", "whenever"]),
            "--timestamp-format",
        ),
        (
            with(&["--bearer-token-file", "/nonexistent/token"]),
            "--bearer-token-file",
        ),
        (
            with(&["--bearer-token-file", "/"]),
            "--bearer-token-file /: is a directory",
        ),
        (
            with(&["--ca-file", "/nonexistent/ca.pem"]),
            "--ca-file/--client-cert/--client-key /nonexistent/ca.pem: No such file",
        ),
        (with(&["--buffer-max-bytes", "10KiB"]), "--buffer-max-bytes"),
        (vec!["--sink-url".into(), "http://x/".into()], "--file"),
        (
            vec![
                "--http-listen".into(),
                "nowhere".into(),
                "--sink-url".into(),
                "http://x/".into(),
            ],
            "--http-listen: `nowhere` is not an address",
        ),
        (
            vec![
                "--syslog-udp".into(),
                "127.0.0.1:5514".into(),
                "--http-listen".into(),
                "127.0.0.1:9880".into(),
                "--http-max-in-flight-bytes".into(),
                "1KiB".into(),
                "--sink-url".into(),
                "http://x/".into(),
            ],
            "--http-max-in-flight-bytes: at least the largest body",
        ),
        (
            vec![
                "--file".into(),
                "relative/*.log".into(),
                "--sink-url".into(),
                "http://x/".into(),
            ],
            "give an absolute path",
        ),
        (
            vec![
                "--file".into(),
                "/a/*.log".into(),
                "--sink-url".into(),
                "ftp://x/".into(),
            ],
            "--sink-url",
        ),
    ];
    for (args, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = refused(&state, &args);
        assert_eq!(code, Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: expected {needle:?} in {stderr}"
        );
    }
    // A state directory that cannot be a directory (root ignores permissions, not this).
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (code, stderr) = refused(&file.join("state"), &base);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("--state-dir"), "{stderr}");
}

#[test]
fn a_second_shipper_on_the_same_state_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let receiver = Receiver::start();
    let glob = format!("{}/*.log", dir.path().display());
    let url = receiver.url();
    let first = Shipper::start(&state, &["--file", &glob, "--sink-url", &url]);
    let (code, stderr) = refused(&state, &["--file", &glob, "--sink-url", &url]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    first.stop();
}

fn yaml(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("shipper.yaml");
    // Written whole and renamed, as a ConfigMap update is.
    std::fs::write(dir.join("shipper.yaml.new"), body).unwrap();
    std::fs::rename(dir.join("shipper.yaml.new"), &path).unwrap();
    path
}

#[test]
fn bad_yaml_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cases = [
        (
            "inputs:\n  app: {type: file, include: [\"/l/*.log\"]}\npipelines:\n  default: {sinks: [central, nowhere]}\nsinks:\n  central: {type: http, url: \"http://x/\"}\n",
            "pipelines.default.sinks[1]: unknown sink `nowhere`",
        ),
        (
            "inputs:\n  app: {type: file, include: [\"/l/*.log\"]}\npipelines:\n  default: {sinks: [c]}\nsinks:\n  c: {type: kafka, url: \"http://x/\"}\n",
            "sinks",
        ),
        (
            "inputs:\n  app: {type: file, include: [\"/l/*.log\"]}\npipelines:\n  default:\n    sinks: [c]\n    redact: [{pattern: \"(\"}]\nsinks:\n  c: {type: http, url: \"http://x/\"}\n",
            "pipelines.default.redact[0].pattern: invalid regex",
        ),
        (
            "inputs:\n  app: {type: file, include: [\"/l/*.log\"], colour: blue}\npipelines:\n  default: {sinks: [c]}\nsinks:\n  c: {type: http, url: \"http://x/\"}\n",
            "unknown field `colour`",
        ),
        (
            "inputs:\n  a: {type: http, address: \"127.0.0.1:9880\"}\n  b: {type: syslog, tcp: \"localhost:9880\"}\npipelines:\n  default: {sinks: [c]}\nsinks:\n  c: {type: http, url: \"http://x/\"}\n",
            "inputs.b: tcp 127.0.0.1:9880 is the address of input `a` too",
        ),
        (
            "inputs:\n  s: {type: syslog}\npipelines:\n  default: {sinks: [c]}\nsinks:\n  c: {type: http, url: \"http://x/\"}\n",
            "inputs.s.tcp: give a TCP or a UDP address",
        ),
    ];
    for (body, needle) in cases {
        let path = yaml(dir.path(), body);
        let (code, stderr) = refused(&state, &["--config", path.to_str().unwrap()]);
        assert_eq!(code, Some(64), "{body}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{body}: expected {needle:?} in {stderr}"
        );
    }
}

#[test]
fn the_yaml_file_reloads_and_a_bad_one_keeps_the_running_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let receiver = Receiver::start();
    let config = |team: &str| {
        format!(
            "inputs:\n  app: {{type: file, include: [\"{}\"]}}\npipelines:\n  default:\n    fields: {{static: {{team: {team}}}}}\n    sinks: [c]\nsinks:\n  c: {{type: http, url: \"{}\", batch: {{timeout: 100ms}}}}\n",
            log.display(),
            receiver.url()
        )
    };
    let path = yaml(dir.path(), &config("blue"));
    let shipper = Shipper::start(
        &dir.path().join("state"),
        &["--config", path.to_str().unwrap()],
    );
    let mut w = LineWriter::new(&log, "rl", 60);
    w.write(10);
    receiver.wait_all("rl", 10, Duration::from_secs(20), Some(&shipper));

    yaml(dir.path(), &config("green"));
    wait::until(Duration::from_secs(20), "the reload to be applied", || {
        shipper.metric(r#"log_shipper_config_reloads_total{result="ok"}"#) == 1.0
    });
    w.write(10);
    receiver.wait_all("rl", 20, Duration::from_secs(20), Some(&shipper));

    yaml(dir.path(), "inputs: [this is not the schema\n");
    wait::until(
        Duration::from_secs(20),
        "the bad reload to be counted",
        || shipper.metric(r#"log_shipper_config_reloads_total{result="error"}"#) == 1.0,
    );
    w.write(10);
    receiver.wait_all("rl", 30, Duration::from_secs(20), Some(&shipper));

    let events = receiver.events();
    let team = |seq: u64| {
        events
            .iter()
            .find(|e| {
                e["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("seq={seq:08}"))
            })
            .unwrap()["team"]
            .clone()
    };
    assert_eq!(team(0), "blue");
    assert_eq!(team(15), "green");
    assert_eq!(team(25), "green", "the refused file changed nothing");
    let acc = common::account(&receiver.counts("rl"), 30);
    assert_eq!(
        (acc.lost, acc.duplicated),
        (0, 0),
        "a reload neither loses nor repeats: {acc:?}"
    );
    shipper.stop();
}
