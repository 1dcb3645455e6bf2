//! The training run of the ambassador's profile-guided build (`scripts/pgo.sh`): starts an
//! instrumented ambassador pair (outbound -> mTLS -> inbound) in front of a small app, sends it
//! the traffic a mesh sidecar carries, then asks both to shut down, so that each writes its
//! profile as it exits.
//!
//! usage: pgo-train AMBASSADOR_BINARY [SECONDS]
//!
//! The mix, for SECONDS (default 10) in all:
//! - 64 keep-alive connections through the outbound: mostly GETs with a small answer, and POSTs
//!   with a 16 KiB body, 256 KiB answers and chunked answers among them;
//! - requests on a new connection each (`Connection: close`) through the outbound;
//! - full mTLS handshakes, no resumption, straight to the inbound.
//!
//! Every answer must be the app's: a training run that fails would optimise the error paths, so
//! it exits non-zero on the first wrong answer instead.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use rustls::pki_types::ServerName;
use sidecar_kit::tls::{ExpectedIdentity, Identity, TrustBundle, client_config};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SMALL: &[u8] = b"hello from the backend\n";
const LARGE_BYTES: usize = 256 * 1024;
const POST_BYTES: usize = 16 * 1024;
const KEEP_ALIVE_CONNECTIONS: usize = 64;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pgo-train: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgo-train: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    ensure!(
        (2..=3).contains(&args.len()),
        "usage: pgo-train AMBASSADOR_BINARY [SECONDS]"
    );
    let binary = PathBuf::from(&args[1]);
    let seconds: u64 = match args.get(2) {
        Some(s) => s.parse().context("SECONDS must be a whole number")?,
        None => 10,
    };
    let dir = tempfile::tempdir()?;
    write_pki(dir.path())?;

    let app = TcpListener::bind("127.0.0.1:0").await?;
    let app_addr = app.local_addr()?;
    tokio::spawn(serve_app(app));

    let [outbound, inbound, admin_out, admin_in] = free_ports()?;
    let file = |name: &str| dir.path().join(name).display().to_string();
    let mut pair = Pair(Vec::new());
    pair.0.push(spawn(
        &binary,
        &[
            "--cert",
            &file("server.crt"),
            "--key",
            &file("server.key"),
            "--ca",
            &file("ca.crt"),
            "--admin-addr",
            &format!("127.0.0.1:{admin_in}"),
            "--inbound-listen",
            &format!("127.0.0.1:{inbound}"),
            "--inbound-app",
            &app_addr.to_string(),
            "--allow-spiffe",
            "spiffe://train.local/ns/a/sa/*",
        ],
    )?);
    pair.0.push(spawn(
        &binary,
        &[
            "--cert",
            &file("client.crt"),
            "--key",
            &file("client.key"),
            "--ca",
            &file("ca.crt"),
            "--admin-addr",
            &format!("127.0.0.1:{admin_out}"),
            "--outbound-listen",
            &format!("127.0.0.1:{outbound}"),
            "--outbound-endpoints",
            &format!("127.0.0.1:{inbound}"),
            "--outbound-identity",
            "spiffe://train.local/ns/b/sa/server",
        ],
    )?);
    for (ambassador, admin) in pair.0.iter_mut().zip([admin_in, admin_out]) {
        wait_ready(ambassador, admin).await?;
    }

    let outbound: SocketAddr = ([127, 0, 0, 1], outbound).into();
    let inbound: SocketAddr = ([127, 0, 0, 1], inbound).into();
    let keep_alive_for = Duration::from_secs(seconds.max(3) * 7 / 10);
    let rest = Duration::from_secs(seconds.max(3)) - keep_alive_for;
    let keep_alive = keep_alive_load(outbound, keep_alive_for).await?;
    let closed = new_connection_load(outbound, rest / 2).await?;
    let handshakes = handshake_load(inbound, dir.path(), rest / 2).await?;

    for admin in [admin_out, admin_in] {
        http_get(admin, "POST", "/shutdown").await?;
    }
    pair.wait(Duration::from_secs(30))?;
    println!(
        "pgo-train: {keep_alive} keep-alive requests, {closed} on new connections, {handshakes} mTLS handshakes"
    );
    Ok(())
}

/// The two ambassador processes; killed if the run ends before they exit by themselves.
struct Pair(Vec<Child>);

impl Pair {
    fn wait(&mut self, limit: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + limit;
        for child in &mut self.0 {
            loop {
                if let Some(status) = child.try_wait()? {
                    ensure!(status.success(), "an ambassador exited with {status}");
                    break;
                }
                if Instant::now() > end {
                    bail!("an ambassador did not exit within {limit:?} of its shutdown");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.0.clear();
        Ok(())
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(binary: &Path, args: &[&str]) -> anyhow::Result<Child> {
    Command::new(binary)
        .args(args)
        .args(["--log-level", "error"])
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))
}

fn free_ports() -> anyhow::Result<[u16; 4]> {
    // Held together until all four are known, so that they differ.
    let listeners = (0..4)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0; 4];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

async fn wait_ready(ambassador: &mut Child, admin: u16) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = ambassador.try_wait()? {
            // Its own error went to stderr, above this one.
            bail!("the ambassador on admin port {admin} exited with {status} before it was ready");
        }
        if let Ok(head) = http_get(admin, "GET", "/readyz").await
            && head.starts_with("HTTP/1.1 200")
        {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("the ambassador on admin port {admin} was not ready within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One request to an admin port; returns the status line.
async fn http_get(port: u16, method: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

// ---------- the app ----------

async fn serve_app(listener: TcpListener) {
    let large = Bytes::from(vec![b'x'; LARGE_BYTES]);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let large = large.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| app(req, large.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type AppBody = http_body_util::Either<
    Full<Bytes>,
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>,
>;

async fn app(req: Request<Incoming>, large: Bytes) -> Result<Response<AppBody>, Infallible> {
    use http_body_util::Either;
    let full = |bytes: Bytes| Response::new(Either::Left(Full::new(bytes)));
    Ok(match (req.method().as_str(), req.uri().path()) {
        ("POST", _) => match req.into_body().collect().await {
            Ok(body) => full(Bytes::from(format!("{} bytes\n", body.to_bytes().len()))),
            Err(_) => {
                let mut response = full(Bytes::from_static(b"bad body\n"));
                *response.status_mut() = StatusCode::BAD_REQUEST;
                response
            }
        },
        (_, "/large") => full(large),
        (_, "/chunked") => {
            // No length: HTTP/1.1 sends it chunked.
            let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..4)
                .map(|_| Ok(Frame::data(Bytes::from_static(&[b'c'; 1024]))))
                .collect();
            Response::new(Either::Right(StreamBody::new(futures_util::stream::iter(
                chunks,
            ))))
        }
        _ => full(Bytes::from_static(SMALL)),
    })
}

// ---------- the load ----------

/// Keep-alive connections through the outbound, each sending the mix in turn until `length`.
async fn keep_alive_load(outbound: SocketAddr, length: Duration) -> anyhow::Result<u64> {
    let end = Instant::now() + length;
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for connection in 0..KEEP_ALIVE_CONNECTIONS {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(outbound).await?;
            stream.set_nodelay(true)?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                    .await?;
            tokio::spawn(conn);
            let post = Bytes::from(vec![b'p'; POST_BYTES]);
            let mut i = connection;
            while Instant::now() < end {
                let (method, path, body, expect) = match i % 50 {
                    0 | 25 => ("POST", "/upload", post.clone(), Some(POST_BYTES)),
                    10 => ("GET", "/large", Bytes::new(), None),
                    20 => ("GET", "/chunked", Bytes::new(), None),
                    _ => ("GET", "/", Bytes::new(), None),
                };
                let req = Request::builder()
                    .method(method)
                    .uri(path)
                    .header(http::header::HOST, "app.train")
                    .body(Full::new(body))?;
                send.ready().await?;
                let response = send.send_request(req).await?;
                check(response, path, expect).await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed))
}

async fn check(
    response: Response<Incoming>,
    path: &str,
    posted: Option<usize>,
) -> anyhow::Result<()> {
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    ensure!(
        status == StatusCode::OK,
        "{path}: {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let ok = match (posted, path) {
        (Some(n), _) => body == format!("{n} bytes\n").as_bytes(),
        (None, "/large") => body.len() == LARGE_BYTES,
        (None, "/chunked") => body.len() == 4 * 1024,
        (None, _) => body == SMALL,
    };
    ensure!(ok, "{path}: not the app's answer ({} bytes)", body.len());
    Ok(())
}

/// Requests on a new connection each through the outbound, from a few clients, until `length`.
async fn new_connection_load(outbound: SocketAddr, length: Duration) -> anyhow::Result<u64> {
    repeat_until(8, Instant::now() + length, move || async move {
        let answer = get_and_close(TcpStream::connect(outbound).await?).await?;
        ensure!(
            answer.starts_with(b"HTTP/1.1 200") && answer.ends_with(SMALL),
            "a request on a new connection was not answered by the app"
        );
        Ok(())
    })
    .await
}

/// Full mTLS handshakes (no resumption) straight to the inbound, one request each.
async fn handshake_load(inbound: SocketAddr, pki: &Path, length: Duration) -> anyhow::Result<u64> {
    let identity = Identity::load(&pki.join("client.crt"), &pki.join("client.key"))?;
    let servers = TrustBundle::load(&pki.join("ca.crt"))?;
    let mut config = client_config(
        Some(&identity),
        &servers,
        ExpectedIdentity::Dns("server.train".into()),
        &[],
    )?;
    config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("server.train")?;
    repeat_until(16, Instant::now() + length, move || {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            let tls = connector
                .connect(name, TcpStream::connect(inbound).await?)
                .await?;
            let answer = get_and_close(tls).await?;
            ensure!(
                answer.starts_with(b"HTTP/1.1 200"),
                "a request over a new mTLS connection was not answered with 200"
            );
            Ok(())
        }
    })
    .await
}

/// `clients` tasks, each running `one` (a request on a connection of its own) again and again
/// until `end`; returns how many ran, or the first failure.
async fn repeat_until<F, Fut>(clients: usize, end: Instant, one: F) -> anyhow::Result<u64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let one = one.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < end {
                one().await?;
                done += 1;
            }
            Ok::<_, anyhow::Error>(done)
        }));
    }
    let mut done = 0;
    for task in tasks {
        done += task.await??;
    }
    Ok(done)
}

/// Sends `GET /` with `Connection: close` and reads the whole answer.
async fn get_and_close(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
) -> std::io::Result<Vec<u8>> {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: app.train\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(answer)
}

// ---------- certificates ----------

/// A CA and two leaves, as the mesh's: the inbound's (`server.*`) and the outbound's
/// (`client.*`), each with a SPIFFE ID and a DNS name.
fn write_pki(dir: &Path) -> anyhow::Result<()> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "train-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    std::fs::write(dir.join("ca.crt"), ca_cert.pem())?;
    let issuer = Issuer::new(ca, ca_key);
    for (name, spiffe, dns) in [
        (
            "server",
            "spiffe://train.local/ns/b/sa/server",
            "server.train",
        ),
        (
            "client",
            "spiffe://train.local/ns/a/sa/client",
            "client.train",
        ),
    ] {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![dns.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .subject_alt_names
            .push(SanType::URI(spiffe.try_into()?));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(dir.join(format!("{name}.crt")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    }
    Ok(())
}
