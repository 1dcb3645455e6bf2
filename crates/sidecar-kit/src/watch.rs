//! Watching files for changes, the way Kubernetes changes them.
//!
//! A mounted Secret or ConfigMap is a directory whose files are symlinks into `..data`, itself a
//! symlink that the kubelet swaps atomically. Watching a file's inode misses that swap, so the
//! watcher listens (with `notify`) to the files' *directories*, and on any event that may change
//! content (not a mere open or read, such as its own) compares the files' content with what it
//! last reported. It also polls at an interval, which covers
//! filesystems without events and any event that was lost. A change is reported only when some
//! file's content really differs, so a burst of events gives one report.
//!
//! ```no_run
//! # async fn demo(token: tokio_util::sync::CancellationToken) {
//! use sidecar_kit::watch::{watch_files, WatchOptions};
//! let mut changes = watch_files(vec!["/config/mapping.yaml".into()], WatchOptions::default(), token);
//! while changes.changed().await {
//!     // reload /config/mapping.yaml, keeping the old one if the new one is bad
//! }
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// How a watcher looks for changes.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// How often the files are compared even without an event.
    pub poll_interval: Duration,
    /// How long to wait after an event for the writer to finish before comparing.
    pub debounce: Duration,
    /// Use only polling, no filesystem events (for filesystems that have none).
    pub poll_only: bool,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(5),
            debounce: Duration::from_millis(200),
            poll_only: false,
        }
    }
}

/// A stream of "the files changed" notices.
#[derive(Debug)]
pub struct FileChanges {
    rx: mpsc::Receiver<()>,
}

impl FileChanges {
    /// Waits for the next change; false once the watcher has stopped (token cancelled).
    pub async fn changed(&mut self) -> bool {
        self.rx.recv().await.is_some()
    }
}

/// Starts watching `paths`; stops when `token` is cancelled. Must be called inside a tokio
/// runtime.
pub fn watch_files(
    paths: Vec<PathBuf>,
    options: WatchOptions,
    token: CancellationToken,
) -> FileChanges {
    let (tx, rx) = mpsc::channel(1);
    let wake = Arc::new(Notify::new());
    let watcher = if options.poll_only {
        None
    } else {
        start_event_watcher(&paths, wake.clone())
    };
    tokio::spawn(async move {
        // Keep the notify watcher alive as long as the loop runs.
        let _watcher = watcher;
        let mut last = fingerprint(&paths).await;
        let mut poll = tokio::time::interval(options.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                () = wake.notified() => {
                    tokio::time::sleep(options.debounce).await;
                }
                _ = poll.tick() => {}
            }
            let now = fingerprint(&paths).await;
            if now != last {
                last = now;
                // A full channel already holds an unread notice: one is enough.
                if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                    break;
                }
            }
        }
    });
    FileChanges { rx }
}

fn start_event_watcher(paths: &[PathBuf], wake: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| may_change_content(&e.kind)) {
            wake.notify_one();
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "file events unavailable; polling only");
            return None;
        }
    };
    let mut dirs: Vec<PathBuf> = paths.iter().map(|p| parent_dir(p)).collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch directory; polling it");
        }
    }
    Some(watcher)
}

/// Opening or reading a file changes nothing, and the comparison itself opens and reads the
/// files: waking on those events would re-read them every `debounce`, forever.
fn may_change_content(kind: &EventKind) -> bool {
    !matches!(
        kind,
        EventKind::Access(
            AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
        )
    )
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// A digest of every file's content (or of its read error), following symlinks.
async fn fingerprint(paths: &[PathBuf]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for path in paths {
        match tokio::fs::read(path).await {
            Ok(bytes) => {
                hasher.update(b"ok");
                hasher.update((bytes.len() as u64).to_le_bytes());
                hasher.update(&bytes);
            }
            Err(e) => {
                hasher.update(b"err");
                hasher.update(format!("{:?}", e.kind()).as_bytes());
            }
        }
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sees_a_kubernetes_style_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("..v1")).unwrap();
        std::fs::write(root.join("..v1/config.yaml"), "a: 1\n").unwrap();
        std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/config.yaml", root.join("config.yaml")).unwrap();

        let token = CancellationToken::new();
        let options = WatchOptions {
            poll_interval: Duration::from_secs(3600),
            debounce: Duration::from_millis(50),
            poll_only: false,
        };
        let mut changes = watch_files(vec![root.join("config.yaml")], options, token.clone());
        tokio::time::sleep(Duration::from_millis(100)).await;

        // The kubelet's dance: new version dir, new symlink, rename over ..data.
        std::fs::create_dir(root.join("..v2")).unwrap();
        std::fs::write(root.join("..v2/config.yaml"), "a: 2\n").unwrap();
        std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();

        let seen = tokio::time::timeout(Duration::from_secs(5), changes.changed()).await;
        assert_eq!(seen, Ok(true), "the swap was not seen through events");
        token.cancel();
    }

    #[test]
    fn reads_do_not_wake_the_comparison_but_writes_do() {
        use notify::event::{CreateKind, ModifyKind};
        assert!(!may_change_content(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!may_change_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(may_change_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(may_change_content(&EventKind::Modify(ModifyKind::Any)));
        assert!(may_change_content(&EventKind::Create(CreateKind::File)));
    }

    /// The watcher's own reads must not feed it events: an idle watch reads the file once.
    #[tokio::test]
    async fn an_idle_watch_does_not_keep_reading_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, "a: 1\n").unwrap();
        // A second watcher on the same directory counts every time the file is opened.
        let opens = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = opens.clone();
        let mut spy = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
            if e.is_ok_and(|e| matches!(e.kind, EventKind::Access(AccessKind::Open(_)))) {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .unwrap();
        spy.watch(dir.path(), RecursiveMode::NonRecursive).unwrap();

        let token = CancellationToken::new();
        let options = WatchOptions {
            poll_interval: Duration::from_secs(3600),
            debounce: Duration::from_millis(20),
            poll_only: false,
        };
        let _changes = watch_files(vec![file.clone()], options, token.clone());
        tokio::time::sleep(Duration::from_millis(600)).await;
        token.cancel();
        let n = opens.load(std::sync::atomic::Ordering::Relaxed);
        // One read to take the first fingerprint; a feedback loop would make about 30.
        assert!(
            n <= 2,
            "the idle watcher opened the file {n} times in 600 ms"
        );
    }

    #[tokio::test]
    async fn polling_alone_sees_a_change_and_ignores_touches() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "1").unwrap();
        let token = CancellationToken::new();
        let options = WatchOptions {
            poll_interval: Duration::from_millis(50),
            debounce: Duration::from_millis(10),
            poll_only: true,
        };
        let mut changes = watch_files(vec![file.clone()], options, token.clone());
        // Same content rewritten: not a change.
        std::fs::write(&file, "1").unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(300), changes.changed()).await;
        assert!(quiet.is_err(), "identical content reported as a change");
        std::fs::write(&file, "2").unwrap();
        let seen = tokio::time::timeout(Duration::from_secs(5), changes.changed()).await;
        assert_eq!(seen, Ok(true));
        token.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(5), changes.changed()).await;
        assert_eq!(stopped, Ok(false));
    }
}
