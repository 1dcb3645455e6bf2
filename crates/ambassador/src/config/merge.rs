//! The flags and the file merged into one checked [`Config`]: flags override the file's values,
//! defaults fill the rest, and everything is checked here, before anything listens, so a bad
//! configuration exits with code 64 and a message naming the setting at fault.
//!
//! The one-route case (one inbound listener, one outbound remote) fits in flags; several routes
//! need `--config FILE`.

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use sidecar_kit::config::ConfigError;
use sidecar_kit::reload::TlsFiles;
use sidecar_kit::tls::ExpectedIdentity;

use super::file::{FileConfig, FileLimits};
use super::flags::Cli;
use super::model::{AppProtocol, Config, InboundRoute, Limits, Mode, OutboundRoute};
use crate::authz::{AllowList, PatternError};

impl Config {
    /// Builds the configuration from the flags and, with `--config`, the YAML file, and checks
    /// that the certificate files can serve.
    pub fn from_cli(cli: &Cli) -> Result<Self, ConfigError> {
        let config = Self::from_cli_settings(cli)?;
        config.check_certificates()?;
        Ok(config)
    }

    /// Like [`Config::from_cli`] without reading the certificate files.
    pub fn from_cli_settings(cli: &Cli) -> Result<Self, ConfigError> {
        let file = match &cli.kit.config {
            Some(path) => {
                let file: FileConfig = sidecar_kit::config::load_yaml(path)?;
                if cli.inbound_listen.is_some() || cli.outbound_listen.is_some() {
                    return Err(ConfigError::value(format!(
                        "--inbound-listen/--outbound-listen and --config {} both define routes; \
                         put every route in the file",
                        path.display()
                    )));
                }
                Some((path.clone(), file))
            }
            None => None,
        };
        let origin = file
            .as_ref()
            .map(|(p, _)| p.display().to_string())
            .unwrap_or_else(|| "flags".to_owned());
        let file_cfg = file.map(|(_, f)| f).unwrap_or_default();

        let tls = match (&file_cfg.tls, &cli.cert, &cli.key, &cli.ca) {
            (_, Some(cert), Some(key), Some(ca)) => TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            },
            (Some(t), None, None, None) => TlsFiles {
                cert: t.cert.clone(),
                key: t.key.clone(),
                ca: t.ca.clone(),
            },
            _ => {
                return Err(ConfigError::value(
                    "certificates: give all three of --cert, --key and --ca (or `tls:` with \
                     cert, key and ca in the config file)",
                ));
            }
        };

        let limits = limits(
            cli,
            file_cfg.limits.as_ref().unwrap_or(&FileLimits::default()),
            &origin,
        )?;
        let access_log = cli.access_log || file_cfg.access_log.unwrap_or(false);

        let mut inbound = Vec::new();
        let mut outbound = Vec::new();
        for (i, r) in file_cfg.inbound.into_iter().enumerate() {
            let at = format!("{origin}: inbound[{i}] ({})", r.name);
            inbound.push(InboundRoute {
                allow: allow_list(&r.allow.spiffe, &r.allow.dns, &at)?,
                name: r.name,
                listen: r.listen,
                app: r.app,
                mode: r.mode,
                app_protocol: r.app_protocol,
                forward_client_cert: r.forward_client_cert,
                rate_limit: r
                    .rate_limit
                    .map(|l| l.validate().map(|()| l))
                    .transpose()
                    .map_err(|e| ConfigError::value(format!("{at}: {e}")))?,
                forwarded: r.forwarded,
                request_id: r.request_id,
                jwt: r
                    .jwt
                    .map(|j| j.check(&at))
                    .transpose()
                    .map_err(ConfigError::value)?,
            });
        }
        for (i, r) in file_cfg.outbound.into_iter().enumerate() {
            let at = format!("{origin}: outbound[{i}] ({})", r.name);
            outbound.push(OutboundRoute {
                discovery: discovery(&r.endpoints, r.dns.as_deref(), &at)?,
                resilience: resilience(r.resilience, &at)?,
                identity: identity(&r.identity, &at)?,
                name: r.name,
                listen: r.listen,
                hosts: r.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                mode: r.mode,
                http2: r.http2,
            });
        }
        let host_router = file_cfg.host_router.map(|h| h.listen);
        let mut dns_settings = file_cfg.discovery.clone().unwrap_or_default();
        if let Some(ns) = cli.dns_nameserver {
            dns_settings.nameserver = Some(ns);
        }
        dns_settings
            .validate()
            .map_err(|e| ConfigError::value(format!("{origin}: {e}")))?;

        // The one-route flags.
        if let Some(listen) = cli.inbound_listen {
            let app = cli.inbound_app.ok_or_else(|| {
                ConfigError::value("--inbound-listen needs --inbound-app (where the app listens)")
            })?;
            inbound.push(InboundRoute {
                name: "inbound".to_owned(),
                listen,
                app,
                mode: cli.inbound_mode,
                app_protocol: cli.inbound_app_protocol,
                allow: allow_list(
                    &cli.allow_spiffe,
                    &cli.allow_dns,
                    "--allow-spiffe/--allow-dns",
                )?,
                forward_client_cert: true,
                rate_limit: None,
                forwarded: cli.inbound_forwarded,
                request_id: true,
                jwt: None,
            });
        } else if cli.inbound_app.is_some() {
            return Err(ConfigError::value("--inbound-app needs --inbound-listen"));
        }
        if let Some(listen) = cli.outbound_listen {
            let id = cli.outbound_identity.as_deref().ok_or_else(|| {
                ConfigError::value(
                    "--outbound-listen needs --outbound-identity (the remote's SPIFFE ID or DNS name)",
                )
            })?;
            outbound.push(OutboundRoute {
                name: "outbound".to_owned(),
                listen: Some(listen),
                hosts: Vec::new(),
                mode: cli.outbound_mode,
                http2: cli.outbound_http2,
                discovery: discovery(
                    &cli.outbound_endpoints,
                    cli.outbound_dns.as_deref(),
                    "--outbound-endpoints/--outbound-dns",
                )?,
                resilience: resilience(
                    resilience_flags(cli, Default::default()),
                    "resilience flags",
                )?,
                identity: identity(id, "--outbound-identity")?,
            });
        } else if !cli.outbound_endpoints.is_empty()
            || cli.outbound_identity.is_some()
            || cli.outbound_dns.is_some()
        {
            return Err(ConfigError::value(
                "--outbound-endpoints/--outbound-identity need --outbound-listen",
            ));
        }

        let config = Self {
            tls,
            limits,
            access_log,
            access_log_query: cli.access_log_query || file_cfg.access_log_query.unwrap_or(false),
            new_traces: cli.new_traces.or(file_cfg.new_traces).unwrap_or_default(),
            inbound,
            outbound,
            host_router,
            discovery: dns_settings,
            threads: crate::shard::count_for(cli.kit.worker_threads),
        };
        config.check(&origin)?;
        Ok(config)
    }

    /// Refuses at start certificates that could not serve (the reloader checks the same on
    /// every change later, keeping the old ones).
    fn check_certificates(&self) -> Result<(), ConfigError> {
        let identity = sidecar_kit::tls::Identity::load(&self.tls.cert, &self.tls.key)
            .map_err(|e| ConfigError::value(e.to_string()))?;
        let bundle = sidecar_kit::tls::TrustBundle::load(&self.tls.ca)
            .map_err(|e| ConfigError::value(e.to_string()))?;
        sidecar_kit::tls::check_credentials(&identity, &bundle, std::time::SystemTime::now())
            .map_err(|e| ConfigError::value(e.to_string()))?;
        Ok(())
    }

    fn check(&self, origin: &str) -> Result<(), ConfigError> {
        if self.inbound.is_empty() && self.outbound.is_empty() {
            return Err(ConfigError::value(format!(
                "{origin}: no route: give --inbound-listen and/or --outbound-listen, or routes \
                 in a --config file"
            )));
        }
        let mut names = HashSet::new();
        let mut listens = HashSet::new();
        let mut hosts = HashSet::new();
        let mut add_listen = |addr: SocketAddr, who: &str| {
            if listens.insert(addr) {
                Ok(())
            } else {
                Err(ConfigError::value(format!(
                    "{origin}: {who}: listen address {addr} is used twice"
                )))
            }
        };
        for r in &self.inbound {
            if !names.insert(("in", r.name.clone())) {
                return Err(ConfigError::value(format!(
                    "{origin}: inbound route name `{}` is used twice",
                    r.name
                )));
            }
            add_listen(r.listen, &format!("inbound `{}`", r.name))?;
            if r.mode == Mode::Tcp && r.app_protocol == AppProtocol::H2c {
                return Err(ConfigError::value(format!(
                    "{origin}: inbound `{}`: app_protocol h2c needs mode http",
                    r.name
                )));
            }
        }
        for r in &self.outbound {
            if !names.insert(("out", r.name.clone())) {
                return Err(ConfigError::value(format!(
                    "{origin}: outbound route name `{}` is used twice",
                    r.name
                )));
            }
            if let Some(listen) = r.listen {
                add_listen(listen, &format!("outbound `{}`", r.name))?;
            }
            if r.listen.is_none() && r.hosts.is_empty() {
                return Err(ConfigError::value(format!(
                    "{origin}: outbound `{}`: give it a `listen` address or `hosts` for the host router",
                    r.name
                )));
            }
            if r.mode == Mode::Tcp && (!r.hosts.is_empty() || r.listen.is_none()) {
                return Err(ConfigError::value(format!(
                    "{origin}: outbound `{}`: mode tcp needs its own `listen` and no `hosts` \
                     (there is no Host header in raw TCP)",
                    r.name
                )));
            }
            for h in &r.hosts {
                if !hosts.insert(h.clone()) {
                    return Err(ConfigError::value(format!(
                        "{origin}: host `{h}` is routed twice"
                    )));
                }
            }
        }
        match self.host_router {
            Some(addr) => {
                add_listen(addr, "host_router")?;
                if hosts.is_empty() {
                    return Err(ConfigError::value(format!(
                        "{origin}: host_router: no outbound route names `hosts`"
                    )));
                }
            }
            None if !hosts.is_empty() => {
                return Err(ConfigError::value(format!(
                    "{origin}: outbound routes name `hosts` but there is no `host_router: {{listen: ...}}`"
                )));
            }
            None => {}
        }
        Ok(())
    }
}

fn limits(cli: &Cli, file: &FileLimits, origin: &str) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let duration =
        |flag: Option<Duration>, text: &Option<String>, name: &str, default: Duration| {
            if let Some(d) = flag {
                return Ok(d);
            }
            match text {
                Some(t) => humantime::parse_duration(t).map_err(|e| {
                    ConfigError::value(format!(
                        "{origin}: limits.{name}: `{t}` is not a duration: {e}"
                    ))
                }),
                None => Ok(default),
            }
        };
    let limits = Limits {
        max_header_bytes: cli
            .max_header_bytes
            .or(file.max_header_bytes)
            .unwrap_or(defaults.max_header_bytes),
        header_read_timeout: duration(
            cli.header_read_timeout,
            &file.header_read_timeout,
            "header_read_timeout",
            defaults.header_read_timeout,
        )?,
        max_connections: cli
            .max_connections
            .or(file.max_connections)
            .unwrap_or(defaults.max_connections),
        idle_timeout: duration(
            cli.idle_timeout,
            &file.idle_timeout,
            "idle_timeout",
            defaults.idle_timeout,
        )?,
        // Unset, it stays well below max_connections: connections still silent must never
        // hold every place, or new clients would be refused before any could be evicted.
        max_pending_connections: cli
            .max_pending_connections
            .or(file.max_pending_connections)
            .unwrap_or_else(|| {
                let max = cli
                    .max_connections
                    .or(file.max_connections)
                    .unwrap_or(defaults.max_connections);
                defaults.max_pending_connections.min(max / 2).max(1)
            }),
        max_app_requests: cli
            .max_app_requests
            .or(file.max_app_requests)
            .unwrap_or(defaults.max_app_requests),
        min_body_rate: cli
            .min_body_rate
            .or(file.min_body_rate)
            .unwrap_or(defaults.min_body_rate),
    };
    // hyper refuses a read buffer under 8 KiB; say so here instead of panicking later.
    if limits.max_header_bytes < 8192 {
        return Err(ConfigError::value(format!(
            "max_header_bytes: {} is below the minimum of 8192",
            limits.max_header_bytes
        )));
    }
    if limits.max_connections == 0 {
        return Err(ConfigError::value(
            "max_connections: 0 would refuse everything",
        ));
    }
    if limits.max_pending_connections == 0 {
        return Err(ConfigError::value(
            "max_pending_connections: 0 would refuse everything",
        ));
    }
    if limits.header_read_timeout.is_zero() || limits.idle_timeout.is_zero() {
        return Err(ConfigError::value(
            "header_read_timeout and idle_timeout must be more than zero",
        ));
    }
    Ok(limits)
}

fn allow_list(spiffe: &[String], dns: &[String], at: &str) -> Result<AllowList, ConfigError> {
    if spiffe.is_empty() && dns.is_empty() {
        return Err(ConfigError::value(format!(
            "{at}: the allow list is empty, so every peer would be refused; list SPIFFE IDs \
             (allow.spiffe / --allow-spiffe) or DNS names (allow.dns / --allow-dns)"
        )));
    }
    AllowList::new(spiffe, dns).map_err(|e: PatternError| ConfigError::value(format!("{at}: {e}")))
}

/// `endpoints` (static) or `dns` (discovered), exactly one of them.
fn discovery(
    list: &[String],
    dns: Option<&str>,
    at: &str,
) -> Result<crate::resilience::EndpointsConfig, ConfigError> {
    let config = match dns {
        Some(_) if !list.is_empty() => {
            return Err(ConfigError::value(format!(
                "{at}: give either endpoints or dns, not both"
            )));
        }
        Some(target) => crate::resilience::EndpointsConfig::Dns(target.to_owned()),
        None => crate::resilience::EndpointsConfig::Static(endpoints(list, at)?),
    };
    config
        .validate()
        .map_err(|e| ConfigError::value(format!("{at}: {e}")))?;
    Ok(config)
}

/// The route's resilience settings, with the one-route flags applied on top, validated.
fn resilience(
    config: crate::resilience::RouteResilienceConfig,
    at: &str,
) -> Result<crate::resilience::RouteResilienceConfig, ConfigError> {
    config
        .validate()
        .map_err(|e| ConfigError::value(format!("{at}: resilience.{e}")))?;
    Ok(config)
}

fn resilience_flags(
    cli: &Cli,
    mut config: crate::resilience::RouteResilienceConfig,
) -> crate::resilience::RouteResilienceConfig {
    if let Some(d) = cli.connect_timeout {
        config.timeouts.connect = d;
    }
    if let Some(d) = cli.per_try_timeout {
        config.timeouts.per_try = d;
    }
    if let Some(d) = cli.request_timeout {
        config.timeouts.request = d;
    }
    if let Some(d) = cli.upstream_idle_timeout {
        config.timeouts.idle = d;
    }
    if let Some(n) = cli.max_retries {
        config.retries.max_retries = n;
    }
    if let Some(kind) = cli.balancer.as_deref() {
        config.balancer = if kind == "round-robin" {
            crate::resilience::BalancerKind::RoundRobin
        } else {
            crate::resilience::BalancerKind::PeakEwma
        };
    }
    if let Some(n) = cli.max_concurrent_requests {
        config.max_concurrent_requests = n;
    }
    config
}

fn endpoints(list: &[String], at: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::value(format!("{at}: no endpoints")));
    }
    let mut out = Vec::new();
    for e in list {
        // Static endpoints are resolved once at start (discovery comes with the resilience layer).
        let addrs = e.to_socket_addrs().map_err(|err| {
            ConfigError::value(format!(
                "{at}: endpoint `{e}` is not host:port that resolves: {err}"
            ))
        })?;
        let first = addrs.into_iter().next().ok_or_else(|| {
            ConfigError::value(format!("{at}: endpoint `{e}` resolves to no address"))
        })?;
        out.push(first);
    }
    Ok(out)
}

fn identity(text: &str, at: &str) -> Result<ExpectedIdentity, ConfigError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ConfigError::value(format!("{at}: identity is empty")));
    }
    let id = ExpectedIdentity::parse(text);
    if let ExpectedIdentity::Dns(name) = &id
        && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        return Err(ConfigError::value(format!(
            "{at}: identity `{name}` is neither a SPIFFE ID (spiffe://...) nor a DNS name"
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["ambassador"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).unwrap()
    }

    const CERTS: [&str; 6] = ["--cert", "c", "--key", "k", "--ca", "a"];

    #[test]
    fn one_route_flags_make_a_config() {
        let mut args = CERTS.to_vec();
        args.extend([
            "--inbound-listen",
            "127.0.0.1:8443",
            "--inbound-app",
            "127.0.0.1:8080",
            "--allow-spiffe",
            "spiffe://td/ns/*/sa/web,spiffe://td/ops/**",
            "--outbound-listen",
            "127.0.0.1:9001",
            "--outbound-endpoints",
            "127.0.0.1:9443",
            "--outbound-identity",
            "spiffe://td/ns/prod/sa/billing",
        ]);
        let c = Config::from_cli_settings(&cli(&args)).unwrap();
        assert_eq!(c.inbound.len(), 1);
        assert!(matches!(
            &c.outbound[0].discovery,
            crate::resilience::EndpointsConfig::Static(a) if a[0].port() == 9443
        ));
        assert_eq!(
            c.outbound[0].identity,
            ExpectedIdentity::Spiffe("spiffe://td/ns/prod/sa/billing".into())
        );
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let mut args = CERTS.to_vec();
        args.extend([
            "--inbound-listen",
            "127.0.0.1:8443",
            "--inbound-app",
            "127.0.0.1:1",
        ]);
        let err = Config::from_cli_settings(&cli(&args))
            .unwrap_err()
            .to_string();
        assert!(err.contains("allow list is empty"), "{err}");

        let err = Config::from_cli_settings(&cli(&["--inbound-listen", "127.0.0.1:1"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--cert"), "{err}");

        let mut args = CERTS.to_vec();
        args.extend([
            "--outbound-listen",
            "127.0.0.1:9001",
            "--outbound-endpoints",
            "127.0.0.1:9443",
            "--outbound-identity",
            "not a name!",
        ]);
        let err = Config::from_cli_settings(&cli(&args))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a name!"), "{err}");

        let mut args = CERTS.to_vec();
        args.extend([
            "--max-header-bytes",
            "100",
            "--outbound-listen",
            "127.0.0.1:1",
        ]);
        let err = Config::from_cli_settings(&cli(&args))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_header_bytes"), "{err}");
    }

    #[test]
    fn yaml_routes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.yaml");
        std::fs::write(
            &path,
            "tls: {cert: c, key: k, ca: a}\n\
             limits: {idle_timeout: 1m}\n\
             inbound:\n  - name: web\n    listen: 127.0.0.1:8443\n    app: 127.0.0.1:8080\n    allow: {dns: [a.b]}\n\
             outbound:\n  - name: billing\n    hosts: [billing]\n    endpoints: ['127.0.0.1:1']\n    identity: billing.svc\n\
             host_router: {listen: 127.0.0.1:9000}\n",
        )
        .unwrap();
        let c = Config::from_cli_settings(&cli(&["--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.host_router.unwrap().port(), 9000);

        std::fs::write(
            &path,
            "tls: {cert: c, key: k, ca: a}\noutbound:\n  - name: x\n    listen: 127.0.0.1:1\n    endpoints: ['127.0.0.1:1']\n    identity: a\n    retries: 3\n",
        )
        .unwrap();
        let err = Config::from_cli_settings(&cli(&["--config", path.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("retries") && err.contains("line 7"), "{err}");
    }
}
