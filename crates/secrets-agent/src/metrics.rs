//! Prometheus metrics. Labels carry the names given in the configuration (secret names, file
//! paths) and classes of outcome, never a value, a token or a lease id.

use prometheus::{Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Debug, Clone)]
pub struct Metrics {
    /// secret, kind, result: ok | unchanged | the error class
    pub fetches: IntCounterVec,
    /// secret, result: ok | the error class
    pub lease_renewals: IntCounterVec,
    /// secret
    pub lease_revocations: IntCounterVec,
    /// method, operation (login | renew), result
    pub auth: IntCounterVec,
    pub token_expiry: Gauge,
    /// secret: when its data stops working (lease end, certificate notAfter)
    pub secret_expiry: GaugeVec,
    /// result: published | unchanged | render_failed | publish_failed
    pub renders: IntCounterVec,
    /// file: publishes that changed it
    pub file_writes: IntCounterVec,
    pub last_publish: Gauge,
    pub consecutive_failures: IntGauge,
    /// kind, result: the notifier's hooks
    pub hooks: IntCounterVec,
    pub publishes: IntCounter,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            fetches: IntCounterVec::new(
                Opts::new(
                    "secrets_agent_fetches_total",
                    "Reads and issues of secrets, by secret, kind and result",
                ),
                &["secret", "kind", "result"],
            )?,
            lease_renewals: IntCounterVec::new(
                Opts::new(
                    "secrets_agent_lease_renewals_total",
                    "Lease renewals of dynamic secrets, by secret and result",
                ),
                &["secret", "result"],
            )?,
            lease_revocations: IntCounterVec::new(
                Opts::new(
                    "secrets_agent_lease_revocations_total",
                    "Leases of replaced dynamic secrets revoked, by secret and result",
                ),
                &["secret", "result"],
            )?,
            auth: IntCounterVec::new(
                Opts::new(
                    "secrets_agent_auth_total",
                    "Logins and token renewals, by method, operation and result",
                ),
                &["method", "operation", "result"],
            )?,
            token_expiry: Gauge::new(
                "secrets_agent_token_expiry_timestamp_seconds",
                "When the agent's token expires (0: never), as a Unix timestamp",
            )?,
            secret_expiry: GaugeVec::new(
                Opts::new(
                    "secrets_agent_secret_expiry_timestamp_seconds",
                    "When each leased secret or certificate in the files stops working, as a Unix timestamp",
                ),
                &["secret"],
            )?,
            renders: IntCounterVec::new(
                Opts::new(
                    "secrets_agent_renders_total",
                    "Renders of the file set, by result: published, unchanged, render_failed, publish_failed",
                ),
                &["result"],
            )?,
            file_writes: IntCounterVec::new(
                Opts::new(
                    "secrets_agent_file_writes_total",
                    "Publishes that changed each file (added, rewritten or removed)",
                ),
                &["file"],
            )?,
            last_publish: Gauge::new(
                "secrets_agent_last_publish_timestamp_seconds",
                "When the files last changed, as a Unix timestamp",
            )?,
            consecutive_failures: IntGauge::new(
                "secrets_agent_consecutive_failures",
                "Failed refreshes since the last one that succeeded",
            )?,
            hooks: IntCounterVec::new(
                Opts::new(
                    "secrets_agent_notifications_total",
                    "Notifications of the app after a change, by hook and result",
                ),
                &["kind", "result"],
            )?,
            publishes: IntCounter::new(
                "secrets_agent_publishes_total",
                "New versions of the file set swapped in",
            )?,
        };
        registry.register(Box::new(m.fetches.clone()))?;
        registry.register(Box::new(m.lease_renewals.clone()))?;
        registry.register(Box::new(m.lease_revocations.clone()))?;
        registry.register(Box::new(m.auth.clone()))?;
        registry.register(Box::new(m.token_expiry.clone()))?;
        registry.register(Box::new(m.secret_expiry.clone()))?;
        registry.register(Box::new(m.renders.clone()))?;
        registry.register(Box::new(m.file_writes.clone()))?;
        registry.register(Box::new(m.last_publish.clone()))?;
        registry.register(Box::new(m.consecutive_failures.clone()))?;
        registry.register(Box::new(m.hooks.clone()))?;
        registry.register(Box::new(m.publishes.clone()))?;
        Ok(m)
    }
}

/// A wall-clock time as a Unix timestamp in seconds.
pub fn unix(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
