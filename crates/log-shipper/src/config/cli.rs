//! Flags, each with an environment fallback `LOG_SHIPPER_<NAME>`: enough for one input (a glob
//! of files), one pipeline and one HTTP sink. Several inputs, pipelines or sinks take the YAML
//! file (`--config`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use sidecar_kit::KitArgs;

use crate::config::units::bytes_arg;
use crate::pipeline::multiline::Preset;
use crate::sink::WhenFull;

/// Where a file never seen before starts, on the very first start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    Beginning,
    End,
}

/// How files are watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchMode {
    /// Filesystem events, and polling at the poll interval in any case.
    Events,
    /// Polling only (network filesystems without events).
    Poll,
}

/// What the files' lines are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// Text: the line is the message.
    Raw,
    /// The container runtimes' format (containerd, CRI-O: /var/log/pods):
    /// `<time> <stream> <P|F> <text>`, partial lines joined.
    Cri,
    /// Docker's json-file driver: `{"log":...,"stream":...,"time":...}`, split lines joined.
    Docker,
}

impl From<FileFormat> for crate::source::Format {
    fn from(f: FileFormat) -> Self {
        match f {
            FileFormat::Raw => Self::Raw,
            FileFormat::Cri => Self::Cri,
            FileFormat::Docker => Self::Docker,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ParserKind {
    Raw,
    Json,
    Logfmt,
    Regex,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedactPresetArg {
    /// Payment card numbers (Luhn-checked).
    Card,
    /// `Bearer <token>`.
    Bearer,
    /// `password=`, `token:`, `api_key=` and similar values.
    Secrets,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresetArg {
    Java,
    Python,
    Go,
}

impl From<PresetArg> for Preset {
    fn from(p: PresetArg) -> Self {
        match p {
            PresetArg::Java => Preset::Java,
            PresetArg::Python => Preset::Python,
            PresetArg::Go => Preset::Go,
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(name = "log-shipper", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub kit: KitArgs,

    /// Directory for checkpoints, disk buffers and dead-letter files (a volume that outlives
    /// the container).
    #[arg(
        long,
        env = "STATE_DIR",
        default_value = "/var/lib/log-shipper",
        help_heading = "State"
    )]
    pub state_dir: PathBuf,
    /// How often acknowledged offsets are written to the state directory.
    #[arg(long, env = "CHECKPOINT_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration, help_heading = "State")]
    pub checkpoint_interval: Duration,

    /// Files to read: an absolute glob, e.g. `/var/log/app/*.log` (repeatable; comma-separated
    /// in the environment variable).
    #[arg(
        long = "file",
        env = "FILE",
        value_delimiter = ',',
        help_heading = "Input"
    )]
    pub files: Vec<String>,
    /// Files to skip, matched against the name and the path (default: compressed rotations).
    #[arg(long, env = "EXCLUDE", value_delimiter = ',', help_heading = "Input")]
    pub exclude: Vec<String>,
    /// Where files found at the very first start begin; later files always begin at 0.
    #[arg(long, env = "START_AT", value_enum, default_value_t = StartAt::Beginning, help_heading = "Input")]
    pub start_at: StartAt,
    /// Filesystem events with polling (events), or polling only (poll).
    #[arg(long, env = "WATCH", value_enum, default_value_t = WatchMode::Events, help_heading = "Input")]
    pub watch: WatchMode,
    /// What the files' lines are: text, or a container runtime's log format (the time and
    /// stream come from the runtime; split lines are joined).
    #[arg(long, env = "FORMAT", value_enum, default_value_t = FileFormat::Raw, help_heading = "Input")]
    pub format: FileFormat,
    /// How often files are looked at without an event.
    #[arg(long, env = "POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration, help_heading = "Input")]
    pub poll_interval: Duration,
    /// How long a rotated file must stay unchanged at its end before it is let go.
    #[arg(long, env = "ROTATE_WAIT", default_value = "5s", value_parser = humantime::parse_duration, help_heading = "Input")]
    pub rotate_wait: Duration,

    /// Listen for lines POSTed over HTTP (JSON, NDJSON or text) on this address, e.g.
    /// `127.0.0.1:9880`; the answer comes once the lines are safe.
    #[arg(
        long,
        env = "HTTP_LISTEN",
        value_name = "ADDR",
        help_heading = "Receivers"
    )]
    pub http_listen: Option<String>,
    /// Largest request body, after decompression (413 beyond).
    #[arg(long, env = "HTTP_MAX_BODY_BYTES", default_value = "4MiB", value_parser = bytes_arg, help_heading = "Receivers")]
    pub http_max_body_bytes: u64,
    /// Request bodies waiting for acknowledgement at most (503 beyond).
    #[arg(long, env = "HTTP_MAX_IN_FLIGHT_BYTES", default_value = "16MiB", value_parser = bytes_arg, help_heading = "Receivers")]
    pub http_max_in_flight_bytes: u64,
    /// Longest a request waits for its lines to be acknowledged (then 503).
    #[arg(long, env = "HTTP_ACK_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, help_heading = "Receivers")]
    pub http_ack_timeout: Duration,
    /// Listen for syslog (RFC 5424, RFC 3164; octet counting or newlines) over TCP here,
    /// e.g. `127.0.0.1:5514`.
    #[arg(
        long,
        env = "SYSLOG_TCP",
        value_name = "ADDR",
        help_heading = "Receivers"
    )]
    pub syslog_tcp: Option<String>,
    /// Listen for syslog over UDP here.
    #[arg(
        long,
        env = "SYSLOG_UDP",
        value_name = "ADDR",
        help_heading = "Receivers"
    )]
    pub syslog_udp: Option<String>,
    /// Syslog TCP connections at once.
    #[arg(
        long,
        env = "SYSLOG_MAX_CONNECTIONS",
        default_value_t = 256,
        help_heading = "Receivers"
    )]
    pub syslog_max_connections: usize,

    /// How lines are parsed.
    #[arg(long, env = "PARSER", value_enum, default_value_t = ParserKind::Raw, help_heading = "Processing")]
    pub parser: ParserKind,
    /// For --parser regex: a pattern with named captures (`message` is the message).
    #[arg(long, env = "REGEX", help_heading = "Processing")]
    pub regex: Option<String>,
    /// For --parser json and logfmt, and the HTTP receiver's JSON: the key that holds the
    /// message.
    #[arg(
        long,
        env = "MESSAGE_KEY",
        default_value = "message",
        help_heading = "Processing"
    )]
    pub message_key: String,
    /// Field holding the event's time (removed once read).
    #[arg(long, env = "TIMESTAMP_FIELD", help_heading = "Processing")]
    pub timestamp_field: Option<String>,
    /// Formats of --timestamp-field, tried in order: rfc3339, rfc2822, iso8601, unix,
    /// unix_ms, unix_us, unix_ns, or a strftime pattern (repeatable).
    #[arg(
        long = "timestamp-format",
        env = "TIMESTAMP_FORMAT",
        value_delimiter = ',',
        default_value = "rfc3339",
        help_heading = "Processing"
    )]
    pub timestamp_formats: Vec<String>,
    /// Multiline rule for a runtime's stack traces.
    #[arg(long, env = "MULTILINE_PRESET", value_enum, conflicts_with_all = ["multiline_start", "multiline_continue"], help_heading = "Processing")]
    pub multiline_preset: Option<PresetArg>,
    /// Multiline: a line matching this regex starts a new event; others continue it.
    #[arg(
        long,
        env = "MULTILINE_START",
        conflicts_with = "multiline_continue",
        help_heading = "Processing"
    )]
    pub multiline_start: Option<String>,
    /// Multiline: a line matching this regex continues the current event.
    #[arg(long, env = "MULTILINE_CONTINUE", help_heading = "Processing")]
    pub multiline_continue: Option<String>,
    /// Multiline: a pending event is shipped after this long without a new line.
    #[arg(long, env = "MULTILINE_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration, help_heading = "Processing")]
    pub multiline_timeout: Duration,
    /// Multiline: lines per event at most.
    #[arg(
        long,
        env = "MULTILINE_MAX_LINES",
        default_value_t = 500,
        help_heading = "Processing"
    )]
    pub multiline_max_lines: usize,
    /// Largest event: longer lines (and multiline events) are cut, marked `truncated`, counted.
    #[arg(long, env = "MAX_EVENT_BYTES", default_value = "256KiB", value_parser = bytes_arg, help_heading = "Processing")]
    pub max_event_bytes: u64,
    /// Static field `name=value` on every event (repeatable).
    #[arg(
        long = "field",
        env = "FIELDS",
        value_delimiter = ',',
        value_name = "NAME=VALUE",
        help_heading = "Processing"
    )]
    pub fields: Vec<String>,
    /// Field from an environment variable, `name=VAR` (e.g. `pod=POD_NAME` with the Downward
    /// API; repeatable).
    #[arg(
        long = "env-field",
        env = "ENV_FIELDS",
        value_delimiter = ',',
        value_name = "NAME=VAR",
        help_heading = "Processing"
    )]
    pub env_fields: Vec<String>,
    /// Field holding the host name (empty: none).
    #[arg(
        long,
        env = "HOST_FIELD",
        default_value = "host",
        help_heading = "Processing"
    )]
    pub host_field: String,
    /// Field holding the source file's path (empty: none).
    #[arg(
        long,
        env = "FILE_FIELD",
        default_value = "file",
        help_heading = "Processing"
    )]
    pub file_field: String,
    /// Replace what matches this regex with [REDACTED], in the message and every field
    /// (repeatable).
    #[arg(long = "redact", env = "REDACT", help_heading = "Processing")]
    pub redact: Vec<String>,
    /// Redact a kind of secret (repeatable).
    #[arg(
        long = "redact-preset",
        env = "REDACT_PRESET",
        value_enum,
        value_delimiter = ',',
        help_heading = "Processing"
    )]
    pub redact_presets: Vec<RedactPresetArg>,

    /// Where batches are POSTed as NDJSON.
    #[arg(long, env = "SINK_URL", help_heading = "Sink")]
    pub sink_url: Option<String>,
    /// Extra request header `Name: value` (repeatable).
    #[arg(
        long = "sink-header",
        value_name = "NAME: VALUE",
        help_heading = "Sink"
    )]
    pub sink_headers: Vec<String>,
    /// Compress request bodies with gzip.
    #[arg(long, env = "GZIP", help_heading = "Sink")]
    pub gzip: bool,
    /// File holding a bearer token, read again when it changes.
    #[arg(long, env = "BEARER_TOKEN_FILE", help_heading = "Sink")]
    pub bearer_token_file: Option<PathBuf>,
    /// CA bundle for an https sink (and for our certificate with mTLS).
    #[arg(long, env = "CA_FILE", help_heading = "Sink")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain for mTLS (reloaded when it changes).
    #[arg(
        long,
        env = "CLIENT_CERT",
        requires = "client_key",
        help_heading = "Sink"
    )]
    pub client_cert: Option<PathBuf>,
    /// Client private key for mTLS.
    #[arg(
        long,
        env = "CLIENT_KEY",
        requires = "client_cert",
        help_heading = "Sink"
    )]
    pub client_key: Option<PathBuf>,
    /// Name (or spiffe:// ID) the sink's certificate must carry (default: the URL's host).
    #[arg(long, env = "SERVER_NAME", help_heading = "Sink")]
    pub server_name: Option<String>,
    /// Time allowed for one request.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, help_heading = "Sink")]
    pub request_timeout: Duration,
    /// Lines per batch at most.
    #[arg(
        long,
        env = "BATCH_LINES",
        default_value_t = 1000,
        help_heading = "Sink"
    )]
    pub batch_lines: usize,
    /// Bytes per batch at most (before compression).
    #[arg(long, env = "BATCH_BYTES", default_value = "1MiB", value_parser = bytes_arg, help_heading = "Sink")]
    pub batch_bytes: u64,
    /// Longest a line waits for its batch to fill.
    #[arg(long, env = "BATCH_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration, help_heading = "Sink")]
    pub batch_timeout: Duration,
    /// First retry delay; it doubles, with jitter, up to --retry-max.
    #[arg(long, env = "RETRY_INITIAL", default_value = "200ms", value_parser = humantime::parse_duration, help_heading = "Sink")]
    pub retry_initial: Duration,
    #[arg(long, env = "RETRY_MAX", default_value = "30s", value_parser = humantime::parse_duration, help_heading = "Sink")]
    pub retry_max: Duration,
    /// The longest Retry-After honoured.
    #[arg(long, env = "RETRY_AFTER_MAX", default_value = "5m", value_parser = humantime::parse_duration, help_heading = "Sink")]
    pub retry_after_max: Duration,
    /// Disk buffer that carries an outage of the sink (0: none).
    #[arg(long, env = "BUFFER_MAX_BYTES", default_value = "256MiB", value_parser = bytes_arg, help_heading = "Sink")]
    pub buffer_max_bytes: u64,
    /// When the disk buffer is full: block reading, or drop the oldest events (counted).
    #[arg(long, env = "BUFFER_WHEN_FULL", value_enum, default_value_t = WhenFull::Block, help_heading = "Sink")]
    pub buffer_when_full: WhenFull,
}
