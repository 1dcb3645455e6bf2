//! Flags and the YAML file, turned into one checked [`Config`].
//!
//! The one-route case (one inbound listener, one outbound remote) fits in flags; several routes
//! need `--config FILE`. Everything is checked here, before anything listens, so a bad
//! configuration exits with code 64 and a message naming the setting at fault.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sidecar_kit::KitArgs;
use sidecar_kit::config::ConfigError;
use sidecar_kit::reload::TlsFiles;
use sidecar_kit::tls::ExpectedIdentity;

use crate::authz::{AllowList, PatternError};

/// What a listener carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// HTTP/1.1 and HTTP/2, with per-request routing, headers and metrics.
    Http,
    /// Raw TCP bytes (L4), for apps that do not speak HTTP.
    Tcp,
}

/// How the inbound side talks to the local app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP/1.1 (whatever the peer spoke).
    Http1,
    /// HTTP/2 without TLS (prior knowledge), for gRPC apps.
    H2c,
}

/// The command line.
#[derive(clap::Parser, Debug)]
#[command(name = "ambassador", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub kit: KitArgs,

    /// The pod's certificate chain (PEM, leaf first), presented to peers both ways.
    #[arg(long, env = "CERT", value_name = "FILE", help_heading = "Certificates")]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, env = "KEY", value_name = "FILE", help_heading = "Certificates")]
    pub key: Option<PathBuf>,
    /// CA bundle (PEM) that peers' certificates must chain to.
    #[arg(long, env = "CA", value_name = "FILE", help_heading = "Certificates")]
    pub ca: Option<PathBuf>,

    /// Inbound: the mTLS listener peers connect to, e.g. 0.0.0.0:8443.
    #[arg(
        long,
        env = "INBOUND_LISTEN",
        value_name = "ADDR",
        help_heading = "Inbound (one route)"
    )]
    pub inbound_listen: Option<SocketAddr>,
    /// Inbound: the app on localhost that gets the plain traffic, e.g. 127.0.0.1:8080.
    #[arg(
        long,
        env = "INBOUND_APP",
        value_name = "ADDR",
        help_heading = "Inbound (one route)"
    )]
    pub inbound_app: Option<SocketAddr>,
    /// Inbound: http (per request) or tcp (raw bytes).
    #[arg(long, env = "INBOUND_MODE", value_enum, default_value_t = Mode::Http, help_heading = "Inbound (one route)")]
    pub inbound_mode: Mode,
    /// Inbound: how to speak to the app.
    #[arg(long, env = "INBOUND_APP_PROTOCOL", value_enum, default_value_t = AppProtocol::Http1, help_heading = "Inbound (one route)")]
    pub inbound_app_protocol: AppProtocol,
    /// Inbound: SPIFFE IDs allowed to call (comma-separated or repeated); `*` matches one path
    /// segment, a final `**` the rest.
    #[arg(
        long,
        env = "ALLOW_SPIFFE",
        value_name = "PATTERN",
        value_delimiter = ',',
        help_heading = "Inbound (one route)"
    )]
    pub allow_spiffe: Vec<String>,
    /// Inbound: DNS SANs allowed to call (comma-separated or repeated); `*.example.org` matches
    /// one label.
    #[arg(
        long,
        env = "ALLOW_DNS",
        value_name = "NAME",
        value_delimiter = ',',
        help_heading = "Inbound (one route)"
    )]
    pub allow_dns: Vec<String>,

    /// Outbound: the plain listener on localhost the app calls, e.g. 127.0.0.1:9001.
    #[arg(
        long,
        env = "OUTBOUND_LISTEN",
        value_name = "ADDR",
        help_heading = "Outbound (one route)"
    )]
    pub outbound_listen: Option<SocketAddr>,
    /// Outbound: the remote's endpoints, host:port (comma-separated or repeated).
    #[arg(
        long,
        env = "OUTBOUND_ENDPOINTS",
        value_name = "HOST:PORT",
        value_delimiter = ',',
        help_heading = "Outbound (one route)"
    )]
    pub outbound_endpoints: Vec<String>,
    /// Outbound: who the remote must be: a SPIFFE ID (spiffe://...) or a DNS name.
    #[arg(
        long,
        env = "OUTBOUND_IDENTITY",
        value_name = "ID",
        help_heading = "Outbound (one route)"
    )]
    pub outbound_identity: Option<String>,
    /// Outbound: http (per request, pooled) or tcp (one mTLS connection per app connection).
    #[arg(long, env = "OUTBOUND_MODE", value_enum, default_value_t = Mode::Http, help_heading = "Outbound (one route)")]
    pub outbound_mode: Mode,
    /// Outbound: offer HTTP/2 to the remote (many requests share one connection); `false`
    /// keeps a pool of HTTP/1.1 connections instead.
    #[arg(long, env = "OUTBOUND_HTTP2", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set, help_heading = "Outbound (one route)")]
    pub outbound_http2: bool,

    /// Largest request head (request line plus headers) accepted, in bytes (at least 8192).
    #[arg(
        long,
        env = "MAX_HEADER_BYTES",
        value_name = "BYTES",
        help_heading = "Limits"
    )]
    pub max_header_bytes: Option<usize>,
    /// Time a client has to send a complete request head (against slowloris).
    #[arg(long, env = "HEADER_READ_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration, help_heading = "Limits")]
    pub header_read_timeout: Option<Duration>,
    /// Connections open at once per listener; more are refused and counted.
    #[arg(
        long,
        env = "MAX_CONNECTIONS",
        value_name = "N",
        help_heading = "Limits"
    )]
    pub max_connections: Option<usize>,
    /// A connection with no traffic and no request in flight for this long is closed.
    #[arg(long, env = "IDLE_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration, help_heading = "Limits")]
    pub idle_timeout: Option<Duration>,

    /// Outbound: a DNS name re-resolved for the remote's endpoints (A/AAAA), NAME:PORT; instead of
    /// --outbound-endpoints.
    #[arg(
        long,
        env = "OUTBOUND_DNS",
        value_name = "NAME:PORT",
        help_heading = "Outbound (one route)"
    )]
    pub outbound_dns: Option<String>,

    /// The DNS server to ask (default: the system's resolv.conf).
    #[arg(
        long,
        env = "DNS_NAMESERVER",
        value_name = "IP:PORT",
        help_heading = "Resilience"
    )]
    pub dns_nameserver: Option<SocketAddr>,

    /// Connecting to one endpoint (TCP + mTLS handshake) [default: 1s].
    #[arg(long, env = "CONNECT_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration, help_heading = "Resilience")]
    pub connect_timeout: Option<Duration>,

    /// One try, until the response headers [default: 10s].
    #[arg(long, env = "PER_TRY_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration, help_heading = "Resilience")]
    pub per_try_timeout: Option<Duration>,

    /// A whole request with its retries, until the response headers [default: 30s].
    #[arg(long, env = "REQUEST_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration, help_heading = "Resilience")]
    pub request_timeout: Option<Duration>,

    /// An unused pooled connection to an endpoint is closed after this [default: 60s].
    #[arg(long, env = "UPSTREAM_IDLE_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration, help_heading = "Resilience")]
    pub upstream_idle_timeout: Option<Duration>,

    /// Retries after the first try [default: 2].
    #[arg(
        long,
        env = "MAX_RETRIES",
        value_name = "N",
        help_heading = "Resilience"
    )]
    pub max_retries: Option<u32>,

    /// peak-ewma (power of two choices) or round-robin [default: peak-ewma].
    #[arg(long, env = "BALANCER", value_name = "KIND", value_parser = ["peak-ewma", "round-robin"], help_heading = "Resilience")]
    pub balancer: Option<String>,

    /// Requests in flight per outbound route beyond which new ones get 503 at once; 0 = no limit.
    #[arg(
        long,
        env = "MAX_CONCURRENT_REQUESTS",
        value_name = "N",
        help_heading = "Resilience"
    )]
    pub max_concurrent_requests: Option<usize>,

    /// Write one JSON access-log line per request (target `access`).
    #[arg(long, env = "ACCESS_LOG", help_heading = "Logging")]
    pub access_log: bool,
}

/// The protections every listener applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// One inbound listener: mTLS in, plain to the app.
#[derive(Debug, Clone)]
pub struct InboundRoute {
    pub name: String,
    pub listen: SocketAddr,
    pub app: SocketAddr,
    pub mode: Mode,
    pub app_protocol: AppProtocol,
    pub allow: AllowList,
    /// Whether to set X-Forwarded-Client-Cert (any incoming copy is always removed).
    pub forward_client_cert: bool,
}

/// One remote service the app calls.
#[derive(Debug, Clone)]
pub struct OutboundRoute {
    pub name: String,
    /// Its own plain listener, if it has one.
    pub listen: Option<SocketAddr>,
    /// `Host` values that select this route on the host-routing listener.
    pub hosts: Vec<String>,
    pub mode: Mode,
    /// Offer h2 through ALPN.
    pub http2: bool,
    /// Where the endpoints come from: the static list, or a DNS name.
    pub discovery: crate::resilience::EndpointsConfig,
    pub resilience: crate::resilience::RouteResilienceConfig,
    pub identity: ExpectedIdentity,
}

/// The whole checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub tls: TlsFiles,
    pub limits: Limits,
    pub access_log: bool,
    pub inbound: Vec<InboundRoute>,
    pub outbound: Vec<OutboundRoute>,
    /// The listener that routes by `Host` among outbound routes that name hosts.
    pub host_router: Option<SocketAddr>,
    /// DNS settings for routes with `dns:` endpoints.
    pub discovery: crate::resilience::DiscoveryConfig,
    /// Worker threads (shards), from `--worker-threads` (0: one per core).
    pub threads: usize,
}

// ---- the YAML file ----

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    tls: Option<FileTls>,
    #[serde(default)]
    limits: Option<FileLimits>,
    #[serde(default)]
    access_log: Option<bool>,
    #[serde(default)]
    inbound: Vec<FileInbound>,
    #[serde(default)]
    outbound: Vec<FileOutbound>,
    #[serde(default)]
    host_router: Option<FileHostRouter>,
    #[serde(default)]
    discovery: Option<crate::resilience::DiscoveryConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_header_bytes: Option<usize>,
    header_read_timeout: Option<String>,
    max_connections: Option<usize>,
    idle_timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileAllow {
    #[serde(default)]
    spiffe: Vec<String>,
    #[serde(default)]
    dns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileInbound {
    name: String,
    listen: SocketAddr,
    app: SocketAddr,
    #[serde(default = "default_mode")]
    mode: Mode,
    #[serde(default = "default_app_protocol")]
    app_protocol: AppProtocol,
    #[serde(default)]
    allow: FileAllow,
    #[serde(default = "default_true")]
    forward_client_cert: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOutbound {
    name: String,
    #[serde(default)]
    listen: Option<SocketAddr>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default = "default_mode")]
    mode: Mode,
    #[serde(default = "default_true")]
    http2: bool,
    #[serde(default)]
    endpoints: Vec<String>,
    /// NAME:PORT re-resolved in the background, instead of `endpoints`.
    #[serde(default)]
    dns: Option<String>,
    #[serde(default)]
    resilience: crate::resilience::RouteResilienceConfig,
    identity: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHostRouter {
    listen: SocketAddr,
}

fn default_mode() -> Mode {
    Mode::Http
}
fn default_app_protocol() -> AppProtocol {
    AppProtocol::Http1
}
fn default_true() -> bool {
    true
}

impl Config {
    /// Builds the configuration from the flags and, with `--config`, the YAML file, and checks
    /// that the certificate files can serve.
    pub fn from_cli(cli: &Cli) -> Result<Self, ConfigError> {
        let config = Self::from_cli_settings(cli)?;
        config.check_certificates()?;
        Ok(config)
    }

    /// Like [`Config::from_cli`] without reading the certificate files.
    pub fn from_cli_settings(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.kit.config {
            Some(path) => {
                let file: FileConfig = sidecar_kit::config::load_yaml(path)?;
                if cli.inbound_listen.is_some() || cli.outbound_listen.is_some() {
                    return Err(ConfigError::value(format!(
                        "--inbound-listen/--outbound-listen and --config {} both define routes; \
                         put every route in the file",
                        path.display()
                    )));
                }
                Some((path.clone(), file))
            }
            None => None,
        };
        let origin = file
            .as_ref()
            .map(|(p, _)| p.display().to_string())
            .unwrap_or_else(|| "flags".to_owned());
        let file_cfg = file.map(|(_, f)| f).unwrap_or_default();

        let tls = match (&file_cfg.tls, &cli.cert, &cli.key, &cli.ca) {
            (_, Some(cert), Some(key), Some(ca)) => TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            },
            (Some(t), None, None, None) => TlsFiles {
                cert: t.cert.clone(),
                key: t.key.clone(),
                ca: t.ca.clone(),
            },
            _ => {
                return Err(ConfigError::value(
                    "certificates: give all three of --cert, --key and --ca (or `tls:` with \
                     cert, key and ca in the config file)",
                ));
            }
        };

        let limits = limits(
            cli,
            file_cfg.limits.as_ref().unwrap_or(&FileLimits::default()),
            &origin,
        )?;
        let access_log = cli.access_log || file_cfg.access_log.unwrap_or(false);

        let mut inbound = Vec::new();
        let mut outbound = Vec::new();
        for (i, r) in file_cfg.inbound.into_iter().enumerate() {
            let at = format!("{origin}: inbound[{i}] ({})", r.name);
            inbound.push(InboundRoute {
                allow: allow_list(&r.allow.spiffe, &r.allow.dns, &at)?,
                name: r.name,
                listen: r.listen,
                app: r.app,
                mode: r.mode,
                app_protocol: r.app_protocol,
                forward_client_cert: r.forward_client_cert,
            });
        }
        for (i, r) in file_cfg.outbound.into_iter().enumerate() {
            let at = format!("{origin}: outbound[{i}] ({})", r.name);
            outbound.push(OutboundRoute {
                discovery: discovery(&r.endpoints, r.dns.as_deref(), &at)?,
                resilience: resilience(r.resilience, &at)?,
                identity: identity(&r.identity, &at)?,
                name: r.name,
                listen: r.listen,
                hosts: r.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                mode: r.mode,
                http2: r.http2,
            });
        }
        let host_router = file_cfg.host_router.map(|h| h.listen);
        let mut dns_settings = file_cfg.discovery.clone().unwrap_or_default();
        if let Some(ns) = cli.dns_nameserver {
            dns_settings.nameserver = Some(ns);
        }
        dns_settings
            .validate()
            .map_err(|e| ConfigError::value(format!("{origin}: {e}")))?;

        // The one-route flags.
        if let Some(listen) = cli.inbound_listen {
            let app = cli.inbound_app.ok_or_else(|| {
                ConfigError::value("--inbound-listen needs --inbound-app (where the app listens)")
            })?;
            inbound.push(InboundRoute {
                name: "inbound".to_owned(),
                listen,
                app,
                mode: cli.inbound_mode,
                app_protocol: cli.inbound_app_protocol,
                allow: allow_list(
                    &cli.allow_spiffe,
                    &cli.allow_dns,
                    "--allow-spiffe/--allow-dns",
                )?,
                forward_client_cert: true,
            });
        } else if cli.inbound_app.is_some() {
            return Err(ConfigError::value("--inbound-app needs --inbound-listen"));
        }
        if let Some(listen) = cli.outbound_listen {
            let id = cli.outbound_identity.as_deref().ok_or_else(|| {
                ConfigError::value(
                    "--outbound-listen needs --outbound-identity (the remote's SPIFFE ID or DNS name)",
                )
            })?;
            outbound.push(OutboundRoute {
                name: "outbound".to_owned(),
                listen: Some(listen),
                hosts: Vec::new(),
                mode: cli.outbound_mode,
                http2: cli.outbound_http2,
                discovery: discovery(
                    &cli.outbound_endpoints,
                    cli.outbound_dns.as_deref(),
                    "--outbound-endpoints/--outbound-dns",
                )?,
                resilience: resilience(
                    resilience_flags(cli, Default::default()),
                    "resilience flags",
                )?,
                identity: identity(id, "--outbound-identity")?,
            });
        } else if !cli.outbound_endpoints.is_empty()
            || cli.outbound_identity.is_some()
            || cli.outbound_dns.is_some()
        {
            return Err(ConfigError::value(
                "--outbound-endpoints/--outbound-identity need --outbound-listen",
            ));
        }

        let config = Self {
            tls,
            limits,
            access_log,
            inbound,
            outbound,
            host_router,
            discovery: dns_settings,
            threads: crate::shard::count_for(cli.kit.worker_threads),
        };
        config.check(&origin)?;
        Ok(config)
    }

    /// Refuses at start certificates that could not serve (the reloader checks the same on
    /// every change later, keeping the old ones).
    fn check_certificates(&self) -> Result<(), ConfigError> {
        let identity = sidecar_kit::tls::Identity::load(&self.tls.cert, &self.tls.key)
            .map_err(|e| ConfigError::value(e.to_string()))?;
        let bundle = sidecar_kit::tls::TrustBundle::load(&self.tls.ca)
            .map_err(|e| ConfigError::value(e.to_string()))?;
        sidecar_kit::tls::check_credentials(&identity, &bundle, std::time::SystemTime::now())
            .map_err(|e| ConfigError::value(e.to_string()))?;
        Ok(())
    }

    fn check(&self, origin: &str) -> Result<(), ConfigError> {
        if self.inbound.is_empty() && self.outbound.is_empty() {
            return Err(ConfigError::value(format!(
                "{origin}: no route: give --inbound-listen and/or --outbound-listen, or routes \
                 in a --config file"
            )));
        }
        let mut names = HashSet::new();
        let mut listens = HashSet::new();
        let mut hosts = HashSet::new();
        let mut add_listen = |addr: SocketAddr, who: &str| {
            if listens.insert(addr) {
                Ok(())
            } else {
                Err(ConfigError::value(format!(
                    "{origin}: {who}: listen address {addr} is used twice"
                )))
            }
        };
        for r in &self.inbound {
            if !names.insert(("in", r.name.clone())) {
                return Err(ConfigError::value(format!(
                    "{origin}: inbound route name `{}` is used twice",
                    r.name
                )));
            }
            add_listen(r.listen, &format!("inbound `{}`", r.name))?;
            if r.mode == Mode::Tcp && r.app_protocol == AppProtocol::H2c {
                return Err(ConfigError::value(format!(
                    "{origin}: inbound `{}`: app_protocol h2c needs mode http",
                    r.name
                )));
            }
        }
        for r in &self.outbound {
            if !names.insert(("out", r.name.clone())) {
                return Err(ConfigError::value(format!(
                    "{origin}: outbound route name `{}` is used twice",
                    r.name
                )));
            }
            if let Some(listen) = r.listen {
                add_listen(listen, &format!("outbound `{}`", r.name))?;
            }
            if r.listen.is_none() && r.hosts.is_empty() {
                return Err(ConfigError::value(format!(
                    "{origin}: outbound `{}`: give it a `listen` address or `hosts` for the host router",
                    r.name
                )));
            }
            if r.mode == Mode::Tcp && (!r.hosts.is_empty() || r.listen.is_none()) {
                return Err(ConfigError::value(format!(
                    "{origin}: outbound `{}`: mode tcp needs its own `listen` and no `hosts` \
                     (there is no Host header in raw TCP)",
                    r.name
                )));
            }
            for h in &r.hosts {
                if !hosts.insert(h.clone()) {
                    return Err(ConfigError::value(format!(
                        "{origin}: host `{h}` is routed twice"
                    )));
                }
            }
        }
        match self.host_router {
            Some(addr) => {
                add_listen(addr, "host_router")?;
                if hosts.is_empty() {
                    return Err(ConfigError::value(format!(
                        "{origin}: host_router: no outbound route names `hosts`"
                    )));
                }
            }
            None if !hosts.is_empty() => {
                return Err(ConfigError::value(format!(
                    "{origin}: outbound routes name `hosts` but there is no `host_router: {{listen: ...}}`"
                )));
            }
            None => {}
        }
        Ok(())
    }
}

fn limits(cli: &Cli, file: &FileLimits, origin: &str) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let duration =
        |flag: Option<Duration>, text: &Option<String>, name: &str, default: Duration| {
            if let Some(d) = flag {
                return Ok(d);
            }
            match text {
                Some(t) => humantime::parse_duration(t).map_err(|e| {
                    ConfigError::value(format!(
                        "{origin}: limits.{name}: `{t}` is not a duration: {e}"
                    ))
                }),
                None => Ok(default),
            }
        };
    let limits = Limits {
        max_header_bytes: cli
            .max_header_bytes
            .or(file.max_header_bytes)
            .unwrap_or(defaults.max_header_bytes),
        header_read_timeout: duration(
            cli.header_read_timeout,
            &file.header_read_timeout,
            "header_read_timeout",
            defaults.header_read_timeout,
        )?,
        max_connections: cli
            .max_connections
            .or(file.max_connections)
            .unwrap_or(defaults.max_connections),
        idle_timeout: duration(
            cli.idle_timeout,
            &file.idle_timeout,
            "idle_timeout",
            defaults.idle_timeout,
        )?,
    };
    // hyper refuses a read buffer under 8 KiB; say so here instead of panicking later.
    if limits.max_header_bytes < 8192 {
        return Err(ConfigError::value(format!(
            "max_header_bytes: {} is below the minimum of 8192",
            limits.max_header_bytes
        )));
    }
    if limits.max_connections == 0 {
        return Err(ConfigError::value(
            "max_connections: 0 would refuse everything",
        ));
    }
    if limits.header_read_timeout.is_zero() || limits.idle_timeout.is_zero() {
        return Err(ConfigError::value(
            "header_read_timeout and idle_timeout must be more than zero",
        ));
    }
    Ok(limits)
}

fn allow_list(spiffe: &[String], dns: &[String], at: &str) -> Result<AllowList, ConfigError> {
    if spiffe.is_empty() && dns.is_empty() {
        return Err(ConfigError::value(format!(
            "{at}: the allow list is empty, so every peer would be refused; list SPIFFE IDs \
             (allow.spiffe / --allow-spiffe) or DNS names (allow.dns / --allow-dns)"
        )));
    }
    AllowList::new(spiffe, dns).map_err(|e: PatternError| ConfigError::value(format!("{at}: {e}")))
}

/// `endpoints` (static) or `dns` (discovered), exactly one of them.
fn discovery(
    list: &[String],
    dns: Option<&str>,
    at: &str,
) -> Result<crate::resilience::EndpointsConfig, ConfigError> {
    let config = match dns {
        Some(_) if !list.is_empty() => {
            return Err(ConfigError::value(format!(
                "{at}: give either endpoints or dns, not both"
            )));
        }
        Some(target) => crate::resilience::EndpointsConfig::Dns(target.to_owned()),
        None => crate::resilience::EndpointsConfig::Static(endpoints(list, at)?),
    };
    config
        .validate()
        .map_err(|e| ConfigError::value(format!("{at}: {e}")))?;
    Ok(config)
}

/// The route's resilience settings, with the one-route flags applied on top, validated.
fn resilience(
    config: crate::resilience::RouteResilienceConfig,
    at: &str,
) -> Result<crate::resilience::RouteResilienceConfig, ConfigError> {
    config
        .validate()
        .map_err(|e| ConfigError::value(format!("{at}: resilience.{e}")))?;
    Ok(config)
}

fn resilience_flags(
    cli: &Cli,
    mut config: crate::resilience::RouteResilienceConfig,
) -> crate::resilience::RouteResilienceConfig {
    if let Some(d) = cli.connect_timeout {
        config.timeouts.connect = d;
    }
    if let Some(d) = cli.per_try_timeout {
        config.timeouts.per_try = d;
    }
    if let Some(d) = cli.request_timeout {
        config.timeouts.request = d;
    }
    if let Some(d) = cli.upstream_idle_timeout {
        config.timeouts.idle = d;
    }
    if let Some(n) = cli.max_retries {
        config.retries.max_retries = n;
    }
    if let Some(kind) = cli.balancer.as_deref() {
        config.balancer = if kind == "round-robin" {
            crate::resilience::BalancerKind::RoundRobin
        } else {
            crate::resilience::BalancerKind::PeakEwma
        };
    }
    if let Some(n) = cli.max_concurrent_requests {
        config.max_concurrent_requests = n;
    }
    config
}

fn endpoints(list: &[String], at: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::value(format!("{at}: no endpoints")));
    }
    let mut out = Vec::new();
    for e in list {
        // Static endpoints are resolved once at start (discovery comes with the resilience layer).
        let addrs = e.to_socket_addrs().map_err(|err| {
            ConfigError::value(format!(
                "{at}: endpoint `{e}` is not host:port that resolves: {err}"
            ))
        })?;
        let first = addrs.into_iter().next().ok_or_else(|| {
            ConfigError::value(format!("{at}: endpoint `{e}` resolves to no address"))
        })?;
        out.push(first);
    }
    Ok(out)
}

fn identity(text: &str, at: &str) -> Result<ExpectedIdentity, ConfigError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ConfigError::value(format!("{at}: identity is empty")));
    }
    let id = ExpectedIdentity::parse(text);
    if let ExpectedIdentity::Dns(name) = &id
        && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        return Err(ConfigError::value(format!(
            "{at}: identity `{name}` is neither a SPIFFE ID (spiffe://...) nor a DNS name"
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["ambassador"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    }

    const CERTS: [&str; 6] = ["--cert", "c", "--key", "k", "--ca", "a"];

    #[test]
    fn one_route_flags_make_a_config() {
        let mut args = CERTS.to_vec();
        args.extend([
            "--inbound-listen",
            "127.0.0.1:8443",
            "--inbound-app",
            "127.0.0.1:8080",
            "--allow-spiffe",
            "spiffe://td/ns/*/sa/web,spiffe://td/ops/**",
            "--outbound-listen",
            "127.0.0.1:9001",
            "--outbound-endpoints",
            "127.0.0.1:9443",
            "--outbound-identity",
            "spiffe://td/ns/prod/sa/billing",
        ]);
        let c = Config::from_cli_settings(&cli(&args)).unwrap();
        assert_eq!(c.inbound.len(), 1);
        assert!(matches!(
            &c.outbound[0].discovery,
            crate::resilience::EndpointsConfig::Static(a) if a[0].port() == 9443
        ));
        assert_eq!(
            c.outbound[0].identity,
            ExpectedIdentity::Spiffe("spiffe://td/ns/prod/sa/billing".into())
        );
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let mut args = CERTS.to_vec();
        args.extend([
            "--inbound-listen",
            "127.0.0.1:8443",
            "--inbound-app",
            "127.0.0.1:1",
        ]);
        let err = Config::from_cli_settings(&cli(&args))
            .unwrap_err()
            .to_string();
        assert!(err.contains("allow list is empty"), "{err}");

        let err = Config::from_cli_settings(&cli(&["--inbound-listen", "127.0.0.1:1"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--cert"), "{err}");

        let mut args = CERTS.to_vec();
        args.extend([
            "--outbound-listen",
            "127.0.0.1:9001",
            "--outbound-endpoints",
            "127.0.0.1:9443",
            "--outbound-identity",
            "not a name!",
        ]);
        let err = Config::from_cli_settings(&cli(&args))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a name!"), "{err}");

        let mut args = CERTS.to_vec();
        args.extend([
            "--max-header-bytes",
            "100",
            "--outbound-listen",
            "127.0.0.1:1",
        ]);
        let err = Config::from_cli_settings(&cli(&args))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_header_bytes"), "{err}");
    }

    #[test]
    fn yaml_routes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.yaml");
        std::fs::write(
            &path,
            "tls: {cert: c, key: k, ca: a}\n\
             limits: {idle_timeout: 1m}\n\
             inbound:\n  - name: web\n    listen: 127.0.0.1:8443\n    app: 127.0.0.1:8080\n    allow: {dns: [a.b]}\n\
             outbound:\n  - name: billing\n    hosts: [billing]\n    endpoints: ['127.0.0.1:1']\n    identity: billing.svc\n\
             host_router: {listen: 127.0.0.1:9000}\n",
        )
        .unwrap();
        let c = Config::from_cli_settings(&cli(&["--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.host_router.unwrap().port(), 9000);

        std::fs::write(
            &path,
            "tls: {cert: c, key: k, ca: a}\noutbound:\n  - name: x\n    listen: 127.0.0.1:1\n    endpoints: ['127.0.0.1:1']\n    identity: a\n    retries: 3\n",
        )
        .unwrap();
        let err = Config::from_cli_settings(&cli(&["--config", path.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("retries") && err.contains("line 7"), "{err}");
    }
}
