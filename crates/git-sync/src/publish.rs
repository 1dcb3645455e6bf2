//! The publish layout under `--root`, and the atomic symlink swap.
//!
//! ```text
//! ROOT/
//!   LINK -> .git-sync/trees/<sha>      the app reads ROOT/LINK/...; relative, so any mount path works
//!   .git-sync/repo.git/                the private bare repository
//!   .git-sync/modules/<hash>.git/      a submodule's bare repository (one per URL)
//!   .git-sync/trees/<sha>/             published trees (current, and previous ones within the grace period)
//!   .git-sync/trees/.staging-<sha>-N/  a tree being exported and validated; never linked
//! ```
//! A reader resolves LINK once per path lookup, so it sees the old tree or the new one, never
//! a mix, as long as it opens files through a directory it resolved once (or re-reads LINK).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use git2::Oid;

pub const INTERNAL_DIR: &str = ".git-sync";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--link {0:?} must be a plain name inside --root (no '/', not '.' or '..', not {INTERNAL_DIR:?})"
    )]
    BadLinkName(String),
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> PublishError + 'a {
    move |source| PublishError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What the start-up check found and fixed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The revision the link points at, when its tree is intact.
    pub published: Option<Oid>,
    /// The link pointed at a missing or foreign target, and was removed.
    pub removed_broken_link: bool,
    /// Leftover staging directories removed.
    pub removed_staging: usize,
    /// A regular directory or file sat where the link goes; moved into the trees to be collected.
    pub moved_aside: bool,
}

#[derive(Debug)]
pub struct Publisher {
    root: PathBuf,
    link: PathBuf,
    link_name: String,
    trees: PathBuf,
    staging_seq: AtomicU64,
    /// Trees no longer linked, with the time they were retired.
    retired: std::sync::Mutex<HashMap<String, Instant>>,
}

/// A tree exported and waiting for validation and publication.
#[derive(Debug)]
pub struct Staged {
    pub sha: Oid,
    pub path: PathBuf,
}

impl Publisher {
    pub fn new(root: &Path, link_name: &str) -> Result<Publisher, PublishError> {
        if link_name.is_empty()
            || link_name == "."
            || link_name == ".."
            || link_name.contains('/')
            || link_name == INTERNAL_DIR
        {
            return Err(PublishError::BadLinkName(link_name.to_string()));
        }
        let trees = root.join(INTERNAL_DIR).join("trees");
        fs::create_dir_all(&trees).map_err(io("creating", &trees))?;
        Ok(Publisher {
            root: root.to_path_buf(),
            link: root.join(link_name),
            link_name: link_name.to_string(),
            trees,
            staging_seq: AtomicU64::new(0),
            retired: std::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn repo_path(&self) -> PathBuf {
        self.root.join(INTERNAL_DIR).join("repo.git")
    }

    /// Where the submodules' repositories live.
    pub fn modules_path(&self) -> PathBuf {
        self.root.join(INTERNAL_DIR).join("modules")
    }

    pub fn link_path(&self) -> &Path {
        &self.link
    }

    fn relative_target(sha: &str) -> PathBuf {
        Path::new(INTERNAL_DIR).join("trees").join(sha)
    }

    /// The revision the link points at, if the link and its tree are intact.
    pub fn current(&self) -> Option<Oid> {
        let target = fs::read_link(&self.link).ok()?;
        let sha = target.file_name()?.to_str()?;
        let oid = Oid::from_str(sha).ok().filter(|_| sha.len() == 40)?;
        if target != Self::relative_target(sha) || !self.trees.join(sha).is_dir() {
            return None;
        }
        Some(oid)
    }

    /// Start-up check: remove half-done staging, a broken link, or a non-link in the link's place.
    pub fn repair(&self) -> Result<Repair, PublishError> {
        let mut report = Repair::default();
        for entry in fs::read_dir(&self.trees).map_err(io("listing", &self.trees))? {
            let entry = entry.map_err(io("listing", &self.trees))?;
            if entry.file_name().to_string_lossy().starts_with(".staging-") {
                remove_tree(&entry.path())?;
                report.removed_staging += 1;
            }
        }
        match fs::symlink_metadata(&self.link) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("inspecting", &self.link)(e)),
            Ok(meta) if meta.file_type().is_symlink() => {
                report.published = self.current();
                if report.published.is_none() {
                    fs::remove_file(&self.link)
                        .map_err(io("removing the broken link", &self.link))?;
                    report.removed_broken_link = true;
                }
            }
            Ok(_) => {
                // Someone wrote a real directory or file here; keep it out of the way until collected.
                let aside = self
                    .trees
                    .join(format!(".staging-aside-{}", std::process::id()));
                fs::rename(&self.link, &aside).map_err(io("moving aside", &self.link))?;
                remove_tree(&aside)?;
                report.moved_aside = true;
            }
        }
        Ok(report)
    }

    /// Where a published revision's tree lives.
    pub fn tree_path(&self, sha: Oid) -> PathBuf {
        self.trees.join(sha.to_string())
    }

    /// A fresh staging path for `sha` (not created).
    pub fn staging_path(&self, sha: Oid) -> PathBuf {
        let n = self.staging_seq.fetch_add(1, Ordering::Relaxed);
        self.trees
            .join(format!(".staging-{sha}-{}-{n}", std::process::id()))
    }

    pub fn discard(&self, staged: Staged) -> Result<(), PublishError> {
        remove_tree(&staged.path)
    }

    /// Moves the staged tree to `trees/<sha>` and swaps the link to it with rename(2).
    pub fn publish(&self, staged: Staged) -> Result<(), PublishError> {
        let sha = staged.sha.to_string();
        let final_dir = self.trees.join(&sha);
        if final_dir.is_dir() {
            // Already exported earlier (a revert to a revision still within its grace period, or a
            // crash between rename and swap); a tree only gets this name once complete.
            remove_tree(&staged.path)?;
        } else {
            fs::rename(&staged.path, &final_dir)
                .map_err(io("renaming the staged tree to", &final_dir))?;
        }
        let previous = self.current();
        let tmp_link = self
            .root
            .join(format!(".{}.tmp-{}", self.link_name, std::process::id()));
        let _ = fs::remove_file(&tmp_link);
        std::os::unix::fs::symlink(Self::relative_target(&sha), &tmp_link)
            .map_err(io("creating the link", &tmp_link))?;
        fs::rename(&tmp_link, &self.link).map_err(io("swapping the link", &self.link))?;
        // Make the swap durable: the directory entry is what a restart reads.
        if let Ok(dir) = fs::File::open(&self.root) {
            let _ = dir.sync_all();
        }
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.remove(&sha);
        if let Some(prev) = previous.filter(|p| *p != staged.sha) {
            retired.insert(prev.to_string(), Instant::now());
        }
        Ok(())
    }

    /// Removes trees that have been unlinked for longer than `grace`. Trees found on disk that
    /// this process did not retire (from before a restart) get their grace period from now.
    pub fn collect(&self, grace: Duration) -> Result<usize, PublishError> {
        let current = self.current().map(|o| o.to_string());
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut removed = 0;
        for entry in fs::read_dir(&self.trees).map_err(io("listing", &self.trees))? {
            let entry = entry.map_err(io("listing", &self.trees))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".staging-") || Some(&name) == current.as_ref() {
                continue;
            }
            let since = *retired.entry(name.clone()).or_insert(now);
            if now.duration_since(since) >= grace {
                remove_tree(&entry.path())?;
                retired.remove(&name);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn remove_tree(path: &Path) -> Result<(), PublishError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("removing", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> Oid {
        Oid::from_bytes(&[n; 20]).unwrap()
    }

    fn stage(p: &Publisher, sha: Oid, content: &str) -> Staged {
        let path = p.staging_path(sha);
        fs::create_dir(&path).unwrap();
        fs::write(path.join("f"), content).unwrap();
        Staged { sha, path }
    }

    #[test]
    fn publish_swaps_link_and_target_ends_with_sha() {
        let root = tempfile::tempdir().unwrap();
        let p = Publisher::new(root.path(), "current").unwrap();
        assert_eq!(p.current(), None);
        p.publish(stage(&p, oid(1), "one")).unwrap();
        assert_eq!(p.current(), Some(oid(1)));
        let target = fs::read_link(root.path().join("current")).unwrap();
        assert_eq!(
            target.file_name().unwrap().to_str().unwrap(),
            oid(1).to_string()
        );
        assert!(target.is_relative());
        p.publish(stage(&p, oid(2), "two")).unwrap();
        assert_eq!(
            fs::read_to_string(root.path().join("current/f")).unwrap(),
            "two"
        );
        // the old tree stays during the grace period, then is collected
        assert_eq!(p.collect(Duration::from_secs(3600)).unwrap(), 0);
        assert!(
            root.path()
                .join(".git-sync/trees")
                .join(oid(1).to_string())
                .is_dir()
        );
        assert_eq!(p.collect(Duration::ZERO).unwrap(), 1);
        assert!(
            !root
                .path()
                .join(".git-sync/trees")
                .join(oid(1).to_string())
                .exists()
        );
        assert_eq!(p.current(), Some(oid(2)));
    }

    #[test]
    fn republishing_a_retained_tree_reuses_it() {
        let root = tempfile::tempdir().unwrap();
        let p = Publisher::new(root.path(), "current").unwrap();
        p.publish(stage(&p, oid(1), "one")).unwrap();
        p.publish(stage(&p, oid(2), "two")).unwrap();
        p.publish(stage(&p, oid(1), "one")).unwrap();
        assert_eq!(p.current(), Some(oid(1)));
        assert_eq!(p.collect(Duration::ZERO).unwrap(), 1);
        assert_eq!(
            fs::read_to_string(root.path().join("current/f")).unwrap(),
            "one"
        );
        let leftovers: Vec<_> = fs::read_dir(root.path().join(".git-sync/trees"))
            .unwrap()
            .collect();
        assert_eq!(leftovers.len(), 1);
    }

    #[test]
    fn repair_removes_broken_link_staging_and_foreign_directory() {
        let root = tempfile::tempdir().unwrap();
        let p = Publisher::new(root.path(), "current").unwrap();
        p.publish(stage(&p, oid(1), "one")).unwrap();
        let _half = stage(&p, oid(2), "half");
        fs::remove_dir_all(root.path().join(".git-sync/trees").join(oid(1).to_string())).unwrap();
        let r = p.repair().unwrap();
        assert_eq!(
            r,
            Repair {
                published: None,
                removed_broken_link: true,
                removed_staging: 1,
                moved_aside: false
            }
        );
        assert!(fs::symlink_metadata(root.path().join("current")).is_err());

        fs::create_dir(root.path().join("current")).unwrap();
        let r = p.repair().unwrap();
        assert!(r.moved_aside);
        p.publish(stage(&p, oid(3), "three")).unwrap();
        assert_eq!(p.repair().unwrap().published, Some(oid(3)));
    }

    #[test]
    fn link_name_is_validated() {
        let root = tempfile::tempdir().unwrap();
        for bad in ["", "a/b", "..", ".git-sync"] {
            assert!(matches!(
                Publisher::new(root.path(), bad),
                Err(PublishError::BadLinkName(_))
            ));
        }
    }
}
