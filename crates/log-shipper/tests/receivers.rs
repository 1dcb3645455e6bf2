#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The local receivers through the real binary: HTTP POSTs answered only once their lines are
//! safe, 413 over the size cap, 503 under back-pressure instead of more memory; syslog RFC 5424
//! and RFC 3164 over TCP (octet counting and newline framing) and UDP, from util-linux's
//! `logger` and from raw sockets.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use common::{Mode, Receiver, Shipper};
use test_support::{ports, wait};

/// One HTTP/1.1 request on a connection of its own: (status, headers, body).
fn request(
    addr: SocketAddr,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut head = format!(
        "{method} /logs HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, head.to_owned(), body.to_owned())
}

fn post(addr: SocketAddr, content_type: &str, body: &[u8]) -> (u16, String, String) {
    request(addr, "POST", &[("Content-Type", content_type)], body)
}

/// A POST on a thread of its own; its answer comes on the channel.
fn post_in_background(
    addr: SocketAddr,
    content_type: &'static str,
    body: Vec<u8>,
) -> mpsc::Receiver<(u16, String, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(post(addr, content_type, &body));
    });
    rx
}

fn http_shipper(dir: &std::path::Path, sink: &Receiver, extra: &[&str]) -> (Shipper, SocketAddr) {
    let listen = ports::loopback(ports::free_udp_tcp_port());
    let listen_text = listen.to_string();
    let url = sink.url();
    let mut args = vec![
        "--http-listen",
        &listen_text,
        "--sink-url",
        &url,
        "--batch-timeout",
        "100ms",
        "--retry-initial",
        "100ms",
        "--retry-max",
        "500ms",
    ];
    args.extend(extra);
    (Shipper::start(&dir.join("state"), &args), listen)
}

#[test]
fn http_json_ndjson_and_text_are_answered_once_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Receiver::start();
    // No disk buffer: "safe" can only mean delivered.
    let (shipper, addr) = http_shipper(dir.path(), &sink, &["--buffer-max-bytes", "0"]);

    // The store is down: the client gets no answer while its lines are not safe.
    sink.set_mode(Mode::Fail(503, None));
    let answer = post_in_background(
        addr,
        "text/plain",
        b"h seq=0\r\nh seq=1\n\nh seq=2".to_vec(),
    );
    wait::until(
        Duration::from_secs(20),
        "the sink to refuse a batch",
        || {
            sink.state
                .refused
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 2
        },
    );
    assert!(
        answer.recv_timeout(Duration::from_millis(500)).is_err(),
        "answered before the lines were delivered"
    );
    sink.set_mode(Mode::Ok);
    let (status, _, body) = answer.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim(), r#"{"lines":3}"#);
    // Everything the client was told about is at the store by the time of the answer.
    assert_eq!(sink.counts("h").len(), 3);

    let (status, _, body) = post(
        addr,
        "application/json",
        br#"[{"message":"j seq=0","level":"warn","n":7},"j seq=1"]"#,
    );
    assert_eq!((status, body.trim()), (200, r#"{"lines":2}"#));
    let (status, _, _) = post(
        addr,
        "application/x-ndjson",
        b"{\"message\":\"n seq=0\",\"user\":\"bob\"}\nnot json\n",
    );
    assert_eq!(status, 200);
    let events = sink.events();
    let find = |m: &str| {
        events
            .iter()
            .find(|e| e["message"] == m)
            .unwrap_or_else(|| panic!("no {m:?} in {events:#?}"))
            .clone()
    };
    let j = find("j seq=0");
    assert_eq!(
        (j["level"].clone(), j["n"].clone()),
        ("warn".into(), 7.into())
    );
    assert_eq!(j["host"], "pod-a");
    assert!(j.get("file").is_none());
    find("j seq=1");
    assert_eq!(find("n seq=0")["user"], "bob");
    find("not json");
    assert_eq!(
        shipper.metric(r#"log_shipper_parse_errors_total{pipeline="default",stage="format"}"#),
        1.0
    );

    // Refused with nothing taken: not JSON, not POST.
    let (status, _, body) = post(addr, "application/json", b"{\"unclosed\": ");
    assert_eq!(status, 400, "{body}");
    let (status, head, _) = request(addr, "GET", &[], b"");
    assert_eq!(status, 405);
    assert!(head.to_ascii_lowercase().contains("allow: post"), "{head}");
    assert_eq!(
        shipper.metric(r#"log_shipper_receiver_requests_total{input="http",code="200"}"#),
        3.0
    );
    assert_eq!(
        shipper.metric(r#"log_shipper_lines_read_total{input="http"}"#),
        7.0
    );
    shipper.stop();
}

#[test]
fn http_over_the_size_cap_is_413_and_back_pressure_is_503() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Receiver::start();
    let (shipper, addr) = http_shipper(
        dir.path(),
        &sink,
        &[
            "--buffer-max-bytes",
            "0",
            "--http-max-body-bytes",
            "1KiB",
            "--http-max-in-flight-bytes",
            "2KiB",
            "--http-ack-timeout",
            "60s",
        ],
    );
    let (status, _, _) = post(addr, "text/plain", &[b'x'; 2000]);
    assert_eq!(status, 413);
    // A small gzip body that is too large once decompressed.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&[b'y'; 5000]).unwrap();
    let zipped = gz.finish().unwrap();
    let (status, _, _) = request(
        addr,
        "POST",
        &[("Content-Type", "text/plain"), ("Content-Encoding", "gzip")],
        &zipped,
    );
    assert_eq!(status, 413);

    // The store is down: two bodies of 900 bytes wait for their acknowledgement, the third
    // finds the 2 KiB of room taken and is told to come back.
    sink.set_mode(Mode::Fail(503, None));
    let body = |tag: &str| format!("{tag} seq=0 {}\n", "p".repeat(880)).into_bytes();
    let first = post_in_background(addr, "text/plain", body("a"));
    let second = post_in_background(addr, "text/plain", body("b"));
    wait::until(Duration::from_secs(20), "two requests waiting", || {
        shipper.metric(r#"log_shipper_lines_read_total{input="http"}"#) == 2.0
    });
    let (status, head, _) = post(addr, "text/plain", &body("c"));
    assert_eq!(status, 503);
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    sink.set_mode(Mode::Ok);
    for answer in [first, second] {
        assert_eq!(answer.recv_timeout(Duration::from_secs(30)).unwrap().0, 200);
    }
    // Room again.
    assert_eq!(post(addr, "text/plain", &body("c")).0, 200);
    for tag in ["a", "b", "c"] {
        assert_eq!(sink.counts(tag).get(&0), Some(&1), "{tag}");
    }
    assert_eq!(
        shipper.metric(r#"log_shipper_receiver_requests_total{input="http",code="503"}"#),
        1.0
    );
    shipper.stop();
}

#[test]
fn http_lines_not_acknowledged_in_time_get_503_and_are_still_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Receiver::start();
    let (shipper, addr) = http_shipper(
        dir.path(),
        &sink,
        &["--buffer-max-bytes", "0", "--http-ack-timeout", "1s"],
    );
    sink.set_mode(Mode::Fail(503, None));
    let (status, _, body) = post(addr, "text/plain", b"late seq=0\n");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("may still be delivered"), "{body}");
    sink.set_mode(Mode::Ok);
    sink.wait_all("late", 1, Duration::from_secs(20), Some(&shipper));
    shipper.stop();
}

#[test]
fn http_answers_at_once_when_a_failing_sink_takes_the_lines_in_its_disk_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Receiver::start();
    let (shipper, addr) = http_shipper(dir.path(), &sink, &[]);
    sink.set_mode(Mode::Fail(503, None));
    // The first failure moves the batch to the disk buffer: safe, so the answer comes.
    let (status, _, _) = post(addr, "text/plain", b"buf seq=0\nbuf seq=1\n");
    assert_eq!(status, 200);
    assert!(shipper.metric(r#"log_shipper_buffer_lines{sink="default"}"#) >= 2.0);
    sink.set_mode(Mode::Ok);
    sink.wait_all("buf", 2, Duration::from_secs(30), Some(&shipper));
    shipper.stop();
}

fn syslog_shipper(dir: &std::path::Path, sink: &Receiver) -> (Shipper, SocketAddr) {
    let port = ports::free_udp_tcp_port();
    let addr = ports::loopback(port);
    let a = addr.to_string();
    let url = sink.url();
    let args = [
        "--syslog-tcp",
        &a,
        "--syslog-udp",
        &a,
        "--sink-url",
        &url,
        "--batch-timeout",
        "100ms",
    ];
    (Shipper::start(&dir.join("state"), &args), addr)
}

fn find_event(sink: &Receiver, message: &str, timeout: Duration) -> serde_json::Value {
    wait::value(timeout, format_args!("the event {message:?}"), || {
        sink.events().into_iter().find(|e| e["message"] == message)
    })
}

#[test]
fn syslog_5424_and_3164_over_tcp_framings_and_udp() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Receiver::start();
    let (shipper, addr) = syslog_shipper(dir.path(), &sink);
    // Octet counting and newline framing on one connection, a message split across writes.
    let mut tcp = TcpStream::connect(addr).unwrap();
    let counted = "<165>1 2026-01-02T03:04:05.123Z web-1 billing 4242 ID47 [meta@32473 region=\"eu\"] payment refused";
    tcp.write_all(format!("{} {counted}", counted.len()).as_bytes())
        .unwrap();
    tcp.write_all(b"<34>Oct 11 22:14:15 mymachine su[77]: 'su root' fai")
        .unwrap();
    tcp.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    tcp.write_all(b"led\n").unwrap();
    drop(tcp);
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"<14>1 - - udp-app - - - over udp\n", addr)
        .unwrap();

    let e = find_event(&sink, "payment refused", Duration::from_secs(20));
    assert_eq!(e["timestamp"], "2026-01-02T03:04:05.123Z");
    assert_eq!(e["facility"], "local4");
    assert_eq!(e["severity"], "notice");
    assert_eq!(e["hostname"], "web-1");
    assert_eq!(e["appname"], "billing");
    assert_eq!(e["procid"], 4242);
    assert_eq!(e["msgid"], "ID47");
    assert_eq!(e["structured_data"]["meta@32473"]["region"], "eu");
    assert_eq!(e["host"], "pod-a", "the shipper's own host field stays");
    let e = find_event(&sink, "'su root' failed", Duration::from_secs(20));
    assert_eq!(
        (e["appname"].clone(), e["procid"].clone()),
        ("su".into(), 77.into())
    );
    assert_eq!(e["severity"], "crit");
    let e = find_event(&sink, "over udp", Duration::from_secs(20));
    assert_eq!(e["appname"], "udp-app");
    assert_eq!(
        shipper.metric(r#"log_shipper_lines_read_total{input="syslog"}"#),
        3.0
    );
    shipper.stop();
}

#[test]
fn syslog_from_util_linux_logger() {
    if Command::new("logger").arg("--version").output().is_err() {
        println!("SKIPPED: util-linux's logger is not installed (apt install bsdutils)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sink = Receiver::start();
    let (shipper, addr) = syslog_shipper(dir.path(), &sink);
    let port = addr.port().to_string();
    let cases: [(&[&str], &str); 4] = [
        (
            &["--tcp", "--octet-count", "--rfc5424"],
            "tcp octet-counted 5424",
        ),
        (&["--tcp", "--rfc3164"], "tcp newline 3164"),
        (&["--udp", "--rfc5424"], "udp 5424"),
        (&["--udp", "--rfc3164"], "udp 3164"),
    ];
    for (flags, message) in cases {
        let status = Command::new("logger")
            .args(flags)
            .args([
                "-n",
                "127.0.0.1",
                "-P",
                &port,
                "-t",
                "shop",
                "-p",
                "local3.warning",
            ])
            .arg(message)
            .status()
            .unwrap();
        assert!(status.success(), "logger {flags:?}");
    }
    for (flags, message) in cases {
        let e = find_event(&sink, message, Duration::from_secs(20));
        assert_eq!(e["appname"], "shop", "{flags:?}: {e}");
        assert_eq!(e["facility"], "local3", "{flags:?}: {e}");
        assert_eq!(e["severity"], "warning", "{flags:?}: {e}");
    }
    assert_eq!(
        shipper.metric(r#"log_shipper_parse_errors_total{pipeline="default",stage="format"}"#),
        0.0
    );
    shipper.stop();
}
