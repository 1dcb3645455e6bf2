#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The syslog sink against real receivers: rsyslog over TCP and over TLS with client
//! certificates (imtcp, gtls), syslog-ng over TCP (`syslog()` source). Counts are checked exactly
//! in the files the receivers write; RFC 6587 octet counting carries a multi-line event as one
//! message; the structured data, APP-NAME and severity arrive as sent; a receiver that stops
//! and comes back costs no line.

mod common;
mod stores;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::{Shipper, parse_seq};
use stores::{Rsyslog, ServerTls, SyslogNg, lines, require, wait_lines};
use test_support::certs::Ca;
use test_support::wait;

/// A YAML config: JSON lines of `app.log` (level and pod fields) and raw Java traces of
/// `trace.log`, both to one syslog sink.
fn config(dir: &Path, sink: &str) -> String {
    let path = dir.join("shipper.yaml");
    let text = format!(
        r#"inputs:
  app:
    type: file
    include: ["{app}"]
    pipeline: json
  trace:
    type: file
    include: ["{trace}"]
    pipeline: trace
pipelines:
  json:
    parser: {{ type: json, message_key: msg }}
    sinks: [sys]
  trace:
    multiline: {{ preset: java, timeout: 200ms }}
    sinks: [sys]
sinks:
  sys:
{sink}
    app_name: checkout
    structured_data: {{ id: "meta@32473", fields: [pod] }}
    batch: {{ max_lines: 200, timeout: 100ms }}
    retry: {{ initial: 100ms, max: 500ms }}
    buffer: {{ max_bytes: 0 }}
"#,
        app = dir.join("app.log").display(),
        trace = dir.join("trace.log").display(),
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Appends JSON lines `{"msg":"sys seq=N","level":..,"pod":..}` from `from` to `to`.
fn write_json_lines(dir: &Path, from: u64, to: u64) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("app.log"))
        .unwrap();
    let mut text = String::new();
    for i in from..to {
        let level = if i % 10 == 0 { "error" } else { "info" };
        text.push_str(&format!(
            "{{\"msg\":\"sys seq={i:08} payload\",\"level\":\"{level}\",\"pod\":\"pod-{}\"}}\n",
            i % 3
        ));
    }
    f.write_all(text.as_bytes()).unwrap();
}

fn write_trace(dir: &Path) {
    std::fs::write(
        dir.join("trace.log"),
        "java.lang.IllegalStateException: boom\n\tat com.example.Shop.pay(Shop.java:42)\n\tat com.example.Main.main(Main.java:7)\nafter the trace\n",
    )
    .unwrap();
}

/// Every `sys seq=N` in the receiver's lines, counted.
fn seqs(lines: &[String]) -> HashMap<u64, u32> {
    let mut counts = HashMap::new();
    for line in lines {
        if let Some(at) = line.find("sys seq=")
            && let Some((_, seq)) = parse_seq(&line[at..])
        {
            *counts.entry(seq).or_default() += 1;
        }
    }
    counts
}

fn shipper(dir: &Path, config: &str) -> Shipper {
    Shipper::start(
        &dir.join("state"),
        &["--config", config, "--shutdown-grace", "10s"],
    )
}

/// Checks what rsyslog wrote: `n` JSON lines exactly once each, their severity, APP-NAME and
/// structured data, and the trace as one message.
fn check_rsyslog_lines(out: &[String], n: u64) {
    let counts = seqs(out);
    let a = common::account(&counts, n);
    common::report("rsyslog", &a);
    assert_eq!((a.lost, a.duplicated), (0, 0), "{a:?}");
    // n JSON lines, the trace (one message) and the line after it.
    assert_eq!(out.len() as u64, n + 2, "{:?}", &out[..out.len().min(5)]);
    let first = out.iter().find(|l| l.contains("seq=00000001 ")).unwrap();
    assert_eq!(
        first,
        &format!(
            "checkout info {} [meta@32473 pod=\"pod-1\"] sys seq=00000001 payload",
            first.split(' ').nth(2).unwrap()
        )
    );
    let tenth = out.iter().find(|l| l.contains("seq=00000010 ")).unwrap();
    assert!(tenth.starts_with("checkout err "), "{tenth}");
    // rsyslog escapes the newlines inside a message as #012: one message, three lines.
    let trace = out
        .iter()
        .find(|l| l.contains("IllegalStateException"))
        .unwrap();
    assert!(
        trace.ends_with(
            "java.lang.IllegalStateException: boom#012#011at com.example.Shop.pay(Shop.java:42)#012#011at com.example.Main.main(Main.java:7)"
        ),
        "{trace}"
    );
}

#[test]
fn rsyslog_over_tcp_gets_every_line_once_with_its_framing_and_structured_data() {
    let test = "rsyslog_over_tcp";
    let Some(bin) = require(test, "rsyslogd", "rsyslog") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rsyslog = Rsyslog::start(&bin, dir.path(), None);
    let sink = format!(
        "    type: syslog\n    address: \"127.0.0.1:{}\"\n    facility: local0",
        rsyslog.port
    );
    let config = config(dir.path(), &sink);
    write_json_lines(dir.path(), 0, 1000);
    write_trace(dir.path());
    let shipper = shipper(dir.path(), &config);
    wait_lines(&rsyslog.out, 1002, Duration::from_secs(60), || {
        format!("{}\n{}", shipper.proc.log(), rsyslog.log())
    });
    assert_eq!(
        shipper.metric(r#"log_shipper_lines_sent_total{sink="sys"}"#),
        1002.0
    );
    shipper.stop();
    check_rsyslog_lines(&lines(&rsyslog.out), 1000);
}

#[test]
fn rsyslog_over_tls_with_a_client_certificate() {
    let test = "rsyslog_over_tls";
    let Some(bin) = require(test, "rsyslogd", "rsyslog") else {
        return;
    };
    if require(test, "/usr/share/doc/rsyslog-gnutls", "rsyslog-gnutls").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("syslog CA");
    let ca_file = ca.write(&dir.path().join("ca.crt"));
    let server = ca
        .leaf()
        .dns("localhost")
        .sign()
        .write(dir.path(), "server");
    let client = ca
        .leaf()
        .dns("shipper.test")
        .sign()
        .write(dir.path(), "client");
    let rsyslog = Rsyslog::start(
        &bin,
        dir.path(),
        Some(&ServerTls {
            ca: ca_file.clone(),
            cert: server.cert,
            key: server.key,
        }),
    );
    let sink = format!(
        "    type: syslog\n    address: \"localhost:{}\"\n    transport: tls\n    tls: {{ ca_file: \"{}\", cert_file: \"{}\", key_file: \"{}\" }}",
        rsyslog.port,
        ca_file.display(),
        client.cert.display(),
        client.key.display()
    );
    let config = config(dir.path(), &sink);
    write_json_lines(dir.path(), 0, 500);
    write_trace(dir.path());
    let shipper = shipper(dir.path(), &config);
    wait_lines(&rsyslog.out, 502, Duration::from_secs(60), || {
        format!("{}\n{}", shipper.proc.log(), rsyslog.log())
    });
    shipper.stop();
    check_rsyslog_lines(&lines(&rsyslog.out), 500);
}

#[test]
fn an_rsyslog_restart_costs_no_line() {
    let test = "rsyslog_restart";
    let Some(bin) = require(test, "rsyslogd", "rsyslog") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut rsyslog = Rsyslog::start(&bin, dir.path(), None);
    let sink = format!(
        "    type: syslog\n    address: \"127.0.0.1:{}\"",
        rsyslog.port
    );
    let config = config(dir.path(), &sink);
    write_json_lines(dir.path(), 0, 300);
    let shipper = shipper(dir.path(), &config);
    wait_lines(&rsyslog.out, 300, Duration::from_secs(60), || {
        shipper.proc.log()
    });
    // The receiver goes away; the shipper's connection is now closed at the other end.
    rsyslog.stop();
    write_json_lines(dir.path(), 300, 600);
    wait::until(
        Duration::from_secs(30),
        "the shipper to find the receiver gone",
        || shipper.metric(r#"log_shipper_sink_errors_total{sink="sys",status="connect"}"#) >= 1.0,
    );
    rsyslog.run();
    wait_lines(&rsyslog.out, 600, Duration::from_secs(60), || {
        shipper.proc.log()
    });
    shipper.stop();
    let counts = seqs(&lines(&rsyslog.out));
    let a = common::account(&counts, 600);
    common::report("rsyslog_restart", &a);
    assert_eq!(a.lost, 0, "{a:?}");
    assert_eq!(a.duplicated, 0, "{a:?}");
}

#[test]
fn syslog_ng_over_tcp_gets_every_line_once() {
    let test = "syslog_ng_over_tcp";
    let Some(b) = stores::syslog_ng(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ng = SyslogNg::start(&b, dir.path());
    let sink = format!("    type: syslog\n    address: \"127.0.0.1:{}\"", ng.port);
    let config = config(dir.path(), &sink);
    write_json_lines(dir.path(), 0, 1000);
    write_trace(dir.path());
    let shipper = shipper(dir.path(), &config);
    wait_lines(&ng.out, 1002, Duration::from_secs(60), || {
        format!("{}\n{}", shipper.proc.log(), ng.proc.log())
    });
    shipper.stop();
    let out = lines(&ng.out);
    assert_eq!(out.len(), 1002);
    let records: Vec<serde_json::Value> = out
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let messages: Vec<String> = records
        .iter()
        .map(|r| r["msg"].as_str().unwrap().to_owned())
        .collect();
    let a = common::account(&seqs(&messages), 1000);
    common::report("syslog_ng", &a);
    assert_eq!((a.lost, a.duplicated), (0, 0), "{a:?}");
    let first = records
        .iter()
        .find(|r| r["msg"] == "sys seq=00000001 payload")
        .unwrap();
    assert_eq!(first["app"], "checkout");
    assert_eq!(first["sdata"], "[meta@32473 pod=\"pod-1\"]");
    let trace = records
        .iter()
        .find(|r| r["msg"].as_str().unwrap().contains("IllegalStateException"))
        .unwrap();
    assert_eq!(
        trace["msg"],
        "java.lang.IllegalStateException: boom\n\tat com.example.Shop.pay(Shop.java:42)\n\tat com.example.Main.main(Main.java:7)"
    );
}
