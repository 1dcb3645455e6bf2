//! The long-running loop: when to sync (period, SIGHUP, POST /sync, backoff), metrics,
//! readiness, notifications, collection of old trees, one-time mode.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use sidecar_kit::Sidecar;
use sidecar_kit::notify::{Change, Notifier};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

use crate::config::{Config, ForcePushPolicy};
use crate::error_file::ErrorFile;
use crate::git::Cancel;
use crate::metrics::Metrics;
use crate::schedule;
use crate::signature::Policy;
use crate::syncer::{Outcome, SyncSettings, Syncer};

/// Runs git-sync until shutdown (or, in one-time mode, until the first publish).
pub async fn serve(config: Config, sidecar: Sidecar) -> anyhow::Result<()> {
    if config.group_write {
        // Before anything is created: the trees, the link, the private repository and the
        // network worker (which inherits it) all get group write.
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o002));
    }
    let mut error_file = config.error_file.as_deref().map(ErrorFile::new);
    let result = run(config, sidecar, &mut error_file).await;
    if let (Err(e), Some(file)) = (&result, &mut error_file) {
        file.write(&format!("{e:#}"));
    }
    result
}

async fn run(
    config: Config,
    sidecar: Sidecar,
    error_file: &mut Option<ErrorFile>,
) -> anyhow::Result<()> {
    let metrics = Metrics::register(sidecar.registry()).context("registering metrics")?;
    let ready = sidecar.readiness().register("synced");
    let sync_now = Arc::new(Notify::new());
    sidecar.add_admin_routes(crate::trigger::routes(
        sync_now.clone(),
        config.sync_secret_file.clone(),
        metrics.sync_requests.clone(),
    ));
    let token = sidecar.shutdown().token();

    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let hup_notify = sync_now.clone();
    let hup_token = token.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                got = hup.recv() => {
                    if got.is_none() { return; }
                    tracing::info!("SIGHUP: syncing now");
                    hup_notify.notify_one();
                }
                () = hup_token.cancelled() => return,
            }
        }
    });

    let notifier = (!config.notify.is_empty()).then(|| {
        Notifier::<Published>::spawn(
            config.notify.clone(),
            Some(metrics.hooks.clone()),
            sidecar.shutdown(),
        )
    });

    if !config.source.transport_allows_depth() && config.source.depth != 0 {
        tracing::info!(
            "--depth is ignored for a local repository: libgit2 cannot fetch shallow over file://"
        );
    }
    let settings = SyncSettings {
        source: config.source.clone(),
        validate: config.validate.clone(),
        validate_timeout: config.validate_timeout,
        force_push: config.force_push,
        verify: config.verify,
        trusted_keys: config.trusted_keys.clone(),
        selection: config.selection.clone(),
        submodules: config.submodules,
        group_write: config.group_write,
        limits: config.limits,
        worker: crate::worker::WorkerSpec::current_exe(&config.log_filter, &config.log_format),
    };
    if config.verify != Policy::Off {
        tracing::info!(policy = ?config.verify, keys = %config.trusted_keys.describe(), "signatures are verified before a publish");
    }
    let root = config.root.clone();
    let link = config.link.clone();
    let mut syncer = tokio::task::spawn_blocking(move || Syncer::open(&root, &link, settings))
        .await
        .context("opening --root")?
        .with_context(|| format!("preparing {}", config.root.display()))?;
    if let Some(sha) = syncer.published() {
        tracing::info!(%sha, "found a published tree");
        metrics.set_published(&sha.to_string());
    }
    tracing::info!(
        repo = %crate::credentials::redact_url(&config.source.url),
        reference = %config.source.target,
        root = %config.root.display(),
        "git-sync started"
    );

    let mut failures: u32 = 0;
    let mut last_success: Option<Instant> = None;
    let mut fetched_seen = 0u64;
    let mut dropped_seen = 0u64;
    loop {
        let started = Instant::now();
        let cancel = Cancel::with_timeout(config.sync_timeout);
        let cancel_on_shutdown = {
            let cancel = cancel.clone();
            let token = token.clone();
            tokio::spawn(async move {
                token.cancelled().await;
                cancel.cancel();
            })
        };
        let guard = sidecar.shutdown().in_flight();
        let sync_cancel = cancel.clone();
        // The sync ends by its deadline whatever the remote does: the network half runs in a
        // worker process that is killed then (see worker.rs), the export checks the deadline.
        let (returned, result) = tokio::task::spawn_blocking(move || {
            let result = syncer.sync_once(&sync_cancel);
            (syncer, result)
        })
        .await
        .context("the sync thread panicked")?;
        syncer = returned;
        drop(guard);
        cancel_on_shutdown.abort();
        let elapsed = started.elapsed();
        metrics.sync_duration.observe(elapsed.as_secs_f64());
        match syncer.take_key_reload() {
            Some(Ok(())) => {
                metrics
                    .trusted_keys_reloads
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!("the trusted keys changed and were re-read");
            }
            Some(Err(e)) => {
                metrics
                    .trusted_keys_reloads
                    .with_label_values(&["failure"])
                    .inc();
                tracing::error!(error = %e, "cannot use the changed trusted keys; the keys in use stay");
            }
            None => {}
        }
        let fetched = syncer.fetched_bytes();
        metrics
            .fetched_bytes
            .inc_by(fetched.saturating_sub(fetched_seen));
        fetched_seen = fetched;
        let dropped = syncer.dropped_symlinks();
        metrics
            .symlinks_dropped
            .inc_by(dropped.saturating_sub(dropped_seen));
        dropped_seen = dropped;

        if token.is_cancelled() {
            tracing::info!("stopping: shutdown requested");
            break;
        }
        // ok: no error (the next sync comes after the period, not a backoff); good: the
        // published tree is what the ref asks for (readiness and last success follow it).
        let mut ok = true;
        let mut good = false;
        match result {
            Ok(outcome) => {
                let label = match &outcome {
                    Outcome::Unchanged(sha) => {
                        tracing::debug!(%sha, took = ?elapsed, "unchanged");
                        "unchanged"
                    }
                    Outcome::Published {
                        old,
                        new,
                        force_pushed,
                    } => {
                        if *force_pushed {
                            metrics.force_pushes.with_label_values(&["follow"]).inc();
                            tracing::warn!(old = ?old.map(|o| o.to_string()), %new, "history was rewritten (force-push); following it");
                        }
                        tracing::info!(old = ?old.map(|o| o.to_string()), %new, took = ?elapsed, "published");
                        metrics.set_published(&new.to_string());
                        if let Some(notifier) = &notifier {
                            notifier.notify(Published {
                                old: old.map(|o| o.to_string()),
                                new: new.to_string(),
                                reference: config.reference.clone(),
                                link: config.root.join(&config.link),
                            });
                        }
                        "published"
                    }
                    Outcome::HeldBack { sha, reason } => {
                        tracing::debug!(%sha, ?reason, "the remote is still on a refused revision");
                        "held_back"
                    }
                    Outcome::ValidationFailed { sha, reason } => {
                        metrics.validations_refused.inc();
                        tracing::error!(%sha, %reason, "validation refused the revision; keeping the published tree until the ref moves");
                        "validation_failed"
                    }
                    Outcome::ForcePushRefused { old, new } => {
                        metrics.force_pushes.with_label_values(&["refuse"]).inc();
                        tracing::error!(%old, %new, "history was rewritten (force-push) and --force-push=refuse: keeping the published tree until the ref moves");
                        "force_push_refused"
                    }
                    Outcome::SignatureRefused(refused) => {
                        metrics
                            .signature_refusals
                            .with_label_values(&[refused.refusal.reason.label()])
                            .inc();
                        tracing::error!(
                            revision = %refused.revision,
                            object = %refused.object,
                            kind = refused.kind_name(),
                            reason = refused.refusal.reason.label(),
                            detail = %refused.refusal.detail,
                            "signature refused; keeping the published tree until the ref moves or the trusted keys change"
                        );
                        "signature_refused"
                    }
                    Outcome::TreeRefused { sha, refusal } => {
                        metrics
                            .tree_refusals
                            .with_label_values(&[refusal.reason.label()])
                            .inc();
                        tracing::error!(
                            revision = ?sha.map(|s| s.to_string()),
                            reason = refusal.reason.label(),
                            detail = %refusal.detail,
                            "the revision breaks the tree policy; keeping the published tree until the ref moves"
                        );
                        "tree_refused"
                    }
                };
                good = outcome.is_good() && syncer.published().is_some();
                if let Some(file) = error_file.as_mut() {
                    match &outcome {
                        Outcome::SignatureRefused(refused) => file.write(&refused.to_string()),
                        Outcome::TreeRefused { refusal, .. } => {
                            file.write(&format!("revision refused: {refusal}"))
                        }
                        _ if good => file.clear(),
                        _ => {}
                    }
                }
                if good {
                    failures = 0;
                    last_success = Some(Instant::now());
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0);
                    metrics.last_success.set(now);
                    ready.set_ready();
                }
                count_sync(&metrics, label, failures);
                if config.one_time {
                    return finish_one_time(outcome, notifier).await;
                }
            }
            Err(e) => {
                ok = false;
                failures += 1;
                let label = if cancel.is_cancelled() || e.is_cancelled() {
                    "timeout"
                } else {
                    "error"
                };
                count_sync(&metrics, label, failures);
                tracing::error!(error = %e, failures, took = ?elapsed, "sync failed; the published tree stays");
                if let Some(file) = error_file.as_mut() {
                    file.write(&format!("sync failed: {e}"));
                }
                if config.max_failures.is_some_and(|max| failures > max) {
                    bail!("giving up after {failures} consecutive failed syncs; last error: {e}");
                }
            }
        }
        update_staleness(
            &ready,
            good,
            last_success,
            config.stale_after,
            syncer.published().is_some(),
        );

        let publisher_collect = {
            let grace = config.grace_period;
            match syncer.publisher().collect(grace) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot remove an old tree");
                    0
                }
            }
        };
        if publisher_collect > 0 {
            tracing::debug!(removed = publisher_collect, "collected old trees");
        }

        let mut wait = if ok {
            schedule::jittered(config.period, config.jitter)
        } else {
            schedule::backoff(
                failures,
                config
                    .backoff_max
                    .min(config.period.max(Duration::from_secs(1))),
                config.jitter,
            )
        };
        // Wake up in time to fail readiness when the tree turns stale.
        if let (false, Some(last)) = (good, last_success) {
            let stale_at = last + config.stale_after;
            wait = wait.min(
                stale_at
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(50)),
            );
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = sync_now.notified() => tracing::debug!("sync requested"),
            () = token.cancelled() => break,
        }
    }
    if let Some(notifier) = notifier {
        notifier.finish().await;
    }
    Ok(())
}

/// One publish, as the hooks tell it: the SHA before (None on the first) and after. A burst
/// of publishes within the debounce window is one notification from before the burst to its
/// end; a burst that ends where it started sends none.
#[derive(Debug)]
struct Published {
    old: Option<String>,
    new: String,
    reference: String,
    link: std::path::PathBuf,
}

impl Change for Published {
    fn merge(&mut self, later: Self) {
        self.new = later.new;
    }

    fn is_noop(&self) -> bool {
        self.old.as_deref() == Some(self.new.as_str())
    }

    fn webhook_body(&self) -> serde_json::Value {
        serde_json::json!({
            "old": self.old,
            "new": self.new,
            "ref": self.reference,
            "link": self.link.display().to_string(),
        })
    }

    fn command_env(&self) -> Vec<(String, String)> {
        vec![
            ("GIT_SYNC_OLD".into(), self.old.clone().unwrap_or_default()),
            ("GIT_SYNC_NEW".into(), self.new.clone()),
            ("GIT_SYNC_REF".into(), self.reference.clone()),
            ("GIT_SYNC_LINK".into(), self.link.display().to_string()),
        ]
    }
}

/// Counts a finished sync, after the failure gauge has its new value: a scrape that sees the
/// sync counted sees its effect too (tests and alerts read the two together).
fn count_sync(metrics: &Metrics, label: &str, failures: u32) {
    metrics.consecutive_failures.set(i64::from(failures));
    metrics.syncs.with_label_values(&[label]).inc();
}

fn update_staleness(
    ready: &sidecar_kit::readiness::ReadyCheck,
    good: bool,
    last_success: Option<Instant>,
    stale_after: Duration,
    published: bool,
) {
    if good {
        return;
    }
    match last_success {
        Some(last) if last.elapsed() >= stale_after => {
            ready.set_not_ready(format!(
                "no successful sync for {:?} (limit {stale_after:?})",
                last.elapsed()
            ));
        }
        None if !published => ready.set_not_ready("nothing published yet"),
        None => ready.set_not_ready("no successful sync since start"),
        Some(_) => {}
    }
}

async fn finish_one_time(
    outcome: Outcome,
    notifier: Option<Notifier<Published>>,
) -> anyhow::Result<()> {
    if let Some(notifier) = notifier {
        notifier.finish().await;
    }
    match outcome {
        Outcome::Published { new, .. } | Outcome::Unchanged(new) => {
            tracing::info!(sha = %new, "one-time sync done");
            Ok(())
        }
        Outcome::HeldBack { sha, reason } => {
            bail!("revision {sha} was refused earlier ({reason:?}); nothing published")
        }
        Outcome::SignatureRefused(refused) => bail!("{refused}"),
        Outcome::TreeRefused { refusal, .. } => bail!("revision refused: {refusal}"),
        Outcome::ValidationFailed { sha, reason } => {
            bail!("revision {sha} was refused by the validation command: {reason}")
        }
        Outcome::ForcePushRefused { old, new } => {
            bail!(
                "history was rewritten from {old} to {new} and --force-push={:?}",
                ForcePushPolicy::Refuse
            )
        }
    }
}
