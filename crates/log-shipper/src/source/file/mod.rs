//! The file input: files by glob on a shared volume, followed through rotation by rename and by
//! copy-truncate, truncation, deletion, and restarts.
//!
//! One blocking thread per input reads every file it tracks. It wakes on filesystem events
//! (notify, on the patterns' directories) and at the poll interval in any case, which covers
//! network filesystems and lost events. A file is known by device, inode and the fingerprint
//! of its first bytes ([`identity`]); its checkpoint is the offset every sink acknowledged.
//!
//! - A file that appears later is read from its beginning.
//! - Renamed or deleted: the open file is read to its end and let go once it has not grown for
//!   the rotate wait; the new file under the name is read from its beginning.
//! - Truncated (smaller than the read offset, or other first bytes): when a copy with the same
//!   first bytes is beside it (copy-truncate), the unread rest is read from the copy; then the
//!   file is read again from offset 0. Without a copy the unread bytes are lost, and counted.
//! - After a restart, a checkpointed file is found again by its identity: under its name, or
//!   renamed in the same directory (rotated while the shipper was down), and read on from its
//!   checkpoint.

pub mod discover;
pub mod identity;
mod matching;
pub mod tail;
mod watcher;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ack::AckStream;
use crate::checkpoint::FileCheckpoint;
use crate::metrics::Metrics;
use crate::source::{Format, RawChunk, Source, SourceItem, StreamInfo, next_stream_id};
use discover::Globs;
use identity::{Fingerprint, dev_ino, find_copy};
use tail::{Tail, TailState};
use watcher::DirWatcher;

/// The settings of one file input.
#[derive(Debug, Clone)]
pub struct FileInputSpec {
    pub name: String,
    pub globs: Globs,
    /// On the very first start (no checkpoint file), begin files that exist at their end.
    pub start_at_end: bool,
    pub poll_interval: Duration,
    pub rotate_wait: Duration,
    /// Use filesystem events (else polling only).
    pub watch_events: bool,
    pub max_line_bytes: usize,
    /// What the files' lines are: raw text, or a container runtime's log format.
    pub format: Format,
}

/// Below this many bytes a fingerprint is too short to call another file a copy.
const COPY_MIN_FINGERPRINT: u32 = 64;
/// Bytes read from one file before the others get their turn (and the most one chunk holds).
/// A chunk's events stay in memory until every batch holding one of them is sent, so the
/// chunk size, not only the batch size, bounds the shipper's memory under a backlog.
const READ_BUDGET: usize = 64 << 10;
/// While the pipeline does not take a chunk (back-pressure), new files are still opened this
/// often: a file held open survives being renamed away before it is read.
const BLOCKED_DISCOVERY: Duration = Duration::from_millis(100);
/// Discovery runs at most this often on events (always at the poll interval).
const DISCOVERY_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// What the checkpointer sees of an input's files.
#[derive(Debug, Default)]
pub struct FileTable {
    entries: Vec<TableEntry>,
}

#[derive(Debug)]
struct TableEntry {
    checkpoint: FileCheckpoint,
    /// Live acknowledgements; `None` for a finished file (its offset is final).
    ack: Option<Arc<AckStream>>,
    size: u64,
}

impl FileTable {
    /// Each file's checkpoint with the offset acknowledged now, and its size at the last look.
    pub fn snapshot(&self) -> Vec<(FileCheckpoint, u64)> {
        self.entries
            .iter()
            .map(|e| {
                let mut cp = e.checkpoint.clone();
                if let Some(ack) = &e.ack {
                    cp.offset = ack.acked();
                }
                (cp, e.size)
            })
            .collect()
    }
}

/// Shared between an input's thread and the checkpointer.
pub type SharedTable = Arc<Mutex<FileTable>>;

/// A file input, ready to start.
#[derive(Debug)]
pub struct FileSource {
    pub spec: FileInputSpec,
    /// This input's checkpoints from the state directory.
    pub checkpoints: Vec<FileCheckpoint>,
    /// No checkpoint file existed: the first start.
    pub first_start: bool,
    pub table: SharedTable,
    pub metrics: Metrics,
}

impl Source for FileSource {
    fn start(
        self: Box<Self>,
        out: mpsc::Sender<SourceItem>,
        stop: CancellationToken,
    ) -> JoinHandle<anyhow::Result<()>> {
        let (wake_tx, wake_rx) = sync_channel(1);
        let waker = wake_tx.clone();
        let stop_wait = stop.clone();
        tokio::spawn(async move {
            stop_wait.cancelled().await;
            let _ = waker.try_send(());
        });
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            let FileSource {
                spec,
                checkpoints,
                first_start,
                table,
                metrics,
            } = *self;
            let mut reader = Reader {
                spec,
                out,
                stop,
                metrics,
                table,
                handle,
                last_discovery: Instant::now(),
                tails: Vec::new(),
                retiring: Vec::new(),
                finished: Vec::new(),
                scratch: vec![0u8; 64 * 1024],
            };
            reader.run(checkpoints, first_start, wake_tx, wake_rx)
        })
    }
}

/// A file let go, whose last lines are not all acknowledged yet.
#[derive(Debug)]
struct Retiring {
    checkpoint: FileCheckpoint,
    stream: Arc<StreamInfo>,
    /// Held open until the lines are acknowledged: its inode cannot be given to a new file
    /// meanwhile (which would then be taken for this one).
    _file: File,
}

/// The pipeline is gone: stop.
struct Closed;

struct Reader {
    spec: FileInputSpec,
    out: mpsc::Sender<SourceItem>,
    stop: CancellationToken,
    metrics: Metrics,
    table: SharedTable,
    handle: tokio::runtime::Handle,
    last_discovery: Instant,
    tails: Vec<Tail>,
    retiring: Vec<Retiring>,
    /// Files read to their end and acknowledged, remembered while the patterns match them.
    finished: Vec<FileCheckpoint>,
    scratch: Vec<u8>,
}

impl Reader {
    fn run(
        &mut self,
        checkpoints: Vec<FileCheckpoint>,
        first_start: bool,
        wake_tx: SyncSender<()>,
        wake_rx: Receiver<()>,
    ) -> anyhow::Result<()> {
        let mut watcher = self
            .spec
            .watch_events
            .then(|| DirWatcher::new(wake_tx))
            .flatten();
        if let Some(w) = watcher.as_mut() {
            w.watch(&self.spec.globs.watch_roots());
        }
        self.resume(checkpoints, first_start);
        let mut woke = false;
        loop {
            if self.stop.is_cancelled() {
                break;
            }
            let since = self.last_discovery.elapsed();
            if since >= self.spec.poll_interval || (woke && since >= DISCOVERY_MIN_INTERVAL) {
                if let Some(w) = watcher.as_mut() {
                    w.watch(&self.spec.globs.watch_roots());
                }
                self.discover();
            }
            let more = match self.read_all() {
                Ok(more) => more,
                Err(Closed) => break,
            };
            self.retire();
            self.publish();
            if more {
                woke = false;
                continue;
            }
            let wait = self
                .spec
                .poll_interval
                .saturating_sub(self.last_discovery.elapsed())
                .max(Duration::from_millis(1));
            woke = match wake_rx.recv_timeout(wait) {
                Ok(()) => true,
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => return Err(anyhow!("file watcher gone")),
            };
        }
        self.publish();
        Ok(())
    }

    /// Hands an item to the pipeline, waiting while it is busy. Meanwhile new files are
    /// opened (not read): the app may rotate twice before reading resumes. Once stopping, an
    /// item that cannot be handed on is dropped: it is not acknowledged, so it is read again.
    fn send(&mut self, item: SourceItem) -> Result<(), Closed> {
        let out = self.out.clone();
        loop {
            let reserve = tokio::time::timeout(BLOCKED_DISCOVERY, out.reserve());
            match self.handle.block_on(reserve) {
                Ok(Ok(permit)) => {
                    permit.send(item);
                    return Ok(());
                }
                Ok(Err(_)) => return Err(Closed),
                Err(_) if self.stop.is_cancelled() => return Err(Closed),
                Err(_) => self.discover(),
            }
        }
    }

    fn new_stream(&self, path: &Path, offset: u64) -> Arc<StreamInfo> {
        Arc::new(StreamInfo {
            id: next_stream_id(),
            input: self.spec.name.as_str().into(),
            path: Some(path.to_string_lossy().into()),
            ack: AckStream::new(offset),
            format: self.spec.format.clone(),
        })
    }

    fn track(&mut self, file: File, path: PathBuf, di: (u64, u64), size: u64, offset: u64) {
        let fingerprint = Fingerprint::of(&file, size).unwrap_or(Fingerprint { len: 0, crc: 0 });
        self.track_with(file, path, di, fingerprint, size, offset, TailState::Active);
    }

    #[allow(clippy::too_many_arguments)]
    fn track_with(
        &mut self,
        file: File,
        path: PathBuf,
        di: (u64, u64),
        fingerprint: Fingerprint,
        size: u64,
        offset: u64,
        state: TailState,
    ) {
        tracing::info!(input = %self.spec.name, path = %path.display(), offset, "reading file");
        let stream = self.new_stream(&path, offset);
        let mut tail = Tail::new(file, path, di, fingerprint, stream, offset, size);
        tail.state = state;
        self.tails.push(tail);
    }

    /// Reads every tracked file; true when some file has more to read at once.
    fn read_all(&mut self) -> Result<bool, Closed> {
        let mut more = false;
        let mut release = Vec::new();
        let mut i = 0;
        while i < self.tails.len() {
            if self.stop.is_cancelled() {
                return Ok(false);
            }
            // Reading without pause (a backlog) must not delay seeing new files: a file may
            // be renamed away soon after it appears.
            if self.last_discovery.elapsed() >= DISCOVERY_MIN_INTERVAL {
                self.discover();
            }
            self.check(i)?;
            let max_line = self.spec.max_line_bytes;
            let tail = &mut self.tails[i];
            let read = match tail.read(&mut self.scratch, READ_BUDGET, max_line) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(path = %tail.path.display(), error = %e, "cannot read file; trying again");
                    i += 1;
                    continue;
                }
            };
            if read.bytes > 0 {
                tail.idle_since = None;
            } else {
                tail.idle_since.get_or_insert_with(Instant::now);
            }
            let drained = tail.state == TailState::Draining
                && tail
                    .idle_since
                    .is_some_and(|t| t.elapsed() >= self.spec.rotate_wait);
            more |= read.more;
            let input = self.spec.name.as_str();
            self.metrics
                .bytes_read
                .with_label_values(&[input])
                .inc_by(read.bytes);
            if let Some(chunk) = read.chunk {
                self.count(&chunk);
                self.send(SourceItem::Lines(chunk))?;
            }
            if drained {
                release.push(i);
            }
            i += 1;
        }
        for i in release.into_iter().rev() {
            self.release(i)?;
        }
        Ok(more)
    }

    fn count(&self, chunk: &RawChunk) {
        let input = self.spec.name.as_str();
        self.metrics
            .lines_read
            .with_label_values(&[input])
            .inc_by(chunk.lines.len() as u64);
        let cut = chunk.lines.iter().filter(|l| l.truncated).count() as u64;
        if cut > 0 {
            self.metrics
                .events_truncated
                .with_label_values(&[input])
                .inc_by(cut);
        }
    }

    /// Rotation, deletion and truncation of tail `i`.
    fn check(&mut self, i: usize) -> Result<(), Closed> {
        let input = self.spec.name.clone();
        let tail = &mut self.tails[i];
        let Ok(meta) = tail.file.metadata() else {
            return Ok(());
        };
        let size = meta.len();
        let changed = size != tail.last_size;
        let truncated = size < tail.read_pos()
            || (changed && !tail.fingerprint.matches(&tail.file, size).unwrap_or(true));
        if truncated {
            return self.truncated(i, size);
        }
        if tail.fingerprint.can_grow(size)
            && let Ok(fp) = Fingerprint::of(&tail.file, size)
        {
            tail.fingerprint = fp;
        }
        tail.last_size = size;
        if tail.state == TailState::Active {
            let kind = match std::fs::metadata(&tail.path) {
                Ok(m) if dev_ino(&m) == tail.dev_ino => None,
                Ok(_) => Some("rename"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("delete"),
                Err(_) => None,
            };
            if let Some(kind) = kind {
                tracing::info!(input = %input, path = %tail.path.display(), kind, "file rotated; reading it to its end");
                tail.state = TailState::Draining;
                // The app may write to the old file a little longer: the wait starts now.
                tail.idle_since = None;
                self.metrics
                    .rotations
                    .with_label_values(&[&input, kind])
                    .inc();
            }
        }
        Ok(())
    }

    fn truncated(&mut self, i: usize, size: u64) -> Result<(), Closed> {
        let input = self.spec.name.clone();
        let tail = &self.tails[i];
        let dir = parent(&tail.path);
        let copy = find_copy(&dir, tail.dev_ino, &tail.fingerprint, tail.read_pos())
            .filter(|c| !self.is_tracked(c.dev_ino));
        if let Some(copy) = copy {
            // The copy carries on the old stream from where reading was; the file itself
            // starts again from 0 as a new stream.
            let tail = &mut self.tails[i];
            tracing::info!(input = %input, path = %tail.path.display(), copy = %copy.path.display(), offset = tail.read_pos(), "copy-truncate: reading the rest from the copy");
            let original = std::mem::replace(&mut tail.file, copy.file);
            let path = std::mem::replace(&mut tail.path, copy.path);
            let di = std::mem::replace(&mut tail.dev_ino, copy.dev_ino);
            let state = std::mem::replace(&mut tail.state, TailState::Draining);
            tail.last_size = copy.size;
            tail.idle_since = None;
            self.metrics
                .rotations
                .with_label_values(&[&input, "copytruncate"])
                .inc();
            let fingerprint =
                Fingerprint::of(&original, size).unwrap_or(Fingerprint { len: 0, crc: 0 });
            self.track_with(original, path, di, fingerprint, size, 0, state);
            return Ok(());
        }
        let tail = &mut self.tails[i];
        let lost = tail.last_size.saturating_sub(tail.read_pos());
        if lost > 0 {
            tracing::warn!(input = %input, path = %tail.path.display(), lost_bytes = lost, "file truncated before it was read to its end, and no copy found: those bytes are lost");
            self.metrics
                .bytes_dropped
                .with_label_values(&[&input, "truncated"])
                .inc_by(lost);
        } else {
            tracing::info!(input = %input, path = %tail.path.display(), "file truncated; reading it from the start");
        }
        self.metrics
            .rotations
            .with_label_values(&[&input, "truncate"])
            .inc();
        let partial = tail.take_partial();
        let old = tail.stream.clone();
        let fingerprint =
            Fingerprint::of(&tail.file, size).unwrap_or(Fingerprint { len: 0, crc: 0 });
        let path = tail.path.clone();
        let stream = self.new_stream(&path, 0);
        self.tails[i].restart(stream, fingerprint, size);
        if let Some(chunk) = partial {
            self.send(SourceItem::Lines(chunk))?;
        }
        self.send(SourceItem::Closed(old))
    }

    /// Lets go of a drained file: its last line without a newline is a line now.
    fn release(&mut self, i: usize) -> Result<(), Closed> {
        let mut tail = self.tails.remove(i);
        tracing::info!(input = %self.spec.name, path = %tail.path.display(), "rotated file read to its end; letting it go");
        let partial = tail.take_partial();
        // Retiring before anything is sent: discovery runs while a send waits, and must not
        // take the file for a new one.
        let stream = tail.stream.clone();
        self.retiring.push(Retiring {
            checkpoint: checkpoint_of(&self.spec.name, &tail, tail.read_pos(), true),
            stream: stream.clone(),
            _file: tail.file,
        });
        if let Some(chunk) = partial {
            self.count(&chunk);
            self.send(SourceItem::Lines(chunk))?;
        }
        self.send(SourceItem::Closed(stream))
    }

    /// Retiring files whose lines are all acknowledged are finished.
    fn retire(&mut self) {
        let mut i = 0;
        while i < self.retiring.len() {
            if self.retiring[i].stream.ack.acked() >= self.retiring[i].checkpoint.offset {
                let r = self.retiring.swap_remove(i);
                self.finished.push(r.checkpoint);
            } else {
                i += 1;
            }
        }
    }

    fn publish(&self) {
        let mut entries = Vec::new();
        for t in &self.tails {
            entries.push(TableEntry {
                checkpoint: checkpoint_of(&self.spec.name, t, 0, false),
                ack: Some(t.stream.ack.clone()),
                size: t.last_size,
            });
        }
        for r in &self.retiring {
            entries.push(TableEntry {
                checkpoint: FileCheckpoint {
                    finished: false,
                    ..r.checkpoint.clone()
                },
                ack: Some(r.stream.ack.clone()),
                size: r.checkpoint.offset,
            });
        }
        for f in &self.finished {
            entries.push(TableEntry {
                checkpoint: f.clone(),
                ack: None,
                size: f.offset,
            });
        }
        self.metrics
            .files_tracked
            .with_label_values(&[self.spec.name.as_str()])
            .set(self.tails.len() as i64);
        if let Ok(mut table) = self.table.lock() {
            table.entries = entries;
        }
    }
}

fn checkpoint_of(input: &str, tail: &Tail, offset: u64, finished: bool) -> FileCheckpoint {
    FileCheckpoint {
        input: input.to_owned(),
        path: tail.path.clone(),
        dev: tail.dev_ino.0,
        inode: tail.dev_ino.1,
        fingerprint: tail.fingerprint,
        offset,
        finished,
    }
}

fn open(path: &Path) -> Option<(File, u64, (u64, u64))> {
    let file = File::open(path).ok()?;
    let meta = file.metadata().ok()?;
    meta.is_file().then(|| (file, meta.len(), dev_ino(&meta)))
}

fn parent(path: &Path) -> PathBuf {
    path.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The offset just past the last newline of the file's last 64 KiB (or its size).
fn end_of_last_line(file: &File, size: u64) -> u64 {
    let from = size.saturating_sub(64 * 1024);
    let mut buf = vec![0u8; (size - from) as usize];
    match file.read_exact_at(&mut buf, from) {
        Ok(()) => buf
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(size, |p| from + p as u64 + 1),
        Err(_) => size,
    }
}
