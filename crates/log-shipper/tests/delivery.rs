#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The normal path, end to end with the real binary: every line exactly once, across several
//! files, files that appear later, a graceful restart (SIGTERM) that resumes exactly where it
//! stopped, and polling without filesystem events.

mod common;

use std::time::Duration;

use common::{LineWriter, Receiver, Shipper, account, flags, report};
use test_support::wait;

#[test]
fn every_line_exactly_once_across_files_and_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let state = dir.path().join("state");
    let receiver = Receiver::start_with(false, None);
    let glob = format!("{}/*.log", logs.display());
    let url = receiver.url();

    // Lines written before the shipper starts are shipped too (start at the beginning).
    let mut a = LineWriter::new(&logs.join("a.log"), "a", 120);
    a.write(5_000);
    let shipper = Shipper::start(&state, &flags(&glob, &url));
    let mut b = LineWriter::new(&logs.join("b.log"), "b", 200);
    for _ in 0..20 {
        a.write(1_000);
        b.write(500);
    }
    // A file that appears later.
    let mut c = LineWriter::new(&logs.join("c.log"), "c", 80);
    c.write(3_000);
    for (w, tag) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        receiver.wait_all(tag, w.next, Duration::from_secs(60), Some(&shipper));
    }
    let total = a.next + b.next + c.next;
    // Everything is acknowledged: the lag is 0 and the counters agree with the writers.
    wait::until(
        Duration::from_secs(10),
        "lines_sent to reach every line",
        || shipper.metric(r#"log_shipper_lines_sent_total{sink="default"}"#) as u64 == total,
    );
    assert_eq!(
        shipper.metric(r#"log_shipper_lines_read_total{input="files"}"#) as u64,
        total
    );

    // A graceful restart: the checkpoints are written at exit and the new process resumes there.
    shipper.stop();
    a.write(1_000);
    let shipper = Shipper::start(&state, &flags(&glob, &url));
    receiver.wait_all("a", a.next, Duration::from_secs(30), Some(&shipper));
    wait::until(
        Duration::from_secs(10),
        "the restarted shipper to send the new lines",
        || shipper.metric(r#"log_shipper_lines_sent_total{sink="default"}"#) as u64 == 1_000,
    );
    // Nothing else is read again: b and c were fully acknowledged before the stop.
    wait::holds_for(
        Duration::from_secs(2),
        "no line read twice after the restart",
        || shipper.metric(r#"log_shipper_lines_read_total{input="files"}"#) as u64 == 1_000,
    );
    for (w, tag) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        let acc = account(&receiver.counts(tag), w.next);
        report(&format!("normal_path_{tag}"), &acc);
        assert_eq!((acc.lost, acc.duplicated), (0, 0), "file {tag}: {acc:?}");
    }
    shipper.stop();
}

#[test]
fn events_carry_host_file_and_timestamp_and_polling_alone_finds_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let receiver = Receiver::start();
    let url = receiver.url();
    let path = log.display().to_string();
    let mut args = flags(&path, &url);
    args.extend(["--watch", "poll"]);
    let shipper = Shipper::start(&dir.path().join("state"), &args);
    let mut w = LineWriter::new(&log, "p", 60);
    w.write(10);
    receiver.wait_all("p", 10, Duration::from_secs(20), Some(&shipper));
    let events = receiver.events();
    let first = &events[0];
    assert_eq!(first["host"], "pod-a");
    assert_eq!(first["file"], path.as_str());
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .starts_with("p seq=00000000")
    );
    let ts = first["timestamp"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
    shipper.stop();
}
