//! Handshake-per-request load generator for the benchmark: each request opens a new TCP
//! connection, does a full mTLS handshake (no session resumption) and sends one
//! `Connection: close` request. Prints `requests_per_sec p50_ms p99_ms errors`.
//!
//! usage: mtls-load ADDR CERT KEY CA SERVER_NAME CONCURRENCY SECONDS

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 8,
        "usage: mtls-load ADDR CERT KEY CA SERVER_NAME CONCURRENCY SECONDS"
    );
    let addr: std::net::SocketAddr = args[1].parse()?;
    let certs = CertificateDer::pem_file_iter(&args[2])?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(&args[3])?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&args[4])? {
        roots.add(ca?)?;
    }
    let name = ServerName::try_from(args[5].clone())?;
    let concurrency: usize = args[6].parse()?;
    let seconds: u64 = args[7].parse()?;
    let provider = sidecar_kit::tls::provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let connector = connector.clone();
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut buf = vec![0u8; 4096];
            while Instant::now() < end {
                let start = Instant::now();
                let one = async {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    let mut tls = connector.connect(name.clone(), tcp).await?;
                    tls.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                        .await?;
                    let mut got = Vec::new();
                    loop {
                        let n = tls.read(&mut buf).await?;
                        if n == 0 {
                            break;
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    anyhow::ensure!(got.starts_with(b"HTTP/1.1 200"), "not a 200");
                    Ok::<_, anyhow::Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(5), one).await {
                    Ok(Ok(())) => latencies.push(start.elapsed()),
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{:.0} {:.2} {:.2} {}",
        all.len() as f64 / seconds as f64,
        pct(0.5),
        pct(0.99),
        errors
    );
    Ok(())
}
