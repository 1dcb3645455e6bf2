//! Writes a commit's tree into a directory: plain files, no `.git`, modes and symlinks kept;
//! only the `--subpath`/`--sparse-path` selection; submodules from their own repositories.
//!
//! Files whose blob and mode did not change since the previously published revision are
//! hard-linked from that revision's tree instead of written again, so an incremental sync of
//! a large repository costs about what changed. Published trees are therefore read-only by
//! contract: a file written in place would change every revision sharing it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use git2::{ObjectType, Oid, Repository, Tree, TreeEntry};

use crate::git::oid_text;
use crate::selection::{Decision, Selection};
use crate::tree_policy::{
    LinkCheck, Refusal, RefusalReason, SymlinkPolicy, TreeLimits, check_link, check_name, shown,
};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading {what} from the private repository: {message}")]
    Git { what: String, message: String },
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The revision breaks the tree policy (links, names, sizes): it is not published.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("the export was stopped (--sync-timeout or shutdown)")]
    Cancelled,
    #[error("{flag} {path:?} is not in commit {commit}{why}")]
    NotInCommit {
        flag: &'static str,
        path: String,
        commit: Oid,
        why: &'static str,
    },
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportStats {
    /// Files written from the repository.
    pub written: u64,
    /// Files hard-linked from the previous tree.
    pub linked: u64,
    pub bytes_written: u64,
    pub skipped_submodules: u64,
    /// Links left out by `--symlinks=drop`.
    pub dropped_symlinks: u64,
}

/// A previously exported revision to reuse unchanged files from.
#[derive(Debug, Clone, Copy)]
pub struct Previous<'a> {
    pub commit: Oid,
    pub dir: &'a Path,
}

/// A submodule whose commit the network worker fetched into a repository of its own.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Submodule {
    /// Its path in the superproject, from the repository's root (`vendor/lib`; a nested
    /// submodule's path runs through its parent's).
    pub path: String,
    /// The bare repository holding its commit.
    pub repo: PathBuf,
    #[serde(with = "oid_text")]
    pub commit: Oid,
}

/// What to export.
#[derive(Debug, Clone, Copy)]
pub struct Export<'a> {
    /// The private repository (the caller holds no handle on it, see [`BATCH_BYTES`]).
    pub repo: &'a Path,
    pub commit: Oid,
    /// Must not exist yet.
    pub dest: &'a Path,
    pub previous: Option<Previous<'a>>,
    pub selection: &'a Selection,
    pub submodules: &'a [Submodule],
    /// `--group-write`: executables get 0775 (other files and directories follow the umask,
    /// which --group-write sets to 002), and a previous tree that is not group-writable is not
    /// reused.
    pub group_write: bool,
    /// `--symlinks` and the size limits.
    pub limits: TreeLimits,
}

fn git_err(what: impl Into<String>, e: git2::Error) -> ExportError {
    ExportError::Git {
        what: what.into(),
        message: e.message().to_string(),
    }
}

fn io_err(path: &Path, source: std::io::Error) -> ExportError {
    ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Compressed bytes read through one repository handle before it is dropped and reopened.
/// libgit2 maps pack files with mmap and unmaps them only when the last handle closes, so
/// without this the whole pack would stay resident (and count in RSS) during a large export.
const BATCH_BYTES: usize = 8 * 1024 * 1024;

/// A blob still to be written.
struct Pending {
    path: PathBuf,
    oid: Oid,
    mode: i32,
    /// Index of its repository: 0 the private one, 1 + n the n-th submodule's.
    repo: usize,
}

/// Exports the commit's tree (its selected part) into `dest`.
pub fn export_commit(
    spec: &Export<'_>,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<ExportStats, ExportError> {
    let mut repo_paths = vec![spec.repo.to_path_buf()];
    repo_paths.extend(spec.submodules.iter().map(|s| s.repo.clone()));
    let mut stats = ExportStats::default();
    // 1. Walk the trees: create directories, hard-link unchanged files, list the rest.
    let (pending, linked_bytes) = {
        let repos = repo_paths
            .iter()
            .map(|p| {
                Repository::open_bare(p)
                    .map_err(|e| git_err(format!("opening the repository {}", p.display()), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let repo = &repos[0];
        let root = repo
            .find_commit(spec.commit)
            .and_then(|c| c.tree())
            .map_err(|e| git_err(format!("commit {}", spec.commit), e))?;
        let tree = selected_tree(repo, &root, spec.selection, spec.commit)?;
        // The previous revision's tree, if its commit is still in the private repository and
        // its directory still exists; otherwise everything is written.
        let previous_tree = spec.previous.and_then(|p| {
            let root = repo.find_commit(p.commit).and_then(|c| c.tree()).ok()?;
            let tree = selected_tree(repo, &root, spec.selection, p.commit).ok()?;
            let mode = fs::metadata(p.dir).ok()?.permissions().mode();
            let reusable = !spec.group_write || mode & 0o020 != 0;
            (p.dir.is_dir() && reusable).then(|| (tree, p.dir.to_path_buf()))
        });
        fs::create_dir(spec.dest).map_err(|e| io_err(spec.dest, e))?;
        let mut path = spec.dest.to_path_buf();
        let mut walk = Walk {
            repos: &repos,
            submodules: spec.submodules,
            selection: spec.selection,
            stats: &mut stats,
            cancelled,
            pending: Vec::new(),
            count_linked: spec.limits.max_tree_size.is_some(),
            linked_bytes: 0,
        };
        let mut rel = String::new();
        let all = spec.selection.sparse.is_empty();
        match previous_tree {
            Some((prev_tree, mut prev_dir)) => walk.tree(
                0,
                &tree,
                &mut path,
                &mut rel,
                all,
                Some((&prev_tree, &mut prev_dir)),
            )?,
            None => walk.tree(0, &tree, &mut path, &mut rel, all, None)?,
        }
        (walk.pending, walk.linked_bytes)
    };
    // 2. Write the blobs on a few threads.
    let workers = if pending.len() < 256 {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4)
    };
    let exec_mode = if spec.group_write { 0o775 } else { 0o755 };
    let sizes = Sizes {
        limits: spec.limits,
        tree_bytes: AtomicU64::new(linked_bytes),
        dest: spec.dest,
    };
    sizes.add(0, spec.dest)?;
    let (written, bytes) =
        write_pending(&repo_paths, &pending, workers, exec_mode, &sizes, cancelled)?;
    stats.written += written;
    stats.bytes_written += bytes;
    if spec.limits.symlinks != SymlinkPolicy::Allow {
        let links = pending.iter().filter(|p| p.mode == 0o120000);
        stats.dropped_symlinks = check_symlinks(spec.dest, links, spec.limits.symlinks)?;
    }
    Ok(stats)
}

/// Checks every link written; drops or refuses the ones that leave the tree.
fn check_symlinks<'p>(
    dest: &Path,
    links: impl Iterator<Item = &'p Pending>,
    policy: SymlinkPolicy,
) -> Result<u64, ExportError> {
    // All are judged before any is removed: a link through a dropped one must be judged
    // with it in place.
    let mut escaping = Vec::new();
    for link in links {
        let rel = link.path.strip_prefix(dest).unwrap_or(&link.path);
        if let LinkCheck::Escapes(why) = check_link(dest, rel).map_err(|e| io_err(&link.path, e))? {
            escaping.push((link, rel, why));
        }
    }
    let mut dropped = 0;
    for (link, rel, why) in escaping {
        if policy == SymlinkPolicy::Drop {
            fs::remove_file(&link.path).map_err(|e| io_err(&link.path, e))?;
            tracing::warn!(link = %shown(rel), %why, "left a symlink out of the published tree (--symlinks=drop)");
            dropped += 1;
        } else {
            return Err(Refusal::new(
                RefusalReason::SymlinkEscape,
                format!(
                    "the symlink {} leaves the published tree ({why}); --symlinks=drop would leave it out",
                    shown(rel)
                ),
            )
            .into());
        }
    }
    Ok(dropped)
}

/// The size limits, checked before a blob is read.
struct Sizes<'a> {
    limits: TreeLimits,
    /// Bytes of the tree so far (hard-linked and written files).
    tree_bytes: AtomicU64,
    dest: &'a Path,
}

impl Sizes<'_> {
    fn active(&self) -> bool {
        self.limits.max_file_size.is_some() || self.limits.max_tree_size.is_some()
    }

    /// Counts a file of `size` bytes at `path`.
    fn add(&self, size: u64, path: &Path) -> Result<(), Refusal> {
        let rel = || shown(path.strip_prefix(self.dest).unwrap_or(path));
        if let Some(max) = self.limits.max_file_size
            && size > max
        {
            return Err(Refusal::new(
                RefusalReason::FileSize,
                format!("{} is {size} bytes, over --max-file-size ({max})", rel()),
            ));
        }
        let total = self.tree_bytes.fetch_add(size, Ordering::SeqCst) + size;
        if let Some(max) = self.limits.max_tree_size
            && total > max
        {
            return Err(Refusal::new(
                RefusalReason::TreeSize,
                format!(
                    "the tree reaches {total} bytes at {}, over --max-tree-size ({max})",
                    rel()
                ),
            ));
        }
        Ok(())
    }
}

/// The tree the selection publishes: the commit's, or its --subpath directory's; every
/// --sparse-path must be in it.
fn selected_tree<'r>(
    repo: &'r Repository,
    root: &Tree<'r>,
    selection: &Selection,
    commit: Oid,
) -> Result<Tree<'r>, ExportError> {
    let missing = |flag, path: &str, why| ExportError::NotInCommit {
        flag,
        path: path.to_string(),
        commit,
        why,
    };
    let tree = match &selection.subpath {
        None => root.clone(),
        Some(sub) => {
            let entry = root
                .get_path(Path::new(sub))
                .map_err(|_| missing("--subpath", sub, ""))?;
            match entry.kind() {
                Some(ObjectType::Tree) => repo
                    .find_tree(entry.id())
                    .map_err(|e| git_err(format!("tree {}", entry.id()), e))?,
                Some(ObjectType::Commit) => {
                    return Err(missing(
                        "--subpath",
                        sub,
                        " as a directory: it is a submodule, give a path in the superproject",
                    ));
                }
                _ => return Err(missing("--subpath", sub, " as a directory: it is a file")),
            }
        }
    };
    for wanted in &selection.sparse {
        if !path_exists(repo, &tree, wanted) {
            return Err(missing("--sparse-path", wanted, ""));
        }
    }
    Ok(tree)
}

/// Whether `path` is in the tree; a path that runs into a submodule counts as present.
fn path_exists(repo: &Repository, tree: &Tree<'_>, path: &str) -> bool {
    let mut current = tree.clone();
    let mut parts = path.split('/').peekable();
    while let Some(part) = parts.next() {
        let (kind, id) = match current.get_name(part) {
            Some(entry) => (entry.kind(), entry.id()),
            None => return false,
        };
        match kind {
            Some(ObjectType::Commit) => return true,
            Some(ObjectType::Tree) if parts.peek().is_some() => match repo.find_tree(id) {
                Ok(next) => current = next,
                Err(_) => return false,
            },
            _ => return parts.peek().is_none(),
        }
    }
    true
}

/// Writes the pending blobs with `workers` threads, each with its own repository handle.
/// Work goes in rounds of about [`BATCH_BYTES`] in all: at the end of a round every thread
/// drops its handle (so libgit2 unmaps the pack, see [`BATCH_BYTES`]) before any reopens.
fn write_pending(
    repo_paths: &[PathBuf],
    pending: &[Pending],
    workers: usize,
    exec_mode: u32,
    sizes: &Sizes<'_>,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<(u64, u64), ExportError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let barrier = Barrier::new(workers);
    let per_round = BATCH_BYTES / workers;
    let worker = || -> Result<(u64, u64), ExportError> {
        let (mut written, mut bytes) = (0u64, 0u64);
        let mut error = None;
        loop {
            if error.is_none() && !failed.load(Ordering::SeqCst) {
                // Opened when first needed in the round, all closed at its end.
                let mut handles: Vec<Option<Repository>> =
                    repo_paths.iter().map(|_| None).collect();
                let mut round = 0usize;
                while round < per_round {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = pending.get(i) else { break };
                    if cancelled() {
                        error = Some(ExportError::Cancelled);
                        break;
                    }
                    let repo = match &mut handles[item.repo] {
                        Some(repo) => repo,
                        slot => match Repository::open_bare(&repo_paths[item.repo]) {
                            Ok(repo) => slot.insert(repo),
                            Err(e) => {
                                error = Some(git_err("opening the private repository", e));
                                break;
                            }
                        },
                    };
                    match write_blob(repo, item, exec_mode, sizes) {
                        Ok(n) => {
                            round += n;
                            written += 1;
                            bytes += n as u64;
                        }
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
                drop(handles);
                if error.is_some() {
                    failed.store(true, Ordering::SeqCst);
                }
            }
            // Every handle of this round is closed past this point.
            barrier.wait();
            let done =
                next.load(Ordering::SeqCst) >= pending.len() || failed.load(Ordering::SeqCst);
            // Nobody takes more work before everyone has read `done`: all leave together.
            barrier.wait();
            if done {
                return match error {
                    Some(e) => Err(e),
                    None => Ok((written, bytes)),
                };
            }
        }
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers).map(|_| scope.spawn(worker)).collect();
        let mut total = (0u64, 0u64);
        let mut first_error = None;
        for handle in handles {
            match handle.join() {
                Ok(Ok((w, b))) => {
                    total.0 += w;
                    total.1 += b;
                }
                Ok(Err(e)) => {
                    // Prefer a real error over the cancellations it caused elsewhere.
                    if first_error.is_none() || matches!(first_error, Some(ExportError::Cancelled))
                    {
                        first_error = Some(e);
                    }
                }
                Err(_) => {
                    first_error.get_or_insert(ExportError::Io {
                        path: repo_paths[0].clone(),
                        source: std::io::Error::other("an export thread panicked"),
                    });
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    })
}

fn write_blob(
    repo: &Repository,
    item: &Pending,
    exec_mode: u32,
    sizes: &Sizes<'_>,
) -> Result<usize, ExportError> {
    if sizes.active() {
        // The header alone: a blob over the limit is never inflated into memory.
        let (size, _) = repo
            .odb()
            .and_then(|odb| odb.read_header(item.oid))
            .map_err(|e| git_err(format!("blob {}", item.oid), e))?;
        sizes.add(size as u64, &item.path)?;
    }
    let blob = repo
        .find_blob(item.oid)
        .map_err(|e| git_err(format!("blob {}", item.oid), e))?;
    let content = blob.content();
    write_file(&item.path, content, item.mode, exec_mode)?;
    Ok(content.len())
}

fn write_file(path: &Path, content: &[u8], mode: i32, exec_mode: u32) -> Result<(), ExportError> {
    if mode == 0o120000 {
        let target = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(content);
        return std::os::unix::fs::symlink(target, path).map_err(|e| io_err(path, e));
    }
    // create_new: never through a link or over a file already written (names that collide on
    // a case-insensitive volume).
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    file.write_all(content).map_err(|e| io_err(path, e))?;
    if mode == 0o100755 {
        file.set_permissions(fs::Permissions::from_mode(exec_mode))
            .map_err(|e| io_err(path, e))?;
    }
    Ok(())
}

struct Walk<'r, 's> {
    /// 0: the private repository; 1 + n: the n-th submodule's.
    repos: &'r [Repository],
    submodules: &'s [Submodule],
    selection: &'s Selection,
    stats: &'s mut ExportStats,
    cancelled: &'s dyn Fn() -> bool,
    pending: Vec<Pending>,
    /// Hard-linked bytes are counted for --max-tree-size only.
    count_linked: bool,
    linked_bytes: u64,
}

impl Walk<'_, '_> {
    /// `rel`: the path of `tree` in the published tree; `all`: everything under it is wanted.
    fn tree(
        &mut self,
        repo: usize,
        tree: &Tree<'_>,
        dir: &mut PathBuf,
        rel: &mut String,
        all: bool,
        mut previous: Option<(&Tree<'_>, &mut PathBuf)>,
    ) -> Result<(), ExportError> {
        if (self.cancelled)() {
            return Err(ExportError::Cancelled);
        }
        for entry in tree.iter() {
            let name = safe_name(&entry)?;
            let rel_len = rel.len();
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(name);
            let decision = if all {
                Decision::All
            } else {
                self.selection.decide(rel)
            };
            if decision == Decision::Skip {
                rel.truncate(rel_len);
                continue;
            }
            dir.push(name);
            let old = previous
                .as_mut()
                .and_then(|(t, d)| t.get_name(name).map(|e| (e.to_owned(), &mut **d)));
            let all = decision == Decision::All;
            let result = match old {
                Some((old_entry, old_dir)) => {
                    old_dir.push(name);
                    let r = self.entry(
                        repo,
                        &entry,
                        dir,
                        rel,
                        all,
                        Some((&old_entry, &mut *old_dir)),
                    );
                    old_dir.pop();
                    r
                }
                None => self.entry(repo, &entry, dir, rel, all, None),
            };
            dir.pop();
            rel.truncate(rel_len);
            result?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        repo: usize,
        entry: &TreeEntry<'_>,
        path: &mut PathBuf,
        rel: &mut String,
        all: bool,
        previous: Option<(&TreeEntry<'_>, &mut PathBuf)>,
    ) -> Result<(), ExportError> {
        let repos = self.repos;
        match entry.kind() {
            Some(ObjectType::Tree) => {
                fs::create_dir(&*path).map_err(|e| io_err(path, e))?;
                let subtree = repos[repo]
                    .find_tree(entry.id())
                    .map_err(|e| git_err(format!("tree {}", entry.id()), e))?;
                let old_subtree = previous.and_then(|(old, dir)| {
                    let tree = (old.kind() == Some(ObjectType::Tree))
                        .then(|| repos[repo].find_tree(old.id()).ok())
                        .flatten()?;
                    Some((tree, dir))
                });
                match old_subtree {
                    Some((tree, dir)) => {
                        self.tree(repo, &subtree, path, rel, all, Some((&tree, dir)))
                    }
                    None => self.tree(repo, &subtree, path, rel, all, None),
                }
            }
            // A file on the way to a wanted path is not wanted itself.
            Some(ObjectType::Blob) if !all => Ok(()),
            Some(ObjectType::Blob) => {
                let unchanged = previous.as_ref().is_some_and(|(old, _)| {
                    old.id() == entry.id() && old.filemode() == entry.filemode()
                });
                if unchanged
                    && entry.filemode() != 0o120000
                    && let Some((_, old_path)) = &previous
                    && fs::hard_link(&**old_path, &*path).is_ok()
                {
                    self.stats.linked += 1;
                    if self.count_linked {
                        self.linked_bytes += fs::symlink_metadata(&*path).map_or(0, |m| m.len());
                    }
                    return Ok(());
                }
                self.pending.push(Pending {
                    path: path.clone(),
                    oid: entry.id(),
                    mode: entry.filemode(),
                    repo,
                });
                Ok(())
            }
            Some(ObjectType::Commit) => self.submodule(entry, path, rel, all, previous),
            _ => Ok(()),
        }
    }

    /// A gitlink: the submodule's tree from its own repository, when it was fetched.
    fn submodule(
        &mut self,
        entry: &TreeEntry<'_>,
        path: &mut PathBuf,
        rel: &mut String,
        all: bool,
        previous: Option<(&TreeEntry<'_>, &mut PathBuf)>,
    ) -> Result<(), ExportError> {
        let repo_path = self.selection.repo_path(rel);
        let Some(index) = self
            .submodules
            .iter()
            .position(|s| s.path == repo_path && s.commit == entry.id())
        else {
            tracing::warn!(path = %repo_path, commit = %entry.id(), "skipping a submodule that was not fetched (--submodules off, or no .gitmodules entry)");
            self.stats.skipped_submodules += 1;
            return Ok(());
        };
        let repo = index + 1;
        let repos = self.repos;
        let tree = repos[repo]
            .find_commit(entry.id())
            .and_then(|c| c.tree())
            .map_err(|e| git_err(format!("submodule {repo_path} commit {}", entry.id()), e))?;
        fs::create_dir(&*path).map_err(|e| io_err(path, e))?;
        let old_tree = previous.and_then(|(old, dir)| {
            let tree = (old.kind() == Some(ObjectType::Commit))
                .then(|| {
                    repos[repo]
                        .find_commit(old.id())
                        .and_then(|c| c.tree())
                        .ok()
                })
                .flatten()?;
            Some((tree, dir))
        });
        match old_tree {
            Some((old, dir)) => self.tree(repo, &tree, path, rel, all, Some((&old, dir))),
            None => self.tree(repo, &tree, path, rel, all, None),
        }
    }
}

/// Tree entry names come from the remote: refuse anything that could escape the export.
fn safe_name<'a>(entry: &'a TreeEntry<'_>) -> Result<&'a str, ExportError> {
    Ok(check_name(entry.name_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn export(
        repo: &Path,
        commit: Oid,
        dest: &Path,
        previous: Option<Previous<'_>>,
        cancelled: &(dyn Fn() -> bool + Sync),
    ) -> Result<ExportStats, ExportError> {
        let everything = Selection::default();
        export_commit(
            &Export {
                repo,
                commit,
                dest,
                previous,
                selection: &everything,
                submodules: &[],
                group_write: false,
                limits: TreeLimits::default(),
            },
            cancelled,
        )
    }

    fn commit(repo: &Repository, files: &[(&str, &str)], parent: Option<Oid>) -> Oid {
        let mut builder = git2::build::TreeUpdateBuilder::new();
        for (path, content) in files {
            let blob = repo.blob(content.as_bytes()).unwrap();
            builder.upsert(path, blob, git2::FileMode::Blob);
        }
        let base = match parent {
            Some(p) => repo.find_commit(p).unwrap().tree().unwrap(),
            None => repo
                .find_tree(repo.treebuilder(None).unwrap().write().unwrap())
                .unwrap(),
        };
        let tree_id = builder.create_updated(repo, &base).unwrap();
        let tree = repo.find_tree(tree_id).unwrap();
        let sig = git2::Signature::now("t", "t@example.invalid").unwrap();
        let parents: Vec<git2::Commit<'_>> = parent
            .map(|p| repo.find_commit(p).unwrap())
            .into_iter()
            .collect();
        let refs: Vec<&git2::Commit<'_>> = parents.iter().collect();
        repo.commit(None, &sig, &sig, "m", &tree, &refs).unwrap()
    }

    #[test]
    fn unchanged_files_are_hard_linked_changed_ones_written() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path().join("r.git")).unwrap();
        let c1 = commit(
            &repo,
            &[("a/same", "s"), ("a/changed", "1"), ("top", "t")],
            None,
        );
        let c2 = commit(&repo, &[("a/changed", "2"), ("new", "n")], Some(c1));
        let t1 = dir.path().join("t1");
        let s1 = export(repo.path(), c1, &t1, None, &|| false).unwrap();
        assert_eq!((s1.written, s1.linked), (3, 0));
        let t2 = dir.path().join("t2");
        let prev = Previous {
            commit: c1,
            dir: &t1,
        };
        let s2 = export(repo.path(), c2, &t2, Some(prev), &|| false).unwrap();
        assert_eq!((s2.written, s2.linked), (2, 2));
        assert_eq!(fs::read_to_string(t2.join("a/changed")).unwrap(), "2");
        assert_eq!(fs::read_to_string(t1.join("a/changed")).unwrap(), "1");
        assert_eq!(fs::read_to_string(t2.join("new")).unwrap(), "n");
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&t1.join("a/same")), ino(&t2.join("a/same")));
        assert_ne!(ino(&t1.join("a/changed")), ino(&t2.join("a/changed")));
        // a vanished previous directory: everything is written
        fs::remove_dir_all(&t1).unwrap();
        let s3 = export(repo.path(), c2, &dir.path().join("t3"), Some(prev), &|| {
            false
        })
        .unwrap();
        assert_eq!((s3.written, s3.linked), (4, 0));
    }

    #[test]
    fn many_files_are_written_by_several_threads() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path().join("r.git")).unwrap();
        let names: Vec<String> = (0..700).map(|i| format!("d{}/f{i}", i % 7)).collect();
        let bodies: Vec<String> = (0..700)
            .map(|i| format!("{i}").repeat(i % 50 + 1))
            .collect();
        let files: Vec<(&str, &str)> = names
            .iter()
            .map(String::as_str)
            .zip(bodies.iter().map(String::as_str))
            .collect();
        let c = commit(&repo, &files, None);
        let out = dir.path().join("t");
        let stats = export(repo.path(), c, &out, None, &|| false).unwrap();
        assert_eq!(stats.written, 700);
        for (name, body) in &files {
            assert_eq!(fs::read_to_string(out.join(name)).unwrap(), *body);
        }
        let err = export(repo.path(), c, &dir.path().join("t2"), None, &{
            let calls = std::sync::atomic::AtomicUsize::new(0);
            move || calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 20
        })
        .unwrap_err();
        assert!(matches!(err, ExportError::Cancelled));
    }

    #[test]
    fn cancelled_export_stops() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path().join("r.git")).unwrap();
        let c1 = commit(&repo, &[("a", "1")], None);
        let err = export(repo.path(), c1, &dir.path().join("t"), None, &|| true).unwrap_err();
        assert!(matches!(err, ExportError::Cancelled));
    }

    fn export_selected(
        repo: &Path,
        commit: Oid,
        dest: &Path,
        previous: Option<Previous<'_>>,
        selection: &Selection,
        submodules: &[Submodule],
    ) -> Result<ExportStats, ExportError> {
        export_commit(
            &Export {
                repo,
                commit,
                dest,
                previous,
                selection,
                submodules,
                group_write: false,
                limits: TreeLimits::default(),
            },
            &|| false,
        )
    }

    fn files_under(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn subpath_and_sparse_paths_export_only_what_is_wanted() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init_bare(dir.path().join("r.git")).unwrap();
        let c1 = commit(
            &repo,
            &[
                ("README", "r"),
                ("apps/web/conf/a.yaml", "a"),
                ("apps/web/conf/b.yaml", "b"),
                ("apps/web/index.html", "i"),
                ("apps/web/shared.yaml", "s"),
                ("apps/api/conf/x.yaml", "x"),
            ],
            None,
        );
        let sub = Selection::parse(Some("apps/web"), &[]).unwrap();
        let t1 = dir.path().join("t1");
        export_selected(repo.path(), c1, &t1, None, &sub, &[]).unwrap();
        assert_eq!(
            files_under(&t1),
            ["conf/a.yaml", "conf/b.yaml", "index.html", "shared.yaml"]
        );
        let sparse =
            Selection::parse(Some("apps/web"), &["conf".into(), "shared.yaml".into()]).unwrap();
        let t2 = dir.path().join("t2");
        let stats = export_selected(repo.path(), c1, &t2, None, &sparse, &[]).unwrap();
        assert_eq!(
            files_under(&t2),
            ["conf/a.yaml", "conf/b.yaml", "shared.yaml"]
        );
        assert_eq!(stats.written, 3);
        // the next revision reuses the previous one's files of the same selection
        let c2 = commit(
            &repo,
            &[("apps/web/conf/b.yaml", "b2"), ("README", "r2")],
            Some(c1),
        );
        let t3 = dir.path().join("t3");
        let prev = Previous {
            commit: c1,
            dir: &t2,
        };
        let stats = export_selected(repo.path(), c2, &t3, Some(prev), &sparse, &[]).unwrap();
        assert_eq!((stats.written, stats.linked), (1, 2));
        assert_eq!(fs::read_to_string(t3.join("conf/b.yaml")).unwrap(), "b2");
        // a path that is not there is an error naming the flag, nothing is left half-made
        let missing = Selection::parse(Some("apps/mobile"), &[]).unwrap();
        let err = export_selected(repo.path(), c2, &dir.path().join("t4"), None, &missing, &[])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("--subpath \"apps/mobile\" is not in commit"),
            "{err}"
        );
        let missing = Selection::parse(None, &["apps/web/conf/c.yaml".into()]).unwrap();
        let err = export_selected(repo.path(), c2, &dir.path().join("t5"), None, &missing, &[])
            .unwrap_err();
        assert!(err.to_string().contains("--sparse-path"), "{err}");
        let file = Selection::parse(Some("README"), &[]).unwrap();
        let err =
            export_selected(repo.path(), c2, &dir.path().join("t6"), None, &file, &[]).unwrap_err();
        assert!(err.to_string().contains("it is a file"), "{err}");
    }

    /// A gitlink to `target` at `path` in a commit of `repo`.
    fn commit_with_gitlink(
        repo: &Repository,
        files: &[(&str, &str)],
        path: &str,
        target: Oid,
    ) -> Oid {
        let base = commit(repo, files, None);
        let mut builder = git2::build::TreeUpdateBuilder::new();
        builder.upsert(path, target, git2::FileMode::Commit);
        let tree_id = builder
            .create_updated(repo, &repo.find_commit(base).unwrap().tree().unwrap())
            .unwrap();
        let sig = git2::Signature::now("t", "t@example.invalid").unwrap();
        repo.commit(
            None,
            &sig,
            &sig,
            "gitlink",
            &repo.find_tree(tree_id).unwrap(),
            &[],
        )
        .unwrap()
    }

    #[test]
    fn submodules_are_exported_from_their_own_repository() {
        let dir = tempfile::tempdir().unwrap();
        let lib = Repository::init_bare(dir.path().join("lib.git")).unwrap();
        let lib_commit = commit(
            &lib,
            &[("lib.conf", "from the submodule"), ("d/x", "x")],
            None,
        );
        let repo = Repository::init_bare(dir.path().join("r.git")).unwrap();
        let top = commit_with_gitlink(&repo, &[("main.conf", "m")], "vendor/lib", lib_commit);
        let subs = [Submodule {
            path: "vendor/lib".into(),
            repo: lib.path().to_path_buf(),
            commit: lib_commit,
        }];
        let everything = Selection::default();
        let t1 = dir.path().join("t1");
        export_selected(repo.path(), top, &t1, None, &everything, &subs).unwrap();
        assert_eq!(
            files_under(&t1),
            ["main.conf", "vendor/lib/d/x", "vendor/lib/lib.conf"]
        );
        assert_eq!(
            fs::read_to_string(t1.join("vendor/lib/lib.conf")).unwrap(),
            "from the submodule"
        );
        // unchanged submodule: its files are hard-linked from the previous tree
        let t2 = dir.path().join("t2");
        let prev = Previous {
            commit: top,
            dir: &t1,
        };
        let stats = export_selected(repo.path(), top, &t2, Some(prev), &everything, &subs).unwrap();
        assert_eq!((stats.written, stats.linked), (0, 3));
        // sparse into the submodule
        let sparse = Selection::parse(None, &["vendor/lib/d".into()]).unwrap();
        let t3 = dir.path().join("t3");
        export_selected(repo.path(), top, &t3, None, &sparse, &subs).unwrap();
        assert_eq!(files_under(&t3), ["vendor/lib/d/x"]);
        // not fetched (--submodules off): left out
        let t4 = dir.path().join("t4");
        let stats = export_selected(repo.path(), top, &t4, None, &everything, &[]).unwrap();
        assert_eq!(files_under(&t4), ["main.conf"]);
        assert_eq!(stats.skipped_submodules, 1);
    }
}
