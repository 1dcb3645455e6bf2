//! Checkpoints: for each file, its identity and the offset every sink has acknowledged, in one
//! JSON file in the state directory. Written atomically (a temporary file, fsync, rename, fsync
//! of the directory), so a crash leaves the old checkpoint or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::source::file::identity::Fingerprint;

/// The checkpoint of one file of one input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheckpoint {
    /// The input that reads it (two inputs may read the same file, each with its offset).
    pub input: String,
    /// Where it was last seen (informative: files are found again by identity).
    pub path: PathBuf,
    /// Device and inode.
    pub dev: u64,
    /// Inode number.
    pub inode: u64,
    /// The first bytes' fingerprint: a reused inode holds other bytes.
    pub fingerprint: Fingerprint,
    /// Every line before this offset has been acknowledged by every sink.
    pub offset: u64,
    /// The file was read to its end and let go (rotated away): only a file that grows again
    /// past `offset` is read again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub finished: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    files: Vec<FileCheckpoint>,
}

/// What was found in the state directory at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The checkpoints; empty on a first start.
    pub files: Vec<FileCheckpoint>,
    /// Whether a checkpoint file existed (so this is not the first start).
    pub existed: bool,
}

/// The checkpoint file of a state directory.
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    path: PathBuf,
}

impl CheckpointFile {
    /// The checkpoint file in `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("checkpoints.json"),
        }
    }

    /// Reads the checkpoints. A file that cannot be parsed is moved aside (and reported), and
    /// reading starts over from the files' beginnings: duplicates rather than a loss.
    pub fn load(&self) -> std::io::Result<Loaded> {
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
            Err(e) => return Err(e),
        };
        match serde_json::from_slice::<StateFile>(&text) {
            Ok(state) => Ok(Loaded {
                files: state.files,
                existed: true,
            }),
            Err(e) => {
                let aside = self.path.with_extension("json.corrupt");
                tracing::error!(
                    file = %self.path.display(),
                    moved_to = %aside.display(),
                    error = %e,
                    "the checkpoint file is unreadable; files are read again from their beginnings"
                );
                std::fs::rename(&self.path, &aside)?;
                Ok(Loaded {
                    files: Vec::new(),
                    existed: true,
                })
            }
        }
    }

    /// Replaces the checkpoints atomically.
    pub fn save(&self, files: &[FileCheckpoint]) -> std::io::Result<()> {
        let state = StateFile {
            version: 1,
            files: files.to_vec(),
        };
        let text = serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?;
        write_atomically(&self.path, &text)
    }
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename, then fsyncs the
/// directory so the rename itself survives a power loss.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(offset: u64) -> FileCheckpoint {
        FileCheckpoint {
            input: "app".into(),
            path: "/logs/app.log".into(),
            dev: 1,
            inode: 2,
            fingerprint: Fingerprint { len: 3, crc: 4 },
            offset,
            finished: false,
        }
    }

    #[test]
    fn save_then_load_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let file = CheckpointFile::new(dir.path());
        let first = file.load().unwrap();
        assert!(!first.existed && first.files.is_empty());
        file.save(&[sample(10)]).unwrap();
        file.save(&[sample(20)]).unwrap();
        let loaded = file.load().unwrap();
        assert!(loaded.existed);
        assert_eq!(loaded.files, vec![sample(20)]);
        assert!(!dir.path().join("checkpoints.tmp").exists());
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("checkpoints.json"), "{not json").unwrap();
        let loaded = CheckpointFile::new(dir.path()).load().unwrap();
        assert!(loaded.existed && loaded.files.is_empty());
        assert!(dir.path().join("checkpoints.json.corrupt").exists());
    }
}
