//! Fetching the upstream document and translating it while it streams in.
//!
//! One client with one kept-alive connection: fetches are serialised by a mutex, so the legacy
//! application never sees more than one connection from the adapter. The body is never held:
//! each chunk, as it arrives through a counting, capped, deadline-aware stream, is fed to the
//! translator right there (no hand-off to another thread: a 32 KB page is translated in a
//! fraction of a millisecond, and a large document is worked through a window at a time).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;

use crate::config::Config;
use crate::engine::{DocumentError, Engine, Scratch, Translation, Translator};
use crate::http::{Auth, HttpSettings, ProxySetting};
use crate::probe::AllowList;

/// Why a scrape served no translated samples; the `kind` label of the error counter.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("fetching {url} failed: {message}")]
    Fetch { url: String, message: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("no complete answer from the upstream within {0:?}")]
    Timeout(Duration),
    #[error("the upstream body exceeds the body cap ({0} bytes)")]
    BodyCap(u64),
    #[error("cannot read credentials: {0}")]
    Credentials(String),
    #[error("the document was refused: {0}")]
    Document(DocumentError),
}

impl ScrapeError {
    pub fn kind(&self) -> &'static str {
        match self {
            ScrapeError::Fetch { .. } => "fetch",
            ScrapeError::Status { .. } => "http_status",
            ScrapeError::Timeout(_) => "timeout",
            ScrapeError::BodyCap(_) => "body_cap",
            ScrapeError::Credentials(_) => "credentials",
            ScrapeError::Document(DocumentError::Malformed { .. }) => "malformed",
            ScrapeError::Document(DocumentError::Read { .. }) => "read",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Tls {
        what: &'static str,
        source: reqwest::Error,
    },
}

/// An HTTP client with one set of request settings; it fetches any URL it is given.
#[derive(Debug)]
pub struct Client {
    client: reqwest::Client,
    headers: reqwest::header::HeaderMap,
    auth: Auth,
    method: reqwest::Method,
    body: Option<Bytes>,
    max_body: u64,
    /// The proxy, said in fetch errors.
    proxy: Option<String>,
}

/// What a fetch measured, filled in as far as it got.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timing {
    /// The upstream's HTTP status, once the response head arrived.
    pub status: Option<u16>,
    /// From the start of the fetch to the response head.
    pub headers_after: Option<Duration>,
    /// Time spent translating (the chunks are translated as they arrive).
    pub parse: Duration,
}

/// The one fixed upstream (`--upstream`): fetches are serialised over one connection.
#[derive(Debug)]
pub struct Fetcher {
    client: Client,
    url: reqwest::Url,
    /// One fetch at a time: one connection to the legacy application. It guards the
    /// translator's buffers, which each fetch leaves to the next.
    one: tokio::sync::Mutex<Scratch>,
}

/// What stopped the body stream, when it was the wrapper that stopped it.
const STOP_NONE: u8 = 0;
const STOP_CAP: u8 = 1;
const STOP_DEADLINE: u8 = 2;

impl Client {
    /// `idle` is how many idle connections per host are kept; `allow`, when given, is checked
    /// again on every redirect (a probe target cannot redirect out of the allow-list).
    pub fn new(
        settings: &HttpSettings,
        idle: usize,
        allow: Option<AllowList>,
    ) -> Result<Client, ClientError> {
        let read = |what: &'static str, path: &std::path::PathBuf| {
            std::fs::read(path).map_err(|source| ClientError::File {
                what,
                path: path.clone(),
                source,
            })
        };
        // runtime::run installs it too; this covers a client built outside run (tests): reqwest
        // has no provider of its own and would panic.
        sidecar_kit::tls::install_default_provider();
        let mut b = reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(idle)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("xml-adapter/", env!("CARGO_PKG_VERSION")));
        b = match &settings.proxy {
            ProxySetting::Direct => b.no_proxy(),
            // reqwest reads HTTP_PROXY, HTTPS_PROXY, ALL_PROXY and NO_PROXY by itself.
            ProxySetting::Env => b,
            ProxySetting::Url { url, no_proxy } => {
                let proxy = reqwest::Proxy::all(url.clone())
                    .map_err(|source| ClientError::Tls {
                        what: "--proxy",
                        source,
                    })?
                    .no_proxy(no_proxy.as_deref().and_then(reqwest::NoProxy::from_string));
                b.proxy(proxy)
            }
        };
        if let Some(allow) = allow {
            b = b.redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 10 {
                    attempt.error("more than 10 redirects")
                } else if allow.allows(attempt.url()) {
                    attempt.follow()
                } else {
                    let to = attempt.url().to_string();
                    attempt.error(format!(
                        "a redirect to {to}, which the allow-list does not allow"
                    ))
                }
            }));
        }
        let tls = &settings.tls;
        if let Some(ca) = &tls.ca_file {
            let pem = read("--ca-file", ca)?;
            for cert in
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| ClientError::Tls {
                    what: "--ca-file",
                    source,
                })?
            {
                b = b.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
            let mut pem = read("--client-cert", cert)?;
            pem.extend_from_slice(b"\n");
            pem.extend(read("--client-key", key)?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|source| ClientError::Tls {
                what: "--client-cert/--client-key",
                source,
            })?;
            b = b.identity(id);
        }
        if tls.insecure_skip_verify {
            b = b.tls_danger_accept_invalid_certs(true);
        }
        let client = b.build().map_err(|source| ClientError::Tls {
            what: "HTTP client",
            source,
        })?;
        Ok(Client {
            client,
            headers: settings.headers.clone(),
            auth: settings.auth.clone(),
            method: settings.method.clone(),
            body: settings.body.clone(),
            max_body: settings.max_body_bytes,
            proxy: match &settings.proxy {
                ProxySetting::Url {
                    url,
                    no_proxy: None,
                } => Some(format!("through the proxy {url}")),
                ProxySetting::Url {
                    url,
                    no_proxy: Some(n),
                } => Some(format!("proxy {url}, except for {n}")),
                _ => None,
            },
        })
    }

    /// Fetches `url` and translates it by the deadline. `bytes` counts what was read, even when
    /// the fetch fails; `scratch` holds the translator's buffers before and after.
    #[allow(clippy::too_many_arguments)]
    pub async fn fetch(
        &self,
        url: &reqwest::Url,
        engine: &Engine,
        deadline: Instant,
        budget: Duration,
        bytes: &Arc<AtomicU64>,
        scratch: &mut Scratch,
        timing: &mut Timing,
    ) -> Result<Translation, ScrapeError> {
        let started = Instant::now();
        let timeout = ScrapeError::Timeout(budget);
        let mut req = self
            .client
            .request(self.method.clone(), url.clone())
            .headers(self.headers.clone());
        if let Some(body) = &self.body {
            req = req.body(body.clone());
        }
        req = match &self.auth {
            Auth::None => req,
            Auth::Basic {
                user,
                password_file,
            } => {
                let pw = std::fs::read_to_string(password_file).map_err(|e| {
                    ScrapeError::Credentials(format!("{}: {e}", password_file.display()))
                })?;
                req.basic_auth(user, Some(pw.trim_end_matches(['\n', '\r'])))
            }
            Auth::Bearer { token_file } => {
                let t = std::fs::read_to_string(token_file).map_err(|e| {
                    ScrapeError::Credentials(format!("{}: {e}", token_file.display()))
                })?;
                req.bearer_auth(t.trim())
            }
        };
        let url_text = url.to_string();
        let resp = match tokio::time::timeout_at(deadline, req.send()).await {
            Err(_) => return Err(timeout),
            Ok(Err(e)) => {
                let mut message = sidecar_kit::error_chain(&e);
                if let Some(p) = &self.proxy {
                    message.push_str(&format!(" ({p})"));
                }
                return Err(ScrapeError::Fetch {
                    url: url_text,
                    message,
                });
            }
            Ok(Ok(r)) => r,
        };
        timing.status = Some(resp.status().as_u16());
        timing.headers_after = Some(started.elapsed());
        if !resp.status().is_success() {
            return Err(ScrapeError::Status {
                url: url_text,
                status: resp.status().as_u16(),
            });
        }
        if resp.content_length().is_some_and(|l| l > self.max_body) {
            return Err(ScrapeError::BodyCap(self.max_body));
        }
        // Says the document's format when the mapping's `format` is `auto`.
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let stop = Arc::new(AtomicU8::new(STOP_NONE));
        let mut body = std::pin::pin!(guarded(
            resp.bytes_stream(),
            deadline,
            self.max_body,
            bytes.clone(),
            stop.clone(),
        ));
        let mut translator =
            Translator::for_content_type(engine, std::mem::take(scratch), content_type.as_deref());
        let result = loop {
            match body.next().await {
                None => {
                    let t = std::time::Instant::now();
                    let (result, kept) = translator.finish_keep();
                    timing.parse += t.elapsed();
                    *scratch = kept;
                    break result;
                }
                Some(Ok(chunk)) => {
                    let t = std::time::Instant::now();
                    let fed = translator.feed(&chunk);
                    timing.parse += t.elapsed();
                    if let Err(e) = fed {
                        *scratch = translator.into_scratch();
                        break Err(e);
                    }
                }
                Some(Err(source)) => {
                    let position = translator.position();
                    *scratch = translator.into_scratch();
                    break Err(DocumentError::Read { position, source });
                }
            }
        };
        match (result, stop.load(Ordering::Relaxed)) {
            (Ok(t), _) => Ok(t),
            (Err(_), STOP_CAP) => Err(ScrapeError::BodyCap(self.max_body)),
            (Err(_), STOP_DEADLINE) => Err(timeout),
            (Err(DocumentError::Read { source, .. }), _) => Err(ScrapeError::Fetch {
                url: url_text,
                message: format!("the body broke off: {source}"),
            }),
            (Err(e), _) => Err(ScrapeError::Document(e)),
        }
    }
}

impl Fetcher {
    pub fn new(config: &Config) -> Result<Fetcher, ClientError> {
        Ok(Fetcher {
            client: Client::new(&config.http, 1, None)?,
            url: config.upstream.clone(),
            one: tokio::sync::Mutex::new(Scratch::default()),
        })
    }

    /// Fetches and translates one document within `budget`. `bytes` counts what was read, even
    /// when the scrape fails.
    pub async fn scrape(
        &self,
        engine: Arc<Engine>,
        budget: Duration,
        bytes: Arc<AtomicU64>,
    ) -> Result<Translation, ScrapeError> {
        let deadline = Instant::now() + budget;
        let mut one = match tokio::time::timeout_at(deadline, self.one.lock()).await {
            Ok(g) => g,
            Err(_) => return Err(ScrapeError::Timeout(budget)),
        };
        let mut timing = Timing::default();
        self.client
            .fetch(
                &self.url,
                &engine,
                deadline,
                budget,
                &bytes,
                &mut one,
                &mut timing,
            )
            .await
    }
}

/// The body stream, counted, capped and bounded by the deadline; errors say which.
fn guarded(
    body: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    deadline: Instant,
    cap: u64,
    bytes: Arc<AtomicU64>,
    stop: Arc<AtomicU8>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let body = Box::pin(body);
    futures_util::stream::unfold((body, 0u64, false), move |(mut body, seen, done)| {
        let bytes = bytes.clone();
        let stop = stop.clone();
        async move {
            if done {
                return None;
            }
            let next = match tokio::time::timeout_at(deadline, body.next()).await {
                Err(_) => {
                    stop.store(STOP_DEADLINE, Ordering::Relaxed);
                    return Some((
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "scrape deadline reached",
                        )),
                        (body, seen, true),
                    ));
                }
                Ok(n) => n,
            };
            match next {
                None => None,
                Some(Err(e)) => Some((
                    Err(std::io::Error::other(sidecar_kit::error_chain(&e))),
                    (body, seen, true),
                )),
                Some(Ok(chunk)) => {
                    let seen = seen + chunk.len() as u64;
                    bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    if seen > cap {
                        stop.store(STOP_CAP, Ordering::Relaxed);
                        return Some((
                            Err(std::io::Error::other("body larger than --max-body-bytes")),
                            (body, seen, true),
                        ));
                    }
                    Some((Ok(chunk), (body, seen, false)))
                }
            }
        }
    })
}

/// The time a scrape may take when Prometheus says how long it will wait
/// (`X-Prometheus-Scrape-Timeout-Seconds`): `offset` before that, at least 50 ms, and never more
/// than `timeout`, which is also the answer when the header is missing or unreadable.
pub fn scrape_budget(
    headers: &reqwest::header::HeaderMap,
    offset: Duration,
    timeout: Duration,
) -> Duration {
    headers
        .get("x-prometheus-scrape-timeout-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(|s| {
            Duration::from_secs_f64(s.min(1e9))
                .saturating_sub(offset)
                .max(Duration::from_millis(50))
                .min(timeout)
        })
        .unwrap_or(timeout)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::scrape_budget;

    fn budget(header: Option<&str>) -> Duration {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(v) = header {
            headers.insert("x-prometheus-scrape-timeout-seconds", v.parse().unwrap());
        }
        scrape_budget(
            &headers,
            Duration::from_millis(500),
            Duration::from_secs(10),
        )
    }

    #[test]
    fn the_budget_follows_prometheus_within_its_bounds() {
        assert_eq!(budget(None), Duration::from_secs(10));
        assert_eq!(budget(Some("4")), Duration::from_millis(3500));
        assert_eq!(budget(Some(" 30 ")), Duration::from_secs(10));
        assert_eq!(budget(Some("0.1")), Duration::from_millis(50));
        assert_eq!(budget(Some("1e30")), Duration::from_secs(10));
        for bad in ["0", "-3", "NaN", "inf", "soon"] {
            assert_eq!(budget(Some(bad)), Duration::from_secs(10), "{bad}");
        }
    }
}
