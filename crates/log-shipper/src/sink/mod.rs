//! Sinks: where events go, and what their answers mean.
//!
//! A sink kind is one module. It implements [`Sink`]: send these events, say what happened
//! ([`Outcome`]). Everything around that is shared and lives in [`driver`]: batching by lines,
//! bytes and time; retries with backoff ([`retry`]); the disk buffer that carries an outage
//! ([`disk`], [`queue`]); the dead-letter file for refused events ([`deadletter`]); and the
//! acknowledgements that let the sources move their checkpoints. HTTP sinks are a
//! [`http::HttpProtocol`] (a request encoder and a response classifier) on the shared
//! [`http::HttpSink`] (client, TLS, gzip, token file); [`ndjson`] is the generic one.

pub mod auth;
pub mod clickhouse;
pub mod deadletter;
pub mod disk;
pub mod driver;
pub mod elasticsearch;
pub mod http;
pub mod isolate;
pub mod loki;
pub mod ndjson;
pub mod queue;
pub mod retry;
pub mod splunk;
pub mod syslog;

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::event::{Chunk, Event};

/// What became of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every event is stored. `bytes`: the request's size before compression.
    Delivered { bytes: u64 },
    /// Nothing is stored (or it cannot be known): try again later, not before `after` if given
    /// (`Retry-After`). `status` labels the error metric: an HTTP status, `timeout`, `connect`.
    Retry {
        status: String,
        reason: String,
        after: Option<Duration>,
    },
    /// Refused for good (a 4xx other than 408 and 429): set aside to the dead-letter file.
    Rejected { status: String, reason: String },
    /// Per-event results (Elasticsearch `_bulk`): indices into the events sent. Events in
    /// neither list are stored.
    Partial {
        bytes: u64,
        status: String,
        retry: Vec<usize>,
        rejected: Vec<(usize, String)>,
        after: Option<Duration>,
    },
}

/// A boxed future, for a dyn-compatible async trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A destination. `send` is called with one batch at a time, and again with the events to
/// retry; it never retries by itself.
pub trait Sink: Send + Sync + std::fmt::Debug {
    fn send<'a>(&'a self, events: &'a [&'a Event]) -> BoxFuture<'a, Outcome>;
}

/// Batch bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSpec {
    pub max_lines: usize,
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// What to do when the disk buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Stop reading until there is room (the files keep the lines).
    Block,
    /// Drop the oldest buffered events to make room (counted: reason buffer_full).
    DropOldest,
}

/// The disk buffer: `max_bytes` 0 disables it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferSpec {
    pub max_bytes: u64,
    pub when_full: WhenFull,
}

/// Retry delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySpec {
    pub initial: Duration,
    pub max: Duration,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
}

/// Events from one or more chunks, sent together.
#[derive(Debug)]
pub struct Batch {
    parts: Vec<(Arc<Chunk>, Range<usize>)>,
    pub lines: usize,
    pub bytes: usize,
    pub opened: Instant,
    pub closed: Instant,
}

impl Batch {
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            parts: Vec::new(),
            lines: 0,
            bytes: 0,
            opened: now,
            closed: now,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.lines == 0
    }

    /// Adds events `range` of `chunk`.
    pub fn push(&mut self, chunk: &Arc<Chunk>, range: Range<usize>) {
        if self.parts.is_empty() {
            self.opened = Instant::now();
        }
        self.lines += range.len();
        self.bytes += chunk.events[range.clone()]
            .iter()
            .map(Event::size_hint)
            .sum::<usize>();
        self.parts.push((chunk.clone(), range));
    }

    pub fn events(&self) -> Vec<&Event> {
        self.parts
            .iter()
            .flat_map(|(c, r)| c.events[r.clone()].iter())
            .collect()
    }

    /// This sink is done with the batch: acknowledge the chunks it completes.
    pub fn acknowledge(&self) {
        for (chunk, range) in &self.parts {
            if range.end == chunk.events.len()
                && let Some(ack) = &chunk.ack
            {
                ack.ack();
            }
        }
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::AckStream;

    #[test]
    fn a_chunk_split_over_batches_is_acknowledged_by_its_last_part() {
        let stream = AckStream::new(0);
        let chunk = Arc::new(Chunk {
            events: (0..5).map(|i| Event::new(format!("e{i}"))).collect(),
            ack: Some(stream.register(100, 1)),
        });
        let mut first = Batch::new();
        first.push(&chunk, 0..3);
        let mut second = Batch::new();
        second.push(&chunk, 3..5);
        assert_eq!(second.events().len(), 2);
        first.acknowledge();
        assert_eq!(stream.acked(), 0);
        second.acknowledge();
        assert_eq!(stream.acked(), 100);
    }
}

/// A sink kind and its settings. A new kind is one module, one variant here and one arm in
/// [`build`].
#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// Generic HTTP, NDJSON body.
    Http(http::HttpSinkSpec),
    /// Elasticsearch / OpenSearch `_bulk`.
    Elasticsearch(elasticsearch::ElasticsearchSpec),
    /// Splunk HTTP Event Collector.
    SplunkHec(splunk::SplunkSpec),
    /// Grafana Loki push API (JSON).
    Loki(loki::LokiSpec),
    /// ClickHouse over HTTP, JSONEachRow.
    ClickHouse(clickhouse::ClickHouseSpec),
    /// RFC 5424 over TCP or TLS, octet counting.
    Syslog(syslog::SyslogSpec),
}

/// A configured sink.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSpec {
    pub name: String,
    pub kind: SinkKind,
    pub delivery: driver::Delivery,
}

/// Builds the sink of `kind`; the error names the setting at fault.
pub fn build(kind: &SinkKind, ctx: &http::SinkContext) -> Result<Arc<dyn Sink>, String> {
    Ok(match kind {
        SinkKind::Http(spec) => Arc::new(http::HttpSink::new(ndjson::Ndjson, spec.clone(), ctx)?),
        SinkKind::Elasticsearch(spec) => Arc::new(http::HttpSink::new(
            elasticsearch::Elasticsearch::new(spec),
            spec.http.clone(),
            ctx,
        )?),
        SinkKind::SplunkHec(spec) => Arc::new(splunk::SplunkHec::new(spec, ctx)?),
        SinkKind::Loki(spec) => Arc::new(http::HttpSink::new(
            loki::Loki::new(spec),
            spec.http.clone(),
            ctx,
        )?),
        SinkKind::ClickHouse(spec) => Arc::new(clickhouse::ClickHouse::new(spec, ctx)?),
        SinkKind::Syslog(spec) => Arc::new(syslog::Syslog::new(spec.clone(), ctx)?),
    })
}
