//! Command line and the validated configuration built from it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sidecar_kit::cli::ConfigFile;
use sidecar_kit::config::ConfigError;
use sidecar_kit::{KitArgs, SidecarInfo};

pub use crate::http::{Auth, TlsOptions};
use crate::http::{BasicAuthSpec, HttpSettings, HttpSpec, Names, TlsSpec, split_header};
use crate::mapping::Mapping;
use crate::probe::{ProbeConfig, ProbeSource};

pub const INFO: SidecarInfo = SidecarInfo {
    name: "xml-adapter",
    env_prefix: "XML_ADAPTER",
    admin_port: 9902,
    version: env!("CARGO_PKG_VERSION"),
    description: "Serves a legacy application's XML status page as Prometheus metrics and JSON",
    worker_threads: 0,
};

/// The adapter cannot run without its mapping, the `--config` file (`check` has its own).
pub const CONFIG_FILE: ConfigFile = ConfigFile::Required("the mapping");

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

    /// The request method (a status endpoint that wants a POST).
    #[arg(long, env = "METHOD", default_value = "GET")]
    pub method: String,

    /// The request body, inline (needs --method POST or another method that takes one).
    #[arg(long, env = "BODY", conflicts_with = "body_file")]
    pub body: Option<String>,

    /// The request body, from a file read at start.
    #[arg(long, env = "BODY_FILE")]
    pub body_file: Option<PathBuf>,

    /// The request's Content-Type (for the body).
    #[arg(long, env = "CONTENT_TYPE")]
    pub content_type: Option<String>,

    /// Fetch the upstream through this HTTP proxy (`http://host:port`; CONNECT for https).
    #[arg(long, env = "PROXY", conflicts_with = "proxy_from_env")]
    pub proxy: Option<String>,

    /// Hosts reached without --proxy (NO_PROXY syntax: `localhost,.internal,10.0.0.0/8`).
    #[arg(long = "no-proxy", env = "NO_PROXY_HOSTS", requires = "proxy")]
    pub no_proxy: Option<String>,

    /// Take the proxy from HTTP_PROXY/HTTPS_PROXY/ALL_PROXY and NO_PROXY (ignored otherwise).
    #[arg(long, env = "PROXY_FROM_ENV")]
    pub proxy_from_env: bool,

    /// Serve /probe?module=NAME&target=URL (needs an allow-list of targets).
    #[arg(long, env = "PROBE")]
    pub probe: bool,

    /// YAML file of probe modules and allowed targets (implies --probe).
    #[arg(long, env = "PROBE_CONFIG")]
    pub probe_config: Option<PathBuf>,

    /// A target /probe may fetch: a host (`host`, `host:port`) or a URL prefix
    /// (`http://host:port/path/`); repeatable.
    #[arg(long = "probe-allow", env = "PROBE_ALLOW", value_delimiter = ',')]
    pub probe_allow: Vec<String>,

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
    /// How the upstream is asked (also the probe's `default` module).
    pub http: HttpSettings,
    pub timeout_offset: Duration,
    pub poll_interval: Option<Duration>,
    /// `/probe`'s modules and allow-list, when probing is on.
    pub probe: Option<ProbeConfig>,
}

impl Config {
    pub fn from_cli(cli: &Cli) -> Result<Config, ConfigError> {
        let mapping_path = cli.kit.required_config("a mapping file")?.to_owned();
        let mapping = Mapping::load(&mapping_path)?;
        let upstream_err = |message: &dyn std::fmt::Display| {
            ConfigError::field(format!("--upstream `{}`", cli.upstream), message)
        };
        let upstream = reqwest::Url::parse(&cli.upstream).map_err(|e| upstream_err(&e))?;
        if !matches!(upstream.scheme(), "http" | "https") {
            return Err(upstream_err(&"only http and https are supported"));
        }
        let headers = cli
            .headers
            .iter()
            .map(|h| split_header(h))
            .collect::<Result<Vec<_>, _>>()?;
        let basic_auth = match (&cli.basic_auth_user, &cli.basic_auth_password_file) {
            (Some(user), Some(file)) => Some(BasicAuthSpec {
                user: user.clone(),
                password_file: file.clone(),
            }),
            (Some(_), None) => {
                return Err(ConfigError::Value(
                    "--basic-auth-user needs --basic-auth-password-file".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::Value(
                    "--basic-auth-password-file needs --basic-auth-user".into(),
                ));
            }
            (None, None) => None,
        };
        if basic_auth.is_some() && cli.bearer_token_file.is_some() {
            return Err(ConfigError::Value(
                "--basic-auth-* and --bearer-token-file are exclusive".into(),
            ));
        }
        if cli.timeout.is_zero() {
            return Err(ConfigError::Value("--timeout must be above 0".into()));
        }
        let spec = HttpSpec {
            headers: Default::default(),
            basic_auth,
            bearer_token_file: cli.bearer_token_file.clone(),
            tls: TlsSpec {
                ca_file: cli.ca_file.clone(),
                client_cert: cli.client_cert.clone(),
                client_key: cli.client_key.clone(),
                insecure_skip_verify: cli.insecure_skip_verify,
            },
            timeout: None,
            max_body_bytes: Some(cli.max_body_bytes),
            method: Some(cli.method.clone()),
            body: cli.body.clone(),
            body_file: cli.body_file.clone(),
            content_type: cli.content_type.clone(),
            proxy: cli.proxy.clone(),
            no_proxy: cli.no_proxy.clone(),
            proxy_from_env: cli.proxy_from_env,
        };
        let mut http = spec.build(Names::Flags, None, cli.timeout, cli.max_body_bytes)?;
        for (k, v) in headers {
            // Both were checked by split_header.
            if let (Ok(k), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                reqwest::header::HeaderValue::from_str(&v),
            ) {
                http.headers.append(k, v);
            }
        }
        if cli.poll_interval.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::Value("--poll-interval must be above 0".into()));
        }
        let probe = if cli.probe || cli.probe_config.is_some() {
            Some(ProbeConfig::load(ProbeSource {
                file: cli.probe_config.clone(),
                flag_allow: cli.probe_allow.clone(),
                default_timeout: cli.timeout,
                default_max_body: cli.max_body_bytes,
            })?)
        } else if !cli.probe_allow.is_empty() {
            return Err(ConfigError::Value(
                "--probe-allow needs --probe or --probe-config".into(),
            ));
        } else {
            None
        };
        Ok(Config {
            mapping_path,
            mapping,
            listen: cli.listen,
            upstream,
            http,
            timeout_offset: cli.timeout_offset,
            poll_interval: cli.poll_interval,
            probe,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        let all = std::iter::once("xml-adapter").chain(args.iter().copied());
        sidecar_kit::cli::try_parse_with(&INFO, CONFIG_FILE, all).map_err(|e| e.to_string())
    }

    #[test]
    fn the_mapping_is_required_except_by_check() {
        let err = parse(&[]).unwrap_err();
        assert!(err.contains("--config <FILE>"), "{err}");
        let cli = parse(&["check", "--config", "m.yaml", "--input", "d.xml"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Check { .. })));
        assert_eq!(cli.kit.config, None);
        // --help says what the adapter then enforces: the mapping is required.
        let help = sidecar_kit::cli::command_with::<Cli>(&INFO, CONFIG_FILE)
            .render_long_help()
            .to_string();
        assert!(
            help.contains("The YAML file with the mapping (required)."),
            "{help}"
        );
        assert!(!help.contains("Optional YAML"), "{help}");
    }

    #[test]
    fn bad_settings_name_the_flag_or_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mapping = dir.path().join("m.yaml");
        std::fs::write(&mapping, "rules:\n  - {name: a, type: gauge, path: /a}\n").unwrap();
        let m = mapping.to_str().unwrap();
        let from = |extra: &[&str]| {
            let mut args = vec!["--config", m];
            args.extend_from_slice(extra);
            Config::from_cli(&parse(&args).unwrap())
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        from(&[]).unwrap();
        assert_eq!(
            from(&["--upstream", "ftp://h/x"]).unwrap_err(),
            "--upstream `ftp://h/x`: only http and https are supported"
        );
        assert_eq!(
            from(&["--header", "nocolon"]).unwrap_err(),
            "--header `nocolon`: expected `Name: value`"
        );
        let err = from(&["--bearer-token-file", "/nonexistent/t"]).unwrap_err();
        assert!(
            err.starts_with("--bearer-token-file /nonexistent/t: "),
            "{err}"
        );
        assert_eq!(
            from(&["--timeout", "0s"]).unwrap_err(),
            "--timeout must be above 0"
        );
        std::fs::write(&mapping, "rules: []\n").unwrap();
        assert_eq!(
            from(&[]).unwrap_err(),
            format!("mapping {m}: line 1 column 8: field `rules`: no rules")
        );
        let missing = dir.path().join("gone.yaml");
        let cli = parse(&["--config", missing.to_str().unwrap()]).unwrap();
        let err = Config::from_cli(&cli).unwrap_err().to_string();
        assert!(err.starts_with("cannot read config file"), "{err}");
        assert!(err.contains("gone.yaml"), "{err}");
    }
}
