//! Test helpers: the real adapter binary as a child process (test-support's, killed on drop),
//! a tiny HTTP/1.1 upstream with scripted misbehaviour, and the adapter's pages parsed.
#![allow(dead_code)]

pub mod openmetrics;
pub mod prometheus;
pub mod tinyproxy;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use test_support::metrics::Metrics;
use test_support::ports::{free_port, loopback};
use test_support::process::Process;
use test_support::wait::Wait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[allow(unused_imports)] // not every test binary checks with promtool
pub use test_support::metrics::promtool_check;

pub fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(rel),
    )
    .unwrap()
}

pub fn manifest_path(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The adapter, listening on `listen` with its admin server on `admin`.
pub struct Adapter {
    pub proc: Process,
    pub listen: u16,
    pub admin: u16,
}

impl Adapter {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.listen)
    }
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }
}

/// Starts the real binary and waits until its listener answers (retrying on a port race).
pub async fn start_adapter(mapping: &Path, upstream: &str, extra: &[&str]) -> Adapter {
    start_adapter_with_env(mapping, upstream, extra, &[]).await
}

/// Like `start_adapter`, with extra environment variables for the adapter.
pub async fn start_adapter_with_env(
    mapping: &Path,
    upstream: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Adapter {
    for _ in 0..5 {
        let (listen, admin) = (free_port(), free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xml-adapter"));
        cmd.arg("--config")
            .arg(mapping)
            .args(["--upstream", upstream])
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--log-format", "text", "--shutdown-grace", "2s"])
            .args(extra)
            .envs(env.iter().copied());
        let mut proc = Process::spawn("xml-adapter", cmd);
        let mut exited = None;
        // The index page needs no upstream: a blocking check cannot stall the test's servers.
        let up = Wait::new("the adapter's listener")
            .timeout(Duration::from_secs(15))
            .every(Duration::from_millis(50))
            .elapsed_async(async || {
                exited = proc.try_exit();
                exited.is_some() || test_support::http::get(loopback(listen), "/").is_ok()
            })
            .await;
        match (exited, up) {
            (None, Some(_)) => {
                return Adapter {
                    proc,
                    listen,
                    admin,
                };
            }
            (Some(_), _) if proc.log().contains("in use") => {}
            (Some(status), _) => panic!("adapter exited early ({status}):\n{}", proc.log()),
            (None, None) => eprintln!("the adapter did not come up, retrying:\n{}", proc.log()),
        }
    }
    panic!("the adapter did not come up");
}

/// What the scripted upstream does with the next requests.
#[derive(Clone)]
pub enum Behaviour {
    Body(Arc<Vec<u8>>),
    /// Waits before the headers.
    Slow(Duration, Arc<Vec<u8>>),
    /// Announces the whole body, sends `cut` bytes, closes.
    CloseMidBody(Arc<Vec<u8>>, usize),
    /// A BIND tasks document of about `bytes` bytes, generated while it is sent (chunked).
    Generated(u64),
    Status(u16),
    /// Requires this Authorization header value, else 401.
    RequireAuth(String, Arc<Vec<u8>>),
}

pub struct Upstream {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/status.xml", self.port)
    }
    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }
}

pub const TASK: &str = "      <task>\n        <name>server</name>\n        <references>11</references>\n        <id>0x7febdb479010</id>\n        <state>idle</state>\n        <quantum>5</quantum>\n        <events>0</events>\n      </task>\n";
pub const TASKS_HEAD: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<statistics version=\"3.8\">\n  <taskmgr>\n    <thread-model>\n      <type>threaded</type>\n      <worker-threads>16</worker-threads>\n      <tasks-running>8</tasks-running>\n    </thread-model>\n    <tasks>\n";
pub const TASKS_TAIL: &str = "    </tasks>\n  </taskmgr>\n</statistics>\n";

/// How many tasks the generated document of about `bytes` bytes holds.
pub fn generated_tasks(bytes: u64) -> u64 {
    bytes / TASK.len() as u64
}

pub async fn start_upstream(initial: Behaviour) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let behaviour = Arc::new(Mutex::new(initial));
    let (c, r, b) = (connections.clone(), requests.clone(), behaviour.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            // Like a real server: no Nagle delay between the head and the body.
            let _ = sock.set_nodelay(true);
            c.fetch_add(1, Ordering::SeqCst);
            let (r, b) = (r.clone(), b.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // Read one request head.
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end);
                    r.fetch_add(1, Ordering::SeqCst);
                    let behaviour = b.lock().unwrap().clone();
                    let ok = |len: usize| {
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {len}\r\n\r\n"
                        )
                    };
                    match behaviour {
                        Behaviour::Body(body) => {
                            let mut out = ok(body.len()).into_bytes();
                            if body.len() < 1 << 20 {
                                out.extend_from_slice(&body);
                                if sock.write_all(&out).await.is_err() {
                                    return;
                                }
                            } else if sock.write_all(&out).await.is_err()
                                || sock.write_all(&body).await.is_err()
                            {
                                return;
                            }
                        }
                        Behaviour::Slow(d, body) => {
                            tokio::time::sleep(d).await;
                            let _ = sock.write_all(ok(body.len()).as_bytes()).await;
                            let _ = sock.write_all(&body).await;
                        }
                        Behaviour::CloseMidBody(body, cut) => {
                            let _ = sock.write_all(ok(body.len()).as_bytes()).await;
                            let _ = sock.write_all(&body[..cut]).await;
                            let _ = sock.flush().await;
                            return;
                        }
                        Behaviour::Status(code) => {
                            let _ = sock
                                .write_all(
                                    format!("HTTP/1.1 {code} Nope\r\nContent-Length: 0\r\n\r\n")
                                        .as_bytes(),
                                )
                                .await;
                        }
                        Behaviour::RequireAuth(want, body) => {
                            let got = head
                                .lines()
                                .find_map(|l| {
                                    l.strip_prefix("authorization: ")
                                        .or_else(|| l.strip_prefix("Authorization: "))
                                })
                                .unwrap_or("")
                                .trim()
                                .to_string();
                            if got == want {
                                let _ = sock.write_all(ok(body.len()).as_bytes()).await;
                                let _ = sock.write_all(&body).await;
                            } else {
                                let _ = sock
                                    .write_all(
                                        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
                                    )
                                    .await;
                            }
                        }
                        Behaviour::Generated(bytes) => {
                            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nTransfer-Encoding: chunked\r\n\r\n";
                            if sock.write_all(head.as_bytes()).await.is_err() {
                                return;
                            }
                            let send = |data: Vec<u8>| {
                                let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
                                framed.extend(data);
                                framed.extend_from_slice(b"\r\n");
                                framed
                            };
                            let n = generated_tasks(bytes);
                            let per_chunk = 2000u64;
                            if sock
                                .write_all(&send(TASKS_HEAD.as_bytes().to_vec()))
                                .await
                                .is_err()
                            {
                                return;
                            }
                            let mut left = n;
                            while left > 0 {
                                let k = left.min(per_chunk);
                                let data = TASK.repeat(k as usize).into_bytes();
                                if sock.write_all(&send(data)).await.is_err() {
                                    return;
                                }
                                left -= k;
                            }
                            let _ = sock.write_all(&send(TASKS_TAIL.as_bytes().to_vec())).await;
                            let _ = sock.write_all(b"0\r\n\r\n").await;
                        }
                    }
                }
            });
        }
    });
    Upstream {
        port,
        connections,
        requests,
        behaviour,
        task,
    }
}

/// An HTTP client for the tests, which ignores proxy settings. The workspace's reqwest has no
/// crypto provider of its own and panics without a default, so this installs the kit's first.
pub fn http() -> reqwest::Client {
    sidecar_kit::tls::install_default_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = http().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

pub async fn get_text(url: &str) -> String {
    let r = get(url, &[]).await;
    assert_eq!(r.status(), 200, "GET {url}");
    r.text().await.unwrap()
}

/// GETs a metrics page (200 required) and parses it.
pub async fn scrape(url: &str) -> Metrics {
    let text = get_text(url).await;
    Metrics::parse(&text).unwrap_or_else(|e| panic!("{url} is not a metrics page: {e}\n{text}"))
}

/// BIND's `named` serving one authoritative zone (`example.test`) on `dns`, with its statistics
/// channel on `stats`; its files written in `dir`.
pub fn named_conf(dir: &std::path::Path, dns: u16, stats: u16) -> Command {
    let d = dir.display();
    std::fs::write(
        dir.join("named.conf"),
        format!(
            r#"options {{
  directory "{d}";
  pid-file "{d}/named.pid";
  session-keyfile "{d}/session.key";
  listen-on port {dns} {{ 127.0.0.1; }};
  listen-on-v6 {{ none; }};
  recursion no;
  dnssec-validation no;
}};
statistics-channels {{ inet 127.0.0.1 port {stats} allow {{ 127.0.0.1; }}; }};
zone "example.test" {{ type primary; file "{d}/example.test.zone"; }};
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("example.test.zone"),
        "$TTL 300\n@ IN SOA ns.example.test. admin.example.test. 2024061501 3600 600 86400 300\n\
         @ IN NS ns.example.test.\nns IN A 127.0.0.1\nwww IN A 127.0.0.2\n",
    )
    .unwrap();
    let mut cmd = Command::new("named");
    cmd.arg("-g").arg("-c").arg(dir.join("named.conf"));
    cmd
}

/// Sends one DNS query (type A) over UDP and returns the response code.
pub fn dns_query(port: u16, name: &str, id: u16) -> u8 {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.send_to(&q, ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert!(n >= 12 && buf[..2] == id.to_be_bytes());
    buf[3] & 0x0f
}
