#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The example sidecar end to end: the real binary tails a file, follows a rotation and
//! flushes on SIGTERM, shipping to a real HTTP receiver.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

type Received = Arc<Mutex<Vec<serde_json::Value>>>;

/// An HTTP receiver that records every JSON line POSTed to /ingest.
async fn receiver() -> (SocketAddr, Received) {
    let received: Received = Arc::default();
    let app = Router::new()
        .route(
            "/ingest",
            post(|State(r): State<Received>, body: String| async move {
                let mut r = r.lock().unwrap();
                for line in body.lines() {
                    r.push(serde_json::from_str(line).unwrap());
                }
            }),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, received)
}

struct Shipper(Child);

impl Drop for Shipper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(file: &Path, receiver: SocketAddr, flush: &str) -> Shipper {
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tail-demo"))
        .args(["--file", file.to_str().unwrap()])
        .args(["--endpoint", &format!("http://{receiver}/ingest")])
        .args(["--flush-interval", flush])
        .args(["--admin-addr", &admin.to_string()])
        .env("HOSTNAME", "pod-a")
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // Ready once the file is open: only then are appended lines guaranteed to be seen.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = std::net::TcpStream::connect(admin).ok().and_then(|mut s| {
            s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").ok()?;
            let mut out = String::new();
            std::io::Read::read_to_string(&mut s, &mut out).ok()?;
            Some(out.starts_with("HTTP/1.0 200"))
        });
        if ready == Some(true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "log-shipper did not become ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Shipper(child)
}

fn append(path: &Path, lines: std::ops::Range<u32>) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for i in lines {
        writeln!(f, "line {i}").unwrap();
    }
}

async fn wait_for_lines(received: &Received, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} lines arrived",
            received.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn texts(received: &Received) -> Vec<String> {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn ships_lines_across_a_rotation_in_order_with_host_and_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, 0..3); // written before the shipper starts: not shipped (it starts at the end)
    let (addr, received) = receiver().await;
    let _shipper = start(&log, addr, "200ms");

    append(&log, 3..50);
    wait_for_lines(&received, 47).await;

    // Rotation by rename: the app writes a little more to the old file before reopening.
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    append(&dir.path().join("app.log.1"), 50..55);
    append(&log, 55..100);
    wait_for_lines(&received, 97).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let expected: Vec<String> = (3..100).map(|i| format!("line {i}")).collect();
    assert_eq!(
        texts(&received),
        expected,
        "lost, duplicated or reordered lines"
    );
    let first = received.lock().unwrap()[0].clone();
    assert_eq!(first["host"], "pod-a");
    assert!(
        humantime::parse_rfc3339(first["ts"].as_str().unwrap()).is_ok(),
        "{first}"
    );
}

#[tokio::test]
async fn sigterm_flushes_the_last_batch_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "").unwrap();
    let (addr, received) = receiver().await;
    // A flush interval far beyond the test: only the shutdown flush can deliver.
    let mut shipper = start(&log, addr, "1h");
    append(&log, 0..5);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        received.lock().unwrap().is_empty(),
        "shipped before the interval"
    );

    kill(Pid::from_raw(shipper.0.id() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::task::spawn_blocking(move || shipper.0.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let expected: Vec<String> = (0..5).map(|i| format!("line {i}")).collect();
    assert_eq!(texts(&received), expected);
}
