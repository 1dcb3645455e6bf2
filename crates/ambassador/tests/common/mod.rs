//! Test helpers: certificates (test-support's, made with rcgen), the real ambassador binary in
//! test-support's Process (killed on drop), a small app backend, mTLS and plain HTTP clients,
//! and /metrics read with exact series matching.
#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use test_support::certs::{Ca, Leaf, SecretVolume};
use test_support::metrics::Metrics;
use test_support::process::{Process, Signal};
use tokio::net::{TcpListener, TcpStream};

pub use test_support::ports::{free_port, loopback as addr};

pub mod h2raw;
pub mod procfs;

// ---------- certificates ----------

/// A CA, and a temporary directory for the secret volumes made from it.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            ca: Ca::new(name),
        }
    }

    /// A secret volume `name` holding a good certificate for `spiffe`; its directory.
    pub fn secret(&self, name: &str, spiffe: &str) -> PathBuf {
        self.volume(name, spiffe).root().to_path_buf()
    }

    /// A secret volume `name` holding a good certificate for `spiffe`, to update later.
    pub fn volume(&self, name: &str, spiffe: &str) -> SecretVolume {
        SecretVolume::create(
            &self.dir.path().join(name),
            &self.ca.good(spiffe),
            self.ca.pem(),
        )
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// The mesh's certificates: a SPIFFE ID, a DNS name, the ID's last segment as common name.
pub trait MeshCa {
    /// A leaf for `spiffe` (and `dns`), valid from now+`from` to now+`to` days.
    fn peer(&self, spiffe: &str, dns: &str, from: i64, to: i64) -> Leaf;

    /// A valid leaf for `spiffe` naming `peer.test`.
    fn good(&self, spiffe: &str) -> Leaf {
        self.peer(spiffe, "peer.test", -1, 30)
    }
}

impl MeshCa for Ca {
    fn peer(&self, spiffe: &str, dns: &str, from: i64, to: i64) -> Leaf {
        self.leaf()
            .common_name(spiffe.rsplit('/').next().unwrap())
            .spiffe(spiffe)
            .dns(dns)
            .valid_days(from, to)
            .sign()
    }
}

/// The certificate flags for a secret directory.
pub fn cert_args(dir: &Path) -> Vec<String> {
    vec![
        "--cert".into(),
        dir.join("tls.crt").display().to_string(),
        "--key".into(),
        dir.join("tls.key").display().to_string(),
        "--ca".into(),
        dir.join("ca.crt").display().to_string(),
    ]
}

// ---------- the binary ----------

/// The SPIFFE IDs of [`start_pair`]'s two sides.
pub const SERVER_ID: &str = "spiffe://test.example/ns/prod/sa/server";
pub const CLIENT_ID: &str = "spiffe://test.example/ns/prod/sa/client";

/// An inbound ambassador (`SERVER_ID`, allowing `CLIENT_ID`) in front of `app`, and an outbound
/// one (`CLIENT_ID`) leading to it: (inbound, its listener, outbound, its listener). `extra` goes
/// to both.
pub fn start_pair(
    pki: &Pki,
    app: SocketAddr,
    extra: &[&str],
) -> (Ambassador, SocketAddr, Ambassador, SocketAddr) {
    let server = pki.secret("server", SERVER_ID);
    let remote = addr(free_port());
    let mut args = cert_args(&server);
    args.extend(strings(&[
        "--inbound-listen",
        &remote.to_string(),
        "--inbound-app",
        &app.to_string(),
        "--allow-spiffe",
        "spiffe://test.example/ns/*/sa/client",
    ]));
    args.extend(strings(extra));
    let inbound = Ambassador::start(&args);

    let client = pki.secret("client", CLIENT_ID);
    let listen = addr(free_port());
    let mut args = cert_args(&client);
    args.extend(strings(&[
        "--outbound-listen",
        &listen.to_string(),
        "--outbound-endpoints",
        &remote.to_string(),
        "--outbound-identity",
        SERVER_ID,
    ]));
    args.extend(strings(extra));
    let outbound = Ambassador::start(&args);
    (inbound, remote, outbound, listen)
}

/// A running ambassador, killed on drop.
pub struct Ambassador {
    pub process: Process,
    pub admin: SocketAddr,
}

impl Ambassador {
    /// Starts the binary with `args` (admin address added) and waits for /readyz. The binary
    /// is this build's, or `AMBASSADOR_BIN` (a release build, for figures).
    pub fn start(args: &[String]) -> Self {
        let admin = addr(free_port());
        let binary = std::env::var_os("AMBASSADOR_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_ambassador").into());
        let mut cmd = Command::new(binary);
        // Two worker threads on any machine, so that every test also covers connections
        // handed to the second thread (a test's own --worker-threads wins).
        cmd.env("AMBASSADOR_WORKER_THREADS", "2")
            .args(args)
            .arg("--admin-addr")
            .arg(admin.to_string())
            .args(["--log-format", "text", "--log-level", "info"]);
        let mut process = Process::spawn("ambassador", cmd);
        process.wait_ready(admin, Duration::from_secs(20));
        Self { process, admin }
    }

    pub fn log_text(&self) -> String {
        self.process.log()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn metrics(&self) -> Metrics {
        test_support::metrics::scrape(self.admin)
    }

    /// The value of the series `name` whose labels are exactly `labels`; None if not served.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.metrics().get(name, labels)
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        procfs::status_kib(self.pid(), "VmHWM:")
    }

    pub fn signal_term(&self) {
        self.process.signal(Signal::SIGTERM);
    }
}

/// Connections or streams `amb` cut for exceeding the limit `name` on `direction` (the route
/// named after its direction, as the flags make it); 0 while the series is not served.
pub fn limit(amb: &Ambassador, direction: &str, name: &str) -> f64 {
    amb.metric(
        "ambassador_limits_exceeded_total",
        &[
            ("direction", direction),
            ("route", direction),
            ("limit", name),
        ],
    )
    .unwrap_or(0.0)
}

// ---------- the app behind the inbound ambassador ----------

/// A small HTTP app on 127.0.0.1: `/` answers "hello" and echoes the XFCC header it got in
/// `x-seen-xfcc`; `/echo` streams the request body back; `/count` answers the body's length;
/// `/slow` answers after 1.5 s; `/big` streams 64 MiB made as it is sent; `/ws` is a WebSocket
/// echo.
pub async fn start_app() -> SocketAddr {
    App::start().await.addr
}

/// The app of [`start_app`], and how many `/slow` requests it is working on.
pub struct App {
    pub addr: SocketAddr,
    slow_in_flight: Arc<AtomicUsize>,
    counters: Arc<AppCounters>,
}

/// What the app has seen so far.
#[derive(Debug, Default)]
pub struct AppCounters {
    /// `/slow` requests received (never decreases).
    pub slow_started: AtomicUsize,
    /// Connections open to the app now.
    pub open_connections: AtomicUsize,
}

impl App {
    pub async fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let slow_in_flight = Arc::new(AtomicUsize::new(0));
        let counters = Arc::new(AppCounters::default());
        let slow = slow_in_flight.clone();
        let seen = counters.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let slow = slow.clone();
                let seen = seen.clone();
                seen.open_connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    // Counted down however the connection ends.
                    struct Open(Arc<AppCounters>);
                    impl Drop for Open {
                        fn drop(&mut self) {
                            self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let _open = Open(seen.clone());
                    let counted = seen.clone();
                    let service = hyper::service::service_fn(move |req| {
                        app_handler(req, slow.clone(), counted.clone())
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        App {
            addr,
            slow_in_flight,
            counters,
        }
    }

    /// What the app has seen (shared: it keeps counting).
    pub fn counters(&self) -> Arc<AppCounters> {
        self.counters.clone()
    }

    /// `/slow` requests received and not answered yet.
    pub fn slow_in_flight(&self) -> usize {
        self.slow_in_flight.load(Ordering::SeqCst)
    }
}

type AppBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn full(text: impl Into<Bytes>) -> AppBody {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn app_handler(
    mut req: Request<Incoming>,
    slow_in_flight: Arc<AtomicUsize>,
    counters: Arc<AppCounters>,
) -> Result<Response<AppBody>, Infallible> {
    if req.method() == http::Method::CONNECT {
        // CONNECT: accept, then echo the tunnel's bytes back with a prefix naming the target.
        let target = req.uri().to_string();
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut io = TokioIo::new(upgrade.await.unwrap());
            let mut all = Vec::new();
            io.read_to_end(&mut all).await.unwrap();
            io.write_all(format!("tunnel to {target}: ").as_bytes())
                .await
                .unwrap();
            io.write_all(&all).await.unwrap();
            io.shutdown().await.unwrap();
        });
        return Ok(Response::new(full("")));
    }
    let path = req.uri().path().to_owned();
    let response = match path.as_str() {
        "/echo" => Response::new(req.into_body().boxed()),
        "/count" => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(frame) = body.frame().await {
                // A body cut short ends the count; the client is gone anyway.
                let Ok(frame) = frame else { break };
                if let Ok(data) = frame.into_data() {
                    n += data.len() as u64;
                }
            }
            Response::new(full(n.to_string()))
        }
        "/big" => {
            use futures_util::StreamExt;
            let chunk = Bytes::from(vec![b'b'; 64 * 1024]);
            let stream = futures_util::stream::iter(0..1024)
                .map(move |_| Ok::<_, hyper::Error>(Frame::data(chunk.clone())));
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
        "/slow" => {
            counters.slow_started.fetch_add(1, Ordering::SeqCst);
            slow_in_flight.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            slow_in_flight.fetch_sub(1, Ordering::SeqCst);
            Response::new(full("slow done"))
        }
        "/ws" => {
            let key = req.headers().get("sec-websocket-key").cloned().unwrap();
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let upgraded = upgrade.await.unwrap();
                let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                use futures_util::{SinkExt, StreamExt};
                let (mut tx, mut rx) = ws.split();
                while let Some(Ok(msg)) = rx.next().await {
                    if msg.is_text() || msg.is_binary() {
                        tx.send(msg).await.unwrap();
                    }
                }
            });
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(full(""))
                .unwrap()
        }
        _ => {
            let xfcc = req
                .headers()
                .get_all("x-forwarded-client-cert")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
                .join(" | ");
            Response::builder()
                .header("x-seen-xfcc", xfcc)
                .header("x-seen-version", format!("{:?}", req.version()))
                .body(full("hello"))
                .unwrap()
        }
    };
    Ok(response)
}

// ---------- clients ----------

pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// One plain HTTP/1.1 request on a new connection.
pub async fn plain_request(addr: SocketAddr, req: Request<Full<Bytes>>) -> Result<Reply, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    collect(resp).await
}

pub async fn collect(resp: Response<Incoming>) -> Result<Reply, String> {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        headers,
        body,
    })
}

pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "test")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A rustls client config presenting `cert` (if any), trusting `ca_pem`, offering `alpn`.
pub fn client_tls(cert: Option<&Leaf>, ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = sidecar_kit::tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match cert {
        Some(leaf) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// An mTLS connection to an inbound listener. The server certificates name `peer.test`.
pub async fn mtls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect("peer.test".try_into().unwrap(), tcp)
        .await
}

/// One HTTP/1.1 request over a new mTLS connection; the error says where it failed.
pub async fn mtls_request(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    req: Request<Full<Bytes>>,
) -> Result<Reply, String> {
    let tls = mtls_connect(addr, config)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    tokio::spawn(conn);
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    collect(resp).await
}

/// A request body of `total` bytes made on the fly in 64 KiB chunks, never held whole.
pub fn generated_body(
    total: u64,
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>>> {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let count = total / chunk.len() as u64;
    StreamBody::new(futures_util::stream::iter(
        (0..count).map(move |_| Ok(Frame::data(chunk.clone()))),
    ))
}
