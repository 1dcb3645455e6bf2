//! The private repository: what to sync (branch, tag, SHA or HEAD), the remote's
//! ref advertisement, fetching with git2 and telling fast-forwards from force-pushes.
//!
//! Everything here is blocking (libgit2); the service runs it on a blocking thread.

use std::cell::{Cell, RefCell};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, Direction, ErrorClass,
    FetchOptions, Oid, RemoteCallbacks, Repository,
};

use crate::credentials::{Credentials, redact_url};
use crate::known_hosts;
use crate::transport::{HttpSettings, bridge};
use crate::tree_policy::{Refusal, RefusalReason};

/// The local ref a fetch writes the wanted revision to.
pub(crate) const TARGET_REF: &str = "refs/git-sync/target";
/// How far a shallow repository is deepened to tell a fast-forward from a force-push
/// before giving up and fetching the whole history.
pub(crate) const DEEPEN_STEP: i32 = 64;
/// libgit2's "unshallow" depth (GIT_FETCH_DEPTH_UNSHALLOW).
pub(crate) const UNSHALLOW: i32 = i32::MAX;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{context}: {message}")]
    Git {
        context: String,
        message: String,
        corrupt: bool,
    },
    #[error("ref {0:?} is not advertised by the remote (deleted branch or tag, or a typo)")]
    RefNotFound(String),
    #[error("commit {0} is not reachable from any branch or tag of the remote")]
    ShaNotFound(String),
    #[error("the sync was cancelled (shutdown)")]
    Cancelled,
    #[error("the sync with {remote} did not finish within --sync-timeout ({}); its network worker was stopped", humantime::format_duration(*.timeout))]
    Timeout { remote: String, timeout: Duration },
    #[error("the network worker failed: {0}")]
    Worker(String),
    /// The tree policy refuses what the remote sent (--max-fetch-size, a submodule URL).
    #[error(transparent)]
    Refused(crate::tree_policy::Refusal),
    #[error("private repository {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl GitError {
    /// Errors that mean the private repository itself is damaged: it is re-cloned.
    pub fn is_corrupt_repo(&self) -> bool {
        matches!(self, GitError::Git { corrupt: true, .. })
    }

    fn git(context: impl Into<String>, e: git2::Error, url_to_redact: Option<&str>) -> GitError {
        let mut message = bridge::unmap(e.message());
        if let Some(url) = url_to_redact {
            // libgit2 sometimes quotes the URL; never let userinfo reach a log line.
            message = message.replace(url, &redact_url(url));
        }
        let corrupt = matches!(
            e.class(),
            ErrorClass::Odb
                | ErrorClass::Object
                | ErrorClass::Repository
                | ErrorClass::Zlib
                | ErrorClass::Index
        ) || message.contains("corrupt");
        GitError::Git {
            context: context.into(),
            message,
            corrupt,
        }
    }
}

/// What the user asked to sync.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum RefTarget {
    /// The remote's HEAD (its default branch).
    Head,
    /// A full 40-hex commit id, pinned.
    Sha(Oid),
    /// A branch or tag, short (`main`, `v1.2`) or full (`refs/heads/main`).
    Named(String),
}

impl RefTarget {
    pub fn parse(s: &str) -> Result<RefTarget, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("--ref must not be empty".into());
        }
        if s == "HEAD" {
            return Ok(RefTarget::Head);
        }
        if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            let oid = Oid::from_str(s).map_err(|e| format!("--ref {s:?}: {}", e.message()))?;
            return Ok(RefTarget::Sha(oid));
        }
        if s.len() < 40
            && s.len() >= 7
            && s.bytes().all(|b| b.is_ascii_hexdigit())
            && !s.bytes().all(|b| b.is_ascii_digit())
        {
            // An abbreviated SHA cannot be asked of a server; refuse rather than guess.
            return Err(format!(
                "--ref {s:?} looks like an abbreviated commit id: give all 40 hex digits"
            ));
        }
        if s.contains("..") || s.contains(' ') || s.ends_with('/') || s.contains("@{") {
            return Err(format!("--ref {s:?} is not a valid branch or tag name"));
        }
        Ok(RefTarget::Named(s.to_string()))
    }

    /// Full ref names to look for in the advertisement, in order of preference.
    fn candidates(&self) -> Vec<String> {
        match self {
            RefTarget::Head => vec!["HEAD".into()],
            RefTarget::Sha(_) => vec![],
            RefTarget::Named(n) if n.starts_with("refs/") => vec![n.clone()],
            RefTarget::Named(n) => vec![format!("refs/heads/{n}"), format!("refs/tags/{n}")],
        }
    }
}

impl From<RefTarget> for String {
    fn from(target: RefTarget) -> String {
        target.to_string()
    }
}

impl TryFrom<String> for RefTarget {
    type Error = String;
    fn try_from(s: String) -> Result<RefTarget, String> {
        RefTarget::parse(&s)
    }
}

impl std::fmt::Display for RefTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RefTarget::Head => f.write_str("HEAD"),
            RefTarget::Sha(o) => write!(f, "{o}"),
            RefTarget::Named(n) => f.write_str(n),
        }
    }
}

/// Where to fetch from and how.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Source {
    pub url: String,
    pub target: RefTarget,
    /// 0 = full history.
    pub depth: u32,
    pub credentials: Credentials,
    /// CA bundle, client certificate, bearer token and proxies of an http(s) remote.
    #[serde(default)]
    pub http: HttpSettings,
    /// --max-fetch-size and --submodule-url-allow.
    #[serde(default)]
    pub limits: crate::tree_policy::FetchLimits,
}

impl Source {
    /// libgit2 refuses a depth over its local (path / file://) transport.
    pub fn transport_allows_depth(&self) -> bool {
        !(self.url.starts_with("file://") || self.url.starts_with('/') || self.url.starts_with('.'))
    }

    fn effective_depth(&self) -> i32 {
        if self.depth == 0 || !self.transport_allows_depth() {
            0
        } else {
            i32::try_from(self.depth).unwrap_or(i32::MAX)
        }
    }
}

/// The URL libgit2 fetches from: the HTTPS bridge's loopback URL for an http(s) remote.
fn remote_url(source: &Source) -> Result<String, GitError> {
    let credentials = &source.credentials;
    let login = bridge::Login {
        basic: credentials
            .username
            .as_deref()
            .zip(credentials.password_file.as_deref()),
        bearer: source.http.bearer_token_file.as_deref(),
    };
    bridge::local_url(&source.url, &source.http, login).map_err(|message| GitError::Git {
        context: format!("preparing the connection to {}", redact_url(&source.url)),
        message,
        corrupt: false,
    })
}

/// Stops a sync: on shutdown ([`Cancel::cancel`]) or at its deadline (`--sync-timeout`).
/// Checked by the export, by the wait for the network worker, and by libgit2's callbacks.
#[derive(Debug, Clone)]
pub struct Cancel {
    flag: Arc<AtomicBool>,
    deadline: Option<(Instant, Duration)>,
}

impl Cancel {
    /// Never times out; only [`Cancel::cancel`] stops it.
    pub fn new() -> Cancel {
        Cancel {
            flag: Arc::new(AtomicBool::new(false)),
            deadline: None,
        }
    }
    /// Times out `timeout` from now.
    pub fn with_timeout(timeout: Duration) -> Cancel {
        Cancel {
            flag: Arc::new(AtomicBool::new(false)),
            deadline: Some((Instant::now() + timeout, timeout)),
        }
    }
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.shutdown_requested() || self.timed_out()
    }
    pub fn shutdown_requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
    pub fn timed_out(&self) -> bool {
        self.deadline.is_some_and(|(d, _)| Instant::now() >= d)
    }
    /// The timeout this was created with.
    pub fn timeout(&self) -> Option<Duration> {
        self.deadline.map(|(_, t)| t)
    }
    /// Time until the deadline (None: no deadline).
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|(d, _)| d.saturating_duration_since(Instant::now()))
    }
}

impl Default for Cancel {
    fn default() -> Cancel {
        Cancel::new()
    }
}

/// The result of asking the remote what the target points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    /// The ref name to fetch (None for a SHA pin).
    pub refname: Option<String>,
    /// The commit id if the advertisement tells it (peeled for annotated tags).
    pub commit: Option<Oid>,
    /// What the ref itself points at: an annotated tag's tag object, otherwise the commit.
    pub object: Option<Oid>,
}

/// What a fetch left in the private repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetched {
    /// The commit to publish.
    pub commit: Oid,
    /// What the ref points at: the tag object of an annotated tag, otherwise the commit.
    pub object: Oid,
}

impl Fetched {
    /// The annotated tag the ref points at, if it is one.
    pub fn tag(&self) -> Option<Oid> {
        (self.object != self.commit).then_some(self.object)
    }
}

/// The private (bare) repository under `--root`.
pub struct PrivateRepo {
    path: PathBuf,
    pub(crate) repo: Repository,
    /// Bytes received from the network over this repository's life (for metrics and benchmarks).
    pub received_bytes: Arc<AtomicU64>,
}

impl std::fmt::Debug for PrivateRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateRepo")
            .field("path", &self.path)
            .finish()
    }
}

impl PrivateRepo {
    /// Opens the private repository, or creates it; a repository that cannot be opened or
    /// whose published revision cannot be read is removed and created anew.
    pub fn open_or_init(
        path: &Path,
        must_have: Option<Oid>,
    ) -> Result<(PrivateRepo, bool), GitError> {
        let io = |source| GitError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut recreated = false;
        if path.exists() {
            // A process killed in the middle of a fetch (an earlier run, or a network worker
            // stopped at its timeout) may have left lock files that would fail every fetch.
            match remove_leftovers(path) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    removed = n,
                    "removed the leftovers of an interrupted fetch from the private repository"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot clean the private repository"),
            }
            match Repository::open_bare(path) {
                Ok(repo) if repo_is_healthy(&repo, must_have) => {
                    return Ok((PrivateRepo::wrap(path, repo), false));
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(path = %path.display(), "private repository is damaged; removing it to clone again");
                    fs::remove_dir_all(path).map_err(io)?;
                    recreated = true;
                }
            }
        }
        fs::create_dir_all(path).map_err(io)?;
        let repo = Repository::init_bare(path)
            .map_err(|e| GitError::git("creating the private repository", e, None))?;
        Ok((PrivateRepo::wrap(path, repo), recreated))
    }

    /// Opens an existing private repository (the network worker's view of it; the parent
    /// creates and repairs it). A repository that cannot be opened is reported as corrupt.
    pub fn open(path: &Path) -> Result<PrivateRepo, GitError> {
        let repo = Repository::open_bare(path).map_err(|e| GitError::Git {
            context: format!("opening the private repository {}", path.display()),
            message: e.message().to_string(),
            corrupt: true,
        })?;
        Ok(PrivateRepo::wrap(path, repo))
    }

    fn wrap(path: &Path, repo: Repository) -> PrivateRepo {
        PrivateRepo {
            path: path.to_path_buf(),
            repo,
            received_bytes: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Asks the remote what the target points at: one ref advertisement, no pack.
    /// This is all a poll costs when nothing changed.
    pub fn advertised(&self, source: &Source, cancel: &Cancel) -> Result<Advertised, GitError> {
        let mut remote = self
            .repo
            .remote_anonymous(&remote_url(source)?)
            .map_err(|e| GitError::git("remote URL", e, Some(&source.url)))?;
        let state = CallbackState::default();
        let callbacks = self.callbacks(source, cancel, &state);
        let conn = remote
            .connect_auth(Direction::Fetch, Some(callbacks), None)
            .map_err(|e| self.net_error("connecting to the remote", e, source, cancel, &state))?;
        let heads = conn
            .list()
            .map_err(|e| self.net_error("listing the remote's refs", e, source, cancel, &state))?;
        let list: Vec<(String, Oid)> = heads
            .iter()
            .map(|h| (h.name().to_string(), h.oid()))
            .collect();
        resolve_advertised(&source.target, &list)
    }

    /// Fetches the target into the private repository.
    pub fn fetch(
        &self,
        source: &Source,
        advertised: &Advertised,
        cancel: &Cancel,
    ) -> Result<Fetched, GitError> {
        let depth = source.effective_depth();
        match (&source.target, &advertised.refname) {
            (RefTarget::Sha(oid), _) => {
                let commit = self.fetch_sha(source, *oid, depth, cancel)?;
                Ok(Fetched {
                    commit,
                    object: commit,
                })
            }
            (_, Some(refname)) => {
                let spec = format!("+{refname}:{TARGET_REF}");
                self.fetch_specs(source, &[spec], depth, cancel)?;
                self.target()
            }
            (_, None) => Err(GitError::RefNotFound(source.target.to_string())),
        }
    }

    fn fetch_sha(
        &self,
        source: &Source,
        oid: Oid,
        depth: i32,
        cancel: &Cancel,
    ) -> Result<Oid, GitError> {
        if self.has_commit(oid) {
            return Ok(oid);
        }
        // Servers with uploadpack.allowReachableSHA1InWant (GitHub, GitLab) hand out a commit by id.
        let spec = format!("+{oid}:{TARGET_REF}");
        match self.fetch_specs(source, &[spec], depth, cancel) {
            Ok(()) if self.has_commit(oid) => return Ok(oid),
            Err(GitError::Cancelled) => return Err(GitError::Cancelled),
            Ok(()) | Err(_) => {}
        }
        // Otherwise fetch every branch and tag with full history and look for it.
        tracing::info!(sha = %oid, "the server does not serve commits by id; fetching all branches and tags");
        let specs = [
            "+refs/heads/*:refs/git-sync/heads/*".to_string(),
            "+refs/tags/*:refs/git-sync/tags/*".to_string(),
        ];
        let full = if self.repo.is_shallow() { UNSHALLOW } else { 0 };
        self.fetch_specs(source, &specs, full, cancel)?;
        if self.has_commit(oid) {
            Ok(oid)
        } else {
            Err(GitError::ShaNotFound(oid.to_string()))
        }
    }

    pub(crate) fn has_commit(&self, oid: Oid) -> bool {
        self.repo.find_commit(oid).is_ok()
    }

    fn target(&self) -> Result<Fetched, GitError> {
        let reference = self
            .repo
            .find_reference(TARGET_REF)
            .map_err(|e| GitError::git("reading the fetched ref", e, None))?;
        let object = reference.target().ok_or_else(|| GitError::Git {
            context: "reading the fetched ref".into(),
            message: format!("{TARGET_REF} is a symbolic ref"),
            corrupt: true,
        })?;
        // Annotated tags point at a tag object: peel to the commit.
        let commit = reference
            .peel_to_commit()
            .map_err(|e| GitError::git("peeling the fetched ref to a commit", e, None))?;
        Ok(Fetched {
            commit: commit.id(),
            object,
        })
    }

    pub(crate) fn fetch_specs(
        &self,
        source: &Source,
        specs: &[String],
        depth: i32,
        cancel: &Cancel,
    ) -> Result<(), GitError> {
        let mut remote = self
            .repo
            .remote_anonymous(&remote_url(source)?)
            .map_err(|e| GitError::git("remote URL", e, Some(&source.url)))?;
        let state = CallbackState::default();
        let mut options = FetchOptions::new();
        options.remote_callbacks(self.callbacks(source, cancel, &state));
        options.download_tags(AutotagOption::None);
        options.update_fetchhead(false);
        if depth != 0 {
            options.depth(depth);
        }
        let result = remote.fetch(specs, Some(&mut options), None);
        drop(options);
        result.map_err(|e| self.net_error("fetching", e, source, cancel, &state))
    }

    fn net_error(
        &self,
        context: &str,
        e: git2::Error,
        source: &Source,
        cancel: &Cancel,
        state: &CallbackState,
    ) -> GitError {
        if cancel.is_cancelled() {
            return GitError::Cancelled;
        }
        if let Some(refusal) = state.refused.borrow_mut().take() {
            return GitError::Refused(refusal);
        }
        let context = format!("{context} {}", redact_url(&source.url));
        // The HTTPS bridge knows why it could not reach the server; libgit2 only saw a 502.
        if let Some(message) = bridge::take_error(&source.url) {
            return GitError::Git {
                context,
                message,
                corrupt: false,
            };
        }
        match state.error.borrow_mut().take() {
            // A refused credential or host key is never a sign of a corrupt private repository.
            Some(message) => GitError::Git {
                context,
                message,
                corrupt: false,
            },
            None => GitError::git(context, e, Some(&source.url)),
        }
    }

    fn callbacks<'a>(
        &self,
        source: &'a Source,
        cancel: &'a Cancel,
        state: &'a CallbackState,
    ) -> RemoteCallbacks<'a> {
        let mut cb = RemoteCallbacks::new();
        let received = self.received_bytes.clone();
        let last_seen = Cell::new(0u64);
        let max_fetch = source.limits.max_fetch_size;
        cb.transfer_progress(move |p| {
            let now = p.received_bytes() as u64;
            let before = last_seen.replace(now);
            received.fetch_add(now.saturating_sub(before), Ordering::Relaxed);
            if let Some(max) = max_fetch
                && now > max
            {
                *state.refused.borrow_mut() = Some(Refusal::new(
                    RefusalReason::FetchSize,
                    format!(
                        "the remote sent more than --max-fetch-size ({max} bytes) in one fetch; stopped"
                    ),
                ));
                return false;
            }
            !cancel.is_cancelled()
        });
        cb.sideband_progress(move |_| !cancel.is_cancelled());
        cb.credentials(move |_url, username_from_url, allowed| {
            state.attempts.set(state.attempts.get() + 1);
            if state.attempts.get() > 3 || cancel.is_cancelled() {
                return Err(state.fail("the remote refused the configured credentials".into()));
            }
            source
                .credentials
                .git_credential(
                    allowed,
                    username_from_url,
                    source.http.bearer_token_file.is_some(),
                )
                .map_err(|e| state.fail(e.message().to_string()))
        });
        let url = source.url.clone();
        let known_hosts_file = source.credentials.ssh_known_hosts.clone();
        cb.certificate_check(move |cert, host| {
            if cancel.is_cancelled() {
                return Err(git2::Error::from_str("cancelled"));
            }
            let Some(hostkey) = cert.as_hostkey() else {
                // TLS: let libgit2/OpenSSL verify the chain against the system roots.
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let Some(key) = hostkey.hostkey() else {
                return Err(state.fail("the ssh server did not present a host key".into()));
            };
            let Some(file) = &known_hosts_file else {
                return Err(state.fail(
                    "ssh host key not verified: set --ssh-known-hosts-file (HOME's known_hosts is never used)".into(),
                ));
            };
            let port = known_hosts::ssh_port(&url);
            match known_hosts::verify(file, host, port, key) {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(e) => Err(state.fail(e.to_string())),
            }
        });
        cb
    }
}

/// What libgit2's callbacks saw, so an error names the real cause (libgit2 replaces a
/// callback's message with a generic one).
#[derive(Default)]
struct CallbackState {
    attempts: Cell<u32>,
    error: RefCell<Option<String>>,
    /// Set when the transfer broke --max-fetch-size.
    refused: RefCell<Option<Refusal>>,
}

impl CallbackState {
    fn fail(&self, message: String) -> git2::Error {
        let e = git2::Error::from_str(&message);
        *self.error.borrow_mut() = Some(message);
        e
    }
}

impl Credentials {
    /// `bearer`: a bearer token is configured.
    fn git_credential(
        &self,
        allowed: CredentialType,
        username_from_url: Option<&str>,
        bearer: bool,
    ) -> Result<Cred, git2::Error> {
        let user = self.username.as_deref().or(username_from_url);
        if allowed.contains(CredentialType::SSH_KEY) {
            if let Some(key) = &self.ssh_key_file {
                return Cred::ssh_key(user.unwrap_or("git"), None, key, None);
            }
            return Err(git2::Error::from_str(
                "the ssh server asks for a key: set --ssh-key-file",
            ));
        }
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(user.unwrap_or("git"));
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            // HTTP(S) logins are sent by the bridge (see transport): a 401 means the server
            // refused them, or that none is configured.
            return Err(git2::Error::from_str(
                if self.password_file.is_some() || bearer {
                    "the server refused the configured login (HTTP 401)"
                } else {
                    "the server asks for a login: set --username and --password-file, or --bearer-token-file"
                },
            ));
        }
        Err(git2::Error::from_str(
            "the server asks for a kind of credential git-sync does not support",
        ))
    }
}

/// Removes what a process killed in the middle of a fetch leaves in a repository: lock
/// files (`refs/.../name.lock`, `shallow.lock`: a stale one fails every later update of that
/// file), libgit2's temporary files (`*_git2_*`: the pack being received, loose objects) and a
/// pack index whose pack was never renamed into place (the index is written first). Returns
/// how many files were removed. Only call it while no process uses the repository.
pub fn remove_leftovers(path: &Path) -> Result<usize, GitError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GitError::Io { path, source }
    };
    let mut removed = 0;
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            let entry = entry.map_err(io(&dir))?;
            let file = entry.path();
            let kind = entry.file_type().map_err(io(&file))?;
            if kind.is_dir() {
                dirs.push(file);
                continue;
            }
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let orphan_index = name.ends_with(".idx") && !file.with_extension("pack").exists();
            if name.ends_with(".lock") || name.contains("_git2_") || orphan_index {
                fs::remove_file(&file).map_err(io(&file))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

fn repo_is_healthy(repo: &Repository, must_have: Option<Oid>) -> bool {
    if repo.odb().is_err() {
        return false;
    }
    if let Ok(reference) = repo.find_reference(TARGET_REF)
        && reference.peel_to_commit().and_then(|c| c.tree()).is_err()
    {
        return false;
    }
    match must_have {
        Some(oid) => repo.find_commit(oid).and_then(|c| c.tree()).is_ok(),
        None => true,
    }
}

/// Picks the target out of a ref advertisement.
pub fn resolve_advertised(
    target: &RefTarget,
    list: &[(String, Oid)],
) -> Result<Advertised, GitError> {
    if let RefTarget::Sha(oid) = target {
        return Ok(Advertised {
            refname: None,
            commit: Some(*oid),
            object: Some(*oid),
        });
    }
    for name in target.candidates() {
        if let Some((_, oid)) = list.iter().find(|(n, _)| *n == name) {
            let peeled = format!("{name}^{{}}");
            // An annotated tag is advertised twice: the tag object, then `name^{}` for its commit.
            let commit = list
                .iter()
                .find(|(n, _)| *n == peeled)
                .map(|(_, o)| *o)
                .unwrap_or(*oid);
            return Ok(Advertised {
                refname: Some(name),
                commit: Some(commit),
                object: Some(*oid),
            });
        }
    }
    Err(GitError::RefNotFound(target.to_string()))
}

/// Object ids as hex strings in JSON (the network worker's pipe): `#[serde(with = "oid_text")]`,
/// and `oid_text::option`, `oid_text::vec`.
pub mod oid_text {
    use git2::Oid;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(oid: &Oid, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(oid)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Oid, D::Error> {
        let text = String::deserialize(d)?;
        Oid::from_str(&text)
            .map_err(|_| serde::de::Error::custom(format!("bad object id {text:?}")))
    }

    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(oid: &Option<Oid>, s: S) -> Result<S::Ok, S::Error> {
            match oid {
                Some(o) => s.collect_str(o),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Oid>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|t| {
                    Oid::from_str(&t)
                        .map_err(|_| serde::de::Error::custom(format!("bad object id {t:?}")))
                })
                .transpose()
        }
    }

    pub mod vec {
        use super::*;

        pub fn serialize<S: Serializer>(oids: &[Oid], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(oids.iter().map(Oid::to_string))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Oid>, D::Error> {
            Vec::<String>::deserialize(d)?
                .iter()
                .map(|t| {
                    Oid::from_str(t)
                        .map_err(|_| serde::de::Error::custom(format!("bad object id {t:?}")))
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    #[test]
    fn ref_target_parsing() {
        assert_eq!(RefTarget::parse("HEAD").unwrap(), RefTarget::Head);
        assert_eq!(
            RefTarget::parse("main").unwrap(),
            RefTarget::Named("main".into())
        );
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            RefTarget::parse(sha).unwrap(),
            RefTarget::Sha(Oid::from_str(sha).unwrap())
        );
        assert!(
            RefTarget::parse("0123abc")
                .unwrap_err()
                .contains("abbreviated")
        );
        assert!(RefTarget::parse("a..b").is_err());
        assert!(RefTarget::parse("").is_err());
        // a release named by digits only is a tag name, not a SHA
        assert_eq!(
            RefTarget::parse("20240101").unwrap(),
            RefTarget::Named("20240101".into())
        );
    }

    #[test]
    fn advertisement_prefers_branch_and_peels_annotated_tags() {
        let list = vec![
            ("HEAD".to_string(), oid(1)),
            ("refs/heads/main".to_string(), oid(1)),
            ("refs/heads/v1".to_string(), oid(2)),
            ("refs/tags/v1".to_string(), oid(3)),
            ("refs/tags/rel".to_string(), oid(4)),
            ("refs/tags/rel^{}".to_string(), oid(5)),
        ];
        let r = resolve_advertised(&RefTarget::Named("v1".into()), &list).unwrap();
        assert_eq!(
            r,
            Advertised {
                refname: Some("refs/heads/v1".into()),
                commit: Some(oid(2)),
                object: Some(oid(2)),
            }
        );
        let r = resolve_advertised(&RefTarget::Named("rel".into()), &list).unwrap();
        assert_eq!(
            r,
            Advertised {
                refname: Some("refs/tags/rel".into()),
                commit: Some(oid(5)),
                object: Some(oid(4)),
            }
        );
        let r = resolve_advertised(&RefTarget::Head, &list).unwrap();
        assert_eq!(r.commit, Some(oid(1)));
        assert!(matches!(
            resolve_advertised(&RefTarget::Named("gone".into()), &list),
            Err(GitError::RefNotFound(_))
        ));
    }
}
