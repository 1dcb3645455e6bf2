#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Certificate hot reload through a Kubernetes-style `..data` symlink flip, with a real TLS
//! server rebuilding its config from the reloader: good files are picked up, bad ones refused
//! while the old credentials keep serving, and the metrics say which happened.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::{Encoder, Registry, TextEncoder};
use sidecar_kit::reload::{CredentialReloader, TlsFiles};
use sidecar_kit::tls::{self, ExpectedIdentity, PeerIdentity};
use sidecar_kit::watch::WatchOptions;
use test_support::certs::{Ca, Leaf, SecretVolume};
use test_support::metrics::Metrics;
use test_support::wait::Wait;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_util::sync::CancellationToken;

/// A leaf for `server.local` named `cn`, valid from `from` to `to` days around now.
fn leaf(ca: &Ca, cn: &str, from: i64, to: i64) -> Leaf {
    ca.leaf()
        .common_name(cn)
        .dns("server.local")
        .valid_days(from, to)
        .sign()
}

fn files(secret: &SecretVolume) -> TlsFiles {
    TlsFiles {
        cert: secret.cert(),
        key: secret.key(),
        ca: secret.ca(),
    }
}

/// Counts the times a process opened `file` (inotify), from now on.
struct OpensOf {
    count: Arc<AtomicUsize>,
    _watcher: notify::RecommendedWatcher,
}

impl OpensOf {
    fn watch(file: &Path) -> OpensOf {
        use notify::event::AccessKind;
        use notify::{EventKind, Watcher};
        let count = Arc::new(AtomicUsize::new(0));
        let (counter, wanted) = (count.clone(), file.to_path_buf());
        let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
            if let Ok(e) = e
                && matches!(e.kind, EventKind::Access(AccessKind::Open(_)))
                && e.paths.contains(&wanted)
            {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
        watcher
            .watch(file.parent().unwrap(), notify::RecursiveMode::NonRecursive)
            .unwrap();
        OpensOf {
            count,
            _watcher: watcher,
        }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
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
async fn presented_cn(addr: std::net::SocketAddr, ca: &Ca, client: &Leaf) -> String {
    let identity = tls::Identity::from_pem(
        client.cert_pem.as_bytes(),
        client.key_pem.as_bytes(),
        Path::new("client.crt"),
        Path::new("client.key"),
    )
    .unwrap();
    let bundle = tls::TrustBundle::from_pem(ca.pem().as_bytes(), Path::new("ca.crt")).unwrap();
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

fn metrics(registry: &Registry) -> Metrics {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .unwrap();
    Metrics::parse(&String::from_utf8(buf).unwrap()).unwrap()
}

/// Waits (5 s at most) for `check`.
async fn wait_for(mut check: impl FnMut() -> bool, what: &str) {
    Wait::new(what)
        .timeout(Duration::from_secs(5))
        .until_async(async || check())
        .await;
}

#[tokio::test]
async fn symlink_flip_reloads_and_bad_files_keep_the_old_credentials() {
    let ca = Ca::new("mesh CA");
    let other_ca = Ca::new("mesh CA");
    let client = leaf(&ca, "client", -1, 30);
    let first = leaf(&ca, "server-v1", -1, 30);
    let tmp = tempfile::tempdir().unwrap();
    let mut secret = SecretVolume::create(tmp.path(), &first, ca.pem());

    let registry = Registry::new();
    let reloader = CredentialReloader::load(files(&secret), &registry).unwrap();
    let token = CancellationToken::new();
    let options = WatchOptions {
        poll_interval: Duration::from_secs(3600), // events only: prove the swap is seen
        debounce: Duration::from_millis(50),
        poll_only: false,
    };
    // The watcher compares the files with what it read when it started: the swap must come
    // after that first read, or it would be the baseline. It reads the CA last; once it has
    // opened the first version's, what it reads is the first version (never rewritten).
    let baseline = OpensOf::watch(&tmp.path().join("..v1/ca.crt"));
    reloader.spawn_watcher(options, token.clone());
    let addr = serve(reloader.clone()).await;
    assert_eq!(presented_cn(addr, &ca, &client).await, "CN=server-v1");
    wait_for(
        || baseline.count() >= 1,
        "the watcher's first read of the files",
    )
    .await;

    // A good new certificate arrives through the kubelet's symlink flip.
    let second = leaf(&ca, "server-v2", -1, 30);
    secret.update_leaf(&second, ca.pem());
    wait_for(|| reloader.current().generation == 1, "the reload").await;
    assert_eq!(presented_cn(addr, &ca, &client).await, "CN=server-v2");

    // Each bad kind is refused and counted; v2 keeps serving.
    let third = leaf(&ca, "server-v3", -1, 30);
    let expired = leaf(&ca, "old", -30, -1);
    let bad = [
        ("key_mismatch", &second.cert_pem, &third.key_pem, ca.pem()),
        ("expired", &expired.cert_pem, &expired.key_pem, ca.pem()),
        (
            "chain_invalid",
            &third.cert_pem,
            &third.key_pem,
            other_ca.pem(),
        ),
    ];
    let garbage = "garbage".to_owned();
    let bad = bad
        .into_iter()
        .chain([("malformed", &garbage, &garbage, ca.pem())]);
    for (reason, cert, key, bundle) in bad {
        secret.update(cert, key, bundle);
        wait_for(
            || {
                metrics(&registry).get("sidecar_tls_reloads_total", &[("result", reason)])
                    == Some(1.0)
            },
            reason,
        )
        .await;
        assert_eq!(reloader.current().generation, 1, "{reason} was swapped in");
        assert_eq!(
            presented_cn(addr, &ca, &client).await,
            "CN=server-v2",
            "after {reason}"
        );
    }

    let page = metrics(&registry);
    assert_eq!(
        page.get("sidecar_tls_reloads_total", &[("result", "ok")]),
        Some(1.0),
        "{page}"
    );
    let expiry = page
        .series("sidecar_certificate_expiry_timestamp_seconds")
        .collect::<Vec<_>>();
    let expiry_of_v2 = expiry.iter().find(|s| {
        s.label("role") == Some("identity") && s.label("subject") == Some("CN=server-v2")
    });
    assert!(expiry_of_v2.is_some(), "{page}");
    assert!(
        !page
            .samples()
            .iter()
            .any(|s| s.label("subject") == Some("CN=server-v1")),
        "stale expiry series left behind: {page}"
    );
    token.cancel();
}

#[test]
fn bad_credentials_at_start_are_refused_with_the_file_named() {
    let ca = Ca::new("mesh CA");
    let expired = leaf(&ca, "old", -30, -1);
    let tmp = tempfile::tempdir().unwrap();
    let secret = SecretVolume::create(tmp.path(), &expired, ca.pem());
    let err = CredentialReloader::load(files(&secret), &Registry::new()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "the certificate in {} expired at",
            secret.cert().display()
        )),
        "{message}"
    );
}
