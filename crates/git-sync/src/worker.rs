//! The network half of a sync runs in a worker process, so that `--sync-timeout` holds
//! whatever the remote does.
//!
//! libgit2 can only be interrupted from its callbacks, and none runs while a server accepts
//! the connection and then sends nothing (or trickles a byte now and then before the pack);
//! its socket timeouts are process-wide idle timeouts, not a deadline. A process can always be
//! stopped. The worker is this binary, re-executed with the hidden first argument
//! [`WORKER_ARG`]; it reads one JSON request per line on stdin (what to ask the remote, what
//! is published), runs [`network_phase`] (ref advertisement, fetch, force-push check) in the
//! private repository, and writes one JSON answer per line on stdout. It lives across syncs,
//! so a poll costs no `exec`. The parent kills it (SIGKILL) when a sync passes its deadline
//! or on shutdown; the next sync removes what it left half-written ([`remove_leftovers`]) and
//! starts a new worker.
//!
//! Secrets never cross the pipe: the request carries file paths, and the worker reads the
//! files itself on every sync, as before.

use std::io::{BufRead, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use git2::Oid;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde::{Deserialize, Serialize};

use crate::credentials::redact_url;
use crate::export::Submodule;
use crate::git::{Cancel, GitError, PrivateRepo, RefTarget, Source, oid_text, remove_leftovers};
use crate::history::Ancestry;
use crate::signature::Policy;
use crate::submodules::{SubmoduleRequest, fetch_submodules};

/// The hidden first argument that makes the binary a network worker.
pub const WORKER_ARG: &str = "__git-sync-network-worker";

/// How often the parent looks at the shutdown flag while it waits for an answer.
const CANCEL_CHECK: Duration = Duration::from_millis(100);

/// What the parent asks the worker for one sync.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkRequest {
    pub repo: PathBuf,
    pub source: Source,
    /// The published commit, if any.
    #[serde(with = "oid_text::option")]
    pub published: Option<Oid>,
    /// What the ref pointed at when it was refused (validation, force-push or signature): it is
    /// not fetched again while the ref still points there.
    #[serde(with = "oid_text::option")]
    pub held_back: Option<Oid>,
    /// The published tree came from the same --ref (otherwise nothing is "unchanged" and a
    /// different history is a switch, not a force-push).
    pub same_ref: bool,
    /// Which commits the parent will check the signatures of.
    pub verify: Policy,
    /// The published tree's signatures were never checked (a tree from before a restart with
    /// --verify-signatures): fetch and hand it over even when the ref has not moved.
    pub verify_published: bool,
    /// Which submodules to fetch, and where.
    pub submodules: SubmoduleRequest,
}

/// What the network half found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// The remote's ref still points at the published commit.
    Unchanged(#[serde(with = "oid_text")] Oid),
    /// The remote's ref points at a revision refused earlier.
    HeldBack(#[serde(with = "oid_text")] Oid),
    /// The commit is in the private repository.
    Fetched {
        #[serde(with = "oid_text")]
        new: Oid,
        /// What the ref points at: the annotated tag's tag object, otherwise `new`.
        #[serde(with = "oid_text")]
        object: Oid,
        /// Its history does not contain the published commit (a force-push).
        rewritten: bool,
        /// The commits whose signatures the policy wants checked, newest first.
        #[serde(with = "oid_text::vec")]
        to_verify: Vec<Oid>,
        /// The submodules fetched for the export.
        submodules: Vec<Submodule>,
    },
    /// The fetch broke the tree policy (--max-fetch-size, a submodule URL); `object` is what
    /// the ref points at, when the remote said.
    Refused {
        #[serde(with = "oid_text::option")]
        object: Option<Oid>,
        refusal: crate::tree_policy::Refusal,
    },
}

/// One sync's network work, run in the worker: one ref advertisement (all a poll with
/// nothing new costs), then the fetch, the force-push check and, for
/// `--verify-signatures=all`, the list of the commits since the published one.
pub fn network_phase(
    repo: &PrivateRepo,
    request: &NetworkRequest,
    cancel: &Cancel,
) -> Result<Network, GitError> {
    let source = &request.source;
    let (published, held_back) = (request.published, request.held_back);
    let unchanged =
        |commit| Some(commit) == published && request.same_ref && !request.verify_published;
    let advertised = repo.advertised(source, cancel)?;
    if let Some(commit) = advertised.commit {
        if unchanged(commit) {
            return Ok(Network::Unchanged(commit));
        }
        if advertised.object.is_some() && advertised.object == held_back {
            return Ok(Network::HeldBack(commit));
        }
    }
    let object = advertised.object.or(match source.target {
        RefTarget::Sha(sha) => Some(sha),
        _ => None,
    });
    match fetch_phase(repo, request, &advertised, cancel) {
        Err(GitError::Refused(refusal)) => Ok(Network::Refused { object, refusal }),
        other => other,
    }
}

fn fetch_phase(
    repo: &PrivateRepo,
    request: &NetworkRequest,
    advertised: &crate::git::Advertised,
    cancel: &Cancel,
) -> Result<Network, GitError> {
    let source = &request.source;
    let (published, held_back) = (request.published, request.held_back);
    let unchanged =
        |commit| Some(commit) == published && request.same_ref && !request.verify_published;
    let fetched = repo.fetch(source, advertised, cancel)?;
    let new = fetched.commit;
    if unchanged(new) {
        return Ok(Network::Unchanged(new));
    }
    if Some(fetched.object) == held_back {
        return Ok(Network::HeldBack(new));
    }
    // A pin is what the user asked for, whatever its history; another --ref is a switch.
    let checks_history = request.same_ref && !matches!(source.target, RefTarget::Sha(_));
    let rewritten = checks_history
        && repo.ancestry(source, advertised, published, new, cancel)? == Ancestry::Rewritten;
    let to_verify = match request.verify {
        Policy::Off | Policy::Tag => Vec::new(),
        Policy::Head => vec![new],
        Policy::All => {
            let mut commits = repo.commits_since(source, advertised, published, new, cancel)?;
            if commits.is_empty() {
                commits.push(new); // the published revision itself, checked once
            }
            commits
        }
    };
    let submodules = fetch_submodules(repo, source, new, &request.submodules, cancel)?;
    Ok(Network::Fetched {
        new,
        object: fetched.object,
        rewritten,
        to_verify,
        submodules,
    })
}

#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    received_bytes: u64,
    result: Result<Network, WireError>,
}

#[derive(Debug, Serialize, Deserialize)]
enum WireError {
    Git {
        context: String,
        message: String,
        corrupt: bool,
    },
    RefNotFound(String),
    ShaNotFound(String),
    Io {
        path: PathBuf,
        message: String,
    },
    Refused(crate::tree_policy::Refusal),
    Other(String),
}

impl From<GitError> for WireError {
    fn from(e: GitError) -> WireError {
        match e {
            GitError::Git {
                context,
                message,
                corrupt,
            } => WireError::Git {
                context,
                message,
                corrupt,
            },
            GitError::RefNotFound(r) => WireError::RefNotFound(r),
            GitError::ShaNotFound(s) => WireError::ShaNotFound(s),
            GitError::Refused(r) => WireError::Refused(r),
            GitError::Io { path, source } => WireError::Io {
                path,
                message: source.to_string(),
            },
            other => WireError::Other(other.to_string()),
        }
    }
}

impl From<WireError> for GitError {
    fn from(e: WireError) -> GitError {
        match e {
            WireError::Git {
                context,
                message,
                corrupt,
            } => GitError::Git {
                context,
                message,
                corrupt,
            },
            WireError::RefNotFound(r) => GitError::RefNotFound(r),
            WireError::ShaNotFound(s) => GitError::ShaNotFound(s),
            WireError::Io { path, message } => GitError::Io {
                path,
                source: std::io::Error::other(message),
            },
            WireError::Refused(r) => GitError::Refused(r),
            WireError::Other(message) => GitError::Worker(message),
        }
    }
}

/// The worker process's main: `git-sync __git-sync-network-worker LOG_FILTER LOG_FORMAT`.
pub fn run_worker(log_filter: &str, log_format: &str) -> ExitCode {
    // Signals are for the parent, which decides when the worker stops: an operator's
    // `pkill -HUP git-sync` or a terminal's Ctrl-C must not kill a fetch under it. SIGKILL
    // (timeout, shutdown) cannot be blocked; a closed stdin (the parent is gone) ends it too.
    let mut blocked = nix::sys::signal::SigSet::empty();
    for signal in [
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGTERM,
    ] {
        blocked.add(signal);
    }
    let _ = blocked.thread_block();
    let format = match log_format {
        "json" => sidecar_kit::cli::LogFormat::Json,
        "text" => sidecar_kit::cli::LogFormat::Text,
        _ => sidecar_kit::cli::LogFormat::Auto,
    };
    sidecar_kit::telemetry::init_logging(log_filter, format);

    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
        // The parent closed the pipe (it exits, or it was killed): stop at once, even in the
        // middle of a fetch; the next start cleans the private repository.
        std::process::exit(0);
    });
    let mut out = std::io::stdout().lock();
    let mut kept = None;
    for line in rx {
        let answer = answer(&line, &mut kept);
        let written = serde_json::to_writer(&mut out, &answer)
            .map_err(std::io::Error::other)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        if written.is_err() {
            return ExitCode::FAILURE; // the parent is gone
        }
    }
    ExitCode::SUCCESS
}

/// Answers one request. `kept` is the repository handle of the last request when it fetched
/// nothing: a poll with nothing new then skips opening the repository (its config files)
/// again. After a fetch or an error the handle is dropped: a handle keeps the packs it read
/// mapped (see export.rs), and the parent only removes or recreates the repository after one
/// of those, so a kept handle never outlives its repository.
fn answer(line: &str, kept: &mut Option<PrivateRepo>) -> Answer {
    let request: NetworkRequest = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => {
            return Answer {
                received_bytes: 0,
                result: Err(WireError::Other(format!("unreadable request: {e}"))),
            };
        }
    };
    let repo = match kept.take() {
        Some(repo) if repo.path() == request.repo => Ok(repo),
        _ => PrivateRepo::open(&request.repo),
    };
    // The parent enforces the deadline by stopping this process.
    let (received_bytes, result) = match repo {
        Ok(repo) => {
            let before = repo.received_bytes.load(Ordering::Relaxed);
            let result = network_phase(&repo, &request, &Cancel::new());
            let received = repo
                .received_bytes
                .load(Ordering::Relaxed)
                .saturating_sub(before);
            if matches!(result, Ok(Network::Unchanged(_) | Network::HeldBack(_))) {
                *kept = Some(repo);
            }
            (received, result)
        }
        Err(e) => (0, Err(e)),
    };
    Answer {
        received_bytes,
        result: result.map_err(WireError::from),
    }
}

/// How to start a worker.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub program: PathBuf,
    pub log_filter: String,
    pub log_format: String,
}

impl WorkerSpec {
    /// This very binary: its path if it still exists, else `/proc/self/exe` (which works
    /// even when the file was replaced or deleted since the start).
    pub fn current_exe(log_filter: &str, log_format: &str) -> WorkerSpec {
        let program = std::env::current_exe()
            .ok()
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
        WorkerSpec {
            program,
            log_filter: log_filter.to_string(),
            log_format: log_format.to_string(),
        }
    }
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

/// The parent's handle on the worker process: started on first use, kept across syncs,
/// killed at a sync's deadline or on shutdown.
pub struct Worker {
    spec: WorkerSpec,
    running: Option<Running>,
    /// A worker was killed or died: the private repository may hold its half-written files.
    dirty: bool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("spec", &self.spec)
            .field("pid", &self.running.as_ref().map(|r| r.child.id()))
            .field("dirty", &self.dirty)
            .finish()
    }
}

impl Worker {
    pub fn new(spec: WorkerSpec) -> Worker {
        Worker {
            spec,
            running: None,
            dirty: false,
        }
    }

    /// Runs one sync's network half in the worker. Returns the bytes received with the result.
    /// When `cancel` fires first the worker is killed: shutdown gives [`GitError::Cancelled`],
    /// the deadline [`GitError::Timeout`] naming the remote.
    pub fn run(
        &mut self,
        request: &NetworkRequest,
        cancel: &Cancel,
    ) -> (u64, Result<Network, GitError>) {
        match self.exchange(request, cancel) {
            Ok(answer) => {
                let result = answer.result.map_err(GitError::from);
                (answer.received_bytes, result)
            }
            Err(e) => {
                self.stop();
                let e = match e {
                    Stop::Cancelled if cancel.shutdown_requested() => GitError::Cancelled,
                    Stop::Cancelled => GitError::Timeout {
                        remote: redact_url(&request.source.url),
                        timeout: cancel.timeout().unwrap_or_default(),
                    },
                    Stop::Failed(message) => GitError::Worker(message),
                };
                (0, Err(e))
            }
        }
    }

    fn exchange(&mut self, request: &NetworkRequest, cancel: &Cancel) -> Result<Answer, Stop> {
        if cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        let mut line = serde_json::to_vec(request)
            .map_err(|e| Stop::Failed(format!("encoding the request: {e}")))?;
        line.push(b'\n');
        let running = self.running(&request.repo, &request.submodules.dir)?;
        running
            .stdin
            .write_all(&line)
            .map_err(|e| Stop::Failed(format!("writing to the worker: {e}")))?;
        let mut received = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if cancel.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            let wait = cancel
                .time_left()
                .map_or(CANCEL_CHECK, |left| left.min(CANCEL_CHECK));
            // Whole milliseconds, rounded up, so a deadline is never polled as 0 ms in a loop.
            let millis = u16::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(running.stdout.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(millis)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(Stop::Failed(format!("waiting for the worker: {e}"))),
            }
            let n = running
                .stdout
                .read(&mut chunk)
                .map_err(|e| Stop::Failed(format!("reading from the worker: {e}")))?;
            if n == 0 {
                let status = running
                    .child
                    .wait()
                    .map_or_else(|e| format!("(cannot wait for it: {e})"), |s| s.to_string());
                return Err(Stop::Failed(format!(
                    "the worker process ended without an answer: {status}"
                )));
            }
            received.extend_from_slice(&chunk[..n]);
            if let Some(end) = received.iter().position(|b| *b == b'\n') {
                return serde_json::from_slice(&received[..end])
                    .map_err(|e| Stop::Failed(format!("unreadable answer from the worker: {e}")));
            }
        }
    }

    fn running(&mut self, repo: &Path, modules: &Path) -> Result<&mut Running, Stop> {
        // A worker that died while idle (killed by someone else, out of memory) is replaced.
        if let Some(running) = &mut self.running
            && !matches!(running.child.try_wait(), Ok(None))
        {
            tracing::warn!("the network worker had exited; starting a new one");
            self.running = None;
            self.dirty = true;
        }
        if self.running.is_none() {
            if self.dirty {
                for dir in [repo, modules].into_iter().filter(|d| d.exists()) {
                    match remove_leftovers(dir) {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(
                            removed = n,
                            dir = %dir.display(),
                            "removed what the stopped network worker left behind"
                        ),
                        Err(e) => tracing::warn!(error = %e, "cannot clean the private repository"),
                    }
                }
                self.dirty = false;
            }
            let mut child = Command::new(&self.spec.program)
                .arg(WORKER_ARG)
                .arg(&self.spec.log_filter)
                .arg(&self.spec.log_format)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| {
                    Stop::Failed(format!(
                        "cannot start {} as the network worker: {e}",
                        self.spec.program.display()
                    ))
                })?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Stop::Failed("the worker's pipes are missing".into()));
            };
            tracing::debug!(pid = child.id(), "started the network worker");
            self.running = Some(Running {
                child,
                stdin,
                stdout,
            });
        }
        self.running
            .as_mut()
            .ok_or_else(|| Stop::Failed("the worker is not running".into()))
    }

    /// Kills the worker (if any) and waits for it; the next request starts a new one.
    pub fn stop(&mut self) {
        if let Some(mut running) = self.running.take() {
            let _ = running.child.kill();
            let _ = running.child.wait();
            self.dirty = true;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

enum Stop {
    Cancelled,
    Failed(String),
}
