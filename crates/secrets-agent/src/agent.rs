//! The state of every secret and what is due next: the agent's decisions, without the loop
//! around them (that is [`crate::service`]).
//!
//! Each secret has a slot: its last good data, when it is next renewed or read again, and how
//! often in a row that failed. A failure keeps the last good data (the files do not change)
//! and retries after a jittered backoff. Readiness fails only when a secret in the files will
//! expire before the next attempt to renew it.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::auth::{Auth, Refreshed};
use crate::config::Config;
use crate::metrics::{Metrics, unix};
use crate::openbao::{Client, ErrorKind, Failure};
use crate::schedule::backoff;
use crate::secrets::{self, Fetched, Source, Timing};
use crate::sensitive::SecretData;

#[derive(Debug)]
struct Slot {
    name: String,
    source: Source,
    current: Option<Fetched>,
    /// When it is next renewed, read again or retried.
    due: Instant,
    /// Re-issue at `due` even if the lease could be renewed (the token that made it is gone).
    reissue: bool,
    failures: u32,
    last_error: Option<Failure>,
    /// Leases of replaced secrets and when to revoke them.
    retired: Vec<(String, Instant)>,
}

#[derive(Debug)]
pub struct Agent {
    client: Client,
    auth: Auth,
    slots: Vec<Slot>,
    timing: Timing,
    backoff_max: Duration,
    jitter: f64,
    revoke_grace: Duration,
    metrics: Metrics,
    auth_retry_at: Option<Instant>,
    auth_failures: u32,
    auth_error: Option<Failure>,
    generation_seen: u64,
}

impl Agent {
    pub fn new(config: &Config, metrics: Metrics) -> Result<Self, Failure> {
        let client =
            Client::new(&config.endpoint, None).map_err(|e| Failure::local(e.to_string()))?;
        let now = Instant::now();
        let slots = config
            .secrets
            .iter()
            .map(|(name, source)| Slot {
                name: name.clone(),
                source: source.clone(),
                current: None,
                due: now,
                reissue: false,
                failures: 0,
                last_error: None,
                retired: Vec::new(),
            })
            .collect();
        Ok(Self {
            client,
            auth: Auth::new(
                config.auth.clone(),
                config.endpoint.clone(),
                config.token_sink.clone(),
                config.renew_fraction,
            ),
            slots,
            timing: Timing {
                poll_interval: config.poll_interval,
                fraction: config.renew_fraction,
            },
            backoff_max: config.backoff_max,
            jitter: config.jitter,
            revoke_grace: config.revoke_grace,
            metrics,
            auth_retry_at: None,
            auth_failures: 0,
            auth_error: None,
            generation_seen: 0,
        })
    }

    /// True once every secret has data.
    pub fn complete(&self) -> bool {
        self.slots.iter().all(|s| s.current.is_some())
    }

    /// The data of every secret that has some, by name.
    pub fn snapshot(&self) -> BTreeMap<String, &SecretData> {
        self.slots
            .iter()
            .filter_map(|s| s.current.as_ref().map(|f| (s.name.clone(), &f.data)))
            .collect()
    }

    /// Failures since the last success, over the token and every secret.
    pub fn failures(&self) -> u32 {
        self.auth_failures + self.slots.iter().map(|s| s.failures).sum::<u32>()
    }

    /// The failures that are in the way, by what failed: `secret `db` (database/creds/app)`
    /// or `login`.
    pub fn errors(&self) -> Vec<(String, Failure)> {
        let mut out = Vec::new();
        if let Some(e) = &self.auth_error {
            out.push((format!("login ({})", self.auth.method().label()), e.clone()));
        }
        for slot in &self.slots {
            if let Some(e) = &slot.last_error {
                out.push((
                    format!("secret `{}` ({})", slot.name, slot.source.describe()),
                    e.clone(),
                ));
            }
        }
        out
    }

    /// Whether a failure can only be fixed by an operator (it is not worth retrying for long).
    pub fn has_permanent_error(&self) -> bool {
        self.errors().iter().any(|(_, e)| !e.kind.is_transient())
    }

    /// When something is next due.
    pub fn next_due(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let auth = match self.auth_retry_at {
            Some(at) => Some(at),
            None => self.auth.due(),
        };
        let slots = self.slots.iter().map(|s| s.due);
        let retired = self
            .slots
            .iter()
            .flat_map(|s| s.retired.iter().map(|r| r.1));
        auth.into_iter()
            .chain(slots)
            .chain(retired)
            .min()
            .unwrap_or(far)
            .min(far)
    }

    /// Logs in again at once (a credential file changed); the token in use stays until then.
    pub fn login_now(&mut self) {
        self.auth.request_login();
        self.auth_retry_at = None;
    }

    /// Reads every KV secret again at once (SIGHUP).
    pub fn poll_now(&mut self) {
        let now = Instant::now();
        for slot in &mut self.slots {
            if matches!(slot.source, Source::Kv(_)) {
                slot.due = slot.due.min(now);
            }
        }
    }

    /// Readiness: Ok while every secret in the files stays usable until its next renewal
    /// attempt; the reason otherwise.
    pub fn readiness(&self) -> Result<(), String> {
        let now = Instant::now();
        for slot in &self.slots {
            let Some(current) = &slot.current else {
                return Err(format!("secret `{}` not fetched yet", slot.name));
            };
            let Some(expires) = current.expires else {
                continue;
            };
            if expires <= now {
                return Err(format!("secret `{}` has expired", slot.name));
            }
            if expires <= slot.due {
                let why = slot
                    .last_error
                    .as_ref()
                    .map(|e| format!("; last error: {e}"))
                    .unwrap_or_default();
                return Err(format!(
                    "secret `{}` expires in {}s, before its next renewal attempt in {}s{why}",
                    slot.name,
                    (expires - now).as_secs(),
                    slot.due.saturating_duration_since(now).as_secs(),
                ));
            }
        }
        Ok(())
    }

    /// Does whatever is due; true when some secret's data changed.
    pub async fn run_due(&mut self) -> bool {
        let now = Instant::now();
        self.refresh_token_if_due(now).await;
        let mut changed = false;
        if self.auth.secret().is_none() {
            return false;
        }
        for i in 0..self.slots.len() {
            if self.slots[i].due <= now {
                changed |= self.refresh_slot(i).await;
            }
        }
        self.revoke_retired(now).await;
        self.publish_expiry();
        changed
    }

    async fn refresh_token_if_due(&mut self, now: Instant) {
        let due = match self.auth_retry_at {
            Some(at) => at <= now,
            None => self.auth.needs_login() || self.auth.due().is_some_and(|at| at <= now),
        };
        if !due {
            return;
        }
        let had_token = self.auth.token().is_some();
        let operation = if had_token { "renew" } else { "login" };
        let method = self.auth.method().label();
        match self.auth.refresh(&self.client).await {
            Ok(outcome) => {
                let operation = match outcome {
                    Refreshed::Renewed => "renew",
                    Refreshed::LoggedIn | Refreshed::Unchanged => "login",
                };
                self.metrics
                    .auth
                    .with_label_values(&[method, operation, "ok"])
                    .inc();
                self.auth_failures = 0;
                self.auth_error = None;
                self.auth_retry_at = None;
                self.after_new_token();
            }
            Err(e) => {
                self.metrics
                    .auth
                    .with_label_values(&[method, operation, e.kind.label()])
                    .inc();
                self.auth_failures += 1;
                let wait = backoff(self.auth_failures, self.backoff_max, self.jitter);
                tracing::error!(
                    method,
                    error = %e,
                    failures = self.auth_failures,
                    retry_in = ?wait,
                    "cannot log in or renew the token; the files stay as they are"
                );
                self.auth_error = Some(e);
                self.auth_retry_at = Some(Instant::now() + wait);
            }
        }
        let expiry = self
            .auth
            .token()
            .and_then(|t| t.expires_wall())
            .map(unix)
            .unwrap_or(0.0);
        self.metrics.token_expiry.set(expiry);
    }

    /// Leases belong to the token that made them and end with it: after a login that gave a
    /// new token, issue the leased secrets again.
    fn after_new_token(&mut self) {
        let generation = self.auth.generation();
        if generation == self.generation_seen {
            return;
        }
        let first = self.generation_seen == 0;
        self.generation_seen = generation;
        if first {
            return;
        }
        let now = Instant::now();
        for slot in &mut self.slots {
            if slot.current.as_ref().is_some_and(|c| c.lease.is_some()) {
                tracing::info!(secret = %slot.name, "new token: issuing the leased secret again");
                slot.reissue = true;
                slot.due = now;
            }
        }
    }

    /// One refresh of one secret; true when its data changed.
    async fn refresh_slot(&mut self, i: usize) -> bool {
        let renew = {
            let slot = &self.slots[i];
            !slot.reissue
                && slot
                    .current
                    .as_ref()
                    .and_then(|c| c.lease.as_ref())
                    .is_some_and(|l| l.can_renew())
        };
        if renew {
            match self.renew_slot(i).await {
                Ok(()) => return false,
                // The lease is gone or refused: issue a new secret now.
                Err(e) if !e.kind.is_transient() => {
                    tracing::warn!(secret = %self.slots[i].name, error = %e, "the lease cannot be renewed; issuing the secret again");
                }
                Err(e) => {
                    self.slot_failed(i, e);
                    return false;
                }
            }
        }
        let mut result = self.fetch_slot(i).await;
        if matches!(&result, Err(e) if e.kind == ErrorKind::Denied)
            && !self.auth.still_valid(&self.client).await
        {
            // The token was revoked or expired: log in once and try again.
            self.auth_retry_at = None;
            self.refresh_token_if_due(Instant::now()).await;
            if self.auth.secret().is_some() {
                result = self.fetch_slot(i).await;
            }
        }
        match result {
            Ok(fetched) => self.slot_fetched(i, fetched),
            Err(e) => {
                self.slot_failed(i, e);
                false
            }
        }
    }

    async fn fetch_slot(&self, i: usize) -> Result<Fetched, Failure> {
        let Some(token) = self.auth.secret() else {
            return Err(Failure::local("not logged in"));
        };
        let slot = &self.slots[i];
        secrets::fetch(&self.client, token, &slot.source, self.timing).await
    }

    async fn renew_slot(&mut self, i: usize) -> Result<(), Failure> {
        let Some(token) = self.auth.secret().cloned() else {
            return Err(Failure::local("not logged in"));
        };
        let slot = &mut self.slots[i];
        let Some(current) = slot.current.as_mut() else {
            return Err(Failure::local("nothing to renew"));
        };
        let result = secrets::renew_lease(&self.client, &token, current, self.timing).await;
        let label = match &result {
            Ok(()) => "ok",
            Err(e) => e.kind.label(),
        };
        self.metrics
            .lease_renewals
            .with_label_values(&[slot.name.as_str(), label])
            .inc();
        if result.is_ok() {
            tracing::debug!(secret = %slot.name, "lease renewed");
            slot.due = current.due;
            slot.failures = 0;
            slot.last_error = None;
        }
        result
    }

    fn slot_fetched(&mut self, i: usize, fetched: Fetched) -> bool {
        let now = Instant::now();
        let grace = self.revoke_grace;
        let slot = &mut self.slots[i];
        let changed = slot
            .current
            .as_ref()
            .is_none_or(|old| old.data != fetched.data);
        let kind = slot.source.kind();
        self.metrics
            .fetches
            .with_label_values(&[
                slot.name.as_str(),
                kind,
                if changed { "ok" } else { "unchanged" },
            ])
            .inc();
        if let Some(old) = slot.current.take()
            && let Some(lease) = old.lease
            && fetched.lease.as_ref().is_none_or(|l| l.id != lease.id)
        {
            // Revoke after the grace, unless it runs out by itself first.
            let at = now + grace;
            if at < lease.expires() {
                slot.retired.push((lease.id, at));
            }
        }
        if changed {
            tracing::info!(secret = %slot.name, source = %slot.source.describe(), "new data");
        }
        slot.due = fetched.due;
        slot.current = Some(fetched);
        slot.reissue = false;
        slot.failures = 0;
        slot.last_error = None;
        changed
    }

    fn slot_failed(&mut self, i: usize, e: Failure) {
        let slot = &mut self.slots[i];
        slot.failures += 1;
        let wait = backoff(slot.failures, self.backoff_max, self.jitter);
        slot.due = Instant::now() + wait;
        self.metrics
            .fetches
            .with_label_values(&[slot.name.as_str(), slot.source.kind(), e.kind.label()])
            .inc();
        tracing::error!(
            secret = %slot.name,
            source = %slot.source.describe(),
            error = %e,
            failures = slot.failures,
            retry_in = ?wait,
            "refresh failed; the files keep the last good data"
        );
        slot.last_error = Some(e);
    }

    async fn revoke_retired(&mut self, now: Instant) {
        let Some(token) = self.auth.secret().cloned() else {
            return;
        };
        for slot in &mut self.slots {
            let (due, later): (Vec<_>, Vec<_>) =
                slot.retired.drain(..).partition(|(_, at)| *at <= now);
            slot.retired = later;
            for (lease_id, _) in due {
                let result = secrets::revoke_lease(&self.client, &token, &lease_id).await;
                let label = match &result {
                    Ok(()) => "ok",
                    Err(e) => e.kind.label(),
                };
                self.metrics
                    .lease_revocations
                    .with_label_values(&[slot.name.as_str(), label])
                    .inc();
                match result {
                    Ok(()) => tracing::info!(secret = %slot.name, "revoked the replaced lease"),
                    // It ends at its TTL anyway.
                    Err(e) => {
                        tracing::warn!(secret = %slot.name, error = %e, "cannot revoke the replaced lease; it ends at its TTL")
                    }
                }
            }
        }
    }

    fn publish_expiry(&self) {
        for slot in &self.slots {
            if let Some(at) = slot.current.as_ref().and_then(|c| c.expires_wall()) {
                self.metrics
                    .secret_expiry
                    .with_label_values(&[&slot.name])
                    .set(unix(at));
            }
        }
    }
}
