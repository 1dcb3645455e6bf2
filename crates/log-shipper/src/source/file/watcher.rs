//! Filesystem events for the file input: notify on the patterns' directories.

use std::path::PathBuf;
use std::sync::mpsc::SyncSender;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};

/// notify on the patterns' directories; any event but our own reads wakes the reader.
pub(super) struct DirWatcher {
    watcher: notify::RecommendedWatcher,
    watched: Vec<PathBuf>,
}

impl DirWatcher {
    pub(super) fn new(wake: SyncSender<()>) -> Option<Self> {
        let handler = move |event: notify::Result<notify::Event>| {
            let ours = matches!(
                event.as_ref().map(|e| e.kind),
                Ok(EventKind::Access(
                    AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
                ))
            );
            if !ours {
                let _ = wake.try_send(());
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(watcher) => Some(Self {
                watcher,
                watched: Vec::new(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "file events unavailable; polling only");
                None
            }
        }
    }

    /// Watches the directories not watched yet (a directory may appear after the start).
    pub(super) fn watch(&mut self, roots: &[(PathBuf, bool)]) {
        for (dir, recursive) in roots {
            if self.watched.contains(dir) || !dir.is_dir() {
                continue;
            }
            let mode = if *recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match self.watcher.watch(dir, mode) {
                Ok(()) => self.watched.push(dir.clone()),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; polling it");
                    self.watched.push(dir.clone());
                }
            }
        }
    }
}
