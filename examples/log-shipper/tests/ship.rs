#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The kit demo end to end: the real binary forwards appended lines to a real HTTP receiver
//! and exits 0 on SIGTERM.

use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use test_support::process::Process;
use test_support::{ports, wait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_new_lines_and_stops_on_sigterm() {
    let received: Arc<Mutex<Vec<String>>> = Arc::default();
    let app = Router::new()
        .route(
            "/lines",
            post(
                |State(r): State<Arc<Mutex<Vec<String>>>>, body: String| async move {
                    r.lock().unwrap().push(body);
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/lines", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    std::fs::write(&log, "old line, before the start\n").unwrap();
    let admin = ports::free_addr();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tail-demo"));
    cmd.args(["--file", log.to_str().unwrap(), "--endpoint", &endpoint])
        .args(["--admin-addr", &admin.to_string()]);
    let mut demo = tokio::task::spawn_blocking(move || {
        let mut p = Process::spawn("tail-demo", cmd);
        p.wait_ready(admin, Duration::from_secs(20));
        p
    })
    .await
    .unwrap();

    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    writeln!(f, "one\ntwo").unwrap();
    let seen = received.clone();
    wait::until_async(
        Duration::from_secs(10),
        "two lines forwarded",
        async move || seen.lock().unwrap().len() == 2,
    )
    .await;
    assert_eq!(*received.lock().unwrap(), ["one", "two"]);
    let status = tokio::task::spawn_blocking(move || demo.stop(Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
