//! Publishing a consistent set of files, the way the kubelet updates a Secret volume:
//!
//! ```text
//! OUTPUT/
//!   ..2026_12_06_09_21_00.123456789/   one version of the whole set (files, subdirectories)
//!   ..data -> ..2026_12_06_09_21_00.123456789
//!   tls.crt -> ..data/tls.crt            one link per top-level name, made once
//!   db -> ..data/db
//! ```
//!
//! A new version is written in full beside the old one, then `..data` is swapped to it with
//! one rename(2): a reader (the kit's certificate reloader, or any app that handles Secret
//! volumes) sees every file change at once, never a certificate from one issue with the key
//! of another. The set is published only when some file's content, mode or owner differs
//! from what is there; files that did not change are hard links to the previous version's,
//! so their inode and mtime stay.
//!
//! Nothing is fsynced: readers see a consistent set through rename(2) alone, and after a crash
//! of the machine the agent renders again at start and republishes whatever differs (secret
//! volumes are often in memory anyway).

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use crate::render::Rendered;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct PublishError {
    op: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PublishError {
    let path = path.to_owned();
    move |source| PublishError { op, path, source }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every file is as it should be; nothing was written.
    Unchanged,
    /// A new version was swapped in; these files were added, changed or removed.
    Published { changed: Vec<PathBuf> },
}

#[derive(Debug)]
pub struct Publisher {
    dir: PathBuf,
}

impl Publisher {
    /// Opens (creating it if needed) the output directory and removes what an interrupted
    /// publish left behind: `..data_tmp` and versions `..data` does not point at.
    pub fn open(dir: &Path) -> Result<Self, PublishError> {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let this = Self {
            dir: dir.to_owned(),
        };
        let _ = fs::remove_file(dir.join(DATA_TMP));
        let current = this.current_version();
        for entry in fs::read_dir(dir).map_err(io("listing", dir))? {
            let entry = entry.map_err(io("listing", dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_version = name.starts_with("..") && name != DATA && name != DATA_TMP;
            if is_version && Some(&name) != current.as_ref() {
                let path = entry.path();
                match entry.file_type() {
                    Ok(t) if t.is_dir() => remove_tree(&path)?,
                    _ => fs::remove_file(&path).map_err(io("removing", &path))?,
                }
            }
        }
        Ok(this)
    }

    /// The version `..data` points at, if it is intact.
    pub fn current_version(&self) -> Option<String> {
        let target = fs::read_link(self.dir.join(DATA)).ok()?;
        let name = target.to_str()?.to_owned();
        (name.starts_with("..") && !name.contains('/') && self.dir.join(&name).is_dir())
            .then_some(name)
    }

    /// Publishes `files` as the whole set, unless it is what is published already.
    pub fn publish(&self, files: &[Rendered]) -> Result<Outcome, PublishError> {
        let old = self.current_version().map(|v| self.dir.join(v));
        let mut changed = Vec::new();
        let mut unchanged = BTreeSet::new();
        for file in files {
            let same = old
                .as_ref()
                .is_some_and(|o| same_file(&o.join(&file.path), file));
            if same {
                unchanged.insert(file.path.clone());
            } else {
                changed.push(file.path.clone());
            }
        }
        let new_paths: BTreeSet<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
        let old_paths = old.as_ref().map(|o| list_files(o)).unwrap_or_default();
        let removed: Vec<PathBuf> = old_paths.difference(&new_paths).cloned().collect();
        if old.is_some() && changed.is_empty() && removed.is_empty() {
            return Ok(Outcome::Unchanged);
        }

        let version = self.new_version_dir()?;
        for file in files {
            let dest = version.join(&file.path);
            if let Some(parent) = dest.parent() {
                create_dirs(parent)?;
            }
            let linked = unchanged.contains(&file.path)
                && old
                    .as_ref()
                    .is_some_and(|o| fs::hard_link(o.join(&file.path), &dest).is_ok());
            if !linked {
                write_file(&dest, file)?;
            }
        }

        // The swap: a new link beside ..data, renamed over it.
        let tmp = self.dir.join(DATA_TMP);
        let _ = fs::remove_file(&tmp);
        let version_name = version
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        std::os::unix::fs::symlink(&version_name, &tmp).map_err(io("linking", &tmp))?;
        fs::rename(&tmp, self.dir.join(DATA)).map_err(io("swapping", &self.dir.join(DATA)))?;

        let new_tops = top_levels(&new_paths);
        for top in &new_tops {
            self.ensure_top_link(top)?;
        }
        if let Some(old) = &old {
            remove_tree(old)?;
        }
        for top in top_levels(&old_paths).difference(&new_tops) {
            let path = self.dir.join(top);
            if fs::read_link(&path).is_ok_and(|t| t.starts_with(DATA)) {
                fs::remove_file(&path).map_err(io("removing", &path))?;
            }
        }
        changed.extend(removed);
        changed.sort();
        Ok(Outcome::Published { changed })
    }

    /// `OUTPUT/top -> ..data/top`, replacing whatever else is there (a file from elsewhere).
    fn ensure_top_link(&self, top: &str) -> Result<(), PublishError> {
        let path = self.dir.join(top);
        let target = Path::new(DATA).join(top);
        if fs::read_link(&path).is_ok_and(|t| t == target) {
            return Ok(());
        }
        let tmp = self.dir.join(format!("..{top}.link-tmp"));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(io("linking", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("linking", &path))
    }

    fn new_version_dir(&self) -> Result<PathBuf, PublishError> {
        let stamp = humantime::format_rfc3339_nanos(SystemTime::now())
            .to_string()
            .trim_end_matches('Z')
            .replace(['-', 'T', ':'], "_");
        for n in 0u32.. {
            let name = if n == 0 {
                format!("..{stamp}")
            } else {
                format!("..{stamp}.{n}")
            };
            let path = self.dir.join(name);
            match fs::DirBuilder::new().mode(0o755).create(&path) {
                Ok(()) => {
                    // The umask may have taken bits away.
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                        .map_err(io("setting the mode of", &path))?;
                    return Ok(path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io("creating", &path)(e)),
            }
        }
        unreachable!("u32 range exhausted creating a version directory")
    }
}

fn create_dirs(path: &Path) -> Result<(), PublishError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(io("creating", path))
}

/// Whether `path` already holds the file as it should be: content, mode, owner and group.
fn same_file(path: &Path, file: &Rendered) -> bool {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file()
        || meta.mode() & 0o7777 != file.mode
        || file.owner.is_some_and(|uid| uid != meta.uid())
        || file.group.is_some_and(|gid| gid != meta.gid())
        || meta.len() != file.content.len() as u64
    {
        return false;
    }
    fs::read(path)
        .map(crate::sensitive::SecretBytes::new)
        .is_ok_and(|old| old[..] == file.content[..])
}

fn write_file(dest: &Path, file: &Rendered) -> Result<(), PublishError> {
    // Created unreadable to others and given its mode once its content is complete; the
    // directory is not visible through ..data yet anyway.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(io("creating", dest))?;
    f.write_all(&file.content).map_err(io("writing", dest))?;
    if file.owner.is_some() || file.group.is_some() {
        std::os::unix::fs::fchown(&f, file.owner, file.group)
            .map_err(io("setting the owner of", dest))?;
    }
    f.set_permissions(fs::Permissions::from_mode(file.mode))
        .map_err(io("setting the mode of", dest))
}

/// Every file under `dir`, relative to it.
fn list_files(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(entries) = fs::read_dir(dir.join(&rel)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = rel.join(entry.file_name());
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(_) => {
                    out.insert(path);
                }
                Err(_) => {}
            }
        }
    }
    out
}

fn top_levels(paths: &BTreeSet<PathBuf>) -> BTreeSet<String> {
    paths
        .iter()
        .filter_map(|p| match p.components().next() {
            Some(Component::Normal(name)) => Some(name.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
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
    use crate::sensitive::SecretBytes;

    fn file(path: &str, content: &str) -> Rendered {
        Rendered {
            path: path.into(),
            content: SecretBytes::new(content.as_bytes().to_vec()),
            mode: 0o400,
            owner: None,
            group: None,
        }
    }

    fn read(dir: &Path, path: &str) -> String {
        fs::read_to_string(dir.join(path)).unwrap()
    }

    #[test]
    fn publishes_in_the_kubernetes_layout_and_only_on_change() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let p = Publisher::open(&out).unwrap();
        let first = p
            .publish(&[
                file("tls.crt", "c1"),
                file("tls.key", "k1"),
                file("db/env", "e1"),
            ])
            .unwrap();
        assert_eq!(
            first,
            Outcome::Published {
                changed: vec!["db/env".into(), "tls.crt".into(), "tls.key".into()]
            }
        );
        assert_eq!(read(&out, "tls.crt"), "c1");
        assert_eq!(read(&out, "db/env"), "e1");
        assert_eq!(
            fs::read_link(out.join("tls.crt")).unwrap(),
            Path::new("..data/tls.crt")
        );
        assert_eq!(
            fs::read_link(out.join("db")).unwrap(),
            Path::new("..data/db")
        );
        let mode = fs::metadata(out.join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o400);
        let v1 = p.current_version().unwrap();

        // The same set again: nothing written, not even a new version.
        let again = p
            .publish(&[
                file("tls.crt", "c1"),
                file("tls.key", "k1"),
                file("db/env", "e1"),
            ])
            .unwrap();
        assert_eq!(again, Outcome::Unchanged);
        assert_eq!(p.current_version().unwrap(), v1);

        // One file changes: a new version; the unchanged ones keep their inode.
        let ino = |path: &str| fs::metadata(out.join(path)).unwrap().ino();
        let env_ino = ino("db/env");
        let changed = p
            .publish(&[
                file("tls.crt", "c2"),
                file("tls.key", "k2"),
                file("db/env", "e1"),
            ])
            .unwrap();
        assert_eq!(
            changed,
            Outcome::Published {
                changed: vec!["tls.crt".into(), "tls.key".into()]
            }
        );
        assert_eq!(read(&out, "tls.crt"), "c2");
        assert_eq!(ino("db/env"), env_ino);
        assert!(!out.join(&v1).exists(), "the old version is removed");

        // A file dropped from the set disappears with its link.
        let dropped = p
            .publish(&[file("tls.crt", "c2"), file("tls.key", "k2")])
            .unwrap();
        assert_eq!(
            dropped,
            Outcome::Published {
                changed: vec!["db/env".into()]
            }
        );
        assert!(fs::symlink_metadata(out.join("db")).is_err());
    }

    #[test]
    fn a_mode_change_alone_is_published() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Publisher::open(tmp.path()).unwrap();
        p.publish(&[file("a", "x")]).unwrap();
        let mut f = file("a", "x");
        f.mode = 0o440;
        assert!(matches!(
            p.publish(&[f]).unwrap(),
            Outcome::Published { .. }
        ));
        let mode = fs::metadata(tmp.path().join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o440);
    }

    #[test]
    fn open_cleans_up_an_interrupted_publish_and_keeps_the_current_set() {
        let tmp = tempfile::tempdir().unwrap();
        let p = Publisher::open(tmp.path()).unwrap();
        p.publish(&[file("a", "1")]).unwrap();
        let current = p.current_version().unwrap();
        fs::create_dir(tmp.path().join("..2020_01_01_00_00_00.000000001")).unwrap();
        std::os::unix::fs::symlink("..nowhere", tmp.path().join(DATA_TMP)).unwrap();
        fs::write(tmp.path().join("unrelated"), "keep").unwrap();
        let p = Publisher::open(tmp.path()).unwrap();
        assert_eq!(p.current_version().unwrap(), current);
        let names: BTreeSet<String> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            BTreeSet::from([current, DATA.to_owned(), "a".into(), "unrelated".into()])
        );
        assert_eq!(p.publish(&[file("a", "1")]).unwrap(), Outcome::Unchanged);
    }

    #[test]
    fn a_stray_file_where_a_link_goes_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("tls.crt"), "old, not ours").unwrap();
        let p = Publisher::open(tmp.path()).unwrap();
        p.publish(&[file("tls.crt", "new")]).unwrap();
        assert_eq!(read(tmp.path(), "tls.crt"), "new");
        assert!(
            fs::symlink_metadata(tmp.path().join("tls.crt"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
