//! The pieces of a plan, each checked, with errors naming the flag or the YAML field.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sidecar_kit::config::require_readable;

use crate::config::ConfigError;
use crate::config::cli::{FileFormat, ParserKind, PresetArg, RedactPresetArg, StartAt, WatchMode};
use crate::pipeline::enrich::{Enrich, hostname};
use crate::pipeline::multiline::{MultilineSpec, Preset, Rule};
use crate::pipeline::parse::Parser;
use crate::pipeline::redact::{RedactPreset, Redactor};
use crate::pipeline::timestamp::{Format, TimestampSpec};
use crate::sink::driver::Delivery;
use crate::sink::http::{HttpSinkSpec, TlsSpec};
use crate::sink::{SinkKind, SinkSpec};
use crate::source::file::FileInputSpec;
use crate::source::file::discover::{DEFAULT_EXCLUDE, Globs};

pub(super) fn check_name(name: &str, field: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return Err(ConfigError::field(
            field,
            "a name is letters, digits, `-`, `_` and `.`",
        ));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn file_input(
    name: &str,
    include: &[String],
    exclude: Option<&Vec<String>>,
    format: FileFormat,
    start_at: StartAt,
    watch: WatchMode,
    poll_interval: Duration,
    rotate_wait: Duration,
    max_line: u64,
    field: &str,
) -> Result<FileInputSpec, ConfigError> {
    if include.is_empty() {
        return Err(ConfigError::field(field, "no file pattern"));
    }
    let exclude: Vec<String> = match exclude {
        Some(e) => e.clone(),
        None => DEFAULT_EXCLUDE.iter().map(|s| (*s).to_owned()).collect(),
    };
    let globs = Globs::new(include.to_vec(), &exclude).map_err(|e| ConfigError::field(field, e))?;
    if poll_interval.is_zero() {
        return Err(ConfigError::field(
            field,
            "poll interval must be more than 0",
        ));
    }
    Ok(FileInputSpec {
        name: name.to_owned(),
        globs,
        start_at_end: start_at == StartAt::End,
        poll_interval,
        rotate_wait,
        watch_events: watch == WatchMode::Events,
        max_line_bytes: usize::try_from(max_line).unwrap_or(usize::MAX),
        format: format.into(),
    })
}

pub(super) fn event_bytes(n: u64, field: &str) -> Result<usize, ConfigError> {
    if n < 64 {
        return Err(ConfigError::field(field, "at least 64 bytes"));
    }
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

pub(super) fn regex(pattern: &str, field: &str) -> Result<Regex, ConfigError> {
    Regex::new(pattern).map_err(|e| ConfigError::field(field, format!("invalid regex: {e}")))
}

pub(super) fn multiline(
    preset: Option<PresetArg>,
    start: Option<&str>,
    cont: Option<&str>,
    timeout: Duration,
    max_lines: usize,
    fields: (&str, &str, &str),
) -> Result<Option<MultilineSpec>, ConfigError> {
    let rule = match (preset, start, cont) {
        (None, None, None) => return Ok(None),
        (Some(p), None, None) => Preset::from(p).rule(),
        (None, Some(s), None) => Rule::Start(regex(s, fields.0)?),
        (None, None, Some(c)) => Rule::Continue(regex(c, fields.1)?),
        _ => {
            return Err(ConfigError::field(
                fields.0,
                "give one of a preset, a start pattern, a continue pattern",
            ));
        }
    };
    if max_lines == 0 {
        return Err(ConfigError::field(fields.2, "at least 1"));
    }
    Ok(Some(MultilineSpec {
        rule,
        timeout,
        max_lines,
    }))
}

pub(super) fn parser(
    kind: ParserKind,
    pattern: Option<&str>,
    message_key: &str,
    field: &str,
) -> Result<Parser, ConfigError> {
    Ok(match kind {
        ParserKind::Raw => Parser::Raw,
        ParserKind::Json => Parser::Json {
            message_key: message_key.to_owned(),
        },
        ParserKind::Logfmt => Parser::Logfmt {
            message_key: message_key.to_owned(),
        },
        ParserKind::Regex => {
            let Some(p) = pattern else {
                return Err(ConfigError::field(
                    field,
                    "the regex parser needs a pattern",
                ));
            };
            let re = regex(p, field)?;
            if re.capture_names().flatten().next().is_none() {
                return Err(ConfigError::field(
                    field,
                    "the pattern has no named capture (?P<name>...)",
                ));
            }
            Parser::Regex(re)
        }
    })
}

pub(super) fn timestamp(
    field_name: &str,
    formats: &[String],
    field: &str,
) -> Result<TimestampSpec, ConfigError> {
    let formats = formats
        .iter()
        .map(|f| Format::parse(f).map_err(|e| ConfigError::field(field, e)))
        .collect::<Result<Vec<_>, _>>()?;
    if formats.is_empty() {
        return Err(ConfigError::field(field, "no format"));
    }
    Ok(TimestampSpec {
        field: field_name.to_owned(),
        formats,
    })
}

pub(super) fn pairs(items: &[String], field: &str) -> Result<Vec<(String, String)>, ConfigError> {
    items
        .iter()
        .map(|i| {
            i.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| ConfigError::field(field, format!("`{i}` is not name=value")))
        })
        .collect()
}

pub(super) fn enrich(
    statics: &[(String, String)],
    envs: &[(String, String)],
    host_field: &str,
    file_field: &str,
    env_field: &str,
) -> Result<Enrich, ConfigError> {
    let mut fields: Vec<(String, serde_json::Value)> = statics
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    for (k, var) in envs {
        let value = std::env::var(var).map_err(|_| {
            ConfigError::field(
                env_field,
                format!("field `{k}`: the environment variable {var} is not set"),
            )
        })?;
        fields.push((k.clone(), serde_json::Value::String(value)));
    }
    if !host_field.is_empty() {
        fields.push((host_field.to_owned(), serde_json::Value::String(hostname())));
    }
    Ok(Enrich {
        fields,
        file_field: (!file_field.is_empty()).then(|| file_field.to_owned()),
    })
}

pub(super) type RedactRule = (
    Option<RedactPresetArg>,
    Option<String>,
    Option<String>,
    String,
);

pub(super) fn redactor(rules: &[RedactRule]) -> Result<Redactor, ConfigError> {
    let mut r = Redactor::default();
    for (preset, pattern, replacement, field) in rules {
        match (preset, pattern) {
            (Some(p), None) => r.add_preset(match p {
                RedactPresetArg::Card => RedactPreset::Card,
                RedactPresetArg::Bearer => RedactPreset::Bearer,
                RedactPresetArg::Secrets => RedactPreset::Secrets,
            }),
            (None, Some(p)) => {
                let pattern_field = if field.starts_with("--") {
                    field.clone()
                } else {
                    format!("{field}.pattern")
                };
                r.add_pattern(
                    regex(p, &pattern_field)?,
                    replacement.clone().unwrap_or_else(|| "[REDACTED]".into()),
                );
            }
            _ => {
                return Err(ConfigError::field(
                    field.as_str(),
                    "give either preset or pattern",
                ));
            }
        }
    }
    Ok(r)
}

/// How a sink's settings are named in errors.
pub(super) struct SinkFields {
    url: String,
    headers: String,
    token: String,
    tls: String,
    batch: String,
    buffer: String,
}

impl SinkFields {
    pub(super) fn flags() -> Self {
        Self {
            url: "--sink-url".into(),
            headers: "--sink-header".into(),
            token: "--bearer-token-file".into(),
            tls: "--ca-file/--client-cert/--client-key".into(),
            batch: "--batch-lines/--batch-bytes".into(),
            buffer: "--buffer-max-bytes".into(),
        }
    }

    pub(super) fn yaml(prefix: &str) -> Self {
        Self {
            url: format!("{prefix}.url"),
            headers: format!("{prefix}.headers"),
            token: format!("{prefix}.token_file"),
            tls: format!("{prefix}.tls"),
            batch: format!("{prefix}.batch"),
            buffer: format!("{prefix}.buffer.max_bytes"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn http_sink(
    name: &str,
    url: &str,
    headers: &BTreeMap<String, String>,
    gzip: bool,
    token_file: Option<PathBuf>,
    tls: TlsSpec,
    timeout: Duration,
    delivery: Delivery,
    fields: &SinkFields,
) -> Result<SinkSpec, ConfigError> {
    let url = reqwest::Url::parse(url)
        .map_err(|e| ConfigError::field(&fields.url, format!("`{url}`: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::field(
            &fields.url,
            "an http:// or https:// URL with a host",
        ));
    }
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| ConfigError::field(&fields.headers, format!("`{k}`: {e}")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|e| ConfigError::field(&fields.headers, format!("`{k}`: {e}")))?;
        map.insert(name, value);
    }
    if let Some(path) = &token_file {
        require_readable(&fields.token, path)?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::field(&fields.token, format!("{}: {e}", path.display())))?;
        if text.trim().is_empty() {
            return Err(ConfigError::field(
                &fields.token,
                format!("{}: empty", path.display()),
            ));
        }
    }
    check_tls(&tls, &fields.tls)?;
    if delivery.batch.max_lines == 0 || delivery.batch.max_bytes < 1024 {
        return Err(ConfigError::field(
            &fields.batch,
            "at least 1 line and 1 KiB",
        ));
    }
    let b = delivery.buffer.max_bytes;
    let least = 2 * delivery.batch.max_bytes as u64 + (64 << 10);
    if b != 0 && b < least {
        return Err(ConfigError::field(
            &fields.buffer,
            format!("0 (no disk buffer) or at least {least} bytes (two batches)"),
        ));
    }
    Ok(SinkSpec {
        name: name.to_owned(),
        kind: SinkKind::Http(HttpSinkSpec {
            url,
            headers: map,
            gzip,
            token_file,
            tls,
            timeout,
        }),
        delivery,
    })
}

pub(super) fn check_tls(tls: &TlsSpec, field: &str) -> Result<(), ConfigError> {
    use sidecar_kit::tls::{Identity, TrustBundle, check_credentials};
    let fail = |e: &dyn std::fmt::Display| ConfigError::field(field, e);
    for path in [&tls.cert_file, &tls.key_file, &tls.ca_file]
        .into_iter()
        .flatten()
    {
        require_readable(field, path)?;
    }
    match (&tls.cert_file, &tls.key_file, &tls.ca_file) {
        (Some(cert), Some(key), Some(ca)) => {
            let identity = Identity::load(cert, key).map_err(|e| fail(&e))?;
            let bundle = TrustBundle::load(ca).map_err(|e| fail(&e))?;
            check_credentials(&identity, &bundle, std::time::SystemTime::now())
                .map_err(|e| fail(&e))?;
        }
        (Some(_), Some(_), None) => return Err(fail(&"mTLS needs the CA bundle too")),
        (None, None, Some(ca)) => {
            TrustBundle::load(ca).map_err(|e| fail(&e))?;
        }
        (None, None, None) => {}
        _ => return Err(fail(&"give both the client certificate and its key")),
    }
    Ok(())
}
