//! The YAML file: named inputs, pipelines and sinks. Unknown keys are refused.
//!
//! ```yaml
//! inputs:
//!   app:
//!     type: file
//!     include: ["/var/log/app/*.log"]
//!     pipeline: app
//! pipelines:
//!   app:
//!     multiline: { preset: java }
//!     parser: { type: json }
//!     redact: [{ preset: card }]
//!     sinks: [central, archive]
//! sinks:
//!   central: { type: http, url: "https://logs.example/ingest", gzip: true }
//!   archive: { type: http, url: "http://archive.local/ingest" }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::cli::{FileFormat, PresetArg, RedactPresetArg, StartAt, WatchMode};
use crate::config::units::{de_opt_bytes, de_opt_duration};
use crate::sink::WhenFull;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub inputs: BTreeMap<String, InputYaml>,
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineYaml>,
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkYaml>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InputYaml {
    File(FileInputYaml),
    Http(HttpInputYaml),
    Syslog(SyslogInputYaml),
}

/// The HTTP receiver.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpInputYaml {
    /// `127.0.0.1:9880`.
    pub address: String,
    #[serde(default, deserialize_with = "de_opt_bytes")]
    pub max_body_bytes: Option<u64>,
    #[serde(default, deserialize_with = "de_opt_bytes")]
    pub max_in_flight_bytes: Option<u64>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub ack_timeout: Option<Duration>,
    pub message_key: Option<String>,
    pub pipeline: Option<String>,
}

/// The syslog receiver: TCP, UDP or both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogInputYaml {
    pub tcp: Option<String>,
    pub udp: Option<String>,
    pub max_connections: Option<usize>,
    pub pipeline: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileInputYaml {
    pub include: Vec<String>,
    pub exclude: Option<Vec<String>>,
    /// raw (default), cri, docker.
    pub format: Option<FileFormat>,
    pub start_at: Option<StartAt>,
    pub watch: Option<WatchMode>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub poll_interval: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub rotate_wait: Option<Duration>,
    /// Default: `default`.
    pub pipeline: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineYaml {
    pub multiline: Option<MultilineYaml>,
    pub parser: Option<ParserYaml>,
    pub timestamp: Option<TimestampYaml>,
    pub fields: Option<FieldsYaml>,
    #[serde(default)]
    pub redact: Vec<RedactYaml>,
    #[serde(default, deserialize_with = "de_opt_bytes")]
    pub max_event_bytes: Option<u64>,
    pub sinks: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultilineYaml {
    pub preset: Option<PresetArg>,
    pub start: Option<String>,
    #[serde(rename = "continue")]
    pub cont: Option<String>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
    pub max_lines: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ParserYaml {
    Raw,
    Json { message_key: Option<String> },
    Logfmt { message_key: Option<String> },
    Regex { pattern: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestampYaml {
    pub field: String,
    pub formats: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsYaml {
    #[serde(default, rename = "static")]
    pub fixed: BTreeMap<String, String>,
    /// Field name to environment variable.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Field for the host name (default `host`; empty for none).
    pub host: Option<String>,
    /// Field for the file path (default `file`; empty for none).
    pub file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactYaml {
    pub preset: Option<RedactPresetArg>,
    pub pattern: Option<String>,
    pub replacement: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkYaml {
    Http(HttpSinkYaml),
    Elasticsearch(crate::config::sinks::ElasticsearchYaml),
    SplunkHec(crate::config::sinks::SplunkHecYaml),
    Loki(crate::config::sinks::LokiYaml),
    Clickhouse(crate::config::sinks::ClickHouseYaml),
    Syslog(crate::config::sinks::SyslogYaml),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkYaml {
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub gzip: bool,
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: TlsYaml,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub batch: BatchYaml,
    #[serde(default)]
    pub buffer: BufferYaml,
    #[serde(default)]
    pub retry: RetryYaml,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsYaml {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchYaml {
    pub max_lines: Option<usize>,
    #[serde(default, deserialize_with = "de_opt_bytes")]
    pub max_bytes: Option<u64>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferYaml {
    #[serde(default, deserialize_with = "de_opt_bytes")]
    pub max_bytes: Option<u64>,
    pub when_full: Option<WhenFull>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryYaml {
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub initial: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max: Option<Duration>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub max_retry_after: Option<Duration>,
}
