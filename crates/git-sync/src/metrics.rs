//! Prometheus metrics. No label ever carries a URL, a username or a secret.

use prometheus::{Gauge, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use sidecar_kit::metrics::{counter, counter_vec, float_gauge, gauge, gauge_vec, histogram};

#[derive(Debug, Clone)]
pub struct Metrics {
    /// result: published, unchanged, held_back, validation_failed, force_push_refused,
    /// signature_refused, error, timeout
    pub syncs: IntCounterVec,
    pub sync_duration: Histogram,
    pub last_success: Gauge,
    /// Info-style: one series with value 1, labelled with the published SHA.
    pub published_revision: IntGaugeVec,
    pub validations_refused: IntCounter,
    /// policy: follow|refuse
    pub force_pushes: IntCounterVec,
    /// kind: webhook|command|signal|touch; result: success|failure
    pub hooks: IntCounterVec,
    pub consecutive_failures: IntGauge,
    pub fetched_bytes: IntCounter,
    /// result: accepted|refused|error
    pub sync_requests: IntCounterVec,
    /// reason: unsigned, unknown_key, bad_signature, revoked_key, expired_key, not_allowed,
    /// not_a_tag, unsupported
    pub signature_refusals: IntCounterVec,
    /// result: success|failure (a changed key file re-read)
    pub trusted_keys_reloads: IntCounterVec,
    /// reason: symlink_escape, unsafe_name, file_size, tree_size, fetch_size, submodule_url
    pub tree_refusals: IntCounterVec,
    pub symlinks_dropped: IntCounter,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Metrics> {
        Ok(Metrics {
            syncs: counter_vec(
                registry,
                "gitsync_syncs_total",
                "Sync attempts by result",
                &["result"],
            )?,
            sync_duration: histogram(
                registry,
                "gitsync_sync_duration_seconds",
                "Time taken by a sync attempt",
                &[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0,
                ],
            )?,
            last_success: float_gauge(
                registry,
                "gitsync_last_success_timestamp_seconds",
                "Unix time of the last sync that left the published tree on the wanted revision",
            )?,
            published_revision: gauge_vec(
                registry,
                "gitsync_published_revision_info",
                "The published revision (value 1, the SHA in a label)",
                &["sha"],
            )?,
            validations_refused: counter(
                registry,
                "gitsync_validations_refused_total",
                "Revisions the validation command refused (not published)",
            )?,
            force_pushes: counter_vec(
                registry,
                "gitsync_force_pushes_total",
                "Rewritten history seen on the synced ref, by policy applied",
                &["policy"],
            )?,
            hooks: counter_vec(
                registry,
                "gitsync_hooks_total",
                "Notifications after a publish",
                &["kind", "result"],
            )?,
            consecutive_failures: gauge(
                registry,
                "gitsync_consecutive_failures",
                "Failed syncs since the last good one",
            )?,
            fetched_bytes: counter(
                registry,
                "gitsync_fetched_bytes_total",
                "Bytes received from the remote in packs",
            )?,
            sync_requests: counter_vec(
                registry,
                "gitsync_sync_requests_total",
                "POST /sync requests",
                &["result"],
            )?,
            signature_refusals: counter_vec(
                registry,
                "gitsync_signature_refusals_total",
                "Revisions not published because a signature --verify-signatures requires is missing or bad, by reason",
                &["reason"],
            )?,
            trusted_keys_reloads: counter_vec(
                registry,
                "gitsync_trusted_keys_reloads_total",
                "Trusted key files re-read after they changed, by result (a failure keeps the keys in use)",
                &["result"],
            )?,
            tree_refusals: {
                let refusals = counter_vec(
                    registry,
                    "gitsync_tree_refusals_total",
                    "Revisions not published because they break the tree policy (links out of the tree, unsafe names, size limits, submodule URLs), by reason",
                    &["reason"],
                )?;
                // Every reason is exported from the start, at 0, so alerts can rate() it.
                for reason in crate::tree_policy::RefusalReason::ALL {
                    refusals.with_label_values(&[reason.label()]);
                }
                refusals
            },
            symlinks_dropped: counter(
                registry,
                "gitsync_symlinks_dropped_total",
                "Symlinks left out of published trees by --symlinks=drop (they led out of the tree)",
            )?,
        })
    }

    pub fn set_published(&self, sha: &str) {
        self.published_revision.reset();
        self.published_revision.with_label_values(&[sha]).set(1);
    }
}
