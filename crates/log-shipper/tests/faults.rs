#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! At least once across faults, every line accounted for: rotations under load, kill -9 and
//! restart, the sink down for 30 s, the disk buffer filled (both policies), truncation. Each
//! test prints `FIGURES <test>: written= delivered= unique= lost= duplicated=`.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::{LineWriter, Mode, Receiver, Shipper, account, flags, report};
use test_support::wait;

/// One fault test at a time: each writes thousands of lines a second, and the machine has two
/// cores.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn a_hundred_rotations_by_rename_and_copytruncate_at_10k_lines_per_second() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let receiver = Receiver::start_with(false, None);
    let (path, url) = (log.display().to_string(), receiver.url());
    let mut args = flags(&path, &url);
    args.extend(["--batch-lines", "2000"]);
    let shipper = Shipper::start(&dir.path().join("state"), &args);

    let mut w = LineWriter::new(&log, "rot", 200);
    let (mut rotations, mut renames, mut copies) = (0u32, 0u32, 0u32);
    let mut last = Duration::ZERO;
    w.write_at(10_000, Duration::from_secs(60), |w, elapsed| {
        if rotations >= 100 {
            return false;
        }
        if elapsed - last < Duration::from_millis(250) {
            return true;
        }
        last = elapsed;
        rotations += 1;
        let to = dir.path().join(format!("app.log.{rotations}"));
        if rotations.is_multiple_of(3) {
            w.rotate_copytruncate(&to);
            copies += 1;
        } else {
            w.rotate_rename(&to);
            renames += 1;
        }
        // logrotate's `rotate N`: the oldest rotated file goes. Rotations come every 250 ms
        // here, so N is what covers the shipper's lag (40: 10 s); a copy deleted before the
        // shipper has seen the truncation takes the unread lines with it, for any shipper.
        if rotations > 40 {
            let _ = std::fs::remove_file(dir.path().join(format!("app.log.{}", rotations - 40)));
        }
        true
    });
    assert_eq!(rotations, 100);
    let written = w.next;
    receiver.wait_all("rot", written, Duration::from_secs(120), Some(&shipper));
    let m = shipper.metrics();
    let acc = account(&receiver.counts("rot"), written);
    report("rotations_100_rename_copytruncate_10k_per_s", &acc);
    println!(
        "rotations: {renames} by rename, {copies} by copy-truncate; followed: rename {:?}, copytruncate {:?}, truncate {:?}",
        m.value(r#"log_shipper_rotations_total{input="files",kind="rename"}"#),
        m.value(r#"log_shipper_rotations_total{input="files",kind="copytruncate"}"#),
        m.value(r#"log_shipper_rotations_total{input="files",kind="truncate"}"#),
    );
    assert_eq!(acc.lost, 0, "{acc:?}");
    assert_eq!(acc.duplicated, 0, "no crash, no duplicate: {acc:?}");
    shipper.stop();
}

/// A writer on its own thread: `rate` lines per second with a rename rotation every second
/// (copy-truncate every third), until `total` lines. Its progress is shared.
fn background_writer(
    dir: &std::path::Path,
    tag: &'static str,
    rate: u64,
    total: u64,
) -> (Arc<AtomicU64>, std::thread::JoinHandle<u64>) {
    let progress = Arc::new(AtomicU64::new(0));
    let shared = progress.clone();
    let dir = dir.to_owned();
    let thread = std::thread::spawn(move || {
        let mut w = LineWriter::new(&dir.join("app.log"), tag, 150);
        let mut rotations = 0u32;
        let mut last = Duration::ZERO;
        w.write_at(rate, Duration::from_secs(600), |w, elapsed| {
            shared.store(w.next, Ordering::Relaxed);
            if elapsed - last >= Duration::from_secs(1) {
                last = elapsed;
                rotations += 1;
                let to = dir.join(format!("app.log.{rotations}"));
                if rotations.is_multiple_of(3) {
                    w.rotate_copytruncate(&to);
                } else {
                    w.rotate_rename(&to);
                }
            }
            w.next < total
        });
        shared.store(w.next, Ordering::Relaxed);
        w.next
    });
    (progress, thread)
}

fn wait_progress(progress: &AtomicU64, n: u64) {
    wait::Wait::new(format_args!("the writer to reach line {n}"))
        .timeout(Duration::from_secs(120))
        .every(Duration::from_millis(10))
        .until(|| progress.load(Ordering::Relaxed) >= n);
}

#[test]
fn kill_9_twice_mid_stream_with_rotations_while_down() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let receiver = Receiver::start_with(false, None);
    // The rotated names are in the pattern: files rotated while the shipper is down are found.
    let (path, url) = (format!("{}/app.log*", dir.path().display()), receiver.url());
    let args = flags(&path, &url);
    let shipper = Shipper::start(&state, &args);
    let (progress, writer) = background_writer(dir.path(), "k9", 10_000, 120_000);

    wait_progress(&progress, 30_000);
    shipper.kill9();
    // Down while 15k lines are written and a rotation or two happen.
    wait_progress(&progress, 45_000);
    let shipper = Shipper::start(&state, &args);
    wait_progress(&progress, 80_000);
    shipper.kill9();
    wait_progress(&progress, 90_000);
    let shipper = Shipper::start(&state, &args);
    let written = writer.join().unwrap();
    receiver.wait_all("k9", written, Duration::from_secs(120), Some(&shipper));
    let acc = account(&receiver.counts("k9"), written);
    report("kill9_twice_10k_per_s_rotating", &acc);
    assert_eq!(acc.lost, 0, "{acc:?}");
    shipper.stop();
}

#[test]
fn the_sink_down_for_30_seconds_then_back() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start_with(false, None);
    let (path, url) = (
        dir.path().join("app.log").display().to_string(),
        receiver.url(),
    );
    let shipper = Shipper::start(&dir.path().join("state"), &flags(&path, &url));
    // 2k lines per second for 40 s; the outage is lines 10k to 70k: 30 s of writing, the first
    // half answered 503, the second 429 with Retry-After: 1.
    let (progress, writer) = background_writer(dir.path(), "down", 2_000, 80_000);
    wait_progress(&progress, 10_000);
    receiver.set_mode(Mode::Fail(503, None));
    let refused_from = receiver.state.refused.load(Ordering::Relaxed);
    wait_progress(&progress, 40_000);
    receiver.set_mode(Mode::Fail(429, Some(1)));
    wait_progress(&progress, 70_000);
    let buffered = shipper.metric(r#"log_shipper_buffer_bytes{sink="default"}"#);
    let errors_503 =
        shipper.metric(r#"log_shipper_sink_errors_total{sink="default",status="503"}"#);
    let errors_429 =
        shipper.metric(r#"log_shipper_sink_errors_total{sink="default",status="429"}"#);
    receiver.set_mode(Mode::Ok);
    let written = writer.join().unwrap();
    receiver.wait_all("down", written, Duration::from_secs(120), Some(&shipper));
    let acc = account(&receiver.counts("down"), written);
    report("sink_down_30s_503_then_429", &acc);
    println!(
        "outage: {} requests refused, 503 errors {errors_503}, 429 errors {errors_429}, disk buffer at the end of the outage {buffered} bytes",
        receiver.state.refused.load(Ordering::Relaxed) - refused_from
    );
    assert!(errors_503 > 0.0 && errors_429 > 0.0);
    assert!(buffered > 0.0, "the disk buffer carried the outage");
    assert_eq!(acc.lost, 0, "{acc:?}");
    assert_eq!(acc.duplicated, 0, "{acc:?}");
    wait::until(Duration::from_secs(10), "the disk buffer to empty", || {
        shipper.metric(r#"log_shipper_buffer_bytes{sink="default"}"#) == 0.0
    });
    shipper.stop();
}

fn small_buffer_args<'a>(path: &'a str, url: &'a str, policy: &'a str) -> Vec<&'a str> {
    let mut args = flags(path, url);
    args.extend([
        "--buffer-max-bytes",
        "256KiB",
        "--batch-bytes",
        "64KiB",
        "--buffer-when-full",
        policy,
    ]);
    args
}

#[test]
fn a_full_disk_buffer_blocks_reading_and_loses_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let receiver = Receiver::start_with(false, None);
    receiver.set_mode(Mode::Fail(503, None));
    let (path, url) = (log.display().to_string(), receiver.url());
    let shipper = Shipper::start(
        &dir.path().join("state"),
        &small_buffer_args(&path, &url, "block"),
    );
    let mut w = LineWriter::new(&log, "full", 100);
    w.write(60_000); // 6 MB: far more than the buffer and memory hold
    // The buffer fills, then reading stops: most of the file is not even read.
    wait::until(Duration::from_secs(30), "the disk buffer to fill", || {
        shipper.metric(r#"log_shipper_buffer_bytes{sink="default"}"#) > 128.0 * 1024.0
    });
    wait::holds_for(
        Duration::from_secs(2),
        "reading to stay blocked under 256 KiB of buffer",
        || {
            let m = shipper.metrics();
            let buffered = m
                .value(r#"log_shipper_buffer_bytes{sink="default"}"#)
                .unwrap_or(0.0);
            let read = m
                .value(r#"log_shipper_lines_read_total{input="files"}"#)
                .unwrap_or(0.0);
            buffered <= 256.0 * 1024.0 && read < 40_000.0
        },
    );
    let lag = shipper.metric(&format!(
        r#"log_shipper_file_lag_bytes{{input="files",path="{path}"}}"#
    ));
    receiver.set_mode(Mode::Ok);
    receiver.wait_all("full", w.next, Duration::from_secs(60), Some(&shipper));
    let acc = account(&receiver.counts("full"), w.next);
    report("disk_buffer_full_block", &acc);
    println!("while blocked: file lag {lag} bytes");
    assert!(
        lag > 2_000_000.0,
        "the file held what the buffer could not: lag {lag}"
    );
    assert_eq!(acc.lost, 0, "{acc:?}");
    assert_eq!(
        shipper.metric(r#"log_shipper_lines_dropped_total{sink="default",reason="buffer_full"}"#),
        0.0
    );
    shipper.stop();
}

#[test]
fn a_full_disk_buffer_under_drop_oldest_loses_only_what_it_counts() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let receiver = Receiver::start_with(false, None);
    receiver.set_mode(Mode::Fail(503, None));
    let (path, url) = (log.display().to_string(), receiver.url());
    let shipper = Shipper::start(
        &dir.path().join("state"),
        &small_buffer_args(&path, &url, "drop-oldest"),
    );
    let mut w = LineWriter::new(&log, "drop", 100);
    w.write(30_000);
    wait::until(
        Duration::from_secs(60),
        "the disk buffer to drop its oldest events",
        || {
            shipper
                .metric(r#"log_shipper_lines_dropped_total{sink="default",reason="buffer_full"}"#)
                > 0.0
        },
    );
    receiver.set_mode(Mode::Ok);
    let dropped = || {
        shipper.metric(r#"log_shipper_lines_dropped_total{sink="default",reason="buffer_full"}"#)
            as u64
    };
    wait::Wait::new("every line delivered or counted as dropped")
        .timeout(Duration::from_secs(60))
        .context(|| {
            format!(
                "{:?}, dropped {}",
                account(&receiver.counts("drop"), w.next),
                dropped()
            )
        })
        .until(|| account(&receiver.counts("drop"), w.next).unique + dropped() == w.next);
    let dropped = dropped();
    let acc = account(&receiver.counts("drop"), w.next);
    report("disk_buffer_full_drop_oldest", &acc);
    println!("dropped by policy and counted: {dropped}");
    assert_eq!(
        acc.lost, dropped,
        "every line lost is a line counted: {acc:?}"
    );
    assert_eq!(acc.duplicated, 0, "{acc:?}");
    shipper.stop();
}

#[test]
fn a_truncated_file_is_read_again_from_its_start() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let receiver = Receiver::start_with(false, None);
    let (path, url) = (log.display().to_string(), receiver.url());
    let shipper = Shipper::start(&dir.path().join("state"), &flags(&path, &url));
    let mut w = LineWriter::new(&log, "trunc", 100);
    w.write(1_000);
    receiver.wait_all("trunc", 1_000, Duration::from_secs(30), Some(&shipper));
    // Truncated in place, then written again: fewer bytes than before.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    w.write(500);
    receiver.wait_all("trunc", 1_500, Duration::from_secs(30), Some(&shipper));
    // Truncated and at once written past the old offset: the first bytes tell.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    w.write(3_000);
    receiver.wait_all("trunc", w.next, Duration::from_secs(30), Some(&shipper));
    let acc = account(&receiver.counts("trunc"), w.next);
    report("file_truncated_twice", &acc);
    assert_eq!((acc.lost, acc.duplicated), (0, 0), "{acc:?}");
    assert!(shipper.metric(r#"log_shipper_rotations_total{input="files",kind="truncate"}"#) >= 2.0);
    shipper.stop();
}
