#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Certificate hot reload through a Kubernetes-style `..data` symlink flip, with a real TLS
//! server rebuilding its config from the reloader: good files are picked up, bad ones refused
//! while the old credentials keep serving, and the metrics say which happened.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use sidecar_kit::reload::{CredentialReloader, TlsFiles};
use sidecar_kit::tls::{self, ExpectedIdentity, PeerIdentity};
use sidecar_kit::watch::WatchOptions;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_util::sync::CancellationToken;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn new_ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "mesh CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf valid from `from` to `to` days around now; returns (cert PEM, key PEM).
fn leaf(ca: &Ca, cn: &str, from: i64, to: i64) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["server.local".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from);
    params.not_after = now + time::Duration::days(to);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A Secret volume as the kubelet lays it out: `name -> ..data/name`, `..data -> ..vN`.
struct SecretDir {
    root: PathBuf,
    version: u32,
}

impl SecretDir {
    fn new(root: &Path, cert: &str, key: &str, ca: &str) -> Self {
        let mut dir = Self {
            root: root.to_owned(),
            version: 0,
        };
        dir.flip(cert, key, ca);
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{name}"), root.join(name)).unwrap();
        }
        dir
    }

    fn flip(&mut self, cert: &str, key: &str, ca: &str) {
        self.version += 1;
        let version = format!("..v{}", self.version);
        let dir = self.root.join(&version);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join("tls.key"), key).unwrap();
        std::fs::write(dir.join("ca.crt"), ca).unwrap();
        let tmp = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp).unwrap();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
    }

    fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.root.join("tls.crt"),
            key: self.root.join("tls.key"),
            ca: self.root.join("ca.crt"),
        }
    }
}

/// Serves mTLS with whatever the reloader holds at each new connection.
async fn serve(reloader: Arc<CredentialReloader>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let creds = reloader.current();
            let config = tls::server_config(&creds.identity, &creds.bundle, &[]).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    use tokio::io::AsyncWriteExt;
                    let _ = tls.write_all(b"ok").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Connects as a client and returns the CN the server presented.
async fn presented_cn(addr: std::net::SocketAddr, ca: &Ca, client: &(String, String)) -> String {
    let identity = tls::Identity::from_pem(
        client.0.as_bytes(),
        client.1.as_bytes(),
        Path::new("client.crt"),
        Path::new("client.key"),
    )
    .unwrap();
    let bundle = tls::TrustBundle::from_pem(ca.pem.as_bytes(), Path::new("ca.crt")).unwrap();
    let config = tls::client_config(
        Some(&identity),
        &bundle,
        ExpectedIdentity::Dns("server.local".into()),
        &[],
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("server.local").unwrap(), tcp)
        .await
        .unwrap();
    let cert = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    PeerIdentity::from_der(&cert).unwrap().subject
}

fn metrics(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .unwrap();
    String::from_utf8(buf).unwrap()
}

async fn wait_for(mut check: impl FnMut() -> bool, what: &str) {
    for _ in 0..100 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn symlink_flip_reloads_and_bad_files_keep_the_old_credentials() {
    let ca = new_ca();
    let other_ca = new_ca();
    let client = leaf(&ca, "client", -1, 30);
    let first = leaf(&ca, "server-v1", -1, 30);
    let tmp = tempfile::tempdir().unwrap();
    let mut secret = SecretDir::new(tmp.path(), &first.0, &first.1, &ca.pem);

    let registry = Registry::new();
    let reloader = CredentialReloader::load(secret.files(), &registry).unwrap();
    let token = CancellationToken::new();
    let options = WatchOptions {
        poll_interval: Duration::from_secs(3600), // events only: prove the swap is seen
        debounce: Duration::from_millis(50),
        poll_only: false,
    };
    reloader.spawn_watcher(options, token.clone());
    let addr = serve(reloader.clone()).await;
    assert_eq!(presented_cn(addr, &ca, &client).await, "CN=server-v1");
    tokio::time::sleep(Duration::from_millis(100)).await;

    // A good new certificate arrives through the kubelet's symlink flip.
    let second = leaf(&ca, "server-v2", -1, 30);
    secret.flip(&second.0, &second.1, &ca.pem);
    wait_for(|| reloader.current().generation == 1, "the reload").await;
    assert_eq!(presented_cn(addr, &ca, &client).await, "CN=server-v2");

    // Each bad kind is refused and counted; v2 keeps serving.
    let third = leaf(&ca, "server-v3", -1, 30);
    let expired = leaf(&ca, "old", -30, -1);
    let bad = [
        ("key_mismatch", &second.0, &third.1, &ca.pem),
        ("expired", &expired.0, &expired.1, &ca.pem),
        ("chain_invalid", &third.0, &third.1, &other_ca.pem),
    ];
    let garbage = "garbage".to_owned();
    let bad = bad
        .into_iter()
        .chain([("malformed", &garbage, &garbage, &ca.pem)]);
    for (reason, cert, key, bundle) in bad {
        secret.flip(cert, key, bundle);
        let needle = format!("sidecar_tls_reloads_total{{result=\"{reason}\"}} 1");
        wait_for(|| metrics(&registry).contains(&needle), reason).await;
        assert_eq!(reloader.current().generation, 1, "{reason} was swapped in");
        assert_eq!(
            presented_cn(addr, &ca, &client).await,
            "CN=server-v2",
            "after {reason}"
        );
    }

    let text = metrics(&registry);
    assert!(
        text.contains("sidecar_tls_reloads_total{result=\"ok\"} 1"),
        "{text}"
    );
    let expiry_of_v2 = text.lines().find(|l| {
        l.starts_with("sidecar_certificate_expiry_timestamp_seconds{role=\"identity\"")
            && l.contains("subject=\"CN=server-v2\"")
    });
    assert!(expiry_of_v2.is_some(), "{text}");
    assert!(
        !text.contains("subject=\"CN=server-v1\""),
        "stale expiry series left behind: {text}"
    );
    token.cancel();
}

#[test]
fn bad_credentials_at_start_are_refused_with_the_file_named() {
    let ca = new_ca();
    let expired = leaf(&ca, "old", -30, -1);
    let tmp = tempfile::tempdir().unwrap();
    let secret = SecretDir::new(tmp.path(), &expired.0, &expired.1, &ca.pem);
    let err = CredentialReloader::load(secret.files(), &Registry::new()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "the certificate in {} expired at",
            secret.files().cert.display()
        )),
        "{message}"
    );
}
