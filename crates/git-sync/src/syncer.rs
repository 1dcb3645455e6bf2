//! One sync, start to finish (blocking): ask the remote, fetch, check for a force-push,
//! export, validate, publish. The async loop in [`crate::service`] decides when.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use git2::Oid;

use crate::config::ForcePushPolicy;
use crate::export::{ExportError, Previous, export_commit};
use crate::git::{Cancel, GitError, PrivateRepo, RefTarget, Source};
use crate::publish::{PublishError, Publisher, Staged};
use crate::worker::{Network, NetworkRequest, Worker, WorkerSpec};
use sidecar_kit::command::{CommandError, CommandSpec};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("running the validation command: {0}")]
    ValidationRun(CommandError),
}

impl SyncError {
    /// Errors that mean the private repository is damaged (it is then cloned again).
    pub fn is_corrupt_repo(&self) -> bool {
        match self {
            SyncError::Git(e) => e.is_corrupt_repo(),
            SyncError::Export(ExportError::Git { .. }) => true,
            _ => false,
        }
    }

    /// Stopped by shutdown or by the sync's deadline.
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            SyncError::Git(GitError::Cancelled | GitError::Timeout { .. })
                | SyncError::Export(ExportError::Cancelled)
                | SyncError::ValidationRun(CommandError::Cancelled { .. })
        )
    }
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The published tree already is the wanted revision.
    Unchanged(Oid),
    Published {
        old: Option<Oid>,
        new: Oid,
        force_pushed: bool,
    },
    /// The remote's revision was refused before (validation or force-push) and has not moved.
    HeldBack(Oid),
    /// The validation command refused this revision: nothing published.
    ValidationFailed { sha: Oid, reason: String },
    /// History was rewritten and the policy is refuse: nothing published.
    ForcePushRefused { old: Oid, new: Oid },
}

#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub source: Source,
    pub validate: Option<CommandSpec>,
    pub validate_timeout: Duration,
    pub force_push: ForcePushPolicy,
    /// The process that does the network half of each sync.
    pub worker: WorkerSpec,
}

/// The blocking half: owns the private repository, the network worker and the publisher.
#[derive(Debug)]
pub struct Syncer {
    settings: SyncSettings,
    /// The private repository exists and passed the health check (no handle is kept: the
    /// worker fetches into it, the export opens its own short-lived handles).
    repo_ready: bool,
    worker: Worker,
    publisher: Publisher,
    published: Option<Oid>,
    held_back: Option<Oid>,
    /// The --ref the published tree came from (from the state file); a different one means the
    /// user switched refs, which is not a force-push.
    published_ref: Option<String>,
    /// Bytes fetched over the process's life (as the worker reports them).
    received: u64,
    state_file: PathBuf,
}

impl Syncer {
    /// Opens the root: repairs the published tree and the private repository.
    pub fn open(
        root: &std::path::Path,
        link: &str,
        settings: SyncSettings,
    ) -> Result<Syncer, SyncError> {
        fs::create_dir_all(root).map_err(|source| PublishError::Io {
            action: "creating",
            path: root.to_path_buf(),
            source,
        })?;
        let publisher = Publisher::new(root, link)?;
        let repair = publisher.repair()?;
        if repair.removed_broken_link || repair.moved_aside || repair.removed_staging > 0 {
            tracing::warn!(?repair, "repaired the publish directory");
        }
        let (_repo, recreated) =
            PrivateRepo::open_or_init(&publisher.repo_path(), repair.published)?;
        if recreated {
            tracing::warn!("the private repository was damaged and will be cloned again");
        }
        let state_file = root
            .join(crate::publish::INTERNAL_DIR)
            .join("published-ref");
        let published_ref = fs::read_to_string(&state_file)
            .ok()
            .map(|s| s.trim().to_string());
        let worker = Worker::new(settings.worker.clone());
        Ok(Syncer {
            settings,
            repo_ready: true,
            worker,
            publisher,
            published: repair.published,
            held_back: None,
            published_ref,
            state_file,
            received: 0,
        })
    }

    pub fn published(&self) -> Option<Oid> {
        self.published
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Bytes fetched so far.
    pub fn fetched_bytes(&self) -> u64 {
        self.received
    }

    pub fn sync_once(&mut self, cancel: &Cancel) -> Result<Outcome, SyncError> {
        // The link may have been damaged under us (someone deleted the tree): re-check.
        self.published = self.publisher.current();
        match self.try_sync(cancel) {
            Err(e) if e.is_corrupt_repo() => {
                tracing::warn!(error = %e, "the private repository is corrupt; cloning it again");
                self.repo_ready = false;
                let path = self.publisher.repo_path();
                std::fs::remove_dir_all(&path).map_err(|source| GitError::Io { path, source })?;
                self.try_sync(cancel)
            }
            other => other,
        }
    }

    fn ensure_repo(&mut self) -> Result<(), SyncError> {
        if !self.repo_ready {
            PrivateRepo::open_or_init(&self.publisher.repo_path(), None)?;
            self.repo_ready = true;
        }
        Ok(())
    }

    fn try_sync(&mut self, cancel: &Cancel) -> Result<Outcome, SyncError> {
        self.ensure_repo()?;
        let source = &self.settings.source;
        let same_ref = self.published_ref.as_deref() == Some(source.target.to_string().as_str());
        if let (RefTarget::Sha(want), Some(have)) = (&source.target, self.published)
            && *want == have
        {
            return Ok(Outcome::Unchanged(have)); // a pin never moves: no network needed
        }
        let request = NetworkRequest {
            repo: self.publisher.repo_path(),
            source: source.clone(),
            published: self.published.map(|o| o.to_string()),
            held_back: self.held_back.map(|o| o.to_string()),
            same_ref,
        };
        let (received, network) = self.worker.run(&request, cancel);
        self.received += received;
        let (new, force_pushed) = match network? {
            Network::Unchanged(commit) => return Ok(Outcome::Unchanged(commit)),
            Network::HeldBack(commit) => return Ok(Outcome::HeldBack(commit)),
            Network::Fetched { new, rewritten } => (new, rewritten),
        };
        if force_pushed && self.settings.force_push == ForcePushPolicy::Refuse {
            self.held_back = Some(new);
            let old = self.published.unwrap_or(new);
            return Ok(Outcome::ForcePushRefused { old, new });
        }

        let staged = Staged {
            sha: new,
            path: self.publisher.staging_path(new),
        };
        let cancelled = || cancel.is_cancelled();
        let previous_dir = self.published.map(|p| self.publisher.tree_path(p));
        let previous = self
            .published
            .zip(previous_dir.as_deref())
            .map(|(commit, dir)| Previous { commit, dir });
        let repo_path = self.publisher.repo_path();
        match export_commit(&repo_path, new, &staged.path, previous, &cancelled) {
            Ok(stats) => tracing::debug!(?stats, sha = %new, "exported"),
            Err(e) => {
                let _ = self.publisher.discard(staged);
                return Err(e.into());
            }
        }
        if let Some(validate) = &self.settings.validate {
            let env = [
                ("GIT_SYNC_REV", new.to_string()),
                ("GIT_SYNC_TREE", staged.path.display().to_string()),
            ];
            match validate.run(
                &staged.path,
                &env,
                self.settings.validate_timeout,
                &cancelled,
            ) {
                Ok(()) => {}
                Err(CommandError::Failed { status, output, .. }) => {
                    self.publisher.discard(staged)?;
                    self.held_back = Some(new);
                    let reason = format!("validation command exited with {status}: {output}");
                    return Ok(Outcome::ValidationFailed { sha: new, reason });
                }
                Err(CommandError::Timeout { timeout, .. }) => {
                    self.publisher.discard(staged)?;
                    self.held_back = Some(new);
                    let reason = format!("validation command timed out after {timeout:?}");
                    return Ok(Outcome::ValidationFailed { sha: new, reason });
                }
                Err(e) => {
                    self.publisher.discard(staged)?;
                    return Err(SyncError::ValidationRun(e));
                }
            }
        }
        let old = self.published;
        self.publisher.publish(staged)?;
        self.published = Some(new);
        self.held_back = None;
        let reference = source.target.to_string();
        if self.published_ref.as_deref() != Some(reference.as_str()) {
            let _ = fs::write(&self.state_file, format!("{reference}\n"));
            self.published_ref = Some(reference);
        }
        Ok(Outcome::Published {
            old,
            new,
            force_pushed,
        })
    }
}
