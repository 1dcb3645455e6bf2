//! The YAML of the store sinks (Elasticsearch, Splunk HEC, Loki, ClickHouse, syslog), checked
//! into [`SinkSpec`]s. The HTTP ones share the generic sink's checks (URL, headers, token file,
//! TLS, batch and buffer bounds) and add their own; errors name the field.
//!
//! ```yaml
//! sinks:
//!   search: { type: elasticsearch, url: "https://es:9200", index: "logs-app-%Y.%m.%d", token_file: /run/es/key }
//!   splunk: { type: splunk_hec, url: "https://splunk:8088", token_file: /run/hec/token, index: main }
//!   loki:   { type: loki, url: "http://loki:3100", labels: { app: checkout, namespace: "{namespace}" } }
//!   olap:   { type: clickhouse, url: "http://ch:8123", table: logs.app, user: shipper, password_file: /run/ch/pw }
//!   siem:   { type: syslog, address: "rsyslog:6514", transport: tls, tls: { ca_file: /etc/tls/ca.crt } }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;
use sidecar_kit::config::ConfigError;

use crate::config::build::{SinkFields, check_tls, http_sink};
use crate::config::cli::Cli;
use crate::config::file::{BatchYaml, BufferYaml, RetryYaml, SinkYaml, TlsYaml};
use crate::config::plan::delivery_from_cli;
use crate::config::units::de_opt_duration;
use crate::sink::auth::Auth;
use crate::sink::clickhouse::{ClickHouseSpec, insert_query};
use crate::sink::driver::Delivery;
use crate::sink::elasticsearch::{BulkAction, ElasticsearchSpec, IndexName};
use crate::sink::http::{HttpSinkSpec, TlsSpec};
use crate::sink::loki::{LineFormat, LokiSpec, Template, check_label_name};
use crate::sink::splunk::{EventFormat, SplunkSpec, new_channel};
use crate::sink::syslog::format::{FACILITIES, FormatSpec, check_sd_name, severity};
use crate::sink::syslog::{SyslogSpec, parse_address};
use crate::sink::{BatchSpec, BufferSpec, RetrySpec, SinkKind, SinkSpec};

/// How the token file is presented to Elasticsearch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EsAuth {
    ApiKey,
    Bearer,
    Basic,
}

/// Declares a store sink's YAML struct: its own fields, then the fields every HTTP sink has
/// (as the generic `http` sink has them). Written out rather than `#[serde(flatten)]`, which
/// would let unknown keys through.
macro_rules! http_sink_yaml {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
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

        impl $name {
            fn common(&self) -> HttpCommon {
                HttpCommon {
                    headers: self.headers.clone(),
                    gzip: self.gzip,
                    token_file: self.token_file.clone(),
                    tls: tls_spec(&self.tls),
                    timeout: self.timeout,
                    batch: copy_batch(&self.batch),
                    buffer: BufferYaml {
                        max_bytes: self.buffer.max_bytes,
                        when_full: self.buffer.when_full,
                    },
                    retry: RetryYaml {
                        initial: self.retry.initial,
                        max: self.retry.max,
                        max_retry_after: self.retry.max_retry_after,
                    },
                }
            }
        }
    };
}

http_sink_yaml! {
ElasticsearchYaml {
    /// The cluster's URL; `/_bulk` is added.
    url: String,
    /// Default `logs-generic-default` (Elasticsearch's default data stream pattern).
    index: Option<String>,
    action: Option<BulkAction>,
    /// Default `api_key`; `basic` takes `user` and the token file as the password.
    auth: Option<EsAuth>,
    user: Option<String>,
    /// An ingest pipeline to run the documents through.
    pipeline: Option<String>,
}
}

http_sink_yaml! {
SplunkHecYaml {
    /// HEC's URL (`https://splunk:8088`); `/services/collector/event` is added.
    url: String,
    index: Option<String>,
    source: Option<String>,
    sourcetype: Option<String>,
    event: Option<EventFormat>,
    #[serde(default)]
    indexed_fields: Vec<String>,
    /// Default true: wait for indexer acknowledgement when the token has it.
    indexer_ack: Option<bool>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    ack_timeout: Option<Duration>,
}
}

http_sink_yaml! {
LokiYaml {
    /// Loki's URL (`http://loki:3100`); `/loki/api/v1/push` is added.
    url: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    structured_metadata: BTreeMap<String, String>,
    line: Option<LineFormat>,
    /// `X-Scope-OrgID`, for a multi-tenant Loki.
    tenant_id: Option<String>,
    /// Basic authentication with the token file as the password (Grafana Cloud); else Bearer.
    user: Option<String>,
}
}

http_sink_yaml! {
ClickHouseYaml {
    /// The HTTP interface (`http://clickhouse:8123`).
    url: String,
    /// `table` or `database.table`.
    table: String,
    user: Option<String>,
    password_file: Option<PathBuf>,
    /// Default true: fields without a column are left out (`input_format_skip_unknown_fields`).
    skip_unknown_fields: Option<bool>,
    /// Default true: RFC 3339 timestamps into DateTime columns (`date_time_input_format`).
    date_time_best_effort: Option<bool>,
}
}

/// What every HTTP store sink has.
#[derive(Debug)]
pub struct HttpCommon {
    headers: BTreeMap<String, String>,
    gzip: bool,
    token_file: Option<PathBuf>,
    tls: TlsSpec,
    timeout: Option<Duration>,
    batch: BatchYaml,
    buffer: BufferYaml,
    retry: RetryYaml,
}

fn copy_batch(b: &BatchYaml) -> BatchYaml {
    BatchYaml {
        max_lines: b.max_lines,
        max_bytes: b.max_bytes,
        timeout: b.timeout,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Tcp,
    Tls,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogYaml {
    /// `host:port`.
    pub address: String,
    pub transport: Option<Transport>,
    #[serde(default)]
    pub tls: TlsYaml,
    /// Default `user`.
    pub facility: Option<String>,
    /// Default `info`.
    pub severity: Option<String>,
    /// Default `level`.
    pub severity_field: Option<String>,
    /// Default `log-shipper`.
    pub app_name: Option<String>,
    pub app_name_field: Option<String>,
    /// Default `host` (the host enrichment); then the machine's name.
    pub hostname_field: Option<String>,
    pub msgid: Option<String>,
    pub structured_data: Option<StructuredDataYaml>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub batch: BatchYaml,
    #[serde(default)]
    pub buffer: BufferYaml,
    #[serde(default)]
    pub retry: RetryYaml,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StructuredDataYaml {
    /// The SD-ID: `name@<your private enterprise number>`.
    pub id: String,
    pub fields: Vec<String>,
}

/// Checks a store sink's settings.
pub(super) fn store_sink(
    name: &str,
    sink: &SinkYaml,
    cli: &Cli,
    prefix: &str,
) -> Result<SinkSpec, ConfigError> {
    let field = |f: &str| format!("{prefix}.{f}");
    Ok(match sink {
        SinkYaml::Elasticsearch(y) => {
            let mut http = http_part(name, &y.url, &y.common(), cli, prefix)?;
            let index = IndexName::parse(y.index.as_deref().unwrap_or("logs-generic-default"))
                .map_err(|e| ConfigError::field(field("index"), e))?;
            let auth = match (y.auth.unwrap_or(EsAuth::ApiKey), &y.user) {
                (EsAuth::Basic, Some(user)) => Auth::Basic { user: user.clone() },
                (EsAuth::Basic, None) => {
                    return Err(ConfigError::field(
                        field("user"),
                        "basic auth needs the user",
                    ));
                }
                (_, Some(_)) => {
                    return Err(ConfigError::field(
                        field("user"),
                        "a user goes with `auth: basic`",
                    ));
                }
                (EsAuth::ApiKey, None) => Auth::ApiKey,
                (EsAuth::Bearer, None) => Auth::Bearer,
            };
            append_path(&mut http.0.url, "_bulk");
            {
                let mut q = http.0.url.query_pairs_mut();
                // Only what the per-item results need: a smaller answer to parse.
                q.append_pair(
                    "filter_path",
                    "errors,items.*.status,items.*.error.type,items.*.error.reason",
                );
                if let Some(p) = &y.pipeline {
                    q.append_pair("pipeline", p);
                }
            }
            spec(
                name,
                SinkKind::Elasticsearch(ElasticsearchSpec {
                    http: http.0,
                    index,
                    action: y.action.unwrap_or(BulkAction::Create),
                    auth,
                }),
                http.1,
            )
        }
        SinkYaml::SplunkHec(y) => {
            if y.token_file.is_none() {
                return Err(ConfigError::field(
                    field("token_file"),
                    "HEC needs its token (a file holding it)",
                ));
            }
            let mut http = http_part(name, &y.url, &y.common(), cli, prefix)?;
            append_path(&mut http.0.url, "services/collector/event");
            let ack_timeout = y.ack_timeout.unwrap_or(Duration::from_secs(60));
            if ack_timeout.is_zero() {
                return Err(ConfigError::field(
                    field("ack_timeout"),
                    "must be more than 0",
                ));
            }
            let channel = new_channel();
            http.0.headers.insert(
                "x-splunk-request-channel",
                reqwest::header::HeaderValue::from_str(&channel)
                    .map_err(|e| ConfigError::field(field("url"), e))?,
            );
            spec(
                name,
                SinkKind::SplunkHec(SplunkSpec {
                    http: http.0,
                    index: y.index.clone(),
                    source: y.source.clone(),
                    sourcetype: y.sourcetype.clone(),
                    event: y.event.unwrap_or(EventFormat::Json),
                    indexed_fields: y.indexed_fields.clone(),
                    indexer_ack: y.indexer_ack.unwrap_or(true),
                    ack_timeout,
                    channel,
                }),
                http.1,
            )
        }
        SinkYaml::Loki(y) => {
            let mut http = http_part(name, &y.url, &y.common(), cli, prefix)?;
            append_path(&mut http.0.url, "loki/api/v1/push");
            let templates = |map: &BTreeMap<String, String>, what: &str| {
                map.iter()
                    .map(|(k, v)| {
                        let at = field(&format!("{what}.{k}"));
                        if what == "labels" {
                            check_label_name(k).map_err(|e| ConfigError::field(&at, e))?;
                        }
                        Ok((
                            k.clone(),
                            Template::parse(v).map_err(|e| ConfigError::field(&at, e))?,
                        ))
                    })
                    .collect::<Result<Vec<_>, ConfigError>>()
            };
            let mut labels = templates(&y.labels, "labels")?;
            if labels.is_empty() {
                labels.push((
                    "job".into(),
                    Template::parse("log-shipper").map_err(ConfigError::value)?,
                ));
            }
            if let Some(tenant) = &y.tenant_id {
                let value = reqwest::header::HeaderValue::from_str(tenant)
                    .map_err(|e| ConfigError::field(field("tenant_id"), e))?;
                http.0.headers.insert("x-scope-orgid", value);
            }
            let auth = match &y.user {
                Some(user) => Auth::Basic { user: user.clone() },
                None => Auth::Bearer,
            };
            spec(
                name,
                SinkKind::Loki(LokiSpec {
                    http: http.0,
                    labels,
                    structured_metadata: templates(&y.structured_metadata, "structured_metadata")?,
                    line: y.line.unwrap_or(LineFormat::Json),
                    auth,
                }),
                http.1,
            )
        }
        SinkYaml::Clickhouse(y) => {
            if y.token_file.is_some() {
                return Err(ConfigError::field(
                    field("token_file"),
                    "ClickHouse takes user and password_file",
                ));
            }
            let common = HttpCommon {
                token_file: y.password_file.clone(),
                ..y.common()
            };
            if let Some(path) = &y.password_file {
                password_file(path, &field("password_file"))?;
            }
            let mut http = http_part(name, &y.url, &common, cli, prefix)?;
            let query =
                insert_query(&y.table).map_err(|e| ConfigError::field(field("table"), e))?;
            {
                let mut q = http.0.url.query_pairs_mut();
                q.append_pair("query", &query);
                if y.skip_unknown_fields.unwrap_or(true) {
                    q.append_pair("input_format_skip_unknown_fields", "1");
                }
                if y.date_time_best_effort.unwrap_or(true) {
                    q.append_pair("date_time_input_format", "best_effort");
                }
            }
            let user = y.user.clone().unwrap_or_else(|| "default".into());
            if y.password_file.is_none() {
                let value = reqwest::header::HeaderValue::from_str(&user)
                    .map_err(|e| ConfigError::field(field("user"), e))?;
                http.0.headers.insert("x-clickhouse-user", value);
            }
            spec(
                name,
                SinkKind::ClickHouse(ClickHouseSpec {
                    http: http.0,
                    table: y.table.clone(),
                    auth: Auth::Basic { user },
                }),
                http.1,
            )
        }
        SinkYaml::Syslog(y) => syslog(name, y, cli, prefix)?,
        SinkYaml::Http(_) => {
            return Err(ConfigError::value(format!(
                "{prefix}: the http sink is planned with the flags' defaults"
            )));
        }
    })
}

fn spec(name: &str, kind: SinkKind, delivery: Delivery) -> SinkSpec {
    SinkSpec {
        name: name.to_owned(),
        kind,
        delivery,
    }
}

/// `base` with `tail` added to its path, unless the path already ends with it.
fn append_path(url: &mut Url, tail: &str) {
    let path = url.path().trim_end_matches('/').to_owned();
    if !path.ends_with(tail) {
        url.set_path(&format!("{path}/{tail}"));
    }
}

fn tls_spec(t: &TlsYaml) -> TlsSpec {
    TlsSpec {
        ca_file: t.ca_file.clone(),
        cert_file: t.cert_file.clone(),
        key_file: t.key_file.clone(),
        server_name: t.server_name.clone(),
    }
}

fn delivery(batch: &BatchYaml, buffer: &BufferYaml, retry: &RetryYaml, cli: &Cli) -> Delivery {
    let d = delivery_from_cli(cli);
    Delivery {
        batch: BatchSpec {
            max_lines: batch.max_lines.unwrap_or(d.batch.max_lines),
            max_bytes: batch.max_bytes.map_or(d.batch.max_bytes, |b| {
                usize::try_from(b).unwrap_or(usize::MAX)
            }),
            timeout: batch.timeout.unwrap_or(d.batch.timeout),
        },
        buffer: BufferSpec {
            max_bytes: buffer.max_bytes.unwrap_or(d.buffer.max_bytes),
            when_full: buffer.when_full.unwrap_or(d.buffer.when_full),
        },
        retry: RetrySpec {
            initial: retry.initial.unwrap_or(d.retry.initial),
            max: retry.max.unwrap_or(d.retry.max),
            max_retry_after: retry.max_retry_after.unwrap_or(d.retry.max_retry_after),
        },
    }
}

/// A password file: readable, not empty.
fn password_file(path: &std::path::Path, field: &str) -> Result<(), ConfigError> {
    sidecar_kit::config::require_readable(field, path)?;
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
        field: field.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    if text.trim().is_empty() {
        return Err(ConfigError::field(
            field,
            format!("{}: empty", path.display()),
        ));
    }
    Ok(())
}

/// The generic HTTP sink's checks, for a store sink.
fn http_part(
    name: &str,
    url: &str,
    common: &HttpCommon,
    cli: &Cli,
    prefix: &str,
) -> Result<(HttpSinkSpec, Delivery), ConfigError> {
    let fields = SinkFields::yaml(prefix);
    let checked = http_sink(
        name,
        url,
        &common.headers,
        common.gzip,
        common.token_file.clone(),
        common.tls.clone(),
        common.timeout.unwrap_or(cli.request_timeout),
        delivery(&common.batch, &common.buffer, &common.retry, cli),
        &fields,
    )?;
    match checked.kind {
        SinkKind::Http(http) => Ok((http, checked.delivery)),
        _ => Err(ConfigError::value(format!("sink {name}: not an HTTP sink"))),
    }
}

fn syslog(name: &str, y: &SyslogYaml, cli: &Cli, prefix: &str) -> Result<SinkSpec, ConfigError> {
    let field = |f: &str| format!("{prefix}.{f}");
    let (host, port) =
        parse_address(&y.address).map_err(|e| ConfigError::field(field("address"), e))?;
    let tls = tls_spec(&y.tls);
    let tls = match y.transport.unwrap_or(Transport::Tcp) {
        Transport::Tcp => {
            if tls != TlsSpec::default() {
                return Err(ConfigError::field(
                    field("tls"),
                    "give `transport: tls` to use it",
                ));
            }
            None
        }
        Transport::Tls => {
            if tls.ca_file.is_none() {
                return Err(ConfigError::field(
                    field("tls.ca_file"),
                    "TLS needs the CA bundle the receiver's certificate chains to",
                ));
            }
            check_tls(&tls, &field("tls"))?;
            Some(tls)
        }
    };
    let facility = match &y.facility {
        None => 1,
        Some(f) => FACILITIES
            .iter()
            .find(|(n, _)| n == f)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                ConfigError::field(
                    field("facility"),
                    format!("`{f}`: one of kern, user, mail, daemon, auth, ..., local0 to local7"),
                )
            })?,
    };
    let severity_default = match &y.severity {
        None => 6,
        Some(s) => severity(s).ok_or_else(|| {
            ConfigError::field(
                field("severity"),
                format!("`{s}`: 0-7 or emerg, alert, crit, err, warning, notice, info, debug"),
            )
        })?,
    };
    let (sd_id, sd_fields) = match &y.structured_data {
        None => (None, Vec::new()),
        Some(sd) => {
            check_sd_name(&sd.id)
                .map_err(|e| ConfigError::field(field("structured_data.id"), e))?;
            for f in &sd.fields {
                check_sd_name(f)
                    .map_err(|e| ConfigError::field(field("structured_data.fields"), e))?;
            }
            (Some(sd.id.clone()), sd.fields.clone())
        }
    };
    let delivery = delivery(&y.batch, &y.buffer, &y.retry, cli);
    if delivery.batch.max_lines == 0 || delivery.batch.max_bytes < 1024 {
        return Err(ConfigError::field(
            field("batch"),
            "at least 1 line and 1 KiB",
        ));
    }
    let least = 2 * delivery.batch.max_bytes as u64 + (64 << 10);
    if delivery.buffer.max_bytes != 0 && delivery.buffer.max_bytes < least {
        return Err(ConfigError::field(
            field("buffer.max_bytes"),
            format!("0 (no disk buffer) or at least {least} bytes (two batches)"),
        ));
    }
    let timeout = y.timeout.unwrap_or(cli.request_timeout);
    if timeout.is_zero() {
        return Err(ConfigError::field(field("timeout"), "must be more than 0"));
    }
    Ok(spec(
        name,
        SinkKind::Syslog(SyslogSpec {
            host,
            port,
            tls,
            format: FormatSpec {
                facility,
                severity: severity_default,
                severity_field: Some(y.severity_field.clone().unwrap_or_else(|| "level".into()))
                    .filter(|f| !f.is_empty()),
                app_name_field: y.app_name_field.clone(),
                app_name: y.app_name.clone().unwrap_or_else(|| "log-shipper".into()),
                hostname_field: Some(y.hostname_field.clone().unwrap_or_else(|| "host".into()))
                    .filter(|f| !f.is_empty()),
                hostname: crate::pipeline::enrich::hostname(),
                msgid: y.msgid.clone().unwrap_or_default(),
                sd_id,
                sd_fields,
            },
            timeout,
        }),
        delivery,
    ))
}
