//! How the upstream is asked: headers, credentials, TLS, method and body, proxy, timeout and
//! body cap. The same settings come from the flags (the fixed `--upstream`) or from a probe
//! module in the probe file; [`HttpSpec::build`] validates both the same way, and its errors
//! name the flag or the file's field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use sidecar_kit::config::ConfigError;

#[derive(Debug, Clone)]
pub enum Auth {
    None,
    Basic {
        user: String,
        password_file: PathBuf,
    },
    Bearer {
        token_file: PathBuf,
    },
}

#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub insecure_skip_verify: bool,
}

/// Which proxy the upstream fetch goes through.
#[derive(Debug, Clone, Default)]
pub enum ProxySetting {
    /// Straight to the upstream, whatever the environment says (the default).
    #[default]
    Direct,
    /// `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` from the environment.
    Env,
    /// This proxy, except for the hosts of `no_proxy` (`NO_PROXY` syntax).
    Url {
        url: reqwest::Url,
        no_proxy: Option<String>,
    },
}

/// The validated settings of one kind of upstream request.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub headers: HeaderMap,
    pub auth: Auth,
    pub tls: TlsOptions,
    pub timeout: Duration,
    pub max_body_bytes: u64,
    pub method: reqwest::Method,
    /// Sent with every request (read once, at start).
    pub body: Option<Bytes>,
    pub proxy: ProxySetting,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthSpec {
    pub user: String,
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// The request settings as written (a probe module's fields; the flags fill the same struct).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuthSpec>,
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: TlsSpec,
    /// `10s`, `1500ms`...
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// `GET` (default), `POST`, `PUT`...
    #[serde(default)]
    pub method: Option<String>,
    /// The request body, inline...
    #[serde(default)]
    pub body: Option<String>,
    /// ...or from a file, read at start.
    #[serde(default)]
    pub body_file: Option<PathBuf>,
    /// The body's `Content-Type`.
    #[serde(default)]
    pub content_type: Option<String>,
    /// `http://host:port` of an HTTP proxy (CONNECT for https upstreams).
    #[serde(default)]
    pub proxy: Option<String>,
    /// Hosts reached without the proxy, `NO_PROXY` syntax.
    #[serde(default)]
    pub no_proxy: Option<String>,
    /// Take the proxy from `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY`.
    #[serde(default)]
    pub proxy_from_env: bool,
}

/// How errors name a setting: after the flag, or after the field of a module in a file.
#[derive(Debug, Clone, Copy)]
pub enum Names<'a> {
    Flags,
    Module { origin: &'a str, module: &'a str },
}

impl Names<'_> {
    /// `key` is the flag's name without `--`, with `_` for `-`.
    pub fn name(&self, key: &str) -> String {
        match self {
            Names::Flags => format!("--{}", key.replace('_', "-")),
            Names::Module { origin, module } => {
                let field = match key {
                    "header" => "headers".to_string(),
                    "basic_auth_user" | "basic_auth_password_file" => {
                        format!("basic_auth.{}", key.trim_start_matches("basic_auth_"))
                    }
                    "ca_file" | "client_cert" | "client_key" => format!("tls.{key}"),
                    k => k.to_string(),
                };
                format!("{origin}: modules.{module}.http.{field}")
            }
        }
    }
}

/// A relative path in a file is relative to the file's directory.
pub fn resolve(base: Option<&Path>, p: &Path) -> PathBuf {
    match base {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_owned(),
    }
}

pub fn parse_duration(field: &str, text: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| ConfigError::field(field, e))?;
    if d.is_zero() {
        return Err(ConfigError::field(field, "must be above 0"));
    }
    Ok(d)
}

impl HttpSpec {
    /// Validates the settings; `base` resolves relative file paths (the probe file's directory),
    /// `default_timeout` and `default_max_body` apply when the spec has none.
    pub fn build(
        &self,
        names: Names<'_>,
        base: Option<&Path>,
        default_timeout: Duration,
        default_max_body: u64,
    ) -> Result<HttpSettings, ConfigError> {
        let n = |key: &str| names.name(key);
        let file = |p: &PathBuf| resolve(base, p);
        let readable = |key: &str, p: &Path| sidecar_kit::config::require_readable(&n(key), p);

        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            let bad =
                || ConfigError::field(format!("{} `{k}: {v}`", n("header")), "not a valid header");
            let name = HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| bad())?;
            let value = HeaderValue::from_str(v.trim()).map_err(|_| bad())?;
            headers.append(name, value);
        }
        let auth = match (&self.basic_auth, &self.bearer_token_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Value(format!(
                    "{} and {} are exclusive",
                    n("basic_auth_user"),
                    n("bearer_token_file")
                )));
            }
            (Some(b), None) => {
                let password_file = file(&b.password_file);
                readable("basic_auth_password_file", &password_file)?;
                Auth::Basic {
                    user: b.user.clone(),
                    password_file,
                }
            }
            (None, Some(t)) => {
                let token_file = file(t);
                readable("bearer_token_file", &token_file)?;
                Auth::Bearer { token_file }
            }
            (None, None) => Auth::None,
        };
        let tls = TlsOptions {
            ca_file: self.tls.ca_file.as_ref().map(file),
            client_cert: self.tls.client_cert.as_ref().map(file),
            client_key: self.tls.client_key.as_ref().map(file),
            insecure_skip_verify: self.tls.insecure_skip_verify,
        };
        for (key, p) in [
            ("ca_file", &tls.ca_file),
            ("client_cert", &tls.client_cert),
            ("client_key", &tls.client_key),
        ] {
            if let Some(p) = p {
                readable(key, p)?;
            }
        }
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            return Err(ConfigError::Value(format!(
                "{} and {} go together",
                n("client_cert"),
                n("client_key")
            )));
        }
        let timeout = match &self.timeout {
            Some(t) => parse_duration(&n("timeout"), t)?,
            None => default_timeout,
        };
        let max_body_bytes = self.max_body_bytes.unwrap_or(default_max_body);
        if max_body_bytes == 0 {
            return Err(ConfigError::field(n("max_body_bytes"), "must be above 0"));
        }

        let method = match &self.method {
            None => reqwest::Method::GET,
            Some(m) => reqwest::Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes())
                .map_err(|_| ConfigError::field(n("method"), format!("`{m}` is not a method")))?,
        };
        let body = match (&self.body, &self.body_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Value(format!(
                    "{} and {} are exclusive",
                    n("body"),
                    n("body_file")
                )));
            }
            (Some(b), None) => Some(Bytes::from(b.clone().into_bytes())),
            (None, Some(p)) => {
                let p = file(p);
                let bytes = std::fs::read(&p).map_err(|source| ConfigError::File {
                    field: n("body_file"),
                    path: p.clone(),
                    source,
                })?;
                Some(Bytes::from(bytes))
            }
            (None, None) => None,
        };
        if body.is_some() && matches!(method, reqwest::Method::GET | reqwest::Method::HEAD) {
            return Err(ConfigError::field(
                n("method"),
                format!(
                    "a request body needs a method that takes one (POST, PUT...), not {method}"
                ),
            ));
        }
        if let Some(ct) = &self.content_type {
            let v = HeaderValue::from_str(ct.trim()).map_err(|_| {
                ConfigError::field(n("content_type"), format!("`{ct}` is not a header value"))
            })?;
            headers.insert(reqwest::header::CONTENT_TYPE, v);
        }

        let proxy = match (&self.proxy, self.proxy_from_env) {
            (Some(_), true) => {
                return Err(ConfigError::Value(format!(
                    "{} and {} are exclusive",
                    n("proxy"),
                    n("proxy_from_env")
                )));
            }
            (Some(p), false) => ProxySetting::Url {
                url: proxy_url(&n("proxy"), p)?,
                no_proxy: self.no_proxy.clone(),
            },
            (None, true) => ProxySetting::Env,
            (None, false) => ProxySetting::Direct,
        };
        if self.no_proxy.is_some() && !matches!(proxy, ProxySetting::Url { .. }) {
            return Err(ConfigError::field(
                n("no_proxy"),
                format!(
                    "needs {} (with {} the environment's NO_PROXY applies)",
                    n("proxy"),
                    n("proxy_from_env")
                ),
            ));
        }
        Ok(HttpSettings {
            headers,
            auth,
            tls,
            timeout,
            max_body_bytes,
            method,
            body,
            proxy,
        })
    }
}

fn proxy_url(field: &str, text: &str) -> Result<reqwest::Url, ConfigError> {
    let bad = |m: &dyn std::fmt::Display| ConfigError::field(format!("{field} `{text}`"), m);
    let url = reqwest::Url::parse(text.trim()).map_err(|e| bad(&e))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(&"an HTTP proxy is `http://host:port` (or https)"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Secrets come from files, never from flags or a file's plain text; not echoed either.
        return Err(ConfigError::field(
            field,
            "credentials in the proxy URL are refused",
        ));
    }
    if url.host_str().is_none() {
        return Err(bad(&"no host"));
    }
    Ok(url)
}

/// Splits `Name: value` (the `--header` flag's form).
pub fn split_header(h: &str) -> Result<(String, String), ConfigError> {
    let bad = || ConfigError::field(format!("--header `{h}`"), "expected `Name: value`");
    let (k, v) = h.split_once(':').ok_or_else(bad)?;
    HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| bad())?;
    HeaderValue::from_str(v.trim()).map_err(|_| bad())?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(yaml: &str) -> Result<HttpSettings, String> {
        let spec: HttpSpec =
            sidecar_kit::config::parse_yaml(yaml, "p.yaml").map_err(|e| e.to_string())?;
        spec.build(
            Names::Module {
                origin: "p.yaml",
                module: "m",
            },
            None,
            Duration::from_secs(10),
            1 << 20,
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn module_settings_and_their_errors() {
        let s = build("method: post\nbody: '{\"a\":1}'\ncontent_type: application/json\ntimeout: 2s\nproxy: http://127.0.0.1:3128\nno_proxy: localhost\n").unwrap();
        assert_eq!(s.method, reqwest::Method::POST);
        assert_eq!(s.body.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(s.headers["content-type"], "application/json");
        assert_eq!(s.timeout, Duration::from_secs(2));
        assert!(matches!(s.proxy, ProxySetting::Url { .. }));
        assert_eq!(
            build("body: x\n").unwrap_err(),
            "p.yaml: modules.m.http.method: a request body needs a method that takes one (POST, PUT...), not GET"
        );
        assert_eq!(
            build("proxy: http://u:p@h:1\n").unwrap_err(),
            "p.yaml: modules.m.http.proxy: credentials in the proxy URL are refused"
        );
        assert_eq!(
            build("timeout: 0s\n").unwrap_err(),
            "p.yaml: modules.m.http.timeout: must be above 0"
        );
        assert!(
            build("no_proxy: x\n")
                .unwrap_err()
                .contains("modules.m.http.no_proxy: needs")
        );
        assert!(
            build("tls: {ca_file: /nonexistent}\n")
                .unwrap_err()
                .starts_with("p.yaml: modules.m.http.tls.ca_file /nonexistent")
        );
        assert!(build("methd: GET\n").unwrap_err().contains("methd"));
    }

    #[test]
    fn flags_are_named_as_flags() {
        assert_eq!(Names::Flags.name("body_file"), "--body-file");
        assert_eq!(Names::Flags.name("proxy_from_env"), "--proxy-from-env");
        assert_eq!(split_header("X-A: b").unwrap(), ("X-A".into(), "b".into()));
        assert!(split_header("nocolon").is_err());
    }
}
