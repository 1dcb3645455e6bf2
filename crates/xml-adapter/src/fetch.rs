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

use crate::config::{Auth, Config};
use crate::engine::{DocumentError, Engine, Scratch, Translation, Translator};

/// Why a scrape served no translated samples; the `kind` label of the error counter.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("fetching {url} failed: {message}")]
    Fetch { url: String, message: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("no complete answer from the upstream within {0:?}")]
    Timeout(Duration),
    #[error("the upstream body exceeds --max-body-bytes ({0} bytes)")]
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

#[derive(Debug)]
pub struct Fetcher {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: reqwest::header::HeaderMap,
    auth: Auth,
    max_body: u64,
    /// One fetch at a time: one connection to the legacy application. It guards the
    /// translator's buffers, which each fetch leaves to the next.
    one: tokio::sync::Mutex<Scratch>,
}

/// What stopped the body stream, when it was the wrapper that stopped it.
const STOP_NONE: u8 = 0;
const STOP_CAP: u8 = 1;
const STOP_DEADLINE: u8 = 2;

impl Fetcher {
    pub fn new(config: &Config) -> Result<Fetcher, ClientError> {
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
            .pool_max_idle_per_host(1)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .no_proxy()
            .user_agent(concat!("xml-adapter/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.tls.ca_file {
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
        if let (Some(cert), Some(key)) = (&config.tls.client_cert, &config.tls.client_key) {
            let mut pem = read("--client-cert", cert)?;
            pem.extend_from_slice(b"\n");
            pem.extend(read("--client-key", key)?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|source| ClientError::Tls {
                what: "--client-cert/--client-key",
                source,
            })?;
            b = b.identity(id);
        }
        if config.tls.insecure_skip_verify {
            b = b.tls_danger_accept_invalid_certs(true);
        }
        let client = b.build().map_err(|source| ClientError::Tls {
            what: "HTTP client",
            source,
        })?;
        Ok(Fetcher {
            client,
            url: config.upstream.clone(),
            headers: config.headers.clone(),
            auth: config.auth.clone(),
            max_body: config.max_body_bytes,
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
        let timeout = ScrapeError::Timeout(budget);
        let mut one = match tokio::time::timeout_at(deadline, self.one.lock()).await {
            Ok(g) => g,
            Err(_) => return Err(timeout),
        };
        let mut req = self
            .client
            .get(self.url.clone())
            .headers(self.headers.clone());
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
        let url = self.url.to_string();
        let resp = match tokio::time::timeout_at(deadline, req.send()).await {
            Err(_) => return Err(timeout),
            Ok(Err(e)) => {
                return Err(ScrapeError::Fetch {
                    url,
                    message: sidecar_kit::error_chain(&e),
                });
            }
            Ok(Ok(r)) => r,
        };
        if !resp.status().is_success() {
            return Err(ScrapeError::Status {
                url,
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
        let mut translator = Translator::for_content_type(
            &engine,
            std::mem::take(&mut *one),
            content_type.as_deref(),
        );
        let result = loop {
            match body.next().await {
                None => {
                    let (result, scratch) = translator.finish_keep();
                    *one = scratch;
                    break result;
                }
                Some(Ok(chunk)) => {
                    if let Err(e) = translator.feed(&chunk) {
                        *one = translator.into_scratch();
                        break Err(e);
                    }
                }
                Some(Err(source)) => {
                    let position = translator.position();
                    *one = translator.into_scratch();
                    break Err(DocumentError::Read { position, source });
                }
            }
        };
        match (result, stop.load(Ordering::Relaxed)) {
            (Ok(t), _) => Ok(t),
            (Err(_), STOP_CAP) => Err(ScrapeError::BodyCap(self.max_body)),
            (Err(_), STOP_DEADLINE) => Err(timeout),
            (Err(DocumentError::Read { source, .. }), _) => Err(ScrapeError::Fetch {
                url,
                message: format!("the body broke off: {source}"),
            }),
            (Err(e), _) => Err(ScrapeError::Document(e)),
        }
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
