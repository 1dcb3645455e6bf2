//! The configuration: flags (one input, one pipeline, one sink) or the YAML file (several),
//! checked in full before anything starts. A bad value is an error naming the flag or the
//! file's field, and the process exits with code 64; a bad file on reload keeps the old one.

pub mod cli;
pub mod file;
pub mod units;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use sidecar_kit::SidecarInfo;

use crate::pipeline::enrich::{Enrich, hostname};
use crate::pipeline::multiline::{MultilineSpec, Preset, Rule};
use crate::pipeline::parse::Parser;
use crate::pipeline::redact::{RedactPreset, Redactor};
use crate::pipeline::timestamp::{Format, TimestampSpec};
use crate::pipeline::{FormatSpec, PipelineSpec};
use crate::sink::driver::Delivery;
use crate::sink::http::{HttpSinkSpec, TlsSpec};
use crate::sink::{BatchSpec, BufferSpec, RetrySpec, SinkKind, SinkSpec};
use crate::source::file::FileInputSpec;
use crate::source::file::discover::{DEFAULT_EXCLUDE, Globs};
pub use cli::Cli;
use cli::{ParserKind, PresetArg, RedactPresetArg, StartAt, WatchMode};
use file::FileConfig;

pub const INFO: SidecarInfo = SidecarInfo {
    name: "log-shipper",
    env_prefix: "LOG_SHIPPER",
    admin_port: 9904,
    version: env!("CARGO_PKG_VERSION"),
    description: "Ships an app's log files to central stores, at least once: a line is let go only when every sink has it",
    worker_threads: 0,
};

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// One setting: `--redact`, `pipelines.app.redact[0].pattern`.
    #[error("{field}: {message}")]
    Field { field: String, message: String },
    /// The YAML file (its errors name the file, line and field).
    #[error(transparent)]
    File(#[from] sidecar_kit::config::ConfigError),
}

fn err(field: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        message: message.to_string(),
    }
}

/// One input and the pipeline it feeds.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub pipeline: String,
    pub kind: InputKind,
}

#[derive(Debug, Clone)]
pub enum InputKind {
    File(FileInputSpec),
}

impl InputSpec {
    pub fn name(&self) -> &str {
        match &self.kind {
            InputKind::File(f) => &f.name,
        }
    }
}

/// What runs: inputs, pipelines, sinks. Replaced whole on a reload.
#[derive(Debug, Clone)]
pub struct Plan {
    pub inputs: Vec<InputSpec>,
    pub pipelines: BTreeMap<String, Arc<PipelineSpec>>,
    pub sinks: Vec<SinkSpec>,
}

/// The state directory, locked for this process.
#[derive(Debug)]
pub struct StateDir {
    pub path: PathBuf,
    _lock: nix::fcntl::Flock<File>,
}

impl StateDir {
    /// Creates, locks and checks the directory; another shipper on it is an error.
    pub fn open(path: &Path) -> Result<Self, ConfigError> {
        let field = "--state-dir";
        let fail = |e: &dyn std::fmt::Display| err(field, format!("{}: {e}", path.display()));
        std::fs::create_dir_all(path).map_err(|e| fail(&e))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join("lock"))
            .map_err(|e| fail(&e))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| fail(&format!("in use by another log-shipper ({e})")))?;
        let probe = path.join(".write-check");
        std::fs::write(&probe, b"ok").map_err(|e| fail(&format!("not writable: {e}")))?;
        std::fs::remove_file(&probe).map_err(|e| fail(&e))?;
        Ok(Self {
            path: path.to_owned(),
            _lock: lock,
        })
    }
}

/// Everything the service needs.
#[derive(Debug)]
pub struct Config {
    pub state: StateDir,
    pub plan: Plan,
    /// The YAML file, watched for reloads.
    pub config_file: Option<PathBuf>,
    pub checkpoint_interval: Duration,
    /// Time the shutdown may take to flush (the kit's grace, less its delay and a margin).
    pub flush_time: Duration,
    /// Flags, the defaults of the YAML file's settings (kept for reloads).
    pub cli: Cli,
}

impl Config {
    pub fn from_cli(cli: &Cli) -> Result<Self, ConfigError> {
        let plan = match &cli.kit.config {
            Some(path) => {
                if !cli.files.is_empty() {
                    return Err(err(
                        "--file",
                        "give the files in --config's inputs, or --file without --config",
                    ));
                }
                if cli.sink_url.is_some() {
                    return Err(err(
                        "--sink-url",
                        "give the sinks in --config's sinks, or --sink-url without --config",
                    ));
                }
                load_file(path, cli)?
            }
            None => plan_from_flags(cli)?,
        };
        if cli.checkpoint_interval.is_zero() {
            return Err(err("--checkpoint-interval", "must be more than 0"));
        }
        let state = StateDir::open(&cli.state_dir)?;
        let margin = Duration::from_secs(1);
        let flush_time = cli
            .kit
            .shutdown_grace
            .saturating_sub(cli.kit.shutdown_delay)
            .saturating_sub(margin)
            .max(Duration::from_millis(500));
        Ok(Self {
            state,
            plan,
            config_file: cli.kit.config.clone(),
            checkpoint_interval: cli.checkpoint_interval,
            flush_time,
            cli: cli.clone(),
        })
    }
}

/// Reads and checks the YAML file (at start and on reload).
pub fn load_file(path: &Path, cli: &Cli) -> Result<Plan, ConfigError> {
    let file: FileConfig = sidecar_kit::config::load_yaml(path)?;
    let origin = path.display().to_string();
    plan_from_file(file, cli).map_err(|e| match e {
        ConfigError::Field { field, message } => err(format!("{origin}: {field}"), message),
        other => other,
    })
}

fn plan_from_flags(cli: &Cli) -> Result<Plan, ConfigError> {
    if cli.files.is_empty() {
        return Err(err(
            "--file",
            "give the files to read (a glob), or --config",
        ));
    }
    let Some(url) = &cli.sink_url else {
        return Err(err("--sink-url", "give the URL to send to, or --config"));
    };
    let input = file_input(
        "files",
        &cli.files,
        Some(&cli.exclude).filter(|e| !e.is_empty()),
        cli.start_at,
        cli.watch,
        cli.poll_interval,
        cli.rotate_wait,
        cli.max_event_bytes,
        "--file",
    )?;
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
        format: FormatSpec::Raw,
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
                .ok_or_else(|| err("--sink-header", format!("`{h}` is not `Name: value`")))
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
        inputs: vec![InputSpec {
            pipeline: "default".into(),
            kind: InputKind::File(input),
        }],
        pipelines: BTreeMap::from([("default".to_owned(), Arc::new(pipeline))]),
        sinks: vec![sink],
    })
}

fn delivery_from_cli(cli: &Cli) -> Delivery {
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

fn plan_from_file(file: FileConfig, cli: &Cli) -> Result<Plan, ConfigError> {
    if file.inputs.is_empty() {
        return Err(err("inputs", "no input"));
    }
    let mut sinks = Vec::new();
    for (name, sink) in &file.sinks {
        let prefix = format!("sinks.{name}");
        check_name(name, &prefix)?;
        let file::SinkYaml::Http(h) = sink;
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
            return Err(err(format!("{prefix}.sinks"), "no sink"));
        }
        for (i, s) in p.sinks.iter().enumerate() {
            if !sinks.iter().any(|k| k.name == *s) {
                return Err(err(
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
            return Err(err(
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
                format: FormatSpec::Raw,
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
    let mut inputs = Vec::new();
    for (name, input) in file.inputs {
        let prefix = format!("inputs.{name}");
        check_name(&name, &prefix)?;
        let file::InputYaml::File(f) = input;
        let pipeline = f.pipeline.clone().unwrap_or_else(|| "default".into());
        let Some(spec) = pipelines.get(&pipeline) else {
            return Err(err(
                format!("{prefix}.pipeline"),
                format!("unknown pipeline `{pipeline}`"),
            ));
        };
        let spec = file_input(
            &name,
            &f.include,
            f.exclude.as_ref(),
            f.start_at.unwrap_or(cli.start_at),
            f.watch.unwrap_or(cli.watch),
            f.poll_interval.unwrap_or(cli.poll_interval),
            f.rotate_wait.unwrap_or(cli.rotate_wait),
            spec.max_event_bytes as u64,
            &format!("{prefix}.include"),
        )?;
        inputs.push(InputSpec {
            pipeline,
            kind: InputKind::File(spec),
        });
    }
    Ok(Plan {
        inputs,
        pipelines,
        sinks,
    })
}

fn check_name(name: &str, field: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return Err(err(field, "a name is letters, digits, `-`, `_` and `.`"));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn file_input(
    name: &str,
    include: &[String],
    exclude: Option<&Vec<String>>,
    start_at: StartAt,
    watch: WatchMode,
    poll_interval: Duration,
    rotate_wait: Duration,
    max_line: u64,
    field: &str,
) -> Result<FileInputSpec, ConfigError> {
    if include.is_empty() {
        return Err(err(field, "no file pattern"));
    }
    let exclude: Vec<String> = match exclude {
        Some(e) => e.clone(),
        None => DEFAULT_EXCLUDE.iter().map(|s| (*s).to_owned()).collect(),
    };
    let globs = Globs::new(include.to_vec(), &exclude).map_err(|e| err(field, e))?;
    if poll_interval.is_zero() {
        return Err(err(field, "poll interval must be more than 0"));
    }
    Ok(FileInputSpec {
        name: name.to_owned(),
        globs,
        start_at_end: start_at == StartAt::End,
        poll_interval,
        rotate_wait,
        watch_events: watch == WatchMode::Events,
        max_line_bytes: usize::try_from(max_line).unwrap_or(usize::MAX),
    })
}

fn event_bytes(n: u64, field: &str) -> Result<usize, ConfigError> {
    if n < 64 {
        return Err(err(field, "at least 64 bytes"));
    }
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

fn regex(pattern: &str, field: &str) -> Result<Regex, ConfigError> {
    Regex::new(pattern).map_err(|e| err(field, format!("invalid regex: {e}")))
}

fn multiline(
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
            return Err(err(
                fields.0,
                "give one of a preset, a start pattern, a continue pattern",
            ));
        }
    };
    if max_lines == 0 {
        return Err(err(fields.2, "at least 1"));
    }
    Ok(Some(MultilineSpec {
        rule,
        timeout,
        max_lines,
    }))
}

fn parser(
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
                return Err(err(field, "the regex parser needs a pattern"));
            };
            let re = regex(p, field)?;
            if re.capture_names().flatten().next().is_none() {
                return Err(err(field, "the pattern has no named capture (?P<name>...)"));
            }
            Parser::Regex(re)
        }
    })
}

fn timestamp(
    field_name: &str,
    formats: &[String],
    field: &str,
) -> Result<TimestampSpec, ConfigError> {
    let formats = formats
        .iter()
        .map(|f| Format::parse(f).map_err(|e| err(field, e)))
        .collect::<Result<Vec<_>, _>>()?;
    if formats.is_empty() {
        return Err(err(field, "no format"));
    }
    Ok(TimestampSpec {
        field: field_name.to_owned(),
        formats,
    })
}

fn pairs(items: &[String], field: &str) -> Result<Vec<(String, String)>, ConfigError> {
    items
        .iter()
        .map(|i| {
            i.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| err(field, format!("`{i}` is not name=value")))
        })
        .collect()
}

fn enrich(
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
            err(
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

type RedactRule = (
    Option<RedactPresetArg>,
    Option<String>,
    Option<String>,
    String,
);

fn redactor(rules: &[RedactRule]) -> Result<Redactor, ConfigError> {
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
            _ => return Err(err(field.as_str(), "give either preset or pattern")),
        }
    }
    Ok(r)
}

/// How a sink's settings are named in errors.
struct SinkFields {
    url: String,
    headers: String,
    token: String,
    tls: String,
    batch: String,
    buffer: String,
}

impl SinkFields {
    fn flags() -> Self {
        Self {
            url: "--sink-url".into(),
            headers: "--sink-header".into(),
            token: "--bearer-token-file".into(),
            tls: "--ca-file/--client-cert/--client-key".into(),
            batch: "--batch-lines/--batch-bytes".into(),
            buffer: "--buffer-max-bytes".into(),
        }
    }

    fn yaml(prefix: &str) -> Self {
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
fn http_sink(
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
    let url = reqwest::Url::parse(url).map_err(|e| err(&fields.url, format!("`{url}`: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(err(&fields.url, "an http:// or https:// URL with a host"));
    }
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| err(&fields.headers, format!("`{k}`: {e}")))?;
        let value =
            HeaderValue::from_str(v).map_err(|e| err(&fields.headers, format!("`{k}`: {e}")))?;
        map.insert(name, value);
    }
    if let Some(path) = &token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(&fields.token, format!("{}: {e}", path.display())))?;
        if text.trim().is_empty() {
            return Err(err(&fields.token, format!("{}: empty", path.display())));
        }
    }
    check_tls(&tls, &fields.tls)?;
    if delivery.batch.max_lines == 0 || delivery.batch.max_bytes < 1024 {
        return Err(err(&fields.batch, "at least 1 line and 1 KiB"));
    }
    let b = delivery.buffer.max_bytes;
    let least = 2 * delivery.batch.max_bytes as u64 + (64 << 10);
    if b != 0 && b < least {
        return Err(err(
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

fn check_tls(tls: &TlsSpec, field: &str) -> Result<(), ConfigError> {
    use sidecar_kit::tls::{Identity, TrustBundle, check_credentials};
    let fail = |e: &dyn std::fmt::Display| err(field, e);
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
