//! `--error-file`: the last error, where Kubernetes reads a container's termination message
//! (`terminationMessagePath`, `/dev/termination-log` by default), so that `kubectl describe
//! pod` shows why git-sync failed. Written in place (the kubelet mounts that path as a file,
//! which cannot be renamed over), cut to the 4096 bytes Kubernetes keeps, emptied after a good
//! sync.

use std::io::Write;
use std::path::{Path, PathBuf};

/// What Kubernetes keeps of a termination message.
const MAX_BYTES: usize = 4096;

#[derive(Debug)]
pub struct ErrorFile {
    path: PathBuf,
    /// The file holds an error (or held one at start): the next good sync empties it.
    dirty: bool,
}

impl ErrorFile {
    pub fn new(path: &Path) -> ErrorFile {
        let dirty = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
        ErrorFile {
            path: path.to_path_buf(),
            dirty,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file's content with `message`.
    pub fn write(&mut self, message: &str) {
        let mut text = message.trim_end().to_string();
        if text.len() > MAX_BYTES - 1 {
            let mut cut = MAX_BYTES - 1;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        text.push('\n');
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        match written {
            Ok(()) => self.dirty = true,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write --error-file")
            }
        }
    }

    /// Empties the file after a good sync (once; a missing file stays missing).
    pub fn clear(&mut self) {
        if !self.dirty {
            return;
        }
        let cleared = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.path);
        match cleared {
            Ok(_) => self.dirty = false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.dirty = false,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot empty --error-file")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_in_place_cut_to_4096_bytes_and_emptied_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("termination-log");
        let mut file = ErrorFile::new(&path);
        file.clear();
        assert!(!path.exists(), "a good sync does not create it");
        file.write("sync failed: the remote is down\n");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "sync failed: the remote is down\n"
        );
        // the same inode: a bind-mounted file stays the one the kubelet reads
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
        let before = inode(&path);
        file.write(&"é".repeat(3000));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.len() <= 4096 && text.ends_with("é\n"),
            "{}",
            text.len()
        );
        assert_eq!(inode(&path), before);
        file.clear();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        // an error left by a previous run is emptied by the first good sync
        std::fs::write(&path, "old error\n").unwrap();
        let mut file = ErrorFile::new(&path);
        file.clear();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
