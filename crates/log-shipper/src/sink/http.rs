//! What every HTTP sink shares: the client (mTLS through the kit, certificates reloaded when
//! their files change), gzip, a bearer token read from a file and read again when the file
//! changes, and the mapping of transport errors to retries. A sink kind over HTTP is an
//! [`HttpProtocol`]: how a batch becomes a request body, and what the response means.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderValue};
use sidecar_kit::reload::{CredentialReloader, TlsFiles};
use sidecar_kit::tls::{ExpectedIdentity, TrustBundle};
use sidecar_kit::watch::{WatchOptions, watch_files};
use tokio_util::sync::CancellationToken;

use crate::event::Event;
use crate::sink::retry::classify_status;
use crate::sink::{BoxFuture, Outcome, Sink};

/// A sink kind spoken over HTTP.
pub trait HttpProtocol: Send + Sync + std::fmt::Debug + 'static {
    /// The request's `Content-Type`.
    fn content_type(&self) -> &'static str;
    /// Appends the request body for `events`.
    fn encode(&self, events: &[&Event], body: &mut Vec<u8>);
    /// The `Authorization` value for the token of `token_file` (default: `Bearer <token>`).
    fn authorization(&self, token: &str) -> String {
        format!("Bearer {token}")
    }
    /// What the response means (default: by status, see [`classify_status`]). `bytes` is the
    /// body's size before compression, for [`Outcome::Delivered`].
    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        _events: &[&Event],
        bytes: u64,
    ) -> Outcome {
        classify_status(status, headers, body, bytes)
    }
}

/// TLS to the sink. Without it an `https` URL is verified against the system's roots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSpec {
    /// CA bundle the server's certificate must chain to (and, with mTLS, ours too).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key, for mTLS; reloaded when the files change.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the URL's host); a `spiffe://`
    /// ID is matched against URI SANs.
    pub server_name: Option<String>,
}

/// An HTTP sink's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSinkSpec {
    pub url: reqwest::Url,
    pub headers: HeaderMap,
    pub gzip: bool,
    pub token_file: Option<PathBuf>,
    pub tls: TlsSpec,
    pub timeout: Duration,
}

/// What building a sink needs from the process.
#[derive(Debug, Clone)]
pub struct SinkContext {
    pub registry: prometheus::Registry,
    /// Cancelled at process shutdown: stops the file watchers.
    pub shutdown: CancellationToken,
    /// Certificate reloaders by files, shared by sinks and kept across configuration reloads
    /// (the kit registers one set of TLS metrics per registry: the first one's are exported).
    pub tls: Arc<Mutex<HashMap<TlsKey, Arc<CredentialReloader>>>>,
}

/// Certificate, key and CA files.
pub type TlsKey = (PathBuf, PathBuf, PathBuf);

/// An HTTP sink: a protocol on the shared client.
#[derive(Debug)]
pub struct HttpSink<P> {
    protocol: P,
    spec: HttpSinkSpec,
    client: Arc<ArcSwap<reqwest::Client>>,
    token: Option<Arc<ArcSwap<String>>>,
}

impl<P: HttpProtocol> HttpSink<P> {
    /// Builds the client; an error names the setting at fault.
    pub fn new(protocol: P, spec: HttpSinkSpec, ctx: &SinkContext) -> Result<Self, String> {
        sidecar_kit::tls::install_default_provider();
        let host = spec.url.host_str().unwrap_or_default().to_owned();
        let expected = ExpectedIdentity::parse(spec.tls.server_name.as_deref().unwrap_or(&host));
        let client = match (&spec.tls.cert_file, &spec.tls.key_file, &spec.tls.ca_file) {
            (Some(cert), Some(key), Some(ca)) => {
                let reloader = reloader(ctx, cert, key, ca)?;
                let config = client_tls(Some(&reloader), None, &expected)?;
                let client = Arc::new(ArcSwap::from_pointee(build_client(&spec, Some(config))?));
                let mut updates = reloader.subscribe();
                let (swap, spec2, expected2, stop) = (
                    client.clone(),
                    spec.clone(),
                    expected.clone(),
                    ctx.shutdown.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            changed = updates.changed() => if changed.is_err() { return },
                            () = stop.cancelled() => return,
                        }
                        let rebuilt = client_tls(Some(&reloader), None, &expected2)
                            .and_then(|c| build_client(&spec2, Some(c)));
                        match rebuilt {
                            Ok(c) => swap.store(Arc::new(c)),
                            Err(e) => {
                                tracing::error!(error = %e, "cannot rebuild the sink's TLS client; keeping the old one")
                            }
                        }
                    }
                });
                client
            }
            (Some(_), Some(_), None) => {
                return Err("tls.ca_file: mTLS needs the CA bundle too".into());
            }
            (None, None, Some(ca)) => {
                let bundle = TrustBundle::load(ca).map_err(|e| format!("tls.ca_file: {e}"))?;
                let config = client_tls(None, Some(&bundle), &expected)?;
                Arc::new(ArcSwap::from_pointee(build_client(&spec, Some(config))?))
            }
            (None, None, None) => Arc::new(ArcSwap::from_pointee(build_client(&spec, None)?)),
            _ => return Err("tls.cert_file and tls.key_file: give both or neither".into()),
        };
        let token = match &spec.token_file {
            Some(path) => Some(token_watch(path.clone(), ctx.shutdown.clone())?),
            None => None,
        };
        Ok(Self {
            protocol,
            spec,
            client,
            token,
        })
    }

    /// The protocol.
    pub fn protocol(&self) -> &P {
        &self.protocol
    }

    /// The configured URL.
    pub fn url(&self) -> &reqwest::Url {
        &self.spec.url
    }

    /// Whether request bodies are gzipped.
    pub fn gzip(&self) -> bool {
        self.spec.gzip
    }

    /// Encodes `events`, POSTs them to the sink's URL and classifies the answer.
    pub async fn send_events(&self, events: &[&Event]) -> Outcome {
        let mut body = Vec::with_capacity(events.iter().map(|e| e.size_hint()).sum());
        self.protocol.encode(events, &mut body);
        let bytes = body.len() as u64;
        match self
            .post(
                &self.spec.url,
                self.protocol.content_type(),
                body,
                self.spec.gzip,
            )
            .await
        {
            Ok(r) => self
                .protocol
                .classify(r.status, &r.headers, &r.body, events, bytes),
            Err(outcome) => outcome,
        }
    }

    /// POSTs `body` to `url` on the shared client, with the sink's headers and token (and gzip
    /// when `gzip`), and reads the whole answer. A transport error is the [`Outcome`] to report.
    /// For protocols that need more than one request per batch (Splunk's acknowledgements).
    pub async fn post(
        &self,
        url: &reqwest::Url,
        content_type: &str,
        mut body: Vec<u8>,
        gzip: bool,
    ) -> Result<Response, Outcome> {
        let client = self.client.load_full();
        let mut request = client
            .post(url.clone())
            .headers(self.spec.headers.clone())
            .header(CONTENT_TYPE, content_type);
        if gzip {
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            // Writing into a Vec cannot fail.
            let _ = gz.write_all(&body);
            body = gz.finish().unwrap_or_default();
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        if let Some(token) = &self.token
            && let Ok(value) = HeaderValue::from_str(&self.protocol.authorization(&token.load()))
        {
            request = request.header(AUTHORIZATION, value);
        }
        match request.body(body).send().await {
            Ok(response) => {
                let status = response.status();
                let headers = response.headers().clone();
                match response.bytes().await {
                    Ok(body) => Ok(Response {
                        status,
                        headers,
                        body,
                    }),
                    Err(e) => Err(transport_error(&e)),
                }
            }
            Err(e) => Err(transport_error(&e)),
        }
    }
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl<P: HttpProtocol> Sink for HttpSink<P> {
    fn send<'a>(&'a self, events: &'a [&'a Event]) -> BoxFuture<'a, Outcome> {
        Box::pin(self.send_events(events))
    }
}

fn transport_error(e: &reqwest::Error) -> Outcome {
    let status = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "io"
    };
    let mut reason = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = source {
        if !reason.is_empty() {
            reason.push_str(": ");
        }
        reason.push_str(&err.to_string());
        source = err.source();
    }
    Outcome::Retry {
        status: status.into(),
        reason,
        after: None,
    }
}

pub(crate) fn reloader(
    ctx: &SinkContext,
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> Result<Arc<CredentialReloader>, String> {
    let key3 = (cert.to_owned(), key.to_owned(), ca.to_owned());
    let mut cache = ctx.tls.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = cache.get(&key3) {
        return Ok(r.clone());
    }
    let files = TlsFiles {
        cert: cert.to_owned(),
        key: key.to_owned(),
        ca: ca.to_owned(),
    };
    let private = prometheus::Registry::new();
    let registry = if cache.is_empty() {
        &ctx.registry
    } else {
        &private
    };
    let r = CredentialReloader::load(files, registry).map_err(|e| format!("tls: {e}"))?;
    r.spawn_watcher(WatchOptions::default(), ctx.shutdown.clone());
    cache.insert(key3, r.clone());
    Ok(r)
}

pub(crate) fn client_tls(
    reloader: Option<&CredentialReloader>,
    bundle: Option<&TrustBundle>,
    expected: &ExpectedIdentity,
) -> Result<rustls::ClientConfig, String> {
    let alpn: &[&[u8]] = &[b"http/1.1"];
    let result = match (reloader, bundle) {
        (Some(r), _) => {
            let c = r.current();
            sidecar_kit::tls::client_config(Some(&c.identity), &c.bundle, expected.clone(), alpn)
        }
        (None, Some(b)) => sidecar_kit::tls::client_config(None, b, expected.clone(), alpn),
        (None, None) => return Err("tls: nothing to build a client from".into()),
    };
    result.map_err(|e| format!("tls: {e}"))
}

fn build_client(
    spec: &HttpSinkSpec,
    tls: Option<rustls::ClientConfig>,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(spec.timeout)
        .connect_timeout(spec.timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(concat!("log-shipper/", env!("CARGO_PKG_VERSION")));
    if let Some(config) = tls {
        builder = builder.tls_backend_preconfigured(config);
    }
    builder.build().map_err(|e| format!("HTTP client: {e}"))
}

/// The token in `path`, trimmed, and kept current: a change of the file (a Kubernetes Secret's
/// rotation included) is read again; an unreadable or empty new file keeps the old token.
fn token_watch(path: PathBuf, stop: CancellationToken) -> Result<Arc<ArcSwap<String>>, String> {
    let read = |p: &PathBuf| -> Result<String, String> {
        let text =
            std::fs::read_to_string(p).map_err(|e| format!("token_file {}: {e}", p.display()))?;
        let token = text.trim().to_owned();
        if token.is_empty() {
            return Err(format!("token_file {}: empty", p.display()));
        }
        Ok(token)
    };
    let token = Arc::new(ArcSwap::from_pointee(read(&path)?));
    let mut changes = watch_files(
        vec![path.clone()],
        WatchOptions {
            poll_interval: Duration::from_secs(5),
            ..WatchOptions::default()
        },
        stop,
    );
    let swap = token.clone();
    tokio::spawn(async move {
        while changes.changed().await {
            match read(&path) {
                Ok(t) => {
                    tracing::info!(file = %path.display(), "bearer token reloaded");
                    swap.store(Arc::new(t));
                }
                Err(e) => tracing::error!(error = %e, "new token refused; keeping the old one"),
            }
        }
    });
    Ok(token)
}
