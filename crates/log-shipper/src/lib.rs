//! log-shipper: ships an app's log files to central stores, at least once. A line is let go
//! (its file's checkpoint moves past it) only when every sink it goes to has acknowledged it.
//!
//! # Design: the data path and its seams
//!
//! ```text
//!  source ──RawChunk──▶ pipeline ──Arc<Chunk>──▶ sink intake ─▶ queue ─▶ sender ─▶ Sink::send
//!  (file)   lines+offsets  (format, multiline,     (batches by    (memory,  (retry,    (encode,
//!                          parse, timestamp,       lines, bytes,  disk      dead       request,
//!                          enrich, redact)         time)          buffer)   letter)    classify)
//!     ▲                                                                         │
//!     └─────────────── AckStream: position acknowledged by every sink ◀─────────┘
//! ```
//!
//! - **Inputs** ([`source`]): a [`source::Source`] reads lines and sends
//!   [`source::SourceItem`]s, per stream (a file; a connection for the receivers to come), each
//!   line with its start and end positions. The file input ([`source::file`]) follows globs,
//!   rotation (rename, copy-truncate), truncation and deletion, and finds its files again after
//!   a restart by device, inode and a fingerprint of their first bytes.
//! - **Acknowledgements** ([`ack`]): every stream has an [`ack::AckStream`]. The pipeline
//!   registers the position up to which lines are in events, for as many sinks as the events
//!   go to; each sink acknowledges once it is done with them. The acknowledged position moves
//!   only over a fully acknowledged prefix, and it is what [`checkpoint`] writes (atomically)
//!   for each file. A restart resumes there.
//! - **Events** ([`event`]): an [`event::Event`] is a timestamp, a message, its own JSON fields
//!   and its stream's [`event::SharedFields`] (the enrichment, made once per stream); a
//!   [`event::Chunk`] carries one source chunk's events and their acknowledgement.
//! - **Pipeline** ([`pipeline`]): per stream a [`pipeline::LineFormat`] (raw now; CRI and
//!   Docker JSON plug in here) and [`pipeline::multiline`]; then per event the parser,
//!   timestamp extraction, enrichment and, last, redaction.
//! - **Sinks** ([`sink`]): a [`sink::Sink`] only sends a batch and says what happened
//!   ([`sink::Outcome`]: delivered, retry after, rejected, or per-event results). Batching,
//!   retries with backoff and jitter, `Retry-After`, the dead-letter file, the disk buffer and
//!   its full policy, and the acknowledgements are shared ([`sink::driver`], [`sink::queue`]).
//!   An HTTP store is an [`sink::http::HttpProtocol`] (an encoder and a response classifier)
//!   on [`sink::http::HttpSink`], which brings mTLS through the kit, gzip and a token file;
//!   [`sink::ndjson`] is the generic one. A new sink kind is one module, one variant of
//!   [`sink::SinkKind`] and one match arm in [`sink::build`] (and its YAML in [`config`]).
//!
//! "Acknowledged by a sink" means: delivered (a 2xx, or the per-event results say so), set
//! aside in the dead-letter file (refused for good, fsynced), dropped by the explicit
//! `drop_oldest` policy (counted), or written, fsynced, to the sink's disk buffer while it is
//! failing. Lines are sent twice only after a crash (or `kill -9`) between a delivery and the
//! next checkpoint write (`--checkpoint-interval`), or when a request timed out after the
//! store had taken it.
//!
//! [`topology`] starts and stops a configuration; [`service`] runs it, writes checkpoints,
//! reloads the YAML file and shuts down; [`config`] turns flags or YAML into a checked plan.

pub mod ack;
pub mod checkpoint;
pub mod config;
pub mod event;
pub mod metrics;
pub mod pipeline;
pub mod service;
pub mod sink;
pub mod source;
pub mod topology;

pub use config::{Cli, Config, INFO};
pub use service::serve;
