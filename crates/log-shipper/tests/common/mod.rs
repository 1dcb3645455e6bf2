//! The log-shipper's test harness: an HTTP receiver that counts lines and answers what the
//! test asks (200, 503, 429 with Retry-After, 400 for poison), optionally over mTLS; the real
//! binary as a process; a writer that appends numbered lines at a rate and rotates the file;
//! and the accounting of lines lost and duplicated. Process, metric and wait helpers come from
//! test-support.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use test_support::metrics::Metrics;
use test_support::process::Process;
use test_support::{metrics, ports, wait};

pub const BIN: &str = env!("CARGO_BIN_EXE_log-shipper");

/// What the receiver answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Ok,
    /// This status, with `Retry-After: n` if given.
    Fail(u16, Option<u64>),
    /// 400 for a request whose body contains the text; 200 otherwise.
    RejectIfContains(String),
}

#[derive(Debug)]
pub struct Received {
    mode: Mutex<Mode>,
    /// Every event, as received (messages are also counted by `seq`).
    events: Mutex<Vec<serde_json::Value>>,
    keep_events: bool,
    counts: Mutex<HashMap<String, HashMap<u64, u32>>>,
    lines: AtomicU64,
    pub requests: AtomicU64,
    pub refused: AtomicU64,
    /// Arrival time and status of every request.
    pub log: Mutex<Vec<(Instant, u16)>>,
    pub authorization: Mutex<Vec<String>>,
    pub gzip_requests: AtomicU64,
}

/// An HTTP receiver on 127.0.0.1 (its own runtime thread), POST /ingest.
pub struct Receiver {
    pub addr: SocketAddr,
    pub state: Arc<Received>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub tls: bool,
}

/// Server side of mTLS.
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates must chain to this CA.
    pub client_ca: PathBuf,
}

impl Receiver {
    pub fn start() -> Receiver {
        Self::start_with(true, None)
    }

    /// `keep_events`: keep every event (small tests); else only the counts by `seq`.
    pub fn start_with(keep_events: bool, tls: Option<ServerTls>) -> Receiver {
        let state = Arc::new(Received {
            mode: Mutex::new(Mode::Ok),
            events: Mutex::default(),
            keep_events,
            counts: Mutex::default(),
            lines: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            log: Mutex::default(),
            authorization: Mutex::default(),
            gzip_requests: AtomicU64::new(0),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let app = Router::new()
            .route("/ingest", post(ingest))
            .with_state(state.clone());
        let is_tls = tls.is_some();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let stopped = async move {
                    while !stop2.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                };
                match tls {
                    None => {
                        let _ = axum::serve(listener, app)
                            .with_graceful_shutdown(stopped)
                            .await;
                    }
                    Some(tls) => serve_tls(listener, app, tls, stopped).await,
                }
            });
        });
        Receiver {
            addr,
            state,
            stop,
            thread: Some(thread),
            tls: is_tls,
        }
    }

    pub fn url(&self) -> String {
        if self.tls {
            format!("https://localhost:{}/ingest", self.addr.port())
        } else {
            format!("http://{}/ingest", self.addr)
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Events received (2xx answered), duplicates included.
    pub fn lines(&self) -> u64 {
        self.state.lines.load(Ordering::Relaxed)
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        self.state.events.lock().unwrap().clone()
    }

    /// How often each `seq` of `tag` arrived.
    pub fn counts(&self, tag: &str) -> HashMap<u64, u32> {
        self.state
            .counts
            .lock()
            .unwrap()
            .get(tag)
            .cloned()
            .unwrap_or_default()
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` events have arrived.
    #[track_caller]
    pub fn wait_lines(&self, n: u64, timeout: Duration, shipper: Option<&Shipper>) {
        wait::Wait::new(format_args!("{n} events at the receiver"))
            .timeout(timeout)
            .every(Duration::from_millis(50))
            .context(|| {
                format!(
                    "received {} events\n{}",
                    self.lines(),
                    shipper.map(|s| s.proc.log()).unwrap_or_default()
                )
            })
            .until(|| self.lines() >= n);
    }

    /// Waits until every `seq` of `tag` below `written` has arrived at least once.
    #[track_caller]
    pub fn wait_all(&self, tag: &str, written: u64, timeout: Duration, shipper: Option<&Shipper>) {
        wait::Wait::new(format_args!("all {written} lines of {tag}"))
            .timeout(timeout)
            .every(Duration::from_millis(100))
            .context(|| {
                let counts = self.counts(tag);
                let a = account(&counts, written);
                format!(
                    "{a:?} missing {:?}\n{}",
                    missing_ranges(&counts, written),
                    shipper
                        .map(|s| {
                            let log = s.proc.log();
                            let tail: Vec<&str> = log.lines().rev().take(40).collect();
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        })
                        .unwrap_or_default()
                )
            })
            .until(|| account(&self.counts(tag), written).lost == 0);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn ingest(State(state): State<Arc<Received>>, headers: HeaderMap, body: Bytes) -> Response {
    state.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        state.authorization.lock().unwrap().push(auth.to_owned());
    }
    let gzip = headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let body = if gzip {
        state.gzip_requests.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return (StatusCode::BAD_REQUEST, "bad gzip").into_response();
        }
        out
    } else {
        body.to_vec()
    };
    let mode = state.mode.lock().unwrap().clone();
    let answer = match &mode {
        Mode::Ok => None,
        Mode::Fail(status, after) => Some((*status, *after)),
        Mode::RejectIfContains(text) => {
            let hit = String::from_utf8_lossy(&body).contains(text.as_str());
            hit.then_some((400, None))
        }
    };
    if let Some((status, after)) = answer {
        state.refused.fetch_add(1, Ordering::Relaxed);
        state.log.lock().unwrap().push((Instant::now(), status));
        let mut response =
            (StatusCode::from_u16(status).unwrap(), "refused by the test").into_response();
        if let Some(after) = after {
            response
                .headers_mut()
                .insert("retry-after", after.to_string().parse().unwrap());
        }
        return response;
    }
    state.log.lock().unwrap().push((Instant::now(), 200));
    let text = String::from_utf8_lossy(&body);
    let mut n = 0;
    {
        let mut counts = state.counts.lock().unwrap();
        let mut events = state.events.lock().unwrap();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
                return (StatusCode::BAD_REQUEST, format!("not JSON: {line}")).into_response();
            };
            n += 1;
            if let Some((tag, seq)) = event["message"].as_str().and_then(parse_seq) {
                *counts.entry(tag).or_default().entry(seq).or_default() += 1;
            }
            if state.keep_events {
                events.push(event);
            }
        }
    }
    state.lines.fetch_add(n, Ordering::Relaxed);
    StatusCode::OK.into_response()
}

async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: ServerTls,
    stopped: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::service::TowerToHyperService;
    sidecar_kit::tls::install_default_provider();
    let identity = sidecar_kit::tls::Identity::load(&tls.cert, &tls.key).unwrap();
    let clients = sidecar_kit::tls::TrustBundle::load(&tls.client_ca).unwrap();
    let config = sidecar_kit::tls::server_config(&identity, &clients, &[b"http/1.1"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::pin!(stopped);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
            () = &mut stopped => return,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let service = TowerToHyperService::new(app);
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `"<tag> seq=<n> ..."` -> (tag, n).
pub fn parse_seq(message: &str) -> Option<(String, u64)> {
    let (tag, rest) = message.split_once(" seq=")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((tag.to_owned(), digits.parse().ok()?))
}

/// Lines lost and duplicated, out of `written` numbered 0..written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accounting {
    pub written: u64,
    pub delivered: u64,
    pub unique: u64,
    pub lost: u64,
    pub duplicated: u64,
}

pub fn account(counts: &HashMap<u64, u32>, written: u64) -> Accounting {
    let mut a = Accounting {
        written,
        delivered: 0,
        unique: 0,
        lost: 0,
        duplicated: 0,
    };
    for seq in 0..written {
        match counts.get(&seq).copied().unwrap_or(0) {
            0 => a.lost += 1,
            n => {
                a.unique += 1;
                a.duplicated += u64::from(n - 1);
            }
        }
    }
    a.delivered = counts.values().map(|n| u64::from(*n)).sum();
    a
}

/// The first few runs of `seq`s that never arrived.
pub fn missing_ranges(counts: &HashMap<u64, u32>, written: u64) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for seq in (0..written).filter(|s| !counts.contains_key(s)) {
        if let Some((_, end)) = ranges.last_mut()
            && *end + 1 == seq
        {
            *end = seq;
        } else if ranges.len() >= 8 {
            break;
        } else {
            ranges.push((seq, seq));
        }
    }
    ranges
}

/// Prints the figures in one greppable line (docs/reliability.md quotes them).
pub fn report(test: &str, a: &Accounting) {
    println!(
        "FIGURES {test}: written={} delivered={} unique={} lost={} duplicated={}",
        a.written, a.delivered, a.unique, a.lost, a.duplicated
    );
}

/// The shipper as a process.
pub struct Shipper {
    pub proc: Process,
    pub admin: SocketAddr,
}

impl Shipper {
    /// Starts it with `--state-dir state` and `args`; waits for /readyz.
    pub fn start(state: &Path, args: &[&str]) -> Shipper {
        Self::start_env(state, args, &[])
    }

    pub fn start_env(state: &Path, args: &[&str], env: &[(&str, &str)]) -> Shipper {
        let admin = ports::free_addr();
        let mut cmd = Command::new(BIN);
        cmd.args(["--admin-addr", &admin.to_string()])
            .args(["--state-dir", state.to_str().unwrap()])
            .args(["--log-format", "text", "--log-level", "info"])
            .args(args)
            .env("HOSTNAME", "pod-a");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut proc = Process::spawn("log-shipper", cmd);
        proc.wait_ready(admin, Duration::from_secs(20));
        Shipper { proc, admin }
    }

    pub fn metrics(&self) -> Metrics {
        metrics::scrape(self.admin)
    }

    /// A counter or gauge; 0 when the series does not exist yet.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics().value(series).unwrap_or(0.0)
    }

    /// SIGTERM; asserts exit 0.
    #[track_caller]
    pub fn stop(mut self) {
        let status = self.proc.stop(Duration::from_secs(40));
        assert_eq!(status.code(), Some(0), "{}", self.proc.log());
    }

    /// kill -9.
    pub fn kill9(mut self) {
        self.proc.kill();
    }
}

/// Common flags: one file glob, one sink, fast batches and polls.
pub fn flags<'a>(glob: &'a str, url: &'a str) -> Vec<&'a str> {
    vec![
        "--file",
        glob,
        "--sink-url",
        url,
        "--batch-timeout",
        "100ms",
        "--retry-initial",
        "100ms",
        "--retry-max",
        "1s",
        "--rotate-wait",
        "1s",
        "--poll-interval",
        "250ms",
    ]
}

/// Appends numbered lines `"<tag> seq=<n> <padding>"`.
pub struct LineWriter {
    pub path: PathBuf,
    pub tag: String,
    pub next: u64,
    file: std::fs::File,
    padding: String,
}

impl LineWriter {
    pub fn new(path: &Path, tag: &str, line_len: usize) -> Self {
        let file = open_append(path);
        Self {
            path: path.to_owned(),
            tag: tag.to_owned(),
            next: 0,
            file,
            padding: "x".repeat(line_len.saturating_sub(tag.len() + 14)),
        }
    }

    pub fn write(&mut self, n: u64) {
        let mut buf = String::new();
        for _ in 0..n {
            buf.push_str(&format!(
                "{} seq={:08} {}\n",
                self.tag, self.next, self.padding
            ));
            self.next += 1;
        }
        self.file.write_all(buf.as_bytes()).unwrap();
    }

    /// Rotation by rename: the file moves to `to`, writing goes on in a new file.
    pub fn rotate_rename(&mut self, to: &Path) {
        std::fs::rename(&self.path, to).unwrap();
        self.file = open_append(&self.path);
    }

    /// Rotation by copy-truncate (as logrotate's copytruncate, the writer paused meanwhile).
    pub fn rotate_copytruncate(&mut self, to: &Path) {
        std::fs::copy(&self.path, to).unwrap();
        self.file.set_len(0).unwrap();
    }

    /// Writes `rate` lines per second for `duration`, or until `each_tick` (called every
    /// 10 ms) returns false.
    pub fn write_at(
        &mut self,
        rate: u64,
        duration: Duration,
        mut each_tick: impl FnMut(&mut Self, Duration) -> bool,
    ) {
        let start = Instant::now();
        let mut written_at_start = self.next;
        while start.elapsed() < duration {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            let behind = (written_at_start + due).saturating_sub(self.next);
            if behind > 0 {
                self.write(behind);
            }
            if !each_tick(self, start.elapsed()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
            if self.next < written_at_start {
                written_at_start = self.next;
            }
        }
    }
}

fn open_append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}
