//! The adapter's HTTP listener (/metrics, /json) and its background work (polling, mapping
//! reload), wired into the sidecar kit's lifecycle.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sidecar_kit::Sidecar;

use crate::config::Config;
use crate::encode::{Family, Format, encode, encode_json};
use crate::engine::{Engine, failure_families};
use crate::fetch::Fetcher;
use crate::mapping::Mapping;
use crate::probe_serve::Probes;
use crate::stats::Stats;

/// The outcome of the latest fetch, as served.
#[derive(Debug)]
pub struct Snapshot {
    pub families: Vec<Family>,
    pub error: Option<String>,
    pub at: SystemTime,
}

#[derive(Debug)]
struct AppState {
    engine: ArcSwap<Engine>,
    fetcher: Fetcher,
    stats: Stats,
    timeout: Duration,
    timeout_offset: Duration,
    /// Polling mode: the latest snapshot.
    cache: Option<ArcSwap<Option<Snapshot>>>,
    /// Probe mode: `/probe`.
    probes: Option<Arc<Probes>>,
    sidecar: Sidecar,
}

impl AppState {
    /// Fetches, translates and records the outcome. Never fails: a failure is a snapshot with
    /// `up 0` and only the mapping's up metric.
    async fn scrape(&self, budget: Duration) -> Snapshot {
        let engine = self.engine.load_full();
        let started = Instant::now();
        let bytes = Arc::new(AtomicU64::new(0));
        let result = self
            .fetcher
            .scrape(engine.clone(), budget, bytes.clone())
            .await;
        let at = SystemTime::now();
        let n = bytes.load(std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(t) => {
                self.stats.record_success(&t, started.elapsed(), n, at);
                for m in &t.messages {
                    tracing::warn!(message = %m, "a rule dropped a sample");
                }
                Snapshot {
                    families: t.families,
                    error: None,
                    at,
                }
            }
            Err(e) => {
                self.stats
                    .record_failure(e.kind(), started.elapsed(), n, at);
                tracing::warn!(error = %e, kind = e.kind(), "scrape failed: serving up 0");
                Snapshot {
                    families: failure_families(&engine.mapping),
                    error: Some(e.to_string()),
                    at,
                }
            }
        }
    }

    async fn current(&self, headers: &HeaderMap) -> Arc<Snapshot> {
        if let Some(cache) = &self.cache {
            if let Some(s) = cache.load_full().as_ref() {
                return Arc::new(Snapshot {
                    families: s.families.clone(),
                    error: s.error.clone(),
                    at: s.at,
                });
            }
            return Arc::new(Snapshot {
                families: failure_families(&self.engine.load().mapping),
                error: Some("no fetch has completed yet".into()),
                at: SystemTime::now(),
            });
        }
        Arc::new(self.scrape(self.budget(headers)).await)
    }

    /// Prometheus says how long it will wait; answer (with up 0 if need be) before that.
    fn budget(&self, headers: &HeaderMap) -> Duration {
        crate::fetch::scrape_budget(headers, self.timeout_offset, self.timeout)
    }
}

fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|enc| {
            let mut parts = enc.split(';');
            let name = parts.next().unwrap_or("").trim();
            let q0 = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !q0
        })
}

pub(crate) fn body_response(
    headers: &HeaderMap,
    content_type: &'static str,
    body: String,
) -> Response {
    let mut resp_headers = HeaderMap::new();
    resp_headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp_headers.insert(
        header::VARY,
        HeaderValue::from_static("Accept, Accept-Encoding"),
    );
    if accepts_gzip(headers) {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if gz.write_all(body.as_bytes()).is_ok()
            && let Ok(bytes) = gz.finish()
        {
            resp_headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            return (StatusCode::OK, resp_headers, bytes).into_response();
        }
    }
    (StatusCode::OK, resp_headers, body).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let _in_flight = state.sidecar.shutdown().in_flight();
    let snap = state.current(&headers).await;
    let own = state.stats.families();
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let all: Vec<&Family> = snap.families.iter().chain(own.iter()).collect();
    body_response(&headers, format.content_type(), encode(&all, format))
}

async fn json(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let _in_flight = state.sidecar.shutdown().in_flight();
    let snap = state.current(&headers).await;
    let doc = json_document(&snap.families, snap.error.as_deref(), snap.at);
    let text =
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    body_response(&headers, "application/json", text)
}

/// The `/json` envelope (also what `check --format json` prints).
fn json_document(families: &[Family], error: Option<&str>, at: SystemTime) -> serde_json::Value {
    let fams: Vec<&Family> = families.iter().collect();
    let at = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    serde_json::json!({
        "up": error.is_none(),
        "error": error,
        "fetched_at": at,
        "samples": encode_json(&fams),
    })
}

async fn index(State(state): State<Arc<AppState>>) -> &'static str {
    if state.probes.is_some() {
        "xml-adapter: /metrics (Prometheus text or OpenMetrics), /json (the same samples as JSON), \
         /probe?module=NAME&target=URL\n"
    } else {
        "xml-adapter: /metrics (Prometheus text or OpenMetrics), /json (the same samples as JSON)\n"
    }
}

async fn probe(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let _in_flight = state.sidecar.shutdown().in_flight();
    match &state.probes {
        Some(p) => p.handle(state.engine.load_full(), &params, &headers).await,
        None => (
            StatusCode::NOT_FOUND,
            "probe mode is off: start with --probe-config or --probe and --probe-allow\n",
        )
            .into_response(),
    }
}

/// Builds the router for the adapter's listener; public for tests that embed it.
fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/json", get(json))
        .route("/probe", get(probe))
        .with_state(state)
}

async fn watch_mapping(state: Arc<AppState>, path: PathBuf) {
    let token = state.sidecar.shutdown().token();
    let options = sidecar_kit::watch::WatchOptions {
        poll_interval: Duration::from_secs(2),
        ..Default::default()
    };
    let mut changes = sidecar_kit::watch::watch_files(vec![path.clone()], options, token);
    while changes.changed().await {
        let p = path.clone();
        let loaded = tokio::task::spawn_blocking(move || Mapping::load(&p)).await;
        match loaded {
            Ok(Ok(m)) => {
                state.engine.store(Arc::new(Engine::new(m)));
                state.stats.record_reload(true);
                tracing::info!(mapping = %path.display(), "mapping reloaded");
            }
            Ok(Err(e)) => {
                state.stats.record_reload(false);
                tracing::error!(error = %e, "new mapping refused; the previous one keeps serving");
            }
            Err(e) => {
                state.stats.record_reload(false);
                tracing::error!(error = %e, "mapping reload task failed");
            }
        }
    }
}

async fn poll(state: Arc<AppState>, interval: Duration, ready: sidecar_kit::readiness::ReadyCheck) {
    let token = state.sidecar.shutdown().token();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A slow fetch delays the next tick (MissedTickBehavior::Delay) rather than failing.
        let snap = state.scrape(state.timeout).await;
        if let Some(cache) = &state.cache {
            cache.store(Arc::new(Some(snap)));
        }
        // Ready after the first attempt, good or bad: `up` says which.
        ready.set_ready();
    }
}

/// Serves until the kit's shutdown token is cancelled.
pub async fn serve(config: Config, sidecar: Sidecar) -> anyhow::Result<()> {
    let fetcher = Fetcher::new(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", config.listen))?;
    let probe_on = config.probe.is_some();
    let probes = match config.probe {
        Some(p) => Some(Arc::new(Probes::new(
            p,
            &config.http,
            config.timeout_offset,
            sidecar.registry(),
        )?)),
        None => None,
    };
    let mapping_ready = sidecar.readiness().register("mapping");
    let state = Arc::new(AppState {
        engine: ArcSwap::from_pointee(Engine::new(config.mapping)),
        fetcher,
        stats: Stats::register(sidecar.registry(), config.poll_interval.is_some())
            .context("registering metrics")?,
        timeout: config.http.timeout,
        timeout_offset: config.timeout_offset,
        cache: config.poll_interval.map(|_| ArcSwap::from_pointee(None)),
        probes,
        sidecar: sidecar.clone(),
    });
    mapping_ready.set_ready();
    let tracker = sidecar.shutdown().tracker();
    tracker.spawn(watch_mapping(state.clone(), config.mapping_path.clone()));
    if let Some(p) = &state.probes {
        tracker.spawn(p.clone().watch(sidecar.clone()));
    }
    if let Some(interval) = config.poll_interval {
        let upstream_ready = sidecar.readiness().register("first-fetch");
        tracker.spawn(poll(state.clone(), interval, upstream_ready));
    }
    tracing::info!(
        listen = %config.listen,
        upstream = %config.upstream,
        probe = probe_on,
        "serving /metrics and /json"
    );
    let token = sidecar.shutdown().token();
    // Small responses must not wait for delayed ACKs (Nagle): latency is part of the contract.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
        .map_err(|e| anyhow::anyhow!("listener {}: {e}", config.listen))?;
    Ok(())
}

/// `xml-adapter check`: translate a saved document, print it and the lint warnings.
/// Returns the process exit code: 0 served, 1 document refused, 64 mapping refused.
pub fn check(
    mapping: &std::path::Path,
    input: &std::path::Path,
    format: crate::config::CheckFormat,
) -> u8 {
    let m = match Mapping::load(mapping) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return sidecar_kit::EXIT_CONFIG;
        }
    };
    for w in crate::lint::lint(&m) {
        eprintln!("warning: {w}");
    }
    let engine = Engine::new(m);
    let file = match std::fs::File::open(input) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: --input {}: {e}", input.display());
            return 1;
        }
    };
    let (families, error, issues) = match engine.translate(std::io::BufReader::new(file)) {
        Ok(t) => {
            for ((rule, reason), n) in &t.rule_issues {
                let what = match reason {
                    crate::engine::Reason::BadTimestamp => "served without their timestamp",
                    _ => "dropped",
                };
                eprintln!(
                    "note: rule `{rule}`: {n} sample(s) {what} ({})",
                    reason.as_str()
                );
            }
            for m in &t.messages {
                eprintln!("note: {m}");
            }
            for cap in &t.truncated {
                eprintln!("warning: the `{cap}` cap truncated the output");
            }
            (t.families, None, t.rule_issues.len())
        }
        Err(e) => (failure_families(&engine.mapping), Some(e.to_string()), 0),
    };
    let _ = issues;
    let fams: Vec<&Family> = families.iter().collect();
    let out = match format {
        crate::config::CheckFormat::Text => encode(&fams, Format::Text004),
        crate::config::CheckFormat::Openmetrics => encode(&fams, Format::OpenMetrics),
        crate::config::CheckFormat::Json => {
            let doc = json_document(&families, error.as_deref(), SystemTime::now());
            serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
        }
    };
    print!("{out}");
    match error {
        Some(e) => {
            eprintln!("error: {}: {e}", input.display());
            1
        }
        None => 0,
    }
}
