//! `/probe?module=NAME&target=URL`: one fetch of an allowed target, translated by the module's
//! mapping, served with the probe's own metrics (the blackbox/json_exporter pattern).
//!
//! Probes of different targets run concurrently (each module has its own connection pool); only
//! the fixed `--upstream` of `/metrics` is held to one connection.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::IntCounterVec;
use tokio::time::Instant;

use crate::encode::{Family, Format, Kind, Sample, Suffix, encode};
use crate::engine::{Engine, Scratch, failure_families};
use crate::fetch::{Client, ClientError, Timing};
use crate::http::HttpSettings;
use crate::probe::{AllowList, DEFAULT_MODULE, ProbeConfig, ProbeSource};

/// Translator buffers kept for the next probe of a module.
const KEPT_SCRATCH: usize = 4;
/// Idle connections kept per target host.
const IDLE_PER_HOST: usize = 2;

#[derive(Debug)]
struct ProbeModule {
    /// None: the adapter's own (hot-reloaded) mapping.
    engine: Option<Arc<Engine>>,
    client: Client,
    timeout: Duration,
    scratch: Mutex<Vec<Scratch>>,
}

/// The modules and allow-list in force; replaced whole when the probe files change.
#[derive(Debug)]
struct ModuleSet {
    allow: AllowList,
    modules: HashMap<String, ProbeModule>,
}

impl ModuleSet {
    /// The probe file's modules plus `default` (the `--config` mapping with the request flags'
    /// settings, `default_http`).
    fn build(config: ProbeConfig, default_http: &HttpSettings) -> Result<ModuleSet, anyhow::Error> {
        let ProbeConfig {
            allow,
            modules: specs,
            ..
        } = config;
        let module = |engine, http: &HttpSettings| -> Result<ProbeModule, ClientError> {
            Ok(ProbeModule {
                engine,
                client: Client::new(http, IDLE_PER_HOST, Some(allow.clone()))?,
                timeout: http.timeout,
                scratch: Mutex::new(Vec::new()),
            })
        };
        let mut modules = HashMap::new();
        modules.insert(DEFAULT_MODULE.to_string(), module(None, default_http)?);
        for (name, m) in specs {
            let built = module(Some(Arc::new(Engine::new(m.mapping))), &m.http)
                .map_err(|e| anyhow::anyhow!("probe module `{name}`: {e}"))?;
            modules.insert(name, built);
        }
        Ok(ModuleSet { allow, modules })
    }
}

/// Probe mode, ready to serve.
#[derive(Debug)]
pub struct Probes {
    set: ArcSwap<ModuleSet>,
    source: ProbeSource,
    /// The files whose change reloads the set.
    watched: Mutex<Vec<PathBuf>>,
    default_http: HttpSettings,
    timeout_offset: Duration,
    probes: IntCounterVec,
    reloads: IntCounterVec,
}

impl Probes {
    pub fn new(
        config: ProbeConfig,
        default_http: &HttpSettings,
        timeout_offset: Duration,
        registry: &prometheus::Registry,
    ) -> Result<Probes, anyhow::Error> {
        let source = config.source.clone();
        let watched = config.watched_files();
        let set = ModuleSet::build(config, default_http)?;
        let probes = sidecar_kit::metrics::counter_vec(
            registry,
            "xml_adapter_probes_total",
            "Probes served, by module and result (success, failure, refused).",
            &["module", "result"],
        )?;
        let reloads = sidecar_kit::metrics::counter_vec(
            registry,
            "xml_adapter_probe_reloads_total",
            "Reloads of the probe file and its modules' mappings, by result.",
            &["result"],
        )?;
        Ok(Probes {
            set: ArcSwap::from_pointee(set),
            source,
            watched: Mutex::new(watched),
            default_http: default_http.clone(),
            timeout_offset,
            probes,
            reloads,
        })
    }

    /// Reads the probe file and the modules' mappings again; a configuration that does not
    /// load is refused (logged, counted) and the modules in force keep serving.
    fn reload(&self) {
        let loaded = ProbeConfig::load(self.source.clone())
            .map_err(anyhow::Error::from)
            .and_then(|c| {
                let watched = c.watched_files();
                ModuleSet::build(c, &self.default_http).map(|set| (set, watched))
            });
        match loaded {
            Ok((set, watched)) => {
                self.set.store(Arc::new(set));
                *lock(&self.watched) = watched;
                self.reloads.with_label_values(&["success"]).inc();
                tracing::info!("probe modules reloaded");
            }
            Err(e) => {
                self.reloads.with_label_values(&["error"]).inc();
                tracing::error!(
                    error = %format!("{e:#}"),
                    "new probe configuration refused; the previous one keeps serving"
                );
            }
        }
    }

    /// Reloads when the probe file or a module's mapping changes, until the sidecar stops.
    pub async fn watch(self: Arc<Self>, sidecar: sidecar_kit::Sidecar) {
        let options = sidecar_kit::watch::WatchOptions {
            poll_interval: Duration::from_secs(2),
            ..Default::default()
        };
        let token = sidecar.shutdown().token();
        loop {
            let files = lock(&self.watched).clone();
            if files.is_empty() {
                return;
            }
            let this_set = token.child_token();
            let mut changes =
                sidecar_kit::watch::watch_files(files.clone(), options, this_set.clone());
            loop {
                if !changes.changed().await {
                    return;
                }
                let p = self.clone();
                if tokio::task::spawn_blocking(move || p.reload())
                    .await
                    .is_err()
                {
                    tracing::error!("probe reload task failed");
                }
                // A module added or removed: watch the new set of files.
                if *lock(&self.watched) != files {
                    this_set.cancel();
                    break;
                }
            }
        }
    }

    /// Prometheus says how long it will wait: the probe answers (with probe_success 0 if need
    /// be) `timeout_offset` before that, and never later than the module's timeout.
    fn budget(&self, module_timeout: Duration, headers: &HeaderMap) -> Duration {
        crate::fetch::scrape_budget(headers, self.timeout_offset, module_timeout)
    }

    /// Serves one probe; `default_engine` is the adapter's current mapping.
    pub async fn handle(
        &self,
        default_engine: Arc<Engine>,
        params: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> Response {
        let name = params.get("module").map_or(DEFAULT_MODULE, String::as_str);
        let set = self.set.load_full();
        let Some(module) = set.modules.get(name) else {
            let known: Vec<&str> = {
                let mut k: Vec<&str> = set.modules.keys().map(String::as_str).collect();
                k.sort_unstable();
                k
            };
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("unknown module `{name}` (known: {})", known.join(", ")),
            );
        };
        let refused = || self.probes.with_label_values(&[name, "refused"]).inc();
        let Some(target) = params.get("target").filter(|t| !t.trim().is_empty()) else {
            refused();
            return refuse(
                StatusCode::BAD_REQUEST,
                "the `target` parameter is missing".into(),
            );
        };
        let url = match reqwest::Url::parse(target.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            Ok(_) => {
                refused();
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("target `{target}`: only http and https targets can be probed"),
                );
            }
            Err(e) => {
                refused();
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("target `{target}` is not a URL: {e}"),
                );
            }
        };
        if !set.allow.allows(&url) {
            refused();
            tracing::warn!(module = name, target = %url, "probe target refused: not in the allow-list");
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "target `{url}` is not in the allow-list (--probe-allow, allowed_targets): not fetched"
                ),
            );
        }
        let engine = module.engine.clone().unwrap_or(default_engine);
        let budget = self.budget(module.timeout, headers);
        let started = Instant::now();
        let bytes = Arc::new(AtomicU64::new(0));
        let mut scratch = lock(&module.scratch).pop().unwrap_or_default();
        let mut timing = Timing::default();
        let result = module
            .client
            .fetch(
                &url,
                &engine,
                started + budget,
                budget,
                &bytes,
                &mut scratch,
                &mut timing,
            )
            .await;
        {
            let mut kept = lock(&module.scratch);
            if kept.len() < KEPT_SCRATCH {
                kept.push(scratch);
            }
        }
        let duration = started.elapsed();
        let (mut families, error_kind) = match result {
            Ok(t) => {
                for m in &t.messages {
                    tracing::warn!(module = name, target = %url, message = %m, "a rule dropped a sample");
                }
                (t.families, None)
            }
            Err(e) => {
                tracing::warn!(module = name, target = %url, error = %e, kind = e.kind(), "probe failed");
                (failure_families(&engine.mapping), Some(e.kind()))
            }
        };
        self.probes
            .with_label_values(&[
                name,
                if error_kind.is_none() {
                    "success"
                } else {
                    "failure"
                },
            ])
            .inc();
        let gauge = |n: &str, help: &str, v: f64| {
            let mut f = Family::new(n, help, Kind::Gauge);
            f.samples.push(Sample {
                suffix: Suffix::None,
                labels: vec![],
                value: v,
                timestamp: None,
            });
            f
        };
        families.push(gauge(
            "probe_success",
            "Whether the target was fetched and its document translated.",
            if error_kind.is_none() { 1.0 } else { 0.0 },
        ));
        families.push(gauge(
            "probe_duration_seconds",
            "How long the probe took (fetch and translation).",
            duration.as_secs_f64(),
        ));
        families.push(gauge(
            "probe_http_status_code",
            "The target's HTTP status (0: no response).",
            f64::from(timing.status.unwrap_or(0)),
        ));
        if let Some(h) = timing.headers_after {
            families.push(gauge(
                "probe_http_headers_duration_seconds",
                "From the start of the probe to the target's response head.",
                h.as_secs_f64(),
            ));
        }
        families.push(gauge(
            "probe_parse_duration_seconds",
            "Time spent translating the document.",
            timing.parse.as_secs_f64(),
        ));
        families.push(gauge(
            "probe_body_bytes",
            "Bytes of the target's body read.",
            bytes.load(Ordering::Relaxed) as f64,
        ));
        families.push(gauge(
            "probe_timeout_seconds",
            "The probe's deadline: the module's timeout, lowered by Prometheus's scrape timeout.",
            budget.as_secs_f64(),
        ));
        if let Some(kind) = error_kind {
            let mut f = Family::new(
                "probe_error",
                "Why the probe failed (1 for the cause).",
                Kind::Gauge,
            );
            f.samples.push(Sample {
                suffix: Suffix::None,
                labels: vec![("kind".into(), kind.into())],
                value: 1.0,
                timestamp: None,
            });
            families.push(f);
        }
        let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
        let all: Vec<&Family> = families.iter().collect();
        crate::serve::body_response(headers, format.content_type(), encode(&all, format))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn refuse(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}
