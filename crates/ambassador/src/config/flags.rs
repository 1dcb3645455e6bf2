//! The command line (clap, each flag with an environment variable fallback): the certificates,
//! one inbound and one outbound route, the limits and the resilience settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sidecar_kit::KitArgs;

use super::model::{AppProtocol, ForwardedHeaders, Mode};

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
    /// Connections open at once per listener; more are refused and counted [default: 512].
    #[arg(
        long,
        env = "MAX_CONNECTIONS",
        value_name = "N",
        help_heading = "Limits"
    )]
    pub max_connections: Option<usize>,
    /// Connections per listener that have not sent their first request yet (inbound: including
    /// the TLS handshake), within --max-connections; when full, the oldest of them is closed to
    /// make room [default: 256, at most half of --max-connections].
    #[arg(
        long,
        env = "MAX_PENDING_CONNECTIONS",
        value_name = "N",
        help_heading = "Limits"
    )]
    pub max_pending_connections: Option<usize>,
    /// Inbound: requests in flight to the app at once per route; more are answered 503 at
    /// once; 0 = no limit [default: 512].
    #[arg(
        long,
        env = "MAX_APP_REQUESTS",
        value_name = "N",
        help_heading = "Limits"
    )]
    pub max_app_requests: Option<usize>,
    /// The slowest a request body may come until its response head, in bytes a second on
    /// average after a grace of --header-read-timeout; slower is answered 408; 0 = not checked
    /// [default: 1024].
    #[arg(
        long,
        env = "MIN_BODY_RATE",
        value_name = "BYTES_PER_SECOND",
        help_heading = "Limits"
    )]
    pub min_body_rate: Option<u64>,
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

    /// Show query strings in the access log (they may carry secrets).
    #[arg(long, env = "ACCESS_LOG_QUERY", help_heading = "Logging")]
    pub access_log_query: bool,

    /// A request without a valid W3C `traceparent` starts a trace: unsampled, sampled, or off
    /// (none added) [default: unsampled].
    #[arg(long, env = "NEW_TRACES", value_enum, help_heading = "Logging")]
    pub new_traces: Option<crate::trace::NewTraces>,

    /// Inbound: the headers that tell the app the peer's address and the scheme (incoming copies
    /// are always replaced).
    #[arg(long, env = "INBOUND_FORWARDED", value_enum, default_value_t = ForwardedHeaders::XForwarded, help_heading = "Inbound (one route)")]
    pub inbound_forwarded: ForwardedHeaders,
}
