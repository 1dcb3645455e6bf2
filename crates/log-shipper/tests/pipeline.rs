#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The pipeline end to end through the real binary: multiline stack traces, JSON parsing, a
//! timestamp, enrichment from the environment, redaction before anything leaves, cut lines,
//! and binary junk shipped, not fatal.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Receiver, Shipper};
use test_support::wait;

#[test]
fn multiline_json_timestamp_enrichment_and_redaction() {
    let dir = tempfile::tempdir().unwrap();
    let java = dir.path().join("java.log");
    let json = dir.path().join("json.log");
    let receiver = Receiver::start();
    let config = dir.path().join("shipper.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
inputs:
  java: {{type: file, include: ["{java}"], pipeline: java}}
  json: {{type: file, include: ["{json}"], pipeline: json}}
pipelines:
  java:
    multiline: {{preset: java, timeout: 200ms}}
    fields: {{static: {{team: payments}}, env: {{pod: MY_POD_NAME}}}}
    redact: [{{preset: card}}]
    sinks: [c]
  json:
    parser: {{type: json, message_key: msg}}
    timestamp: {{field: time, formats: [rfc3339]}}
    redact: [{{pattern: 'token=\w+', replacement: 'token=[REDACTED]'}}]
    max_event_bytes: 256
    sinks: [c]
sinks:
  c: {{type: http, url: "{url}", batch: {{timeout: 100ms}}}}
"#,
            java = java.display(),
            json = json.display(),
            url = receiver.url()
        ),
    )
    .unwrap();
    let shipper = Shipper::start_env(
        &dir.path().join("state"),
        &["--config", config.to_str().unwrap()],
        &[("MY_POD_NAME", "checkout-7d9f")],
    );
    std::fs::write(
        &java,
        "2026-12-06 ERROR payment failed for card 4111 1111 1111 1111\n\
         java.lang.IllegalStateException: declined\n\
         \tat com.shop.Pay.charge(Pay.java:42)\n\
         Caused by: java.io.IOException: timeout\n\
         \t... 3 more\n\
         2026-12-06 INFO next\n",
    )
    .unwrap();
    let long = "y".repeat(1000);
    std::fs::write(
        &json,
        format!(
            "{{\"time\":\"2023-11-14T22:13:20Z\",\"msg\":\"login token=abc123\",\"user\":\"bob\"}}\nnot json at all\n{{\"msg\":\"{long}\"}}\n"
        ),
    )
    .unwrap();
    receiver.wait_lines(6, Duration::from_secs(20), Some(&shipper));
    let events = receiver.events();
    let find = |text: &str| {
        events
            .iter()
            .find(|e| e["message"].as_str().unwrap().contains(text))
            .unwrap_or_else(|| panic!("no event with {text:?} in {events:#?}"))
            .clone()
    };
    let first = find("payment failed");
    assert_eq!(
        first["message"],
        "2026-12-06 ERROR payment failed for card [REDACTED]"
    );
    assert_eq!(first["team"], "payments");
    assert_eq!(first["pod"], "checkout-7d9f");
    let trace = find("IllegalStateException");
    assert_eq!(
        trace["message"],
        "java.lang.IllegalStateException: declined\n\tat com.shop.Pay.charge(Pay.java:42)\nCaused by: java.io.IOException: timeout\n\t... 3 more"
    );
    assert_eq!(
        find("next")["message"],
        "2026-12-06 INFO next",
        "flushed by the timeout"
    );
    let login = find("login");
    assert_eq!(login["message"], "login token=[REDACTED]");
    assert_eq!(login["user"], "bob");
    assert_eq!(login["timestamp"], "2023-11-14T22:13:20Z");
    assert!(
        login.get("time").is_none(),
        "the timestamp field is consumed"
    );
    assert_eq!(find("not json")["message"], "not json at all");
    let cut = find("yyyy");
    assert_eq!(cut["truncated"], true);
    // Cut to 256 bytes, so no longer JSON: shipped as it is.
    assert_eq!(cut["message"].as_str().unwrap().len(), 256, "{cut}");
    assert!(
        !receiver
            .events()
            .iter()
            .any(|e| e.to_string().contains("4111")),
        "a card number left the process"
    );
    let m = shipper.metrics();
    assert_eq!(
        m.value(r#"log_shipper_parse_errors_total{pipeline="json",stage="parser"}"#),
        Some(2.0)
    );
    assert_eq!(
        m.value(r#"log_shipper_events_truncated_total{input="json"}"#),
        Some(1.0)
    );
    shipper.stop();
}

#[test]
fn binary_junk_and_invalid_utf8_are_shipped_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let receiver = Receiver::start();
    let (path, url) = (log.display().to_string(), receiver.url());
    let shipper = Shipper::start(&dir.path().join("state"), &common::flags(&path, &url));
    let mut f = std::fs::File::create(&log).unwrap();
    f.write_all(b"before\n\xff\xfe\x00\x01 junk \xc3\x28 end\n")
        .unwrap();
    let noise: Vec<u8> = (0..=255u8)
        .cycle()
        .take(64 * 1024)
        .filter(|b| *b != b'\n')
        .collect();
    f.write_all(&noise).unwrap();
    f.write_all(b"\nafter\n").unwrap();
    receiver.wait_lines(4, Duration::from_secs(20), Some(&shipper));
    let events = receiver.events();
    let messages: Vec<&str> = events
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages[0], "before");
    assert_eq!(messages[1], "\u{fffd}\u{fffd}\u{0}\u{1} junk \u{fffd}( end");
    assert!(messages[2].contains('\u{fffd}'));
    assert_eq!(messages[3], "after");
    wait::until(
        Duration::from_secs(5),
        "the shipper to be still alive",
        || shipper.metric(r#"log_shipper_lines_sent_total{sink="default"}"#) == 4.0,
    );
    shipper.stop();
}
