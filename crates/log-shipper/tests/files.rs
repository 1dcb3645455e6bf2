#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Files that go away or come back as other files: a file deleted while it is being read is
//! read to its end, then let go; other lines under a checkpointed file's inode (inode reuse)
//! after a restart are read from their beginning, not from the old file's offset. Each
//! test prints `FIGURES <test>: written= delivered= unique= lost= duplicated=`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::{LineWriter, Mode, Receiver, Shipper, account, flags, report};
use test_support::wait;

#[test]
fn a_deleted_file_is_read_to_its_end_then_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let receiver = Receiver::start_with(false, None);
    // The sink refuses at first and has no disk buffer: reading stops (back-pressure) with
    // most of the file unread, so the deletion comes while the file is being read.
    receiver.set_mode(Mode::Fail(503, None));
    let (path, url) = (log.display().to_string(), receiver.url());
    let mut args = flags(&path, &url);
    args.extend(["--buffer-max-bytes", "0"]);
    let mut w = LineWriter::new(&log, "del", 100);
    w.write(100_000);
    let shipper = Shipper::start(&dir.path().join("state"), &args);
    wait::until(
        Duration::from_secs(30),
        "the shipper to read some lines",
        || shipper.metric(r#"log_shipper_lines_read_total{input="files"}"#) > 0.0,
    );
    std::fs::remove_file(&log).unwrap();
    let read_at_deletion = shipper.metric(r#"log_shipper_lines_read_total{input="files"}"#);
    assert!(
        read_at_deletion < 100_000.0,
        "the file was read to its end before it was deleted ({read_at_deletion} lines): the test proves nothing"
    );
    receiver.set_mode(Mode::Ok);
    receiver.wait_all("del", w.next, Duration::from_secs(120), Some(&shipper));
    let acc = account(&receiver.counts("del"), w.next);
    report("file_deleted_while_read", &acc);
    println!(
        "read when the file was deleted: {read_at_deletion} of {} lines",
        w.next
    );
    assert_eq!((acc.lost, acc.duplicated), (0, 0), "{acc:?}");
    wait::until(
        Duration::from_secs(30),
        "the deleted file to be let go",
        || shipper.metric(r#"log_shipper_files_tracked{input="files"}"#) == 0.0,
    );
    shipper.stop();
}

#[test]
fn other_lines_under_a_checkpointed_inode_are_read_from_their_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let state = dir.path().join("state");
    let receiver = Receiver::start_with(false, None);
    let (path, url) = (log.display().to_string(), receiver.url());
    let shipper = Shipper::start(&state, &flags(&path, &url));
    let mut old = LineWriter::new(&log, "old", 100);
    old.write(1_000);
    receiver.wait_all("old", 1_000, Duration::from_secs(30), Some(&shipper));
    let old_inode = std::fs::metadata(&log).unwrap().ino();
    shipper.stop();

    // Other lines under the same device and inode, longer than the old checkpoint's offset:
    // what a deleted file's inode given to a new file looks like. Written in place, so the
    // inode is the same whatever the filesystem does with freed inodes; only the first bytes
    // tell the files apart.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    let mut new = LineWriter::new(&log, "new", 100);
    new.write(3_000);
    assert_eq!(std::fs::metadata(&log).unwrap().ino(), old_inode);
    let shipper = Shipper::start(&state, &flags(&path, &url));
    receiver.wait_all("new", 3_000, Duration::from_secs(60), Some(&shipper));
    let acc = account(&receiver.counts("new"), 3_000);
    report("inode_with_other_first_bytes_after_restart", &acc);
    assert_eq!((acc.lost, acc.duplicated), (0, 0), "{acc:?}");
    // Nothing of the old file is sent again.
    let old_acc = account(&receiver.counts("old"), 1_000);
    assert_eq!((old_acc.lost, old_acc.duplicated), (0, 0), "{old_acc:?}");
    shipper.stop();
}
