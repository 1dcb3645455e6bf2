#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Container log formats through the real binary: the CRI format of /var/log/pods (partial
//! lines joined per stream, the runtime's time and stream kept, multiline on the joined lines)
//! and Docker's json-file format.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Receiver, Shipper, flags};
use test_support::wait;

fn append(path: &std::path::Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn find(events: &[serde_json::Value], message: &str) -> serde_json::Value {
    events
        .iter()
        .find(|e| e["message"] == message)
        .unwrap_or_else(|| panic!("no event {message:?} in {events:#?}"))
        .clone()
}

#[test]
fn cri_partial_lines_are_joined_and_multiline_runs_on_the_joined_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("0.log");
    let receiver = Receiver::start();
    let (path, url) = (log.display().to_string(), receiver.url());
    let mut args = flags(&path, &url);
    args.extend([
        "--format",
        "cri",
        "--multiline-preset",
        "java",
        "--multiline-timeout",
        "200ms",
    ]);
    let shipper = Shipper::start(&dir.path().join("state"), &args);
    append(
        &log,
        "2026-01-02T03:04:05.000000006Z stdout P first half, \n\
         2026-01-02T03:04:05.100000000Z stderr F an error meanwhile\n\
         2026-01-02T03:04:05.200000000Z stdout F second half\n\
         2026-01-02T03:04:06Z stdout F java.lang.IllegalStateException: bad\n\
         2026-01-02T03:04:06Z stdout F \tat a.B.c(B.java:1)\n\
         2026-01-02T03:04:07Z stdout P a line whose end \n",
    );
    receiver.wait_lines(3, Duration::from_secs(20), Some(&shipper));
    // The held part is not shipped alone: its end has not come.
    wait::holds_for(Duration::from_millis(800), "the partial line held", || {
        receiver.lines() == 3
    });
    append(&log, "2026-01-02T03:04:08Z stdout F comes later\n");
    receiver.wait_lines(4, Duration::from_secs(20), Some(&shipper));
    let events = receiver.events();
    let joined = find(&events, "first half, second half");
    assert_eq!(joined["stream"], "stdout");
    assert_eq!(joined["timestamp"], "2026-01-02T03:04:05.000000006Z");
    assert_eq!(joined["file"], path.as_str());
    let err = find(&events, "an error meanwhile");
    assert_eq!(err["stream"], "stderr");
    assert_eq!(err["timestamp"], "2026-01-02T03:04:05.1Z");
    find(
        &events,
        "java.lang.IllegalStateException: bad\n\tat a.B.c(B.java:1)",
    );
    find(&events, "a line whose end comes later");
    assert_eq!(events.len(), 4, "{events:#?}");
    assert_eq!(
        shipper.metric(r#"log_shipper_parse_errors_total{pipeline="default",stage="format"}"#),
        0.0
    );
    // A line that is not CRI is shipped as it is, and counted.
    append(&log, "written by something else\n");
    receiver.wait_lines(5, Duration::from_secs(20), Some(&shipper));
    find(&receiver.events(), "written by something else");
    assert_eq!(
        shipper.metric(r#"log_shipper_parse_errors_total{pipeline="default",stage="format"}"#),
        1.0
    );
    shipper.stop();
}

#[test]
fn docker_json_file_lines_from_the_yaml_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("abc-json.log");
    let receiver = Receiver::start();
    let config = dir.path().join("shipper.yaml");
    std::fs::write(
        &config,
        format!(
            "inputs:\n  docker: {{type: file, include: [\"{}\"], format: docker}}\npipelines:\n  default: {{sinks: [c]}}\nsinks:\n  c: {{type: http, url: \"{}\", batch: {{timeout: 100ms}}}}\n",
            log.display(),
            receiver.url()
        ),
    )
    .unwrap();
    let shipper = Shipper::start(
        &dir.path().join("state"),
        &["--config", config.to_str().unwrap()],
    );
    let long = "z".repeat(20_000);
    append(
        &log,
        &format!(
            "{{\"log\":\"{}\",\"stream\":\"stdout\",\"time\":\"2026-01-02T03:04:05.5Z\"}}\n\
             {{\"log\":\"{}\\n\",\"stream\":\"stdout\",\"time\":\"2026-01-02T03:04:05.6Z\"}}\n\
             {{\"log\":\"oops \\\"quoted\\\"\\n\",\"stream\":\"stderr\",\"time\":\"2026-01-02T03:04:06Z\",\"attrs\":{{\"app\":\"web\"}}}}\n",
            &long[..16_384],
            &long[16_384..]
        ),
    );
    receiver.wait_lines(2, Duration::from_secs(20), Some(&shipper));
    let events = receiver.events();
    let joined = find(&events, &long);
    assert_eq!(joined["stream"], "stdout");
    assert_eq!(joined["timestamp"], "2026-01-02T03:04:05.5Z");
    let err = find(&events, "oops \"quoted\"");
    assert_eq!(err["stream"], "stderr");
    assert_eq!(err["app"], "web");
    assert_eq!(events.len(), 2);
    shipper.stop();
}
