//! A file's identity: device, inode, and a fingerprint of its first bytes. The inode alone is
//! not enough: a deleted file's inode is soon given to a new file, and a checkpoint that trusts
//! it resumes the new file in the middle. The fingerprint also finds the copy that
//! copy-truncate rotation leaves (same first bytes, another inode).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How many leading bytes the fingerprint covers at most.
pub const FINGERPRINT_BYTES: u64 = 1024;

/// CRC-32 of a file's first `len` bytes (fewer than [`FINGERPRINT_BYTES`] while the file is
/// that short; it grows with the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// How many bytes it covers.
    pub len: u32,
    /// Their CRC-32.
    pub crc: u32,
}

impl Fingerprint {
    /// Fingerprint of the first `min(size, FINGERPRINT_BYTES)` bytes of `file`.
    pub fn of(file: &File, size: u64) -> std::io::Result<Self> {
        let len = size.min(FINGERPRINT_BYTES);
        Self::of_len(file, len)
    }

    fn of_len(file: &File, len: u64) -> std::io::Result<Self> {
        let mut buf = vec![0u8; len as usize];
        let mut got = 0;
        while got < buf.len() {
            let n = file.read_at(&mut buf[got..], got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        Ok(Self {
            len: got as u32,
            crc: crc32fast::hash(&buf),
        })
    }

    /// Whether `file` (of `size` bytes) starts with the bytes this fingerprint covers.
    pub fn matches(&self, file: &File, size: u64) -> std::io::Result<bool> {
        if size < u64::from(self.len) {
            return Ok(false);
        }
        Ok(Self::of_len(file, u64::from(self.len))? == *self)
    }

    /// Whether this fingerprint should be taken again over more bytes.
    pub fn can_grow(&self, size: u64) -> bool {
        u64::from(self.len) < FINGERPRINT_BYTES && size > u64::from(self.len)
    }
}

/// Device and inode of an open file or a path.
pub fn dev_ino(meta: &std::fs::Metadata) -> (u64, u64) {
    (meta.dev(), meta.ino())
}

/// A file found by a directory search.
#[derive(Debug)]
pub struct Found {
    /// Where it is now.
    pub path: PathBuf,
    /// It, opened.
    pub file: File,
    /// Its size when found.
    pub size: u64,
    /// Device and inode.
    pub dev_ino: (u64, u64),
}

/// Regular files of `dir` (not following into subdirectories), with their metadata.
fn entries(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    read.filter_map(|e| e.ok())
        .filter_map(|e| {
            let path = e.path();
            let meta = std::fs::metadata(&path).ok()?;
            meta.is_file().then_some((path, meta))
        })
        .collect()
}

/// The file of `dir` with this device and inode whose first bytes match `fingerprint`: a
/// rotated file under its new name.
pub fn find_by_inode(dir: &Path, dev_ino: (u64, u64), fingerprint: &Fingerprint) -> Option<Found> {
    entries(dir).into_iter().find_map(|(path, meta)| {
        if self::dev_ino(&meta) != dev_ino {
            return None;
        }
        let file = File::open(&path).ok()?;
        let size = file.metadata().ok()?.len();
        fingerprint.matches(&file, size).ok()?.then_some(Found {
            path,
            file,
            size,
            dev_ino,
        })
    })
}

/// A copy of a file in `dir`: another inode, at least `min_size` bytes, the same first bytes.
/// Copy-truncate rotation makes one just before it truncates the original; the lines the
/// shipper had not read yet are only there. The most recently modified copy wins.
pub fn find_copy(
    dir: &Path,
    not: (u64, u64),
    fingerprint: &Fingerprint,
    min_size: u64,
) -> Option<Found> {
    if fingerprint.len == 0 {
        return None;
    }
    let mut candidates: Vec<_> = entries(dir)
        .into_iter()
        .filter(|(_, meta)| dev_ino(meta) != not && meta.len() >= min_size)
        .collect();
    candidates.sort_by_key(|(_, meta)| std::cmp::Reverse(meta.modified().ok()));
    candidates.into_iter().find_map(|(path, meta)| {
        let file = File::open(&path).ok()?;
        let size = file.metadata().ok()?.len();
        fingerprint.matches(&file, size).ok()?.then_some(Found {
            path,
            file,
            size,
            dev_ino: dev_ino(&meta),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_grows_and_tells_files_apart() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, "first line\n").unwrap();
        let f = File::open(&a).unwrap();
        let fp = Fingerprint::of(&f, 11).unwrap();
        assert_eq!(fp.len, 11);
        assert!(fp.matches(&f, 11).unwrap());
        std::fs::write(&a, "other line\n").unwrap();
        assert!(!fp.matches(&f, 11).unwrap(), "same size, other bytes");
        assert!(!fp.matches(&f, 3).unwrap(), "shorter than the fingerprint");
        assert!(fp.can_grow(2000));
        assert!(!Fingerprint { len: 1024, crc: 0 }.can_grow(2000));
    }

    #[test]
    fn finds_a_renamed_file_and_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        std::fs::write(&log, "line 1\nline 2\n").unwrap();
        let f = File::open(&log).unwrap();
        let meta = f.metadata().unwrap();
        let fp = Fingerprint::of(&f, meta.len()).unwrap();
        std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
        let found = find_by_inode(dir.path(), dev_ino(&meta), &fp).unwrap();
        assert_eq!(found.path, dir.path().join("app.log.1"));

        std::fs::copy(dir.path().join("app.log.1"), dir.path().join("copy")).unwrap();
        std::fs::write(dir.path().join("other"), "something else entirely\n").unwrap();
        let copy = find_copy(dir.path(), dev_ino(&meta), &fp, 10).unwrap();
        assert_eq!(copy.path, dir.path().join("copy"));
        assert!(
            find_copy(dir.path(), dev_ino(&meta), &fp, 100).is_none(),
            "too short"
        );
    }
}
