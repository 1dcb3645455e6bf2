#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The HTTP sink against a receiver that answers what the test asks: refused batches set aside
//! (never retried), Retry-After and backoff, gzip, a rotating token file, mTLS, and two sinks
//! whose acknowledgements both hold the checkpoint.

mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{LineWriter, Mode, Receiver, ServerTls, Shipper, account, flags, report};
use test_support::certs::Ca;
use test_support::wait;

#[test]
fn a_refused_batch_goes_to_the_dead_letter_file_once_and_the_rest_flows() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let state = dir.path().join("state");
    let receiver = Receiver::start();
    receiver.set_mode(Mode::RejectIfContains("POISON".into()));
    let (path, url) = (log.display().to_string(), receiver.url());
    let shipper = Shipper::start(&state, &flags(&path, &url));
    let mut good = LineWriter::new(&log, "good", 60);
    good.write(5);
    receiver.wait_all("good", 5, Duration::from_secs(20), Some(&shipper));
    let mut bad = LineWriter::new(&log, "POISON", 60);
    bad.write(1);
    wait::until(
        Duration::from_secs(20),
        "the refused line to be set aside",
        || shipper.metric(r#"log_shipper_lines_dead_lettered_total{sink="default"}"#) == 1.0,
    );
    good.write(5);
    receiver.wait_all("good", 10, Duration::from_secs(20), Some(&shipper));
    // Refused once, never again.
    wait::holds_for(
        Duration::from_secs(1),
        "no retry of the refused batch",
        || receiver.state.refused.load(Ordering::Relaxed) == 1,
    );
    assert_eq!(
        shipper.metric(r#"log_shipper_sink_errors_total{sink="default",status="400"}"#),
        1.0
    );
    let letters = std::fs::read_to_string(state.join("dead-letter/default.ndjson")).unwrap();
    let letter: serde_json::Value = serde_json::from_str(letters.trim()).unwrap();
    assert_eq!(letter["status"], "400");
    assert!(
        letter["event"]["message"]
            .as_str()
            .unwrap()
            .starts_with("POISON seq=00000000")
    );
    assert!(
        letter["reason"]
            .as_str()
            .unwrap()
            .contains("refused by the test")
    );
    shipper.stop();
}

#[test]
fn retry_after_is_honoured_and_backoff_grows() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let receiver = Receiver::start();
    receiver.set_mode(Mode::Fail(503, None));
    let (path, url) = (log.display().to_string(), receiver.url());
    let shipper = Shipper::start(&dir.path().join("state"), &flags(&path, &url));
    LineWriter::new(&log, "ra", 60).write(3);
    wait::until(Duration::from_secs(20), "five refused requests", || {
        receiver.state.refused.load(Ordering::Relaxed) >= 5
    });
    receiver.set_mode(Mode::Fail(429, Some(2)));
    wait::until(
        Duration::from_secs(20),
        "three more refused requests",
        || receiver.state.refused.load(Ordering::Relaxed) >= 8,
    );
    receiver.set_mode(Mode::Ok);
    receiver.wait_all("ra", 3, Duration::from_secs(20), Some(&shipper));
    let log = receiver.state.log.lock().unwrap().clone();
    let gaps: Vec<Duration> = log.windows(2).map(|w| w[1].0 - w[0].0).collect();
    println!("gaps between attempts: {gaps:?}");
    // 503 without Retry-After: exponential backoff from 100 ms (jittered), capped at 1 s.
    assert!(gaps[0] < Duration::from_millis(400), "{gaps:?}");
    assert!(gaps[3] > gaps[0], "backoff does not grow: {gaps:?}");
    assert!(
        gaps[..4].iter().all(|g| *g <= Duration::from_millis(1_500)),
        "{gaps:?}"
    );
    // 429 with Retry-After: 2: the next attempts wait the 2 s asked for.
    let after: Vec<&Duration> = gaps[5..7].iter().collect();
    assert!(
        after.iter().all(|g| **g >= Duration::from_millis(1_950)),
        "Retry-After not honoured: {gaps:?}"
    );
    shipper.stop();
}

#[test]
fn gzip_bodies_and_a_token_file_read_again_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let token = dir.path().join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let receiver = Receiver::start();
    let (path, url) = (log.display().to_string(), receiver.url());
    let mut args = flags(&path, &url);
    let token_arg = token.display().to_string();
    args.extend(["--gzip", "--bearer-token-file", &token_arg]);
    let shipper = Shipper::start(&dir.path().join("state"), &args);
    let mut w = LineWriter::new(&log, "gz", 100);
    w.write(500);
    receiver.wait_all("gz", 500, Duration::from_secs(20), Some(&shipper));
    assert!(receiver.state.gzip_requests.load(Ordering::Relaxed) > 0);
    assert!(
        receiver
            .state
            .authorization
            .lock()
            .unwrap()
            .iter()
            .all(|a| a == "Bearer first-token")
    );
    // Rotated as a Secret volume would be: a new file renamed over the old one.
    std::fs::write(dir.path().join("token.new"), "second-token").unwrap();
    std::fs::rename(dir.path().join("token.new"), &token).unwrap();
    wait::Wait::new("the new token in use")
        .timeout(Duration::from_secs(20))
        .until(|| {
            w.write(1);
            receiver.wait_all("gz", w.next, Duration::from_secs(20), Some(&shipper));
            receiver
                .state
                .authorization
                .lock()
                .unwrap()
                .last()
                .map(String::as_str)
                == Some("Bearer second-token")
        });
    shipper.stop();
}

fn tls_files(
    dir: &Path,
) -> (
    Ca,
    ServerTls,
    test_support::certs::CertFiles,
    std::path::PathBuf,
) {
    let ca = Ca::new("log store CA");
    let ca_file = ca.write(&dir.join("ca.crt"));
    let server = ca.leaf().dns("localhost").sign().write(dir, "server");
    let client = ca.leaf().dns("shipper.test").sign().write(dir, "client");
    let tls = ServerTls {
        cert: server.cert,
        key: server.key,
        client_ca: ca_file.clone(),
    };
    (ca, tls, client, ca_file)
}

#[test]
fn mtls_through_the_kit_and_a_refusal_without_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let (_ca, tls, client, ca_file) = tls_files(dir.path());
    let receiver = Receiver::start_with(true, Some(tls));
    let (path, url) = (log.display().to_string(), receiver.url());
    let (ca_arg, cert_arg, key_arg) = (
        ca_file.display().to_string(),
        client.cert.display().to_string(),
        client.key.display().to_string(),
    );
    let mut args = flags(&path, &url);
    args.extend([
        "--ca-file",
        &ca_arg,
        "--client-cert",
        &cert_arg,
        "--client-key",
        &key_arg,
    ]);
    let shipper = Shipper::start(&dir.path().join("state"), &args);
    let mut w = LineWriter::new(&log, "tls", 80);
    w.write(200);
    receiver.wait_all("tls", 200, Duration::from_secs(20), Some(&shipper));
    shipper.stop();

    // The same sink without a client certificate: the handshake fails, nothing is delivered,
    // the errors are counted and the lines wait.
    let other = dir.path().join("other.log");
    let (path, url) = (other.display().to_string(), receiver.url());
    let mut args = flags(&path, &url);
    args.extend(["--ca-file", &ca_arg]);
    let shipper = Shipper::start(&dir.path().join("state2"), &args);
    LineWriter::new(&other, "anon", 80).write(10);
    wait::until(
        Duration::from_secs(20),
        "failed requests to be counted",
        || {
            let m = shipper.metrics();
            m.series("log_shipper_sink_errors_total")
                .map(|s| s.value)
                .sum::<f64>()
                >= 1.0
        },
    );
    assert!(receiver.counts("anon").is_empty());
}

fn two_sinks_config(
    dir: &Path,
    log: &Path,
    a: &str,
    b: &str,
    b_buffer: &str,
) -> std::path::PathBuf {
    let config = dir.join("shipper.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
inputs:
  app:
    type: file
    include: ["{}"]
pipelines:
  default:
    sinks: [a, b]
sinks:
  a:
    type: http
    url: "{a}"
    batch: {{ timeout: 100ms }}
  b:
    type: http
    url: "{b}"
    batch: {{ timeout: 100ms }}
    buffer: {{ max_bytes: {b_buffer} }}
    retry: {{ initial: 100ms, max: 500ms }}
"#,
            log.display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn with_two_sinks_a_line_is_let_go_only_when_both_have_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let state = dir.path().join("state");
    let (a, b) = (
        Receiver::start_with(false, None),
        Receiver::start_with(false, None),
    );
    b.set_mode(Mode::Fail(503, None));
    let config = two_sinks_config(dir.path(), &log, &a.url(), &b.url(), "0");
    let config_arg = config.display().to_string();
    let args = ["--config", config_arg.as_str(), "--shutdown-grace", "5s"];
    let shipper = Shipper::start(&state, &args);
    let mut w = LineWriter::new(&log, "two", 100);
    w.write(1_000);
    a.wait_all("two", 1_000, Duration::from_secs(20), Some(&shipper));
    let series = format!(
        r#"log_shipper_file_lag_bytes{{input="app",path="{}"}}"#,
        log.display()
    );
    let size = std::fs::metadata(&log).unwrap().len() as f64;
    // b has nothing and no disk buffer: the checkpoint stays at 0.
    wait::until(Duration::from_secs(10), "the lag to be published", || {
        shipper.metric(&series) == size
    });
    wait::holds_for(
        Duration::from_secs(2),
        "the whole file to stay unacknowledged",
        || shipper.metric(&series) == size,
    );
    shipper.stop();

    b.set_mode(Mode::Ok);
    let shipper = Shipper::start(&state, &args);
    b.wait_all("two", 1_000, Duration::from_secs(20), Some(&shipper));
    a.wait_lines(2_000, Duration::from_secs(20), Some(&shipper));
    let (acc_a, acc_b) = (
        account(&a.counts("two"), 1_000),
        account(&b.counts("two"), 1_000),
    );
    report("two_sinks_b_down_no_buffer_sink_a", &acc_a);
    report("two_sinks_b_down_no_buffer_sink_b", &acc_b);
    assert_eq!((acc_b.lost, acc_b.duplicated), (0, 0));
    assert_eq!(
        (acc_a.lost, acc_a.duplicated),
        (0, 1_000),
        "a gets the lines again"
    );
    wait::until(Duration::from_secs(10), "the lag to reach 0", || {
        shipper.metric(&series) == 0.0
    });
    shipper.stop();
}

#[test]
fn with_two_sinks_a_failing_sinks_disk_buffer_lets_the_checkpoint_move() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let state = dir.path().join("state");
    let (a, b) = (
        Receiver::start_with(false, None),
        Receiver::start_with(false, None),
    );
    b.set_mode(Mode::Fail(503, None));
    let config = two_sinks_config(dir.path(), &log, &a.url(), &b.url(), "64MiB");
    let config_arg = config.display().to_string();
    let args = ["--config", config_arg.as_str(), "--shutdown-grace", "5s"];
    let shipper = Shipper::start(&state, &args);
    let mut w = LineWriter::new(&log, "buf", 100);
    for _ in 0..10 {
        w.write(100);
    }
    a.wait_all("buf", 1_000, Duration::from_secs(20), Some(&shipper));
    let series = format!(
        r#"log_shipper_file_lag_bytes{{input="app",path="{}"}}"#,
        log.display()
    );
    wait::until(
        Duration::from_secs(20),
        "b's disk buffer to take what it lacks, and the lag to reach 0",
        || shipper.metric(&series) == 0.0,
    );
    shipper.stop();
    b.set_mode(Mode::Ok);
    let shipper = Shipper::start(&state, &args);
    b.wait_all("buf", 1_000, Duration::from_secs(20), Some(&shipper));
    let (acc_a, acc_b) = (
        account(&a.counts("buf"), 1_000),
        account(&b.counts("buf"), 1_000),
    );
    report("two_sinks_b_down_disk_buffer_sink_a", &acc_a);
    report("two_sinks_b_down_disk_buffer_sink_b", &acc_b);
    assert_eq!((acc_a.lost, acc_a.duplicated), (0, 0));
    assert_eq!((acc_b.lost, acc_b.duplicated), (0, 0));
    shipper.stop();
}
