//! Writes a commit's tree into a directory: plain files, no `.git`, modes and symlinks kept.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository, TreeEntry};

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
    #[error("the export was cancelled")]
    Cancelled,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExportStats {
    pub files: u64,
    pub bytes: u64,
    pub skipped_submodules: u64,
}

/// Exports `commit`'s tree into `dest` (which must not exist yet).
pub fn export_commit(
    repo: &Repository,
    commit: Oid,
    dest: &Path,
    cancelled: &dyn Fn() -> bool,
) -> Result<ExportStats, ExportError> {
    let git = |what: &str, e: git2::Error| ExportError::Git {
        what: what.to_string(),
        message: e.message().to_string(),
    };
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(|e| git(&format!("commit {commit}"), e))?;
    fs::create_dir(dest).map_err(|source| ExportError::Io {
        path: dest.to_path_buf(),
        source,
    })?;
    let mut stats = ExportStats::default();
    let mut path = dest.to_path_buf();
    export_tree(repo, &tree, &mut path, &mut stats, cancelled)?;
    Ok(stats)
}

fn export_tree(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    dir: &mut PathBuf,
    stats: &mut ExportStats,
    cancelled: &dyn Fn() -> bool,
) -> Result<(), ExportError> {
    if cancelled() {
        return Err(ExportError::Cancelled);
    }
    for entry in tree.iter() {
        let name = safe_name(&entry)?;
        dir.push(name);
        let result = export_entry(repo, &entry, dir, stats, cancelled);
        dir.pop();
        result?;
    }
    Ok(())
}

fn export_entry(
    repo: &Repository,
    entry: &TreeEntry<'_>,
    path: &mut PathBuf,
    stats: &mut ExportStats,
    cancelled: &dyn Fn() -> bool,
) -> Result<(), ExportError> {
    let io = |path: &Path, source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let git = |e: git2::Error| ExportError::Git {
        what: format!("object {}", entry.id()),
        message: e.message().to_string(),
    };
    match entry.kind() {
        Some(ObjectType::Tree) => {
            fs::create_dir(&*path).map_err(|e| io(path, e))?;
            let subtree = repo.find_tree(entry.id()).map_err(git)?;
            export_tree(repo, &subtree, path, stats, cancelled)
        }
        Some(ObjectType::Blob) => {
            let blob = repo.find_blob(entry.id()).map_err(git)?;
            let content = blob.content();
            match entry.filemode() {
                0o120000 => {
                    let target =
                        <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(content);
                    std::os::unix::fs::symlink(target, &*path).map_err(|e| io(path, e))?;
                }
                mode => {
                    let mut file = fs::File::create(&*path).map_err(|e| io(path, e))?;
                    file.write_all(content).map_err(|e| io(path, e))?;
                    if mode == 0o100755 {
                        file.set_permissions(fs::Permissions::from_mode(0o755))
                            .map_err(|e| io(path, e))?;
                    }
                }
            }
            stats.files += 1;
            stats.bytes += content.len() as u64;
            Ok(())
        }
        Some(ObjectType::Commit) => {
            // A submodule: its commit lives in another repository, which we do not fetch.
            tracing::warn!(path = %path.display(), "skipping a submodule (not supported)");
            stats.skipped_submodules += 1;
            Ok(())
        }
        _ => Ok(()),
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
