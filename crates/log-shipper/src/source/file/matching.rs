//! Which file is which: the checkpoints matched with the files found at start (by device,
//! inode and first bytes; renamed files found in their directory, copies of truncated files
//! found by their first bytes), and the files that appear later.

use std::fs::File;
use std::time::Instant;

use crate::checkpoint::FileCheckpoint;
use crate::source::file::identity::{Fingerprint, find_by_inode, find_copy};
use crate::source::file::tail::TailState;
use crate::source::file::{COPY_MIN_FINGERPRINT, Reader, end_of_last_line, open, parent};

impl Reader {
    pub(super) fn is_tracked(&self, di: (u64, u64)) -> bool {
        self.tails.iter().any(|t| t.dev_ino == di)
            || self
                .retiring
                .iter()
                .any(|r| (r.checkpoint.dev, r.checkpoint.inode) == di)
    }

    /// Another inode with the first bytes of a file already read: a copy (copy-truncate
    /// rotation makes one); its lines are read from the original, or from it on truncation.
    fn is_copy(&self, file: &File, size: u64, di: (u64, u64)) -> bool {
        let same = |fp: &Fingerprint| {
            fp.len >= COPY_MIN_FINGERPRINT && fp.matches(file, size).unwrap_or(false)
        };
        self.tails
            .iter()
            .any(|t| t.dev_ino != di && same(&t.fingerprint))
            || self
                .finished
                .iter()
                .any(|f| (f.dev, f.inode) != di && same(&f.fingerprint))
    }

    /// Matches the checkpoints with the files found now.
    pub(super) fn resume(&mut self, mut checkpoints: Vec<FileCheckpoint>, first_start: bool) {
        let paths = self.spec.globs.matches();
        let mut fresh = Vec::new();
        for path in paths {
            let Some((file, size, di)) = open(&path) else {
                continue;
            };
            let Some(pos) = checkpoints.iter().position(|c| (c.dev, c.inode) == di) else {
                fresh.push((path, file, size, di));
                continue;
            };
            let cp = checkpoints.swap_remove(pos);
            let same = cp.fingerprint.matches(&file, size).unwrap_or(false);
            if same && cp.finished {
                if size > cp.offset {
                    self.track_with(
                        file,
                        path,
                        di,
                        cp.fingerprint,
                        size,
                        cp.offset,
                        TailState::Active,
                    );
                } else {
                    self.finished.push(FileCheckpoint { path, ..cp });
                }
            } else if same && size >= cp.offset {
                self.track_with(
                    file,
                    path,
                    di,
                    cp.fingerprint,
                    size,
                    cp.offset,
                    TailState::Active,
                );
            } else {
                // Truncated or replaced while the shipper was down: the rest may be in a copy.
                self.adopt_copy_of(&cp, di);
                tracing::info!(input = %self.spec.name, path = %path.display(), "file was truncated or replaced since its checkpoint; reading it from the start");
                self.track(file, path, di, size, 0);
            }
        }
        for (path, file, size, di) in fresh {
            if self.is_tracked(di) || self.is_copy(&file, size, di) {
                continue;
            }
            let offset = if first_start && self.spec.start_at_end {
                end_of_last_line(&file, size)
            } else {
                0
            };
            self.track(file, path, di, size, offset);
        }
        for cp in checkpoints {
            if cp.finished {
                continue;
            }
            let dir = parent(&cp.path);
            let di = (cp.dev, cp.inode);
            if let Some(found) = find_by_inode(&dir, di, &cp.fingerprint) {
                if self.is_tracked(found.dev_ino) || found.size <= cp.offset {
                    continue;
                }
                tracing::info!(input = %self.spec.name, was = %cp.path.display(), now = %found.path.display(), "draining a file rotated while the shipper was down");
                self.track_with(
                    found.file,
                    found.path,
                    found.dev_ino,
                    cp.fingerprint,
                    found.size,
                    cp.offset,
                    TailState::Draining,
                );
            } else if !self.adopt_copy_of(&cp, di) {
                tracing::info!(input = %self.spec.name, path = %cp.path.display(), "a checkpointed file is gone; forgetting it");
            }
        }
    }

    /// Reads the rest of a checkpointed file from a copy of it, if there is one.
    fn adopt_copy_of(&mut self, cp: &FileCheckpoint, not: (u64, u64)) -> bool {
        let dir = parent(&cp.path);
        match find_copy(&dir, not, &cp.fingerprint, cp.offset) {
            Some(copy) if !self.is_tracked(copy.dev_ino) => {
                tracing::info!(input = %self.spec.name, path = %copy.path.display(), offset = cp.offset, "reading the rest of a truncated file from its copy");
                self.track_with(
                    copy.file,
                    copy.path,
                    copy.dev_ino,
                    cp.fingerprint,
                    copy.size,
                    cp.offset,
                    TailState::Draining,
                );
                true
            }
            _ => false,
        }
    }

    /// Starts files that appeared; forgets finished files no longer matched.
    pub(super) fn discover(&mut self) {
        self.last_discovery = Instant::now();
        let paths = self.spec.globs.matches();
        let mut seen = Vec::with_capacity(paths.len());
        for path in paths {
            let Some((file, size, di)) = open(&path) else {
                continue;
            };
            seen.push(di);
            self.consider(path, file, size, di);
        }
        self.finished.retain(|f| seen.contains(&(f.dev, f.inode)));
    }

    /// A file found by the patterns.
    fn consider(&mut self, path: std::path::PathBuf, file: File, size: u64, di: (u64, u64)) {
        if self.is_tracked(di) {
            return;
        }
        if let Some(pos) = self.finished.iter().position(|f| (f.dev, f.inode) == di) {
            let f = &self.finished[pos];
            if f.fingerprint.matches(&file, size).unwrap_or(false) {
                if size > f.offset {
                    let f = self.finished.swap_remove(pos);
                    tracing::info!(input = %self.spec.name, path = %path.display(), "a finished file grew again");
                    self.track_with(
                        file,
                        path,
                        di,
                        f.fingerprint,
                        size,
                        f.offset,
                        TailState::Active,
                    );
                }
                return;
            }
            self.finished.swap_remove(pos);
        }
        if self.is_copy(&file, size, di) {
            return;
        }
        self.track(file, path, di, size, 0);
    }
}
