//! The checked configuration the rest of the ambassador runs on: every listener's routes and
//! limits, whichever of the flags and the file they came from.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use sidecar_kit::reload::TlsFiles;
use sidecar_kit::tls::ExpectedIdentity;

use crate::authz::AllowList;
use crate::resilience::{DiscoveryConfig, EndpointsConfig, RouteResilienceConfig};

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

/// The protections every listener applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// Connections (per listener) that have not sent a first request yet, within
    /// `max_connections`; the oldest is closed to make room for a new one.
    pub max_pending_connections: usize,
    /// Requests in flight to the app at once (per inbound route); 0: no limit.
    pub max_app_requests: usize,
    /// The slowest a request body may come, in bytes a second on average after a grace of
    /// `header_read_timeout`, until the response head; 0: not checked.
    pub min_body_rate: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            // Idle connections on the shipped configuration's two listeners fit the shipped
            // 64 MiB memory limit with a quarter to spare (docs/ambassador.md, Limits).
            max_connections: 512,
            idle_timeout: Duration::from_secs(300),
            max_pending_connections: 256,
            max_app_requests: 512,
            min_body_rate: 1024,
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
    /// Token buckets the route's requests take from, if limited.
    pub rate_limit: Option<crate::ratelimit::RateLimitConfig>,
    /// Which headers tell the app the peer's address and the scheme.
    pub forwarded: ForwardedHeaders,
    /// Whether to add `X-Request-Id` to requests that come without one.
    pub request_id: bool,
    /// End-user authentication (JWT) of the route's requests.
    pub jwt: Option<crate::jwt::JwtConfig>,
}

/// The headers an inbound route sets to tell the app who connected and how (any incoming copy
/// is replaced: the peer could have written anything there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeaders {
    /// `X-Forwarded-For` (the peer's IP address) and `X-Forwarded-Proto: https`.
    #[default]
    XForwarded,
    /// `Forwarded: for=...;proto=https` (RFC 7239).
    Forwarded,
    /// Both of the above.
    Both,
    /// Neither (incoming copies still removed).
    Off,
}

/// How every listener logs and traces its requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct Telemetry {
    pub access_log: bool,
    /// Whether the access log shows query strings (they may carry secrets).
    pub access_log_query: bool,
    pub new_traces: crate::trace::NewTraces,
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
    pub discovery: EndpointsConfig,
    pub resilience: RouteResilienceConfig,
    pub identity: ExpectedIdentity,
}

/// The whole checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub tls: TlsFiles,
    pub limits: Limits,
    pub access_log: bool,
    pub access_log_query: bool,
    /// What a request without a trace context gets.
    pub new_traces: crate::trace::NewTraces,
    pub inbound: Vec<InboundRoute>,
    pub outbound: Vec<OutboundRoute>,
    /// The listener that routes by `Host` among outbound routes that name hosts.
    pub host_router: Option<SocketAddr>,
    /// DNS settings for routes with `dns:` endpoints.
    pub discovery: DiscoveryConfig,
    /// Worker threads (shards), from `--worker-threads` (0: one per core).
    pub threads: usize,
}

impl Config {
    pub fn telemetry(&self) -> Telemetry {
        Telemetry {
            access_log: self.access_log,
            access_log_query: self.access_log_query,
            new_traces: self.new_traces,
        }
    }
}
