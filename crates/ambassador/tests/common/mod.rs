//! Test helpers: certificates made with rcgen, the real ambassador binary in a kill-on-drop
//! guard, a small app backend, mTLS and plain HTTP clients, and /metrics reading.
#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use tokio::net::{TcpListener, TcpStream};

// ---------- certificates ----------

/// A CA, one secret directory for the inbound (server) side and one for the outbound (client)
/// side, and a temporary directory for logs.
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

    pub fn secret(&self, name: &str, spiffe: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        write_secret(&dir, 0, &self.ca.good(spiffe), &self.ca.pem);
        dir
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `spiffe` (and `dns`), valid from now+`from` to now+`to` days.
    pub fn leaf(&self, spiffe: &str, dns: &str, from: i64, to: i64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![dns.to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, spiffe.rsplit('/').next().unwrap());
        params
            .subject_alt_names
            .push(SanType::URI(spiffe.try_into().unwrap()));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from);
        params.not_after = now + time::Duration::days(to);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn good(&self, spiffe: &str) -> (String, String) {
        self.leaf(spiffe, "peer.test", -1, 30)
    }
}

/// Writes tls.crt, tls.key and ca.crt into `dir` the way a Kubernetes Secret volume does:
/// real files in a `..<n>` directory, `..data` pointing at it, and the names linking into
/// `..data`. Call again to swap atomically.
pub fn write_secret(dir: &Path, generation: u32, cert: &(String, String), ca_pem: &str) {
    let real = dir.join(format!("..gen_{generation}"));
    std::fs::create_dir_all(&real).unwrap();
    std::fs::write(real.join("tls.crt"), &cert.0).unwrap();
    std::fs::write(real.join("tls.key"), &cert.1).unwrap();
    std::fs::write(real.join("ca.crt"), ca_pem).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..gen_{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in ["tls.crt", "tls.key", "ca.crt"] {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
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

// ---------- ports and the binary ----------

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A running ambassador, killed on drop.
pub struct Ambassador {
    pub child: Child,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

impl Ambassador {
    /// Starts the binary with `args` (admin address added) and waits for /readyz.
    pub fn start(args: &[String], log_dir: &Path) -> Self {
        let admin = addr(free_port());
        let log = log_dir.join(format!("ambassador-{}.log", admin.port()));
        let child = Command::new(env!("CARGO_BIN_EXE_ambassador"))
            // Two worker threads on any machine, so that every test also covers connections
            // handed to the second thread (a test's own --worker-threads wins).
            .env("AMBASSADOR_WORKER_THREADS", "2")
            .args(args)
            .arg("--admin-addr")
            .arg(admin.to_string())
            .args(["--log-format", "text", "--log-level", "info"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut me = Self { child, admin, log };
        me.wait_ready();
        me
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("ambassador exited early ({status}):\n{}", self.log_text());
            }
            if let Ok((200, _)) = http_get_blocking(self.admin, "/readyz") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ambassador not ready in time:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn metrics(&self) -> String {
        http_get_blocking(self.admin, "/metrics").unwrap().1
    }

    /// The value of the series `name` whose labels include all of `labels`, 0 if absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(), name, labels)
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    }

    pub fn signal_term(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM failed");
    }
}

impl Drop for Ambassador {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A blocking HTTP/1.0 GET, for the admin server.
pub fn http_get_blocking(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

// ---------- the app behind the inbound ambassador ----------

/// A small HTTP app on 127.0.0.1: `/` answers "hello" and echoes the XFCC header it got in
/// `x-seen-xfcc`; `/echo` streams the request body back; `/count` answers the body's length;
/// `/slow` answers after 1.5 s; `/ws` is a WebSocket echo.
pub async fn start_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(app_handler);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

type AppBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn full(text: impl Into<Bytes>) -> AppBody {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

async fn app_handler(mut req: Request<Incoming>) -> Result<Response<AppBody>, Infallible> {
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
                if let Ok(data) = frame.unwrap().into_data() {
                    n += data.len() as u64;
                }
            }
            Response::new(full(n.to_string()))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(1500)).await;
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
pub fn client_tls(
    cert: Option<&(String, String)>,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
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
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(|c| c.unwrap())
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
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
