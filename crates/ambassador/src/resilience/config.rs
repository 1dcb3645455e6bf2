//! Configuration of discovery, balancing, timeouts, retries and circuit breaking for one outbound route.
//!
//! Every struct refuses unknown fields and defaults every field, so a route needs no resilience section at
//! all; `validate` catches values serde accepts but that make no sense (a floor above its ceiling, a ratio
//! above one), naming the field at fault.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

/// A configuration value that is wrong; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Where a route's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum EndpointsConfig {
    /// A fixed list of `ip:port` addresses.
    Static(Vec<SocketAddr>),
    /// A DNS name and port (`name:port`), re-resolved (A and AAAA) in the background, as a Kubernetes
    /// headless Service answers.
    Dns(String),
}

impl EndpointsConfig {
    /// Parses the flag form: `dns:NAME:PORT` or a comma-separated list of `IP:PORT`.
    pub fn parse_flag(value: &str) -> Result<Self, ConfigError> {
        let config = if let Some(target) = value.strip_prefix("dns:") {
            EndpointsConfig::Dns(target.to_owned())
        } else {
            let addrs = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<SocketAddr>().map_err(|e| {
                        ConfigError::new(
                            "endpoints",
                            format!(
                                "{s:?} is not an ip:port ({e}); use dns:NAME:PORT for a DNS name"
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            EndpointsConfig::Static(addrs)
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the list is not empty and a DNS target has a name and a port.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            EndpointsConfig::Static(addrs) if addrs.is_empty() => Err(ConfigError::new(
                "endpoints.static",
                "needs at least one ip:port",
            )),
            EndpointsConfig::Static(_) => Ok(()),
            EndpointsConfig::Dns(target) => split_dns_target(target).map(|_| ()),
        }
    }
}

/// Splits `name:port` into its parts; the name may not be empty and the port must be a number.
pub(crate) fn split_dns_target(target: &str) -> Result<(&str, u16), ConfigError> {
    let (name, port) = target.rsplit_once(':').ok_or_else(|| {
        ConfigError::new(
            "endpoints.dns",
            format!("{target:?} must be NAME:PORT (e.g. api.prod.svc.cluster.local:8443)"),
        )
    })?;
    let port = port.parse::<u16>().map_err(|e| {
        ConfigError::new(
            "endpoints.dns",
            format!("port {port:?} in {target:?} is not a port number: {e}"),
        )
    })?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(ConfigError::new(
            "endpoints.dns",
            format!("{target:?} has no valid DNS name before the port"),
        ));
    }
    Ok((name, port))
}

/// Process-wide DNS settings shared by every route that uses `dns` endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// The nameserver to ask (`ip:port`); `None` reads the system's resolv.conf.
    pub nameserver: Option<SocketAddr>,
    /// Re-resolve no more often than this, whatever the TTL says (a TTL of 0 would otherwise spin).
    #[serde(with = "humantime_serde_compat")]
    pub ttl_floor: Duration,
    /// Re-resolve at least this often, whatever the TTL says (so a long TTL cannot hide a scale-down).
    #[serde(with = "humantime_serde_compat")]
    pub ttl_ceiling: Duration,
    /// Each refresh interval is spread by up to this fraction either way, so many sidecars started
    /// together do not query in lockstep.
    pub jitter: f64,
    /// How long one lookup may take before it counts as a failure (the last good answer stays).
    #[serde(with = "humantime_serde_compat")]
    pub lookup_timeout: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            nameserver: None,
            ttl_floor: Duration::from_secs(1),
            ttl_ceiling: Duration::from_secs(30),
            jitter: 0.1,
            lookup_timeout: Duration::from_secs(2),
        }
    }
}

impl DiscoveryConfig {
    /// Refuses a floor above its ceiling, a zero floor and a jitter outside [0, 0.5].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.ttl_floor.is_zero() {
            return Err(ConfigError::new(
                "discovery.ttl_floor",
                "must be above zero",
            ));
        }
        if self.ttl_floor > self.ttl_ceiling {
            return Err(ConfigError::new(
                "discovery.ttl_floor",
                format!(
                    "{:?} is above discovery.ttl_ceiling {:?}",
                    self.ttl_floor, self.ttl_ceiling
                ),
            ));
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            return Err(ConfigError::new(
                "discovery.jitter",
                format!("{} must be between 0 and 0.5", self.jitter),
            ));
        }
        if self.lookup_timeout.is_zero() {
            return Err(ConfigError::new(
                "discovery.lookup_timeout",
                "must be above zero",
            ));
        }
        Ok(())
    }
}

/// How an endpoint is chosen for each try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    /// Power of two random choices, the one with the lower peak-EWMA latency times pending requests wins.
    #[default]
    PeakEwma,
    /// Each endpoint in turn.
    RoundRobin,
}

/// Everything about resilience for one route.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RouteResilienceConfig {
    pub balancer: BalancerKind,
    pub peak_ewma: PeakEwmaConfig,
    pub timeouts: TimeoutConfig,
    pub retries: RetryConfig,
    pub circuit_breaker: BreakerConfig,
    /// Requests in flight on this route beyond which new ones get 503 at once (load shedding); 0 = no limit.
    pub max_concurrent_requests: usize,
}

impl RouteResilienceConfig {
    /// Validates every section; the error names the field (`retries.budget_ratio`, ...).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.peak_ewma.validate()?;
        self.timeouts.validate()?;
        self.retries.validate()?;
        self.circuit_breaker.validate()
    }
}

/// Peak-EWMA parameters (the defaults are linkerd2-proxy's).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeakEwmaConfig {
    /// The latency assumed for an endpoint that has not answered yet.
    #[serde(with = "humantime_serde_compat")]
    pub default_rtt: Duration,
    /// How fast old latencies are forgotten (the EWMA's time constant).
    #[serde(with = "humantime_serde_compat")]
    pub decay: Duration,
}

impl Default for PeakEwmaConfig {
    fn default() -> Self {
        Self {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
        }
    }
}

impl PeakEwmaConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.decay.is_zero() {
            return Err(ConfigError::new("peak_ewma.decay", "must be above zero"));
        }
        Ok(())
    }
}

/// Timeouts; `connect` and `idle` are applied by the connection pool that sends each try.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutConfig {
    /// Establishing a connection (TCP and TLS handshake) to one endpoint.
    #[serde(with = "humantime_serde_compat")]
    pub connect: Duration,
    /// One try: from sending to the response headers.
    #[serde(with = "humantime_serde_compat")]
    pub per_try: Duration,
    /// The whole request including every retry and backoff, until the response headers.
    #[serde(with = "humantime_serde_compat")]
    pub request: Duration,
    /// An unused pooled connection is closed after this.
    #[serde(with = "humantime_serde_compat")]
    pub idle: Duration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(1),
            per_try: Duration::from_secs(10),
            request: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

impl TimeoutConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("timeouts.connect", self.connect),
            ("timeouts.per_try", self.per_try),
            ("timeouts.request", self.request),
            ("timeouts.idle", self.idle),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(field, "must be above zero"));
            }
        }
        Ok(())
    }
}

/// When and how often a failed try is tried again.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Retries after the first try (0 disables retries).
    pub max_retries: u32,
    /// Response statuses that are retried, for idempotent methods or requests with an `Idempotency-Key`.
    pub on_status: Vec<u16>,
    /// The first backoff; each further retry doubles it, up to `backoff_max`, with jitter.
    #[serde(with = "humantime_serde_compat")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub backoff_max: Duration,
    /// Retries allowed as a fraction of the requests in the budget window...
    pub budget_ratio: f64,
    /// ...plus this many per second, so a quiet route can still retry.
    pub budget_min_per_second: f64,
    #[serde(with = "humantime_serde_compat")]
    pub budget_window: Duration,
    /// Request bodies up to this size are kept for a retry; a larger body gets exactly one try.
    pub max_buffered_body_bytes: usize,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 2,
            on_status: vec![502, 503, 504],
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget_ratio: 0.2,
            budget_min_per_second: 10.0,
            budget_window: Duration::from_secs(10),
            max_buffered_body_bytes: 64 * 1024,
        }
    }
}

impl RetryConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(bad) = self.on_status.iter().find(|s| !(100..=599).contains(*s)) {
            return Err(ConfigError::new(
                "retries.on_status",
                format!("{bad} is not an HTTP status"),
            ));
        }
        if self.backoff_base > self.backoff_max {
            return Err(ConfigError::new(
                "retries.backoff_base",
                "is above retries.backoff_max",
            ));
        }
        if !(0.0..=1000.0).contains(&self.budget_ratio) {
            return Err(ConfigError::new(
                "retries.budget_ratio",
                format!("{} must be between 0 and 1000", self.budget_ratio),
            ));
        }
        if !(0.0..=1e6).contains(&self.budget_min_per_second) {
            return Err(ConfigError::new(
                "retries.budget_min_per_second",
                "must be zero or more",
            ));
        }
        if self.budget_window < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "retries.budget_window",
                "must be at least 1s",
            ));
        }
        Ok(())
    }
}

/// Per-endpoint circuit breaking (outlier ejection).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    pub enabled: bool,
    /// This many failures in a row eject the endpoint.
    pub consecutive_failures: u32,
    /// Response statuses that count as an endpoint failure (connection errors and timeouts always do).
    pub failure_status: Vec<u16>,
    /// The first ejection lasts this long; each further one in a row doubles it, up to `max_ejection`.
    #[serde(with = "humantime_serde_compat")]
    pub base_ejection: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub max_ejection: Duration,
    /// Optionally also eject on a low success rate over the last requests.
    pub success_rate: Option<SuccessRateConfig>,
    /// When every endpoint is ejected, send to them anyway instead of answering 503.
    pub fail_open: bool,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: 5,
            failure_status: vec![502, 503, 504],
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
            success_rate: None,
            fail_open: false,
        }
    }
}

impl BreakerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.consecutive_failures == 0 {
            return Err(ConfigError::new(
                "circuit_breaker.consecutive_failures",
                "must be at least 1",
            ));
        }
        if let Some(bad) = self
            .failure_status
            .iter()
            .find(|s| !(100..=599).contains(*s))
        {
            return Err(ConfigError::new(
                "circuit_breaker.failure_status",
                format!("{bad} is not an HTTP status"),
            ));
        }
        if self.base_ejection.is_zero() || self.base_ejection > self.max_ejection {
            return Err(ConfigError::new(
                "circuit_breaker.base_ejection",
                "must be above zero and at most circuit_breaker.max_ejection",
            ));
        }
        if let Some(rate) = &self.success_rate {
            rate.validate()?;
        }
        Ok(())
    }
}

/// Eject an endpoint whose success rate over its last `window` requests falls below `threshold`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SuccessRateConfig {
    pub window: usize,
    /// No judgement before this many requests in the window.
    pub min_requests: usize,
    pub threshold: f64,
}

impl Default for SuccessRateConfig {
    fn default() -> Self {
        Self {
            window: 100,
            min_requests: 20,
            threshold: 0.5,
        }
    }
}

impl SuccessRateConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.window == 0 || self.window > 10_000 {
            return Err(ConfigError::new(
                "circuit_breaker.success_rate.window",
                "must be between 1 and 10000",
            ));
        }
        if self.min_requests > self.window {
            return Err(ConfigError::new(
                "circuit_breaker.success_rate.min_requests",
                "is above the window",
            ));
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(ConfigError::new(
                "circuit_breaker.success_rate.threshold",
                "must be between 0 and 1",
            ));
        }
        Ok(())
    }
}

/// Durations in YAML as humantime strings (`250ms`, `1s`, `2m`).
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration like 250ms or 2s: {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_forms_parse_and_bad_ones_name_the_field() {
        assert_eq!(
            EndpointsConfig::parse_flag("127.0.0.1:80, 127.0.0.2:81").expect("valid list"),
            EndpointsConfig::Static(vec![
                "127.0.0.1:80".parse().expect("addr"),
                "127.0.0.2:81".parse().expect("addr")
            ])
        );
        assert_eq!(
            EndpointsConfig::parse_flag("dns:api.svc:8443").expect("valid dns"),
            EndpointsConfig::Dns("api.svc:8443".into())
        );
        let err = EndpointsConfig::parse_flag("api.svc:8443").expect_err("a name is not static");
        assert!(
            err.to_string().contains("endpoints") && err.to_string().contains("dns:"),
            "{err}"
        );
        let err = EndpointsConfig::parse_flag("dns:api.svc").expect_err("no port");
        assert!(err.to_string().contains("endpoints.dns"), "{err}");
        assert!(EndpointsConfig::parse_flag("").is_err());
    }

    #[test]
    fn validation_names_the_field_at_fault() {
        let mut cfg = RouteResilienceConfig::default();
        cfg.validate().expect("defaults are valid");
        cfg.retries.backoff_base = Duration::from_secs(5);
        assert!(
            cfg.validate()
                .expect_err("base > max")
                .to_string()
                .contains("retries.backoff_base")
        );
        let mut cfg = RouteResilienceConfig::default();
        cfg.circuit_breaker.success_rate = Some(SuccessRateConfig {
            threshold: 1.5,
            ..Default::default()
        });
        assert!(
            cfg.validate()
                .expect_err("bad threshold")
                .to_string()
                .contains("success_rate.threshold")
        );
        let d = DiscoveryConfig {
            ttl_floor: Duration::from_secs(60),
            ..Default::default()
        };
        assert!(
            d.validate()
                .expect_err("floor > ceiling")
                .to_string()
                .contains("discovery.ttl_floor")
        );
    }

    #[test]
    fn yaml_defaults_fill_gaps_and_unknown_fields_are_refused() {
        let cfg: RouteResilienceConfig = serde_saphyr::from_str(
            "balancer: round_robin\ntimeouts:\n  per_try: 250ms\nretries:\n  on_status: [503]\n",
        )
        .expect("valid yaml");
        assert_eq!(cfg.balancer, BalancerKind::RoundRobin);
        assert_eq!(cfg.timeouts.per_try, Duration::from_millis(250));
        assert_eq!(cfg.timeouts.connect, Duration::from_secs(1));
        assert_eq!(cfg.retries.on_status, vec![503]);
        assert_eq!(cfg.retries.max_buffered_body_bytes, 65536);
        let err = serde_saphyr::from_str::<RouteResilienceConfig>("retries:\n  max_retry: 3\n")
            .expect_err("typo");
        assert!(err.to_string().contains("max_retry"), "{err}");
        let err = serde_saphyr::from_str::<RouteResilienceConfig>("timeouts:\n  connect: soon\n")
            .expect_err("bad");
        assert!(err.to_string().contains("soon"), "{err}");
        let eps: EndpointsConfig = serde_saphyr::from_str("dns: api.svc:80\n").expect("dns form");
        assert_eq!(eps, EndpointsConfig::Dns("api.svc:80".into()));
        let eps: EndpointsConfig =
            serde_saphyr::from_str("static: [\"127.0.0.1:1\"]\n").expect("static form");
        assert_eq!(
            eps,
            EndpointsConfig::Static(vec!["127.0.0.1:1".parse().expect("addr")])
        );
    }
}
