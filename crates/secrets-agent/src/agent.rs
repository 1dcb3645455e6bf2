//! The state of every secret and what is due next: the agent's decisions, without the loop
//! around them (that is [`crate::service`]).
//!
//! Each secret has a slot: its last good data, when it is next renewed or read again, and how
//! often in a row that failed. A failure keeps the last good data (the files do not change)
//! and retries after a jittered backoff. Readiness fails only when a secret in the files will
//! expire before the next attempt to renew or replace it.
//!
//! The files, not the latest data, are what the app uses: a replaced lease is revoked only
//! after the set holding its replacement is published ([`Agent::published`]), so a render or
//! publish that fails leaves the app with credentials that still work.

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
    /// Leases replaced by data not published yet (lease id, end): the files still hold them.
    replaced: Vec<(String, Instant)>,
    /// Counts the data changes; `in_files` says which one the files hold.
    version: u64,
    in_files: Option<InFiles>,
}

/// The data of a secret that the last published set holds.
#[derive(Debug, Clone, Copy)]
struct InFiles {
    version: u64,
    expires: Option<Instant>,
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
                replaced: Vec::new(),
                version: 0,
                in_files: None,
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

    /// The set rendered from the current data is in the files: the leases it replaced are
    /// revoked after the grace (unless they end by themselves first).
    pub fn published(&mut self) {
        let now = Instant::now();
        let grace = self.revoke_grace;
        for slot in &mut self.slots {
            if let Some(current) = &slot.current {
                slot.in_files = Some(InFiles {
                    version: slot.version,
                    expires: current.expires,
                });
            }
            for (lease, expires) in slot.replaced.drain(..) {
                let at = now + grace;
                if at < expires {
                    slot.retired.push((lease, at));
                }
            }
        }
    }

    /// Readiness: Ok while every secret in the files stays usable until the next attempt to
    /// renew or replace it; the reason otherwise. `publish_retry`: when a failed publish is
    /// tried again.
    pub fn readiness(&self, publish_retry: Option<Instant>) -> Result<(), String> {
        let now = Instant::now();
        for slot in &self.slots {
            if slot.current.is_none() {
                return Err(format!("secret `{}` not fetched yet", slot.name));
            }
            let Some(files) = slot.in_files else {
                return Err(format!("secret `{}` not in the files yet", slot.name));
            };
            let Some(expires) = files.expires else {
                continue;
            };
            if expires <= now {
                return Err(format!("secret `{}` in the files has expired", slot.name));
            }
            if files.version != slot.version {
                // Newer data could not be rendered or published. What the files hold is no
                // longer renewed: it lasts until it ends, and is replaced at the publish retry
                // or, after a render failure, with the next data at best.
                let next = publish_retry.unwrap_or(slot.due);
                if expires <= next {
                    return Err(format!(
                        "secret `{}` in the files expires in {}s and its replacement is not \
                         published (render or publish failed); next attempt in {}s",
                        slot.name,
                        (expires - now).as_secs(),
                        next.saturating_duration_since(now).as_secs(),
                    ));
                }
                continue;
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
            let expires = lease.expires();
            if changed {
                // The files use it until the new data is published: revoked after that.
                // Those that ended meanwhile need no revocation (a render failing for days
                // would otherwise keep every re-issued lease here).
                slot.replaced.retain(|(_, end)| *end > now);
                slot.replaced.push((lease.id, expires));
            } else {
                // Same data, nothing to publish: revoke after the grace, unless it runs out
                // by itself first.
                let at = now + grace;
                if at < expires {
                    slot.retired.push((lease.id, at));
                }
            }
        }
        if changed {
            slot.version += 1;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::Lease;

    /// An agent with one dynamic secret `db` and no revoke grace; nothing is asked of a server.
    fn agent(dir: &std::path::Path) -> Agent {
        let cli = crate::config::tests::cli(
            dir,
            "secrets:\n  db: {dynamic: {path: database/creds/app}}\nfiles:\n  - {path: db.json, secret: db, format: json}\n",
            &["--revoke-grace=0s"],
        );
        let config = Config::from_cli(&cli).unwrap();
        let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
        Agent::new(&config, metrics).unwrap()
    }

    /// Credentials under a lease of `ttl`, next renewed after `due`.
    fn creds(lease: &str, user: &str, ttl: Duration, due: Duration) -> Fetched {
        let now = Instant::now();
        Fetched {
            data: SecretData::new(serde_json::json!({ "username": user })),
            lease: Some(Lease {
                id: lease.into(),
                renewable: true,
                since: now,
                duration: ttl,
                increment: ttl,
                capped: false,
            }),
            expires: Some(now + ttl),
            due: now + due,
        }
    }

    fn retired(agent: &Agent) -> Vec<&str> {
        agent.slots[0]
            .retired
            .iter()
            .map(|(id, _)| id.as_str())
            .collect()
    }

    #[test]
    fn a_replaced_lease_is_retired_only_once_its_replacement_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let mut agent = agent(dir.path());
        let hour = Duration::from_secs(3600);
        assert!(agent.slot_fetched(0, creds("lease/1", "u1", hour, hour / 2)));
        assert!(agent.readiness(None).is_err(), "nothing in the files yet");
        agent.published();
        assert_eq!(agent.readiness(None), Ok(()));

        // Re-issued, but the new set is not published (its render or publish failed): the
        // files still use lease 1, so it is kept, and readiness judges lease 1.
        assert!(agent.slot_fetched(0, creds("lease/2", "u2", hour, hour / 2)));
        assert!(
            retired(&agent).is_empty(),
            "revoked before its replacement is published"
        );
        assert_eq!(agent.readiness(None), Ok(()));
        // A third issue replaces lease 2, which never reached the files either.
        assert!(agent.slot_fetched(0, creds("lease/3", "u3", hour, hour / 2)));
        assert!(retired(&agent).is_empty());

        agent.published();
        assert_eq!(retired(&agent), ["lease/1", "lease/2"]);
        assert_eq!(agent.readiness(None), Ok(()));
    }

    #[test]
    fn readiness_judges_what_the_files_hold_when_newer_data_is_not_published() {
        let dir = tempfile::tempdir().unwrap();
        let mut agent = agent(dir.path());
        let hour = Duration::from_secs(3600);
        // In the files: a lease that ends in a minute.
        agent.slot_fetched(0, creds("lease/1", "u1", Duration::from_secs(60), hour));
        agent.slots[0].due = Instant::now() + Duration::from_secs(40);
        agent.published();
        assert_eq!(agent.readiness(None), Ok(()));

        // A new one that lasts an hour but is not in the files; the next attempt (its renewal
        // in half an hour) comes after the files' lease ends: not ready, though the agent's
        // data is good.
        agent.slot_fetched(0, creds("lease/2", "u2", hour, hour / 2));
        let why = agent.readiness(None).unwrap_err();
        assert!(why.contains("secret `db` in the files expires in"), "{why}");
        assert!(why.contains("replacement is not published"), "{why}");
        // A publish retried in a second is in time.
        assert_eq!(
            agent.readiness(Some(Instant::now() + Duration::from_secs(1))),
            Ok(())
        );
        // Published at last: the new lease is judged, and ready.
        agent.published();
        assert_eq!(agent.readiness(None), Ok(()));
        assert_eq!(retired(&agent), ["lease/1"]);
    }

    #[test]
    fn replaced_leases_that_already_ended_are_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut agent = agent(dir.path());
        let hour = Duration::from_secs(3600);
        agent.slot_fetched(0, creds("lease/1", "u1", hour, hour / 2));
        agent.published();
        // Re-issued while the render keeps failing: leases that ended are dropped, not kept
        // for a revocation they no longer need.
        agent.slot_fetched(0, creds("lease/2", "u2", Duration::ZERO, Duration::ZERO));
        agent.slot_fetched(0, creds("lease/3", "u3", Duration::ZERO, Duration::ZERO));
        agent.slot_fetched(0, creds("lease/4", "u4", hour, hour / 2));
        let replaced: Vec<&str> = agent.slots[0]
            .replaced
            .iter()
            .map(|(id, _)| id.as_str())
            .collect();
        assert_eq!(replaced, ["lease/1", "lease/3"]);
    }

    #[test]
    fn a_new_lease_with_the_same_data_needs_no_publish_to_retire_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut agent = agent(dir.path());
        let hour = Duration::from_secs(3600);
        agent.slot_fetched(0, creds("lease/1", "u1", hour, hour / 2));
        agent.published();
        assert!(!agent.slot_fetched(0, creds("lease/2", "u1", hour, hour / 2)));
        assert_eq!(retired(&agent), ["lease/1"]);
    }
}
