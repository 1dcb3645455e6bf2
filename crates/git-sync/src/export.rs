//! Writes a commit's tree into a directory: plain files, no `.git`, modes and symlinks kept.
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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use git2::{ObjectType, Oid, Repository, Tree, TreeEntry};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading {what} from the private repository: {message}")]
    Git { what: String, message: String },
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the tree holds an unsafe path component {0:?}: refusing to export it")]
    UnsafeName(String),
    #[error("the export was stopped (--sync-timeout or shutdown)")]
    Cancelled,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportStats {
    /// Files written from the repository.
    pub written: u64,
    /// Files hard-linked from the previous tree.
    pub linked: u64,
    pub bytes_written: u64,
    pub skipped_submodules: u64,
}

/// A previously exported revision to reuse unchanged files from.
#[derive(Debug, Clone, Copy)]
pub struct Previous<'a> {
    pub commit: Oid,
    pub dir: &'a Path,
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
}

/// Exports `commit`'s tree into `dest` (which must not exist yet), reading from the
/// repository at `repo_path`. The caller must not hold a handle on that repository (see
/// [`BATCH_BYTES`]).
pub fn export_commit(
    repo_path: &Path,
    commit: Oid,
    dest: &Path,
    previous: Option<Previous<'_>>,
    cancelled: &(dyn Fn() -> bool + Sync),
) -> Result<ExportStats, ExportError> {
    let open = || {
        Repository::open_bare(repo_path).map_err(|e| git_err("opening the private repository", e))
    };
    let mut stats = ExportStats::default();
    // 1. Walk the trees: create directories, hard-link unchanged files, list the rest.
    let pending = {
        let repo = open()?;
        let tree = repo
            .find_commit(commit)
            .and_then(|c| c.tree())
            .map_err(|e| git_err(format!("commit {commit}"), e))?;
        // The previous revision's tree, if its commit is still in the private repository and
        // its directory still exists; otherwise everything is written.
        let previous_tree = previous.and_then(|p| {
            let tree = repo.find_commit(p.commit).and_then(|c| c.tree()).ok()?;
            p.dir.is_dir().then(|| (tree, p.dir.to_path_buf()))
        });
        fs::create_dir(dest).map_err(|e| io_err(dest, e))?;
        let mut path = dest.to_path_buf();
        let mut walk = Walk {
            repo: &repo,
            stats: &mut stats,
            cancelled,
            pending: Vec::new(),
        };
        match previous_tree {
            Some((prev_tree, mut prev_dir)) => {
                walk.tree(&tree, &mut path, Some((&prev_tree, &mut prev_dir)))?
            }
            None => walk.tree(&tree, &mut path, None)?,
        }
        walk.pending
    };
    // 2. Write the blobs on a few threads.
    let workers = if pending.len() < 256 {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4)
    };
    let (written, bytes) = write_pending(repo_path, &pending, workers, cancelled)?;
    stats.written += written;
    stats.bytes_written += bytes;
    Ok(stats)
}

/// Writes the pending blobs with `workers` threads, each with its own repository handle.
/// Work goes in rounds of about [`BATCH_BYTES`] in all: at the end of a round every thread
/// drops its handle (so libgit2 unmaps the pack, see [`BATCH_BYTES`]) before any reopens.
fn write_pending(
    repo_path: &Path,
    pending: &[Pending],
    workers: usize,
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
                match Repository::open_bare(repo_path) {
                    Ok(repo) => {
                        let mut round = 0usize;
                        while round < per_round {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            let Some(item) = pending.get(i) else { break };
                            if cancelled() {
                                error = Some(ExportError::Cancelled);
                                break;
                            }
                            match write_blob(&repo, item) {
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
                    }
                    Err(e) => error = Some(git_err("opening the private repository", e)),
                }
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
                        path: repo_path.to_path_buf(),
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

fn write_blob(repo: &Repository, item: &Pending) -> Result<usize, ExportError> {
    let blob = repo
        .find_blob(item.oid)
        .map_err(|e| git_err(format!("blob {}", item.oid), e))?;
    let content = blob.content();
    write_file(&item.path, content, item.mode)?;
    Ok(content.len())
}

fn write_file(path: &Path, content: &[u8], mode: i32) -> Result<(), ExportError> {
    if mode == 0o120000 {
        let target = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(content);
        return std::os::unix::fs::symlink(target, path).map_err(|e| io_err(path, e));
    }
    let mut file = fs::File::create(path).map_err(|e| io_err(path, e))?;
    file.write_all(content).map_err(|e| io_err(path, e))?;
    if mode == 0o100755 {
        file.set_permissions(fs::Permissions::from_mode(0o755))
            .map_err(|e| io_err(path, e))?;
    }
    Ok(())
}

struct Walk<'r, 's> {
    repo: &'r Repository,
    stats: &'s mut ExportStats,
    cancelled: &'s dyn Fn() -> bool,
    pending: Vec<Pending>,
}

impl Walk<'_, '_> {
    fn tree(
        &mut self,
        tree: &Tree<'_>,
        dir: &mut PathBuf,
        mut previous: Option<(&Tree<'_>, &mut PathBuf)>,
    ) -> Result<(), ExportError> {
        if (self.cancelled)() {
            return Err(ExportError::Cancelled);
        }
        for entry in tree.iter() {
            let name = safe_name(&entry)?;
            dir.push(name);
            let old = previous
                .as_mut()
                .and_then(|(t, d)| t.get_name(name).map(|e| (e.to_owned(), &mut **d)));
            let result = match old {
                Some((old_entry, old_dir)) => {
                    old_dir.push(name);
                    let r = self.entry(&entry, dir, Some((&old_entry, &mut *old_dir)));
                    old_dir.pop();
                    r
                }
                None => self.entry(&entry, dir, None),
            };
            dir.pop();
            result?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        entry: &TreeEntry<'_>,
        path: &mut PathBuf,
        previous: Option<(&TreeEntry<'_>, &mut PathBuf)>,
    ) -> Result<(), ExportError> {
        match entry.kind() {
            Some(ObjectType::Tree) => {
                fs::create_dir(&*path).map_err(|e| io_err(path, e))?;
                let subtree = self
                    .repo
                    .find_tree(entry.id())
                    .map_err(|e| git_err(format!("tree {}", entry.id()), e))?;
                let old_subtree = previous.and_then(|(old, dir)| {
                    let tree = (old.kind() == Some(ObjectType::Tree))
                        .then(|| self.repo.find_tree(old.id()).ok())
                        .flatten()?;
                    Some((tree, dir))
                });
                match old_subtree {
                    Some((tree, dir)) => self.tree(&subtree, path, Some((&tree, dir))),
                    None => self.tree(&subtree, path, None),
                }
            }
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
                    return Ok(());
                }
                self.pending.push(Pending {
                    path: path.clone(),
                    oid: entry.id(),
                    mode: entry.filemode(),
                });
                Ok(())
            }
            Some(ObjectType::Commit) => {
                // A submodule: its commit lives in another repository, which we do not fetch.
                tracing::warn!(path = %path.display(), "skipping a submodule (not supported)");
                self.stats.skipped_submodules += 1;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Tree entry names come from the remote: refuse anything that could escape the export.
fn safe_name<'a>(entry: &'a TreeEntry<'_>) -> Result<&'a str, ExportError> {
    let bytes = entry.name_bytes();
    let name = std::str::from_utf8(bytes)
        .map_err(|_| ExportError::UnsafeName(String::from_utf8_lossy(bytes).into_owned()))?;
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.eq_ignore_ascii_case(".git")
    {
        return Err(ExportError::UnsafeName(name.to_string()));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

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
        let s1 = export_commit(repo.path(), c1, &t1, None, &|| false).unwrap();
        assert_eq!((s1.written, s1.linked), (3, 0));
        let t2 = dir.path().join("t2");
        let prev = Previous {
            commit: c1,
            dir: &t1,
        };
        let s2 = export_commit(repo.path(), c2, &t2, Some(prev), &|| false).unwrap();
        assert_eq!((s2.written, s2.linked), (2, 2));
        assert_eq!(fs::read_to_string(t2.join("a/changed")).unwrap(), "2");
        assert_eq!(fs::read_to_string(t1.join("a/changed")).unwrap(), "1");
        assert_eq!(fs::read_to_string(t2.join("new")).unwrap(), "n");
        let ino = |p: &Path| fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&t1.join("a/same")), ino(&t2.join("a/same")));
        assert_ne!(ino(&t1.join("a/changed")), ino(&t2.join("a/changed")));
        // a vanished previous directory: everything is written
        fs::remove_dir_all(&t1).unwrap();
        let s3 = export_commit(repo.path(), c2, &dir.path().join("t3"), Some(prev), &|| {
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
        let stats = export_commit(repo.path(), c, &out, None, &|| false).unwrap();
        assert_eq!(stats.written, 700);
        for (name, body) in &files {
            assert_eq!(fs::read_to_string(out.join(name)).unwrap(), *body);
        }
        let err = export_commit(repo.path(), c, &dir.path().join("t2"), None, &{
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
        let err =
            export_commit(repo.path(), c1, &dir.path().join("t"), None, &|| true).unwrap_err();
        assert!(matches!(err, ExportError::Cancelled));
    }
}
