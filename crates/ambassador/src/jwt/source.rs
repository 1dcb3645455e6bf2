//! Where a route's keys come from and how they are kept current: fetched (or read) at start,
//! again on an interval, when the file changes, and when a token names a key the set lacks (at
//! most once per `unknown_kid_interval`). A failed fetch keeps the last good set; a route that
//! never had keys stays not ready.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use sidecar_kit::readiness::ReadyCheck;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{JwksSource, JwtConfig};
use super::keys::KeySet;
use super::metrics::JwtMetrics;

/// The largest JWKS or discovery document read.
const MAX_DOCUMENT: usize = 1024 * 1024;
/// A fetch that takes longer fails.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A route's current keys, shared by its requests and its refresh task.
#[derive(Debug)]
pub struct Keys {
    current: ArcSwapOption<KeySet>,
    wake: Notify,
    /// When a token with an unknown `kid` last asked for a fetch.
    last_asked: Mutex<Option<Instant>>,
    unknown_kid_interval: Duration,
    generation: AtomicU64,
}

impl Keys {
    pub fn new(unknown_kid_interval: Duration) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            wake: Notify::new(),
            last_asked: Mutex::new(None),
            unknown_kid_interval,
            generation: AtomicU64::new(0),
        }
    }

    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// A token named a key the set lacks: fetch again, unless one was asked for recently.
    pub fn ask_refresh(&self) {
        let now = Instant::now();
        let mut last = self
            .last_asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| now.duration_since(t) < self.unknown_kid_interval) {
            return;
        }
        *last = Some(now);
        self.wake.notify_one();
    }

    fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{0}")]
    Http(String),
    #[error("reading {0}: {1}")]
    File(String, std::io::Error),
    #[error("{0}")]
    Keys(#[from] super::keys::KeysError),
    #[error("discovery: {0}")]
    Discovery(String),
}

/// Keeps `keys` current until `stop`.
pub fn spawn(
    route: String,
    config: &JwtConfig,
    keys: Arc<Keys>,
    ready: ReadyCheck,
    metrics: JwtMetrics,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let client = match &config.source {
        JwksSource::File(_) => None,
        _ => Some(http_client(config)?),
    };
    let source = config.source.clone();
    let issuer = config.issuer.clone();
    let interval = config.refresh_interval;
    let mut changes = match &source {
        JwksSource::File(path) => Some(sidecar_kit::watch::watch_files(
            vec![path.clone()],
            sidecar_kit::watch::WatchOptions::default(),
            stop.clone(),
        )),
        _ => None,
    };
    tokio::spawn(async move {
        // After a failure: soon, then less often, never later than the interval.
        let mut retry = Duration::from_millis(500);
        loop {
            let generation = keys.next_generation();
            let wait = match fetch(&source, &issuer, client.as_ref(), generation).await {
                Ok(set) => {
                    let count = set.keys.len();
                    keys.current.store(Some(Arc::new(set)));
                    metrics.refreshed(&route, true, count);
                    ready.set_ready();
                    tracing::debug!(route, keys = count, "JWKS loaded");
                    retry = Duration::from_millis(500);
                    interval
                }
                Err(e) => {
                    metrics.refreshed(&route, false, 0);
                    let had = keys.current().is_some();
                    if !had {
                        ready.set_not_ready(format!("no JWKS yet: {e}"));
                    }
                    tracing::warn!(
                        route,
                        error = %e,
                        keeping_last_good = had,
                        "cannot load the JWKS"
                    );
                    let wait = retry.min(interval);
                    retry = (retry * 2).min(Duration::from_secs(30));
                    wait
                }
            };
            let file_changed = async {
                match changes.as_mut() {
                    Some(c) => {
                        if !c.changed().await {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = keys.wake.notified() => {}
                () = file_changed => {}
            }
        }
    });
    Ok(())
}

fn http_client(config: &JwtConfig) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(1)
        .user_agent(concat!("ambassador/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &config.ca {
        let pem =
            std::fs::read(ca).map_err(|e| anyhow::anyhow!("jwt.jwks.ca {}: {e}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow::anyhow!("jwt.jwks.ca {}: {e}", ca.display()))?;
        builder = builder.tls_certs_only(certs);
    }
    Ok(builder.build()?)
}

async fn fetch(
    source: &JwksSource,
    issuer: &str,
    client: Option<&reqwest::Client>,
    generation: u64,
) -> Result<KeySet, FetchError> {
    let no_client = || FetchError::Http("no HTTP client".into());
    let body = match source {
        JwksSource::File(path) => tokio::fs::read(path)
            .await
            .map_err(|e| FetchError::File(path.display().to_string(), e))?,
        JwksSource::Url(url) => get(client.ok_or_else(no_client)?, url).await?,
        JwksSource::Discovery(base) => {
            let client = client.ok_or_else(no_client)?;
            let url = format!("{base}/.well-known/openid-configuration");
            let doc: serde_json::Value = serde_json::from_slice(&get(client, &url).await?)
                .map_err(|e| FetchError::Discovery(format!("{url}: not JSON: {e}")))?;
            // OpenID Connect Discovery 4.3: the document must name the issuer it was asked for.
            let named = doc.get("issuer").and_then(|v| v.as_str()).unwrap_or("");
            if named != issuer && named.trim_end_matches('/') != base {
                return Err(FetchError::Discovery(format!(
                    "{url} names issuer `{named}`, not `{issuer}`"
                )));
            }
            let jwks = doc
                .get("jwks_uri")
                .and_then(|v| v.as_str())
                .ok_or_else(|| FetchError::Discovery(format!("{url} has no jwks_uri")))?;
            super::config::check_url(jwks)
                .map_err(|e| FetchError::Discovery(format!("jwks_uri: {e}")))?;
            get(client, jwks).await?
        }
    };
    Ok(KeySet::parse(&body, generation)?)
}

async fn get(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, FetchError> {
    let fail = |e: reqwest::Error| FetchError::Http(format!("{url}: {e}"));
    let mut response = client.get(url).send().await.map_err(fail)?;
    if !response.status().is_success() {
        return Err(FetchError::Http(format!(
            "{url}: status {}",
            response.status()
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(fail)? {
        if body.len() + chunk.len() > MAX_DOCUMENT {
            return Err(FetchError::Http(format!(
                "{url}: larger than {MAX_DOCUMENT} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
