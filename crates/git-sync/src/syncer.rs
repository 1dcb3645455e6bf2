//! One sync, start to finish (blocking): ask the remote, fetch, check for a force-push,
//! export, validate, publish. The async loop in [`crate::service`] decides when.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use git2::Oid;

use crate::config::ForcePushPolicy;
use crate::export::{Export, ExportError, Previous, export_commit};
use crate::git::{Cancel, GitError, PrivateRepo, RefTarget, Source};
use crate::publish::{PublishError, Publisher, Staged};
use crate::selection::Selection;
use crate::signature::payload::ObjectKind;
use crate::signature::{Policy, Reason, Refusal, TrustedKeys};
use crate::submodules::{SubmoduleMode, SubmoduleRequest};
use crate::tree_policy::{self, TreeLimits};
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
    /// The remote's revision was refused before and the ref has not moved.
    HeldBack { sha: Oid, reason: HoldReason },
    /// The validation command refused this revision: nothing published.
    ValidationFailed { sha: Oid, reason: String },
    /// History was rewritten and the policy is refuse: nothing published.
    ForcePushRefused { old: Oid, new: Oid },
    /// A signature --verify-signatures requires is missing or bad: nothing published.
    SignatureRefused(Box<SignatureRefusal>),
    /// The revision (the ref's commit or tag, when known) breaks the tree policy: a link out
    /// of the tree, an unsafe name, a size limit, a submodule URL: nothing published.
    TreeRefused {
        sha: Option<Oid>,
        refusal: tree_policy::Refusal,
    },
}

impl Outcome {
    /// Whether the published tree is what the ref asks for, as far as this sync goes: a
    /// refused signature is not (readiness then follows the staleness rule), a validation or
    /// force-push refusal is the user's policy working as configured.
    pub fn is_good(&self) -> bool {
        !matches!(
            self,
            Outcome::SignatureRefused(_)
                | Outcome::TreeRefused { .. }
                | Outcome::HeldBack {
                    reason: HoldReason::Signature | HoldReason::Tree,
                    ..
                }
        )
    }
}

/// Why a revision is held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    Validation,
    ForcePush,
    Signature,
    Tree,
}

/// The object whose signature was refused, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureRefusal {
    /// The revision that was not published.
    pub revision: Oid,
    /// The commit or tag at fault (the revision itself, a commit since the published one, or
    /// the annotated tag).
    pub object: Oid,
    pub kind: ObjectKind,
    pub refusal: Refusal,
}

impl SignatureRefusal {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            ObjectKind::Commit => "commit",
            ObjectKind::Tag => "tag",
        }
    }
}

impl std::fmt::Display for SignatureRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.object == self.revision {
            write!(
                f,
                "{} {} refused by --verify-signatures: {}",
                self.kind_name(),
                self.object,
                self.refusal
            )
        } else {
            write!(
                f,
                "{} {} (on the way to {}) refused by --verify-signatures: {}",
                self.kind_name(),
                self.object,
                self.revision,
                self.refusal
            )
        }
    }
}

#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub source: Source,
    pub validate: Option<CommandSpec>,
    pub validate_timeout: Duration,
    pub force_push: ForcePushPolicy,
    pub verify: Policy,
    /// The keys signatures are checked against (empty when `verify` is off).
    pub trusted_keys: TrustedKeys,
    /// The part of the repository that is published.
    pub selection: Selection,
    pub submodules: SubmoduleMode,
    pub group_write: bool,
    /// `--symlinks` and the size limits of the export.
    pub limits: TreeLimits,
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
    /// What the ref pointed at when it was refused, and why.
    held_back: Option<(Oid, HoldReason)>,
    keys: TrustedKeys,
    /// The published tree's signatures were checked (false for a tree found at start).
    published_verified: bool,
    /// The outcome of re-reading changed key files, for the caller's metrics and logs.
    key_reload: Option<Result<(), String>>,
    /// The --ref the published tree came from (from the state file); a different one means the
    /// user switched refs, which is not a force-push.
    published_ref: Option<String>,
    /// Bytes fetched over the process's life (as the worker reports them).
    received: u64,
    /// Links left out by --symlinks=drop over the process's life.
    dropped_symlinks: u64,
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
            keys: settings.trusted_keys.clone(),
            published_verified: settings.verify == Policy::Off,
            key_reload: None,
            settings,
            repo_ready: true,
            worker,
            publisher,
            published: repair.published,
            held_back: None,
            published_ref,
            state_file,
            received: 0,
            dropped_symlinks: 0,
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

    /// Links left out by --symlinks=drop so far.
    pub fn dropped_symlinks(&self) -> u64 {
        self.dropped_symlinks
    }

    /// What re-reading changed trusted-key files gave since the last call: Ok when new keys
    /// are in use, Err (the old keys stay) when a file is unreadable or holds a bad key.
    pub fn take_key_reload(&mut self) -> Option<Result<(), String>> {
        self.key_reload.take()
    }

    fn refresh_keys(&mut self) {
        if self.settings.verify == Policy::Off {
            return;
        }
        match self.keys.refresh() {
            Ok(false) => {}
            Ok(true) => {
                // A revision refused for its signature gets another chance with the new keys.
                if matches!(self.held_back, Some((_, HoldReason::Signature))) {
                    self.held_back = None;
                }
                self.key_reload = Some(Ok(()));
            }
            Err(e) => self.key_reload = Some(Err(e)),
        }
    }

    /// Checks the tag (when the ref is an annotated tag) and the commits the policy names.
    fn check_signatures(
        &self,
        new: Oid,
        object: Oid,
        to_verify: &[Oid],
    ) -> Result<Result<(), SignatureRefusal>, SyncError> {
        let repo_path = self.publisher.repo_path();
        let repo = git2::Repository::open_bare(&repo_path).map_err(|e| GitError::Git {
            context: format!("opening the private repository {}", repo_path.display()),
            message: e.message().to_string(),
            corrupt: true,
        })?;
        let odb = repo.odb().map_err(|e| GitError::Git {
            context: "opening the object database".into(),
            message: e.message().to_string(),
            corrupt: true,
        })?;
        let read = |oid: Oid| {
            odb.read(oid)
                .map(|o| (o.kind(), o.data().to_vec()))
                .map_err(|e| GitError::Git {
                    context: format!("reading {oid} to check its signature"),
                    message: e.message().to_string(),
                    corrupt: true,
                })
        };
        let now = std::time::SystemTime::now();
        let refuse = |object, kind, refusal| SignatureRefusal {
            revision: new,
            object,
            kind,
            refusal,
        };
        let tag = (object != new).then_some(object);
        match (self.settings.verify, tag) {
            (Policy::Tag, None) => {
                let refusal = Refusal::new(
                    Reason::NotATag,
                    format!(
                        "--verify-signatures=tag needs --ref to name an annotated tag; {} points at a commit",
                        self.settings.source.target
                    ),
                );
                return Ok(Err(refuse(new, ObjectKind::Commit, refusal)));
            }
            (Policy::Off, _) | (_, None) => {}
            (_, Some(tag)) => {
                let (kind, data) = read(tag)?;
                if kind != git2::ObjectType::Tag {
                    let refusal =
                        Refusal::new(Reason::NotATag, format!("{tag} is a {kind}, not a tag"));
                    return Ok(Err(refuse(tag, ObjectKind::Tag, refusal)));
                }
                match self.keys.verify(ObjectKind::Tag, &data, now) {
                    Ok(signer) => {
                        tracing::info!(tag = %tag, key = %signer.key, signer = %signer.identity, "tag signature verified")
                    }
                    Err(refusal) => return Ok(Err(refuse(tag, ObjectKind::Tag, refusal))),
                }
            }
        }
        for commit in to_verify {
            let (_, data) = read(*commit)?;
            match self.keys.verify(ObjectKind::Commit, &data, now) {
                Ok(signer) if *commit == new => {
                    tracing::info!(commit = %commit, key = %signer.key, signer = %signer.identity, checked = to_verify.len(), "commit signature verified");
                }
                Ok(signer) => {
                    tracing::debug!(commit = %commit, key = %signer.key, signer = %signer.identity, "commit signature verified");
                }
                Err(refusal) => return Ok(Err(refuse(*commit, ObjectKind::Commit, refusal))),
            }
        }
        Ok(Ok(()))
    }

    pub fn sync_once(&mut self, cancel: &Cancel) -> Result<Outcome, SyncError> {
        // The link may have been damaged under us (someone deleted the tree): re-check.
        let current = self.publisher.current();
        if current != self.published {
            self.published_verified = self.settings.verify == Policy::Off;
        }
        self.published = current;
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
        self.refresh_keys();
        let source = &self.settings.source;
        let same_ref = self.published_ref.as_deref() == Some(source.target.to_string().as_str());
        if let (RefTarget::Sha(want), Some(have)) = (&source.target, self.published)
            && *want == have
            && self.published_verified
        {
            return Ok(Outcome::Unchanged(have)); // a pin never moves: no network needed
        }
        let verify_published = !self.published_verified && self.published.is_some();
        let request = NetworkRequest {
            repo: self.publisher.repo_path(),
            source: source.clone(),
            published: self.published,
            held_back: self.held_back.map(|(object, _)| object),
            same_ref,
            verify: self.settings.verify,
            verify_published,
            submodules: SubmoduleRequest {
                mode: self.settings.submodules,
                selection: self.settings.selection.clone(),
                dir: self.publisher.modules_path(),
            },
        };
        let (received, network) = self.worker.run(&request, cancel);
        self.received += received;
        let (new, object, force_pushed, to_verify, submodules) = match network? {
            Network::Unchanged(commit) => return Ok(Outcome::Unchanged(commit)),
            Network::HeldBack(sha) => {
                let reason = self.held_back.map_or(HoldReason::Validation, |(_, r)| r);
                return Ok(Outcome::HeldBack { sha, reason });
            }
            Network::Refused { object, refusal } => {
                if let Some(object) = object {
                    self.held_back = Some((object, HoldReason::Tree));
                }
                return Ok(Outcome::TreeRefused {
                    sha: object,
                    refusal,
                });
            }
            Network::Fetched {
                new,
                object,
                rewritten,
                to_verify,
                submodules,
            } => (new, object, rewritten, to_verify, submodules),
        };
        if self.settings.verify != Policy::Off {
            if let Err(refused) = self.check_signatures(new, object, &to_verify)? {
                self.held_back = Some((object, HoldReason::Signature));
                return Ok(Outcome::SignatureRefused(Box::new(refused)));
            }
            if Some(new) == self.published {
                // The tree found at start passed: nothing to export again.
                self.published_verified = true;
                return Ok(Outcome::Unchanged(new));
            }
        }
        if force_pushed && self.settings.force_push == ForcePushPolicy::Refuse {
            self.held_back = Some((object, HoldReason::ForcePush));
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
        let export = Export {
            repo: &repo_path,
            commit: new,
            dest: &staged.path,
            previous,
            selection: &self.settings.selection,
            submodules: &submodules,
            group_write: self.settings.group_write,
            limits: self.settings.limits,
        };
        match export_commit(&export, &cancelled) {
            Ok(stats) => {
                self.dropped_symlinks += stats.dropped_symlinks;
                tracing::debug!(?stats, sha = %new, "exported");
            }
            Err(ExportError::Refused(refusal)) => {
                self.publisher.discard(staged)?;
                self.held_back = Some((object, HoldReason::Tree));
                return Ok(Outcome::TreeRefused {
                    sha: Some(new),
                    refusal,
                });
            }
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
                    self.held_back = Some((object, HoldReason::Validation));
                    let reason = format!("validation command exited with {status}: {output}");
                    return Ok(Outcome::ValidationFailed { sha: new, reason });
                }
                Err(CommandError::Timeout { timeout, .. }) => {
                    self.publisher.discard(staged)?;
                    self.held_back = Some((object, HoldReason::Validation));
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
        self.published_verified = true;
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
