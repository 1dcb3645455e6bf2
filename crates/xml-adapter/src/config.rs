//! Command line and the validated configuration built from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sidecar_kit::{KitArgs, SidecarInfo};

use crate::mapping::{Mapping, MappingError};

pub const INFO: SidecarInfo = SidecarInfo {
    name: "xml-adapter",
    env_prefix: "XML_ADAPTER",
    admin_port: 9902,
    version: env!("CARGO_PKG_VERSION"),
    description: "Serves a legacy application's XML status page as Prometheus metrics and JSON",
    worker_threads: 0,
};

#[derive(Parser, Debug)]
#[command(name = "xml-adapter", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub kit: KitArgs,

    #[command(subcommand)]
    pub command: Option<Command>,

    /// Where /metrics and /json are served.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:9108")]
    pub listen: SocketAddr,

    /// The legacy application's XML status page.
    #[arg(
        long,
        env = "UPSTREAM_URL",
        default_value = "http://127.0.0.1:8080/status.xml"
    )]
    pub upstream: String,

    /// Extra request header `Name: value` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,

    /// Basic auth user name (the password comes from --basic-auth-password-file).
    #[arg(long, env = "BASIC_AUTH_USER")]
    pub basic_auth_user: Option<String>,

    /// File holding the basic auth password (re-read on every fetch, so it can rotate).
    #[arg(long, env = "BASIC_AUTH_PASSWORD_FILE")]
    pub basic_auth_password_file: Option<PathBuf>,

    /// File holding a bearer token (re-read on every fetch, so it can rotate).
    #[arg(long, env = "BEARER_TOKEN_FILE")]
    pub bearer_token_file: Option<PathBuf>,

    /// PEM CA bundle to verify an https upstream (added to the system roots).
    #[arg(long, env = "CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// PEM client certificate chain and key for an upstream that wants mTLS.
    #[arg(long, env = "CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    #[arg(long, env = "CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,

    /// Accept any upstream certificate (testing only).
    #[arg(long, env = "INSECURE_SKIP_VERIFY")]
    pub insecure_skip_verify: bool,

    /// Upper bound of one fetch; Prometheus's X-Prometheus-Scrape-Timeout-Seconds (minus
    /// --timeout-offset) lowers it per scrape.
    #[arg(long, env = "TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Kept from Prometheus's scrape timeout so the adapter answers (with up 0) before
    /// Prometheus gives up.
    #[arg(long, env = "TIMEOUT_OFFSET", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub timeout_offset: Duration,

    /// Largest upstream body read; a larger one is refused (up 0) and counted.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 << 20)]
    pub max_body_bytes: u64,

    /// Fetch on this interval and serve the cached result (default: fetch on each scrape).
    #[arg(long, env = "POLL_INTERVAL", value_parser = humantime::parse_duration)]
    pub poll_interval: Option<Duration>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Translate a saved document offline: prints what /metrics would serve, and lint warnings.
    Check {
        /// The mapping.
        #[arg(long)]
        config: PathBuf,
        /// The XML document.
        #[arg(long)]
        input: PathBuf,
        #[arg(long, value_enum, default_value_t = CheckFormat::Text)]
        format: CheckFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CheckFormat {
    Text,
    Openmetrics,
    Json,
}

/// Everything the server needs, validated.
#[derive(Debug)]
pub struct Config {
    pub mapping_path: PathBuf,
    pub mapping: Mapping,
    pub listen: SocketAddr,
    pub upstream: reqwest::Url,
    pub headers: reqwest::header::HeaderMap,
    pub auth: Auth,
    pub tls: TlsOptions,
    pub timeout: Duration,
    pub timeout_offset: Duration,
    pub max_body_bytes: u64,
    pub poll_interval: Option<Duration>,
}

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

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--config: a mapping file is required (XML_ADAPTER_CONFIG)")]
    NoMapping,
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error("--upstream `{url}`: {message}")]
    Upstream { url: String, message: String },
    #[error("--header `{0}`: expected `Name: value`")]
    Header(String),
    #[error("{flag} {}: {source}", path.display())]
    File {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn readable(flag: &'static str, path: &PathBuf) -> Result<(), ConfigError> {
    std::fs::metadata(path)
        .and_then(|_| std::fs::read(path).map(|_| ()))
        .map_err(|source| ConfigError::File {
            flag,
            path: path.clone(),
            source,
        })
}

impl Config {
    pub fn from_cli(cli: &Cli) -> Result<Config, ConfigError> {
        let mapping_path = cli.kit.config.clone().ok_or(ConfigError::NoMapping)?;
        let mapping = Mapping::load(&mapping_path)?;
        let upstream = reqwest::Url::parse(&cli.upstream).map_err(|e| ConfigError::Upstream {
            url: cli.upstream.clone(),
            message: e.to_string(),
        })?;
        if !matches!(upstream.scheme(), "http" | "https") {
            return Err(ConfigError::Upstream {
                url: cli.upstream.clone(),
                message: "only http and https are supported".into(),
            });
        }
        let mut headers = reqwest::header::HeaderMap::new();
        for h in &cli.headers {
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| ConfigError::Header(h.clone()))?;
            let name = reqwest::header::HeaderName::from_bytes(k.trim().as_bytes())
                .map_err(|_| ConfigError::Header(h.clone()))?;
            let value = reqwest::header::HeaderValue::from_str(v.trim())
                .map_err(|_| ConfigError::Header(h.clone()))?;
            headers.append(name, value);
        }
        let auth = match (
            &cli.basic_auth_user,
            &cli.basic_auth_password_file,
            &cli.bearer_token_file,
        ) {
            (Some(_), _, Some(_)) | (None, Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "--basic-auth-* and --bearer-token-file are exclusive".into(),
                ));
            }
            (Some(user), Some(file), None) => {
                readable("--basic-auth-password-file", file)?;
                Auth::Basic {
                    user: user.clone(),
                    password_file: file.clone(),
                }
            }
            (Some(_), None, None) => {
                return Err(ConfigError::Invalid(
                    "--basic-auth-user needs --basic-auth-password-file".into(),
                ));
            }
            (None, Some(_), None) => {
                return Err(ConfigError::Invalid(
                    "--basic-auth-password-file needs --basic-auth-user".into(),
                ));
            }
            (None, None, Some(file)) => {
                readable("--bearer-token-file", file)?;
                Auth::Bearer {
                    token_file: file.clone(),
                }
            }
            (None, None, None) => Auth::None,
        };
        for (flag, p) in [
            ("--ca-file", &cli.ca_file),
            ("--client-cert", &cli.client_cert),
            ("--client-key", &cli.client_key),
        ] {
            if let Some(p) = p {
                readable(flag, p)?;
            }
        }
        if cli.timeout.is_zero() {
            return Err(ConfigError::Invalid("--timeout must be above 0".into()));
        }
        if cli.max_body_bytes == 0 {
            return Err(ConfigError::Invalid(
                "--max-body-bytes must be above 0".into(),
            ));
        }
        if cli.poll_interval.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::Invalid(
                "--poll-interval must be above 0".into(),
            ));
        }
        Ok(Config {
            mapping_path,
            mapping,
            listen: cli.listen,
            upstream,
            headers,
            auth,
            tls: TlsOptions {
                ca_file: cli.ca_file.clone(),
                client_cert: cli.client_cert.clone(),
                client_key: cli.client_key.clone(),
                insecure_skip_verify: cli.insecure_skip_verify,
            },
            timeout: cli.timeout,
            timeout_offset: cli.timeout_offset,
            max_body_bytes: cli.max_body_bytes,
            poll_interval: cli.poll_interval,
        })
    }
}
