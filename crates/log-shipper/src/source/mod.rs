//! Inputs. A source reads lines from somewhere (files, or what apps send to the local
//! receivers) and hands them, in chunks per stream, to its pipeline. It learns nothing about sinks: what it may
//! forget is told by each stream's [`AckStream`](crate::ack::AckStream).
//!
//! A new kind of input implements [`Source`]: it runs until its stop token is cancelled, and
//! sends [`SourceItem`]s; each stream it opens has an `AckStream` whose acknowledged position
//! tells it what every sink has.

pub mod file;
pub mod http;
pub mod syslog;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ack::AckStream;

/// What a stream's lines are, and so how the pipeline turns them into events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Format {
    /// Text: the line is the message.
    #[default]
    Raw,
    /// The container runtime's log files (containerd, CRI-O: `/var/log/pods`):
    /// `<time> <stream> <P|F> <text>`, partial (`P`) lines joined.
    Cri,
    /// Docker's json-file driver: `{"log":"...\n","stream":"stdout","time":"..."}`, lines
    /// split at 16 KiB joined.
    Docker,
    /// A JSON value per line (the HTTP receiver's JSON and NDJSON bodies): an object's keys are
    /// fields, `message_key` the message; a string is the message.
    Json { message_key: String },
    /// One syslog message per line (RFC 5424 or RFC 3164, framing removed).
    Syslog,
}

/// One stream of lines: a file (one generation of it), a connection, a request.
#[derive(Debug)]
pub struct StreamInfo {
    /// Unique in the process; the pipeline keeps per-stream state (multiline) under it.
    pub id: u64,
    /// The input's name.
    pub input: Arc<str>,
    /// The file the lines come from, if any (the `file` field of enrichment).
    pub path: Option<Arc<str>>,
    /// Its acknowledgements.
    pub ack: Arc<AckStream>,
    /// What its lines are.
    pub format: Format,
}

/// One line in a [`RawChunk`]'s buffer.
#[derive(Debug, Clone, Copy)]
pub struct LineSpan {
    /// Where the line's bytes are in [`RawChunk::data`] (without the newline).
    pub range: (usize, usize),
    /// The stream position of the line's first byte.
    pub start: u64,
    /// The stream position just past the line (after its newline).
    pub end: u64,
    /// The line was longer than the maximum event size and was cut.
    pub truncated: bool,
}

/// Lines read from one stream, in order, sharing one buffer.
#[derive(Debug)]
pub struct RawChunk {
    /// The stream.
    pub stream: Arc<StreamInfo>,
    /// The bytes of every line.
    pub data: Vec<u8>,
    /// The lines.
    pub lines: Vec<LineSpan>,
}

impl RawChunk {
    /// The bytes of `line`.
    pub fn bytes(&self, line: &LineSpan) -> &[u8] {
        &self.data[line.range.0..line.range.1]
    }
}

/// What a source sends its pipeline.
#[derive(Debug)]
pub enum SourceItem {
    /// Lines.
    Lines(RawChunk),
    /// The stream has ended (a rotated file let go): flush what is pending for it.
    Closed(Arc<StreamInfo>),
}

/// An input.
pub trait Source: Send + std::fmt::Debug {
    /// Starts reading. The task stops reading when `stop` is cancelled, and ends when `out`'s
    /// receiver is gone too. Blocking work belongs on a blocking thread.
    fn start(
        self: Box<Self>,
        out: mpsc::Sender<SourceItem>,
        stop: CancellationToken,
    ) -> JoinHandle<anyhow::Result<()>>;
}

static NEXT_STREAM: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A new process-unique stream id.
pub fn next_stream_id() -> u64 {
    NEXT_STREAM.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}
