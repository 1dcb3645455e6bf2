//! The HTTP client for OpenBao's (and Vault's) API, and what its failures mean to the agent.
//!
//! Every response body is read into zeroed-on-drop memory and parsed there. Failures are sorted
//! by what the agent should do about them: [`ErrorKind::is_transient`] ones (unreachable,
//! sealed, 5xx, rate limited) are retried with backoff while the last good files stay; the
//! others (denied, not found, refused input, an answer that makes no sense) are reported by
//! name and retried more slowly, since only an operator can fix them.

use std::path::Path;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::sensitive::{Secret, SecretBytes, parse_json};

/// The largest response the agent accepts (a PKI bundle with a long chain is a few KiB).
const MAX_BODY: usize = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No answer: connection refused, DNS, TLS handshake, timeout.
    Unreachable,
    /// 503 from a sealed server.
    Sealed,
    /// Any other 5xx (and 429, 472, 473: standby and performance-standby answers).
    Server,
    /// 401/403: the token or login was refused, or the policy does not allow the path.
    Denied,
    /// 404.
    NotFound,
    /// Another 4xx: the request was refused as it stands.
    Refused,
    /// A 2xx whose body is not what the API promises, or a secret the agent refuses (a
    /// certificate whose key does not match it).
    BadResponse,
    /// A credential file of the agent's own cannot be read or used.
    Local,
}

impl ErrorKind {
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Unreachable | Self::Sealed | Self::Server)
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Sealed => "sealed",
            Self::Server => "server_error",
            Self::Denied => "denied",
            Self::NotFound => "not_found",
            Self::Refused => "refused",
            Self::BadResponse => "bad_response",
            Self::Local => "local",
        }
    }
}

/// A failed request. The message quotes OpenBao's `errors`, never a request or response body.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{method} {path}: {message}")]
pub struct BaoError {
    pub kind: ErrorKind,
    pub method: Method,
    pub path: String,
    pub message: String,
}

/// Any failure of a refresh, with its class: a failed request, or a local file that cannot be
/// used. Its message names the secret, file or path at fault and never carries a value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: ErrorKind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn local(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Local, message)
    }

    /// The same failure, its message prefixed with what was being done.
    pub fn context(self, what: impl std::fmt::Display) -> Self {
        Self {
            kind: self.kind,
            message: format!("{what}: {}", self.message),
        }
    }
}

impl From<BaoError> for Failure {
    fn from(e: BaoError) -> Self {
        Self {
            kind: e.kind,
            message: e.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--addr {0:?}: {1}")]
    Addr(String, String),
    #[error("cannot read {what} {}: {source}", path.display())]
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

/// How to reach the server.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: reqwest::Url,
    pub ca_pem: Option<Vec<u8>>,
    pub namespace: Option<String>,
    pub timeout: Duration,
}

impl Endpoint {
    pub fn parse(
        addr: &str,
        ca_file: Option<&Path>,
        namespace: Option<String>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let url = reqwest::Url::parse(addr)
            .map_err(|e| ClientError::Addr(addr.to_owned(), e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::Addr(
                addr.to_owned(),
                "must be http:// or https://".into(),
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ClientError::Addr(
                addr.to_owned(),
                "must not carry credentials".into(),
            ));
        }
        let ca_pem = ca_file
            .map(|path| {
                std::fs::read(path).map_err(|source| ClientError::File {
                    what: "--ca-file",
                    path: path.to_owned(),
                    source,
                })
            })
            .transpose()?;
        Ok(Self {
            addr: url,
            ca_pem,
            namespace,
            timeout,
        })
    }
}

/// A client for one server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    /// A client; `identity` is a PEM client certificate and key, for cert auth's login.
    pub fn new(endpoint: &Endpoint, identity: Option<&[u8]>) -> Result<Self, ClientError> {
        // runtime::run installs it too; this covers a client built outside it (tests).
        sidecar_kit::tls::install_default_provider();
        let mut headers = HeaderMap::new();
        if let Some(ns) = &endpoint.namespace {
            let value = HeaderValue::from_str(ns).map_err(|e| {
                ClientError::Addr(endpoint.addr.to_string(), format!("--namespace: {e}"))
            })?;
            headers.insert(HeaderName::from_static("x-vault-namespace"), value);
        }
        // Tells the server this is an API client, so a standby forwards rather than redirects.
        headers.insert(
            HeaderName::from_static("x-vault-request"),
            HeaderValue::from_static("true"),
        );
        let mut builder = reqwest::Client::builder()
            .http1_only()
            .no_proxy()
            .pool_max_idle_per_host(1)
            .timeout(endpoint.timeout)
            .connect_timeout(endpoint.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(headers)
            .user_agent(concat!("secrets-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &endpoint.ca_pem {
            let certs =
                reqwest::Certificate::from_pem_bundle(pem).map_err(|source| ClientError::Tls {
                    what: "--ca-file",
                    source,
                })?;
            // The CA given is the one OpenBao's certificate comes from: trust it alone.
            builder = builder.tls_certs_only(certs);
        } else if endpoint.addr.scheme() == "http" {
            // No TLS at all: the system's roots need not be loaded (they cost memory).
            builder = builder.tls_certs_only([]);
        }
        if let Some(pem) = identity {
            let id = reqwest::Identity::from_pem(pem).map_err(|source| ClientError::Tls {
                what: "--client-cert/--client-key",
                source,
            })?;
            builder = builder.identity(id);
        }
        let http = builder.build().map_err(|source| ClientError::Tls {
            what: "HTTP client",
            source,
        })?;
        let base = endpoint.addr.as_str().trim_end_matches('/').to_owned();
        Ok(Self { http, base })
    }

    /// `GET /v1/{path}`.
    pub async fn get(&self, path: &str, token: Option<&Secret>) -> Result<Value, BaoError> {
        self.call(Method::GET, path, token, None).await
    }

    /// `POST /v1/{path}` with a JSON body (PUT and POST are the same to the API).
    pub async fn post(
        &self,
        path: &str,
        token: Option<&Secret>,
        body: &Value,
    ) -> Result<Value, BaoError> {
        self.call(Method::POST, path, token, Some(body)).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&Secret>,
        body: Option<&Value>,
    ) -> Result<Value, BaoError> {
        let url = format!("{}/v1/{}", self.base, path.trim_start_matches('/'));
        let fail = |kind, message: String| BaoError {
            kind,
            method: method.clone(),
            path: path.to_owned(),
            message,
        };
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(token.expose()).map_err(|_| {
                fail(
                    ErrorKind::Refused,
                    "the token holds characters a header cannot".into(),
                )
            })?;
            value.set_sensitive(true);
            request = request.header("x-vault-token", value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| fail(ErrorKind::Unreachable, describe(&e)))?;
        let status = response.status();
        let body = read_body(response)
            .await
            .map_err(|e| fail(ErrorKind::Unreachable, e))?;
        if status.is_success() {
            if body.is_empty() || status == StatusCode::NO_CONTENT {
                return Ok(Value::Null);
            }
            return parse_json(&body).map_err(|e| {
                fail(
                    ErrorKind::BadResponse,
                    format!("the answer is not JSON: {e}"),
                )
            });
        }
        let errors = error_messages(&body);
        Err(fail(
            classify(status, &errors),
            format!("{status}: {errors}"),
        ))
    }
}

async fn read_body(mut response: reqwest::Response) -> Result<SecretBytes, String> {
    let mut body = SecretBytes::default();
    while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("the answer is larger than {MAX_BODY} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// reqwest's message with its causes, without the URL (which names only the path anyway).
fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// OpenBao's `{"errors": [...]}`, joined; the status text otherwise.
fn error_messages(body: &[u8]) -> String {
    let parsed: Option<Vec<String>> = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("errors").cloned())
        .and_then(|e| serde_json::from_value(e).ok());
    match parsed {
        Some(errors) if !errors.is_empty() => errors.join("; "),
        Some(_) => "no error message".to_owned(),
        None => "no error message (the body is not OpenBao's error form)".to_owned(),
    }
}

fn classify(status: StatusCode, errors: &str) -> ErrorKind {
    match status.as_u16() {
        503 if errors.contains("sealed") => ErrorKind::Sealed,
        401 | 403 => ErrorKind::Denied,
        404 => ErrorKind::NotFound,
        // 429: a standby that does not serve reads; 472/473: performance standbys.
        429 | 472 | 473 => ErrorKind::Server,
        500..=599 => ErrorKind::Server,
        _ => ErrorKind::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let c = |s: u16, e: &str| classify(StatusCode::from_u16(s).unwrap(), e);
        assert_eq!(c(503, "Vault is sealed"), ErrorKind::Sealed);
        assert_eq!(c(503, "maintenance"), ErrorKind::Server);
        assert_eq!(c(500, ""), ErrorKind::Server);
        assert_eq!(c(429, ""), ErrorKind::Server);
        assert_eq!(c(403, "permission denied"), ErrorKind::Denied);
        assert_eq!(c(404, ""), ErrorKind::NotFound);
        assert_eq!(c(400, "invalid"), ErrorKind::Refused);
        assert!(ErrorKind::Sealed.is_transient());
        assert!(!ErrorKind::Denied.is_transient());
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_messages(br#"{"errors":["permission denied","x"]}"#),
            "permission denied; x"
        );
        assert!(error_messages(b"<html>").contains("not OpenBao's"));
    }

    #[test]
    fn addresses() {
        let t = Duration::from_secs(1);
        assert!(Endpoint::parse("https://bao:8200", None, None, t).is_ok());
        assert!(Endpoint::parse("ftp://bao", None, None, t).is_err());
        assert!(Endpoint::parse("https://u:p@bao", None, None, t).is_err());
        assert!(Endpoint::parse("bao:8200/x y", None, None, t).is_err());
    }
}
