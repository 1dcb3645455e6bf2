//! Certificate hot reload that never swaps in bad credentials.
//!
//! [`CredentialReloader`] holds the certificate chain, key and CA bundle in use. When the files
//! change (see [`crate::watch`]) it loads the new ones and checks them with
//! [`tls::check_credentials`]: the key must match the certificate, the chain must verify against
//! the bundle, and the certificate must be within its validity. Only then are they swapped in;
//! otherwise the old ones keep serving and the failure is logged and counted.
//!
//! Metrics (in the registry given to [`CredentialReloader::load`]):
//! - `sidecar_tls_reloads_total{result}`: `ok`, or the reason for refusing (`unreadable`,
//!   `malformed`, `key_mismatch`, `expired`, `not_yet_valid`, `chain_invalid`);
//! - `sidecar_certificate_expiry_timestamp_seconds{role,subject,serial}`: each certificate in
//!   use (`role` is `identity` for the chain, `ca` for the bundle);
//! - `sidecar_tls_last_reload_success_timestamp_seconds`.
//!
//! ```no_run
//! # async fn demo(sidecar: sidecar_kit::Sidecar) -> Result<(), sidecar_kit::tls::TlsError> {
//! use sidecar_kit::reload::{CredentialReloader, TlsFiles};
//! let files = TlsFiles { cert: "/certs/tls.crt".into(), key: "/certs/tls.key".into(), ca: "/certs/ca.crt".into() };
//! let reloader = CredentialReloader::load(files, sidecar.registry())?; // bad files: refuse to start
//! reloader.spawn_watcher(Default::default(), sidecar.shutdown().token());
//! let mut updates = reloader.subscribe();
//! while updates.changed().await.is_ok() {
//!     let credentials = updates.borrow_and_update().clone();
//!     // rebuild the rustls configs from `credentials`; established connections are untouched
//! #   let _ = credentials;
//! }
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{Gauge, GaugeVec, IntCounterVec, Registry};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::tls::{self, Identity, PeerIdentity, TlsError, TrustBundle};
use crate::watch::{WatchOptions, watch_files};

/// Where the credentials live.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle that peers are verified against (and our chain must verify against).
    pub ca: PathBuf,
}

/// A checked set of credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Our certificate chain and key.
    pub identity: Identity,
    /// The CA bundle.
    pub bundle: TrustBundle,
    /// Our leaf certificate, parsed.
    pub leaf: PeerIdentity,
    /// 0 for the credentials loaded at start, +1 for each reload swapped in.
    pub generation: u64,
}

#[derive(Debug, Clone)]
struct ReloadMetrics {
    reloads: IntCounterVec,
    expiry: GaugeVec,
    last_success: Gauge,
}

impl ReloadMetrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(Self {
            reloads: metrics::counter_vec(
                registry,
                "sidecar_tls_reloads_total",
                "Certificate reload attempts by result: ok, or why the new files were refused.",
                &["result"],
            )?,
            expiry: metrics::float_gauge_vec(
                registry,
                "sidecar_certificate_expiry_timestamp_seconds",
                "Expiry (notAfter) of each certificate in use, as a Unix timestamp.",
                &["role", "subject", "serial"],
            )?,
            last_success: metrics::float_gauge(
                registry,
                "sidecar_tls_last_reload_success_timestamp_seconds",
                "When credentials were last loaded successfully, as a Unix timestamp.",
            )?,
        })
    }
}

/// Holds the credentials in use and swaps in new ones only when they pass the checks.
#[derive(Debug)]
pub struct CredentialReloader {
    files: TlsFiles,
    tx: watch::Sender<Arc<Credentials>>,
    metrics: ReloadMetrics,
}

impl CredentialReloader {
    /// Loads and checks the credentials; an error here means the sidecar must not start.
    pub fn load(files: TlsFiles, registry: &Registry) -> Result<Arc<Self>, TlsError> {
        let metrics = ReloadMetrics::new(registry)
            .map_err(|e| TlsError::Config(format!("cannot register TLS metrics: {e}")))?;
        let credentials = load_checked(&files, 0)?;
        publish_expiry(&metrics, &credentials);
        metrics.last_success.set(unix_now());
        let (tx, _) = watch::channel(Arc::new(credentials));
        Ok(Arc::new(Self { files, tx, metrics }))
    }

    /// The credentials in use.
    pub fn current(&self) -> Arc<Credentials> {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every swap.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Credentials>> {
        self.tx.subscribe()
    }

    /// The files being watched.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Loads the files again and swaps them in if they pass; otherwise keeps the old ones.
    pub fn reload(&self) -> Result<Arc<Credentials>, TlsError> {
        let generation = self.current().generation + 1;
        match load_checked(&self.files, generation) {
            Ok(credentials) => {
                let credentials = Arc::new(credentials);
                publish_expiry(&self.metrics, &credentials);
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                self.metrics.last_success.set(unix_now());
                tracing::info!(
                    generation,
                    subject = %credentials.leaf.subject,
                    not_after = %humantime::format_rfc3339_seconds(credentials.leaf.not_after),
                    "certificates reloaded"
                );
                self.tx.send_replace(credentials.clone());
                Ok(credentials)
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&[reason(&e)]).inc();
                tracing::error!(error = %e, "new certificates refused; keeping the ones in use");
                Err(e)
            }
        }
    }

    /// Watches the three files (through their directories) and reloads on change, until
    /// `token` is cancelled.
    pub fn spawn_watcher(self: &Arc<Self>, options: WatchOptions, token: CancellationToken) {
        let paths = vec![
            self.files.cert.clone(),
            self.files.key.clone(),
            self.files.ca.clone(),
        ];
        let mut changes = watch_files(paths, options, token);
        let this = self.clone();
        tokio::spawn(async move {
            while changes.changed().await {
                // The outcome is logged and counted inside.
                let _ = this.reload();
            }
        });
    }
}

fn load_checked(files: &TlsFiles, generation: u64) -> Result<Credentials, TlsError> {
    let identity = Identity::load(&files.cert, &files.key)?;
    let bundle = TrustBundle::load(&files.ca)?;
    let leaf = tls::check_credentials(&identity, &bundle, SystemTime::now())?;
    Ok(Credentials {
        identity,
        bundle,
        leaf,
        generation,
    })
}

fn reason(e: &TlsError) -> &'static str {
    match e {
        TlsError::Read { .. } => "unreadable",
        TlsError::Pem { .. } | TlsError::Certificate { .. } | TlsError::Config(_) => "malformed",
        TlsError::KeyMismatch { .. } => "key_mismatch",
        TlsError::Expired { .. } => "expired",
        TlsError::NotYetValid { .. } => "not_yet_valid",
        TlsError::Chain { .. } => "chain_invalid",
    }
}

fn publish_expiry(metrics: &ReloadMetrics, credentials: &Credentials) {
    metrics.expiry.reset();
    let certs = credentials
        .identity
        .chain()
        .iter()
        .map(|c| ("identity", c))
        .chain(credentials.bundle.certs().iter().map(|c| ("ca", c)));
    for (role, der) in certs {
        if let Ok(cert) = PeerIdentity::from_der(der) {
            let expiry = cert
                .not_after
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            metrics
                .expiry
                .with_label_values(&[role, cert.subject.as_str(), cert.serial_hex.as_str()])
                .set(expiry);
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
