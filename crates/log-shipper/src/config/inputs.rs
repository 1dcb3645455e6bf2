//! Inputs from flags or from the YAML file: files, the HTTP receiver, the syslog receiver.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::config::build::{check_name, file_input};
use crate::config::cli::Cli;
use crate::config::file::{HttpInputYaml, InputYaml, SyslogInputYaml};
use crate::config::{ConfigError, InputKind, InputSpec};
use crate::pipeline::PipelineSpec;
use crate::source::http::HttpInputSpec;
use crate::source::syslog::SyslogInputSpec;

/// With `--config`, the inputs are the file's: input flags are refused rather than ignored.
pub(super) fn no_input_flags(cli: &Cli) -> Result<(), ConfigError> {
    let given = [
        ("--file", !cli.files.is_empty()),
        ("--http-listen", cli.http_listen.is_some()),
        ("--syslog-tcp", cli.syslog_tcp.is_some()),
        ("--syslog-udp", cli.syslog_udp.is_some()),
    ];
    match given.iter().find(|(_, set)| *set) {
        Some((flag, _)) => Err(ConfigError::field(
            *flag,
            format!("give the inputs in --config's inputs, or {flag} without --config"),
        )),
        None => Ok(()),
    }
}

/// The inputs the flags give, all to the pipeline `default`.
pub(super) fn from_flags(cli: &Cli, max_event_bytes: u64) -> Result<Vec<InputSpec>, ConfigError> {
    let mut inputs = Vec::new();
    if !cli.files.is_empty() {
        let spec = file_input(
            "files",
            &cli.files,
            Some(&cli.exclude).filter(|e| !e.is_empty()),
            cli.format,
            cli.start_at,
            cli.watch,
            cli.poll_interval,
            cli.rotate_wait,
            max_event_bytes,
            "--file",
        )?;
        inputs.push(InputKind::File(spec));
    }
    if let Some(address) = &cli.http_listen {
        inputs.push(InputKind::Http(http(
            "http",
            address,
            cli.http_max_body_bytes,
            cli.http_max_in_flight_bytes,
            cli.http_ack_timeout,
            &cli.message_key,
            max_event_bytes,
            &HttpFields::flags(),
        )?));
    }
    if cli.syslog_tcp.is_some() || cli.syslog_udp.is_some() {
        inputs.push(InputKind::Syslog(syslog(
            "syslog",
            cli.syslog_tcp.as_deref(),
            cli.syslog_udp.as_deref(),
            cli.syslog_max_connections,
            max_event_bytes,
            ("--syslog-tcp", "--syslog-udp", "--syslog-max-connections"),
        )?));
    }
    if inputs.is_empty() {
        return Err(ConfigError::field(
            "--file",
            "give the files to read (a glob), a receiver (--http-listen, --syslog-tcp, --syslog-udp), or --config",
        ));
    }
    let inputs: Vec<InputSpec> = inputs
        .into_iter()
        .map(|kind| InputSpec {
            pipeline: "default".into(),
            kind,
        })
        .collect();
    distinct_addresses(&inputs)?;
    Ok(inputs)
}

/// The inputs of the YAML file; their pipelines must exist.
pub(super) fn from_file(
    file_inputs: BTreeMap<String, InputYaml>,
    pipelines: &BTreeMap<String, Arc<PipelineSpec>>,
    cli: &Cli,
) -> Result<Vec<InputSpec>, ConfigError> {
    let mut inputs = Vec::new();
    for (name, input) in file_inputs {
        let prefix = format!("inputs.{name}");
        check_name(&name, &prefix)?;
        let pipeline = match &input {
            InputYaml::File(f) => f.pipeline.clone(),
            InputYaml::Http(h) => h.pipeline.clone(),
            InputYaml::Syslog(s) => s.pipeline.clone(),
        }
        .unwrap_or_else(|| "default".into());
        let Some(spec) = pipelines.get(&pipeline) else {
            return Err(ConfigError::field(
                format!("{prefix}.pipeline"),
                format!("unknown pipeline `{pipeline}`"),
            ));
        };
        let max_event = spec.max_event_bytes as u64;
        let kind = match input {
            InputYaml::File(f) => InputKind::File(file_input(
                &name,
                &f.include,
                f.exclude.as_ref(),
                f.format.unwrap_or(cli.format),
                f.start_at.unwrap_or(cli.start_at),
                f.watch.unwrap_or(cli.watch),
                f.poll_interval.unwrap_or(cli.poll_interval),
                f.rotate_wait.unwrap_or(cli.rotate_wait),
                max_event,
                &format!("{prefix}.include"),
            )?),
            InputYaml::Http(h) => InputKind::Http(http_yaml(&name, &h, cli, max_event, &prefix)?),
            InputYaml::Syslog(s) => {
                InputKind::Syslog(syslog_yaml(&name, &s, cli, max_event, &prefix)?)
            }
        };
        inputs.push(InputSpec { pipeline, kind });
    }
    distinct_addresses(&inputs)?;
    Ok(inputs)
}

fn http_yaml(
    name: &str,
    h: &HttpInputYaml,
    cli: &Cli,
    max_event: u64,
    prefix: &str,
) -> Result<HttpInputSpec, ConfigError> {
    http(
        name,
        &h.address,
        h.max_body_bytes.unwrap_or(cli.http_max_body_bytes),
        h.max_in_flight_bytes
            .unwrap_or(cli.http_max_in_flight_bytes),
        h.ack_timeout.unwrap_or(cli.http_ack_timeout),
        h.message_key.as_deref().unwrap_or(&cli.message_key),
        max_event,
        &HttpFields::yaml(prefix),
    )
}

fn syslog_yaml(
    name: &str,
    s: &SyslogInputYaml,
    cli: &Cli,
    max_event: u64,
    prefix: &str,
) -> Result<SyslogInputSpec, ConfigError> {
    syslog(
        name,
        s.tcp.as_deref(),
        s.udp.as_deref(),
        s.max_connections.unwrap_or(cli.syslog_max_connections),
        max_event,
        (
            &format!("{prefix}.tcp"),
            &format!("{prefix}.udp"),
            &format!("{prefix}.max_connections"),
        ),
    )
}

struct HttpFields {
    address: String,
    body: String,
    in_flight: String,
    timeout: String,
}

impl HttpFields {
    fn flags() -> Self {
        Self {
            address: "--http-listen".into(),
            body: "--http-max-body-bytes".into(),
            in_flight: "--http-max-in-flight-bytes".into(),
            timeout: "--http-ack-timeout".into(),
        }
    }

    fn yaml(prefix: &str) -> Self {
        Self {
            address: format!("{prefix}.address"),
            body: format!("{prefix}.max_body_bytes"),
            in_flight: format!("{prefix}.max_in_flight_bytes"),
            timeout: format!("{prefix}.ack_timeout"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn http(
    name: &str,
    address: &str,
    max_body: u64,
    max_in_flight: u64,
    ack_timeout: Duration,
    message_key: &str,
    max_event: u64,
    fields: &HttpFields,
) -> Result<HttpInputSpec, ConfigError> {
    let address = listen_address(address, &fields.address)?;
    if max_body < 1024 {
        return Err(ConfigError::field(&fields.body, "at least 1KiB"));
    }
    if max_in_flight < max_body {
        return Err(ConfigError::field(
            &fields.in_flight,
            format!("at least the largest body ({max_body} bytes), or no body fits"),
        ));
    }
    if ack_timeout.is_zero() {
        return Err(ConfigError::field(&fields.timeout, "must be more than 0"));
    }
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    Ok(HttpInputSpec {
        name: name.to_owned(),
        address,
        max_body_bytes: size(max_body),
        max_in_flight_bytes: size(max_in_flight),
        ack_timeout,
        message_key: message_key.to_owned(),
        max_line_bytes: size(max_event),
    })
}

fn syslog(
    name: &str,
    tcp: Option<&str>,
    udp: Option<&str>,
    max_connections: usize,
    max_event: u64,
    fields: (&str, &str, &str),
) -> Result<SyslogInputSpec, ConfigError> {
    if tcp.is_none() && udp.is_none() {
        return Err(ConfigError::field(
            fields.0,
            "give a TCP or a UDP address (or both)",
        ));
    }
    if max_connections == 0 {
        return Err(ConfigError::field(fields.2, "at least 1"));
    }
    Ok(SyslogInputSpec {
        name: name.to_owned(),
        tcp: tcp.map(|a| listen_address(a, fields.0)).transpose()?,
        udp: udp.map(|a| listen_address(a, fields.1)).transpose()?,
        max_message_bytes: usize::try_from(max_event).unwrap_or(usize::MAX),
        max_connections,
    })
}

/// `127.0.0.1:9880`, `[::1]:9880`, `localhost:9880` (127.0.0.1), or `:9880` (127.0.0.1: the
/// receivers are for the pod's own containers).
fn listen_address(text: &str, field: &str) -> Result<SocketAddr, ConfigError> {
    let t = text.trim();
    let loopback = |port: &str| -> Option<SocketAddr> {
        Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            port.parse().ok()?,
        ))
    };
    let parsed = if let Some(port) = t.strip_prefix("localhost:") {
        loopback(port)
    } else if let Some(port) = t.strip_prefix(':') {
        loopback(port)
    } else {
        t.parse().ok()
    };
    parsed.ok_or_else(|| {
        ConfigError::field(
            field,
            format!("`{text}` is not an address to listen on (e.g. 127.0.0.1:9880)"),
        )
    })
}

/// Two receivers on one address would fail to start; say which setting at start.
fn distinct_addresses(inputs: &[InputSpec]) -> Result<(), ConfigError> {
    let mut seen: Vec<(&str, SocketAddr, &str)> = Vec::new();
    for input in inputs {
        let mine: Vec<(&str, SocketAddr)> = match &input.kind {
            InputKind::File(_) => Vec::new(),
            InputKind::Http(h) => vec![("tcp", h.address)],
            InputKind::Syslog(s) => s
                .tcp
                .map(|a| ("tcp", a))
                .into_iter()
                .chain(s.udp.map(|a| ("udp", a)))
                .collect(),
        };
        for (proto, addr) in mine {
            if let Some((_, _, other)) = seen.iter().find(|(p, a, _)| *p == proto && *a == addr) {
                return Err(ConfigError::field(
                    format!("inputs.{}", input.name()),
                    format!("{proto} {addr} is the address of input `{other}` too"),
                ));
            }
            seen.push((proto, addr, input.name()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            listen_address("localhost:9880", "f").unwrap(),
            "127.0.0.1:9880".parse().unwrap()
        );
        assert_eq!(
            listen_address(":5514", "f").unwrap(),
            "127.0.0.1:5514".parse().unwrap()
        );
        assert_eq!(
            listen_address("[::1]:1", "f").unwrap(),
            "[::1]:1".parse().unwrap()
        );
        let e = listen_address("nowhere", "--http-listen").unwrap_err();
        assert!(e.to_string().starts_with("--http-listen: `nowhere`"), "{e}");
    }
}
