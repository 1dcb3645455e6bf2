//! Flags or the YAML file into a [`Plan`]: names resolved, every piece checked.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::build::{
    RedactRule, SinkFields, check_name, enrich, event_bytes, http_sink, multiline, pairs, parser,
    redactor, timestamp,
};
use crate::config::cli::{Cli, ParserKind};
use crate::config::file::{self, FileConfig};
use crate::config::sinks::store_sink;
use crate::config::{ConfigError, Plan, inputs};
use crate::pipeline::PipelineSpec;
use crate::pipeline::parse::Parser;
use crate::sink::driver::Delivery;
use crate::sink::http::TlsSpec;
use crate::sink::{BatchSpec, BufferSpec, RetrySpec};

pub(super) fn plan_from_flags(cli: &Cli) -> Result<Plan, ConfigError> {
    let inputs = inputs::from_flags(cli, cli.max_event_bytes)?;
    let Some(url) = &cli.sink_url else {
        return Err(ConfigError::field(
            "--sink-url",
            "give the URL to send to, or --config",
        ));
    };
    let multiline = multiline(
        cli.multiline_preset,
        cli.multiline_start.as_deref(),
        cli.multiline_continue.as_deref(),
        cli.multiline_timeout,
        cli.multiline_max_lines,
        (
            "--multiline-start",
            "--multiline-continue",
            "--multiline-max-lines",
        ),
    )?;
    let parser = parser(
        cli.parser,
        cli.regex.as_deref(),
        &cli.message_key,
        "--regex",
    )?;
    let timestamp = cli
        .timestamp_field
        .as_ref()
        .map(|f| timestamp(f, &cli.timestamp_formats, "--timestamp-format"))
        .transpose()?;
    let statics = pairs(&cli.fields, "--field")?;
    let envs = pairs(&cli.env_fields, "--env-field")?;
    let enrich = enrich(
        &statics,
        &envs,
        &cli.host_field,
        &cli.file_field,
        "--env-field",
    )?;
    let mut rules: Vec<RedactRule> = cli
        .redact
        .iter()
        .map(|p| (None, Some(p.clone()), None, "--redact".to_owned()))
        .collect();
    rules.extend(
        cli.redact_presets
            .iter()
            .map(|p| (Some(*p), None, None, "--redact-preset".to_owned())),
    );
    let redact = redactor(&rules)?;
    let pipeline = PipelineSpec {
        name: "default".into(),
        multiline,
        parser,
        timestamp,
        enrich,
        redact,
        max_event_bytes: event_bytes(cli.max_event_bytes, "--max-event-bytes")?,
        sinks: vec!["default".into()],
    };
    let headers: BTreeMap<String, String> = cli
        .sink_headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| {
                    ConfigError::field("--sink-header", format!("`{h}` is not `Name: value`"))
                })
        })
        .collect::<Result<_, _>>()?;
    let tls = TlsSpec {
        ca_file: cli.ca_file.clone(),
        cert_file: cli.client_cert.clone(),
        key_file: cli.client_key.clone(),
        server_name: cli.server_name.clone(),
    };
    let sink = http_sink(
        "default",
        url,
        &headers,
        cli.gzip,
        cli.bearer_token_file.clone(),
        tls,
        cli.request_timeout,
        delivery_from_cli(cli),
        &SinkFields::flags(),
    )?;
    Ok(Plan {
        inputs,
        pipelines: BTreeMap::from([("default".to_owned(), Arc::new(pipeline))]),
        sinks: vec![sink],
    })
}

pub(super) fn delivery_from_cli(cli: &Cli) -> Delivery {
    Delivery {
        batch: BatchSpec {
            max_lines: cli.batch_lines,
            max_bytes: usize::try_from(cli.batch_bytes).unwrap_or(usize::MAX),
            timeout: cli.batch_timeout,
        },
        buffer: BufferSpec {
            max_bytes: cli.buffer_max_bytes,
            when_full: cli.buffer_when_full,
        },
        retry: RetrySpec {
            initial: cli.retry_initial,
            max: cli.retry_max,
            max_retry_after: cli.retry_after_max,
        },
    }
}

pub(super) fn plan_from_file(file: FileConfig, cli: &Cli) -> Result<Plan, ConfigError> {
    if file.inputs.is_empty() {
        return Err(ConfigError::field("inputs", "no input"));
    }
    let mut sinks = Vec::new();
    for (name, sink) in &file.sinks {
        let prefix = format!("sinks.{name}");
        check_name(name, &prefix)?;
        let file::SinkYaml::Http(h) = sink else {
            sinks.push(store_sink(name, sink, cli, &prefix)?);
            continue;
        };
        let defaults = delivery_from_cli(cli);
        let delivery = Delivery {
            batch: BatchSpec {
                max_lines: h.batch.max_lines.unwrap_or(defaults.batch.max_lines),
                max_bytes: h.batch.max_bytes.map_or(defaults.batch.max_bytes, |b| {
                    usize::try_from(b).unwrap_or(usize::MAX)
                }),
                timeout: h.batch.timeout.unwrap_or(defaults.batch.timeout),
            },
            buffer: BufferSpec {
                max_bytes: h.buffer.max_bytes.unwrap_or(defaults.buffer.max_bytes),
                when_full: h.buffer.when_full.unwrap_or(defaults.buffer.when_full),
            },
            retry: RetrySpec {
                initial: h.retry.initial.unwrap_or(defaults.retry.initial),
                max: h.retry.max.unwrap_or(defaults.retry.max),
                max_retry_after: h
                    .retry
                    .max_retry_after
                    .unwrap_or(defaults.retry.max_retry_after),
            },
        };
        let tls = TlsSpec {
            ca_file: h.tls.ca_file.clone(),
            cert_file: h.tls.cert_file.clone(),
            key_file: h.tls.key_file.clone(),
            server_name: h.tls.server_name.clone(),
        };
        sinks.push(http_sink(
            name,
            &h.url,
            &h.headers,
            h.gzip,
            h.token_file.clone(),
            tls,
            h.timeout.unwrap_or(cli.request_timeout),
            delivery,
            &SinkFields::yaml(&prefix),
        )?);
    }
    let mut pipelines = BTreeMap::new();
    for (name, p) in file.pipelines {
        let prefix = format!("pipelines.{name}");
        if p.sinks.is_empty() {
            return Err(ConfigError::field(format!("{prefix}.sinks"), "no sink"));
        }
        for (i, s) in p.sinks.iter().enumerate() {
            if !sinks.iter().any(|k| k.name == *s) {
                return Err(ConfigError::field(
                    format!("{prefix}.sinks[{i}]"),
                    format!("unknown sink `{s}`"),
                ));
            }
        }
        let multiline = match &p.multiline {
            None => None,
            Some(m) => multiline(
                m.preset,
                m.start.as_deref(),
                m.cont.as_deref(),
                m.timeout.unwrap_or(cli.multiline_timeout),
                m.max_lines.unwrap_or(cli.multiline_max_lines),
                (
                    &format!("{prefix}.multiline.start"),
                    &format!("{prefix}.multiline.continue"),
                    &format!("{prefix}.multiline.max_lines"),
                ),
            )?,
        };
        if p.multiline.is_some() && multiline.is_none() {
            return Err(ConfigError::field(
                format!("{prefix}.multiline"),
                "give one of preset, start, continue",
            ));
        }
        let parser = match p.parser {
            None | Some(file::ParserYaml::Raw) => Parser::Raw,
            Some(file::ParserYaml::Json { message_key }) => Parser::Json {
                message_key: message_key.unwrap_or_else(|| "message".into()),
            },
            Some(file::ParserYaml::Logfmt { message_key }) => Parser::Logfmt {
                message_key: message_key.unwrap_or_else(|| "message".into()),
            },
            Some(file::ParserYaml::Regex { pattern }) => parser(
                ParserKind::Regex,
                Some(&pattern),
                "message",
                &format!("{prefix}.parser.pattern"),
            )?,
        };
        let timestamp = p
            .timestamp
            .as_ref()
            .map(|t| {
                let formats = t.formats.clone().unwrap_or_else(|| vec!["rfc3339".into()]);
                timestamp(&t.field, &formats, &format!("{prefix}.timestamp.formats"))
            })
            .transpose()?;
        let enrich = match &p.fields {
            Some(f) => {
                let statics: Vec<(String, String)> = f.fixed.clone().into_iter().collect();
                let envs: Vec<(String, String)> = f.env.clone().into_iter().collect();
                enrich(
                    &statics,
                    &envs,
                    f.host.as_deref().unwrap_or("host"),
                    f.file.as_deref().unwrap_or("file"),
                    &format!("{prefix}.fields.env"),
                )?
            }
            None => enrich(&[], &[], "host", "file", "")?,
        };
        let rules: Vec<_> = p
            .redact
            .iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    r.preset,
                    r.pattern.clone(),
                    r.replacement.clone(),
                    format!("{prefix}.redact[{i}]"),
                )
            })
            .collect();
        let redact = redactor(&rules)?;
        let max_event_bytes = event_bytes(
            p.max_event_bytes.unwrap_or(cli.max_event_bytes),
            &format!("{prefix}.max_event_bytes"),
        )?;
        pipelines.insert(
            name.clone(),
            Arc::new(PipelineSpec {
                name,
                multiline,
                parser,
                timestamp,
                enrich,
                redact,
                max_event_bytes,
                sinks: p.sinks,
            }),
        );
    }
    let inputs = inputs::from_file(file.inputs, &pipelines, cli)?;
    Ok(Plan {
        inputs,
        pipelines,
        sinks,
    })
}
