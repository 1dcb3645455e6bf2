//! The YAML file (`--config`), as written: every field optional unless a route needs it, and
//! unknown fields refused so that a typo is an error, not a silently ignored setting.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::model::{AppProtocol, ForwardedHeaders, Mode};
use crate::resilience::{DiscoveryConfig, RouteResilienceConfig};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    #[serde(default)]
    pub(super) tls: Option<FileTls>,
    #[serde(default)]
    pub(super) limits: Option<FileLimits>,
    #[serde(default)]
    pub(super) access_log: Option<bool>,
    #[serde(default)]
    pub(super) access_log_query: Option<bool>,
    #[serde(default)]
    pub(super) new_traces: Option<crate::trace::NewTraces>,
    #[serde(default)]
    pub(super) inbound: Vec<FileInbound>,
    #[serde(default)]
    pub(super) outbound: Vec<FileOutbound>,
    #[serde(default)]
    pub(super) host_router: Option<FileHostRouter>,
    #[serde(default)]
    pub(super) discovery: Option<DiscoveryConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTls {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) ca: PathBuf,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileLimits {
    pub(super) max_header_bytes: Option<usize>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) max_connections: Option<usize>,
    pub(super) idle_timeout: Option<String>,
    pub(super) max_pending_connections: Option<usize>,
    pub(super) max_app_requests: Option<usize>,
    pub(super) min_body_rate: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAllow {
    #[serde(default)]
    pub(super) spiffe: Vec<String>,
    #[serde(default)]
    pub(super) dns: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileInbound {
    pub(super) name: String,
    pub(super) listen: SocketAddr,
    pub(super) app: SocketAddr,
    #[serde(default = "default_mode")]
    pub(super) mode: Mode,
    #[serde(default = "default_app_protocol")]
    pub(super) app_protocol: AppProtocol,
    #[serde(default)]
    pub(super) allow: FileAllow,
    #[serde(default = "default_true")]
    pub(super) forward_client_cert: bool,
    #[serde(default)]
    pub(super) rate_limit: Option<crate::ratelimit::RateLimitConfig>,
    #[serde(default)]
    pub(super) forwarded: ForwardedHeaders,
    #[serde(default = "default_true")]
    pub(super) request_id: bool,
    /// End-user authentication of the route's requests.
    #[serde(default)]
    pub(super) jwt: Option<crate::jwt::FileJwt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileOutbound {
    pub(super) name: String,
    #[serde(default)]
    pub(super) listen: Option<SocketAddr>,
    #[serde(default)]
    pub(super) hosts: Vec<String>,
    #[serde(default = "default_mode")]
    pub(super) mode: Mode,
    #[serde(default = "default_true")]
    pub(super) http2: bool,
    #[serde(default)]
    pub(super) endpoints: Vec<String>,
    /// NAME:PORT re-resolved in the background, instead of `endpoints`.
    #[serde(default)]
    pub(super) dns: Option<String>,
    #[serde(default)]
    pub(super) resilience: RouteResilienceConfig,
    pub(super) identity: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileHostRouter {
    pub(super) listen: SocketAddr,
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
