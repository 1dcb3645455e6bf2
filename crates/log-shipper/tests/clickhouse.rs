#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The ClickHouse sink against a real ClickHouse server (Debian's `clickhouse-server`, started
//! on free loopback ports): rows inserted as JSONEachRow over HTTP with gzip and a password
//! file, counted exactly with queries; a row ClickHouse cannot parse goes to the dead-letter
//! file and the rest of its batch is stored; a missing table is refused, not retried forever.

mod common;
mod stores;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::Shipper;
use stores::{ClickHouse, require};
use test_support::wait;

fn config(dir: &Path, ch: &ClickHouse, table: &str) -> String {
    let password = dir.join("ch-password");
    std::fs::write(&password, format!("{}\n", ch.password)).unwrap();
    let path = dir.join("shipper.yaml");
    std::fs::write(
        &path,
        format!(
            r#"inputs:
  app: {{ type: file, include: ["{log}"], pipeline: app }}
pipelines:
  app:
    parser: {{ type: json, message_key: msg }}
    sinks: [olap]
sinks:
  olap:
    type: clickhouse
    url: "{url}"
    table: {table}
    user: shipper
    password_file: "{password}"
    gzip: true
    batch: {{ max_lines: 250, timeout: 100ms }}
    retry: {{ initial: 100ms, max: 500ms }}
    buffer: {{ max_bytes: 0 }}
"#,
            log = dir.join("app.log").display(),
            url = ch.url(),
            password = password.display(),
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn write_lines(dir: &Path, n: u64, poison_at: Option<u64>) {
    let mut text = String::new();
    for i in 0..n {
        let value = if Some(i) == poison_at {
            "\"not a number\"".to_owned()
        } else {
            i.to_string()
        };
        text.push_str(&format!(
            "{{\"msg\":\"ch seq={i:08}\",\"level\":\"info\",\"n\":{value}}}\n"
        ));
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("app.log"))
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

#[test]
fn clickhouse_stores_every_row_once_and_sets_a_bad_row_aside() {
    let Some(bin) = require("clickhouse", "clickhouse-server", "clickhouse-server") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ch = ClickHouse::start(&bin, &dir.path().join("server"));
    ch.query("CREATE DATABASE logs");
    ch.query(
        "CREATE TABLE logs.app (timestamp DateTime, message String, level String, n UInt32) \
         ENGINE = MergeTree ORDER BY timestamp",
    );
    let config = config(dir.path(), &ch, "logs.app");
    write_lines(dir.path(), 1000, Some(437));
    let state = dir.path().join("state");
    let shipper = Shipper::start(&state, &["--config", &config]);
    wait::Wait::new("999 rows in ClickHouse")
        .timeout(Duration::from_secs(60))
        .every(Duration::from_millis(200))
        .context(|| format!("{}\n{}", shipper.proc.log(), ch.proc.log()))
        .until(|| ch.query("SELECT count() FROM logs.app").trim() == "999");
    wait::until(
        Duration::from_secs(20),
        "the bad row to be set aside",
        || shipper.metric(r#"log_shipper_lines_dead_lettered_total{sink="olap"}"#) == 1.0,
    );
    shipper.stop();
    // Exactly once each, the bad one excepted.
    assert_eq!(
        ch.query("SELECT count(), uniqExact(message), sum(n) FROM logs.app FORMAT TSV")
            .trim(),
        format!("999\t999\t{}", (0..1000u64).sum::<u64>() - 437)
    );
    assert_eq!(
        ch.query("SELECT count() FROM logs.app WHERE message = 'ch seq=00000437'")
            .trim(),
        "0"
    );
    let letters = std::fs::read_to_string(state.join("dead-letter/olap.ndjson")).unwrap();
    let letter: serde_json::Value = serde_json::from_str(letters.trim()).unwrap();
    assert_eq!(letter["event"]["message"], "ch seq=00000437");
    assert!(
        letter["reason"].as_str().unwrap().contains("Code: "),
        "{letter}"
    );
}

#[test]
fn a_missing_clickhouse_table_is_refused_not_retried_forever() {
    let Some(bin) = require(
        "clickhouse_missing_table",
        "clickhouse-server",
        "clickhouse-server",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ch = ClickHouse::start(&bin, &dir.path().join("server"));
    let config = config(dir.path(), &ch, "nowhere");
    write_lines(dir.path(), 10, None);
    let shipper = Shipper::start(&dir.path().join("state"), &["--config", &config]);
    wait::until(
        Duration::from_secs(30),
        "the batch to be refused and set aside",
        || shipper.metric(r#"log_shipper_lines_dead_lettered_total{sink="olap"}"#) == 10.0,
    );
    assert_eq!(
        shipper.metric(r#"log_shipper_sink_errors_total{sink="olap",status="404"}"#),
        1.0
    );
    shipper.stop();
}
