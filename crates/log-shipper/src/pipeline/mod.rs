//! The pipeline: a source's raw lines become events and go to the pipeline's sinks.
//!
//! Per stream, in order: the stream's line format ([`format`]: raw text, the container
//! runtimes' CRI and Docker formats, the receivers' JSON and syslog) turns lines into events,
//! [`multiline`] joins continuation lines, then the
//! processors run on each complete event: [`parse`], [`timestamp`], [`enrich`], and
//! [`redact`] last, so nothing leaves the process unredacted. Events of one source chunk
//! travel together as a [`Chunk`]; its acknowledgement is registered for the position up to
//! which every line is in an event (a pending multiline event holds the position back).

pub mod enrich;
pub mod format;
pub mod multiline;
pub mod parse;
pub mod redact;
pub mod timestamp;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::event::{Chunk, Event, SharedFields, now_nanos};
use crate::metrics::Metrics;
use crate::source::{RawChunk, SourceItem, StreamInfo};
use enrich::Enrich;
use format::LineFormat;
use multiline::{Multiline, MultilineSpec};
use parse::Parser;
use redact::Redactor;
use timestamp::TimestampSpec;

/// A pipeline's settings.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    pub name: String,
    pub multiline: Option<MultilineSpec>,
    pub parser: Parser,
    pub timestamp: Option<TimestampSpec>,
    pub enrich: Enrich,
    pub redact: Redactor,
    pub max_event_bytes: usize,
    /// The sinks every event goes to (names from the configuration).
    pub sinks: Vec<String>,
}

#[derive(Debug)]
struct StreamState {
    info: Arc<StreamInfo>,
    format: Box<dyn LineFormat>,
    multiline: Option<Multiline>,
    last_end: u64,
    /// The enrichment every event of the stream gets.
    shared: Option<Arc<SharedFields>>,
}

impl StreamState {
    /// Hands a decoded event to multiline, or on as it is; true when multiline cut it.
    fn join(
        &mut self,
        spec: &PipelineSpec,
        decoded: format::Decoded,
        now: Instant,
        ready: &mut Vec<Event>,
    ) -> bool {
        match (&mut self.multiline, &spec.multiline) {
            (Some(m), Some(ms)) => m.push(
                ms,
                decoded.event,
                decoded.start,
                spec.max_event_bytes,
                now,
                ready,
            ),
            _ => {
                ready.push(decoded.event);
                false
            }
        }
    }

    /// Every line before this position is in an event already handed on.
    fn done_until(&self) -> u64 {
        let held = [
            self.format.pending_start(),
            self.multiline.as_ref().and_then(Multiline::pending_start),
        ];
        held.into_iter().flatten().min().unwrap_or(self.last_end)
    }
}

/// One input's pipeline, running.
#[derive(Debug)]
pub struct Pipeline {
    spec: Arc<PipelineSpec>,
    input: String,
    outputs: Vec<mpsc::Sender<Arc<Chunk>>>,
    streams: HashMap<u64, StreamState>,
    metrics: Metrics,
}

/// The sinks are gone (the shutdown deadline passed): stop.
#[derive(Debug)]
struct SinksGone;

impl Pipeline {
    pub fn new(
        spec: Arc<PipelineSpec>,
        input: String,
        outputs: Vec<mpsc::Sender<Arc<Chunk>>>,
        metrics: Metrics,
    ) -> Self {
        Self {
            spec,
            input,
            outputs,
            streams: HashMap::new(),
            metrics,
        }
    }

    /// Runs until the source ends, then flushes what is pending.
    pub async fn run(mut self, mut rx: mpsc::Receiver<SourceItem>) {
        loop {
            let deadline = self.next_deadline();
            let item = tokio::select! {
                item = rx.recv() => item,
                () = sleep_until(deadline) => {
                    if self.flush_due(Instant::now()).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let result = match item {
                Some(SourceItem::Lines(chunk)) => self.lines(chunk).await,
                Some(SourceItem::Closed(stream)) => self.close(stream.id).await,
                None => break,
            };
            if result.is_err() {
                return;
            }
        }
        let ids: Vec<u64> = self.streams.keys().copied().collect();
        for id in ids {
            if self.close(id).await.is_err() {
                return;
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let spec = self.spec.multiline.as_ref()?;
        self.streams
            .values()
            .filter_map(|s| s.multiline.as_ref()?.deadline(spec))
            .min()
    }

    fn state(&mut self, info: &Arc<StreamInfo>) -> &mut StreamState {
        let spec = &self.spec;
        self.streams.entry(info.id).or_insert_with(|| StreamState {
            info: info.clone(),
            format: format::build(&info.format, spec.max_event_bytes),
            multiline: spec.multiline.is_some().then(Multiline::new),
            last_end: info.ack.acked(),
            shared: spec.enrich.shared(info, &spec.redact),
        })
    }

    async fn lines(&mut self, chunk: RawChunk) -> Result<(), SinksGone> {
        let now = now_nanos();
        let instant = Instant::now();
        let spec = self.spec.clone();
        let mut ready = Vec::with_capacity(chunk.lines.len());
        let mut cut = 0u64;
        let state = self.state(&chunk.stream);
        for line in &chunk.lines {
            state.last_end = line.end;
            let Some(mut decoded) = state.format.decode(chunk.bytes(line), line.start, now) else {
                continue;
            };
            if line.truncated || decoded.cut {
                decoded.event.fields.insert("truncated".into(), true.into());
            }
            cut += u64::from(decoded.cut);
            cut += u64::from(state.join(&spec, decoded, instant, &mut ready));
        }
        let errors = state.format.take_errors();
        let end = state.done_until();
        let info = state.info.clone();
        let shared = state.shared.clone();
        self.count(cut, errors);
        self.emit(&info, shared.as_ref(), ready, end).await
    }

    fn count(&self, cut: u64, format_errors: u64) {
        if cut > 0 {
            self.metrics
                .events_truncated
                .with_label_values(&[self.input.as_str()])
                .inc_by(cut);
        }
        if format_errors > 0 {
            self.metrics
                .parse_errors
                .with_label_values(&[self.spec.name.as_str(), "format"])
                .inc_by(format_errors);
        }
    }

    async fn flush_due(&mut self, now: Instant) -> Result<(), SinksGone> {
        let Some(spec) = self.spec.multiline.clone() else {
            return Ok(());
        };
        let due: Vec<u64> = self
            .streams
            .iter()
            .filter(|(_, s)| {
                s.multiline
                    .as_ref()
                    .and_then(|m| m.deadline(&spec))
                    .is_some_and(|d| d <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.flush_stream(id, false).await?;
        }
        Ok(())
    }

    /// Ships what a stream holds: with `remove` (the stream ended) the format's held parts
    /// too, and forgets the stream.
    async fn flush_stream(&mut self, id: u64, remove: bool) -> Result<(), SinksGone> {
        let spec = self.spec.clone();
        let Some(state) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        let mut ready = Vec::new();
        let mut cut = 0u64;
        if remove {
            let instant = Instant::now();
            for decoded in state.format.flush() {
                cut += u64::from(state.join(&spec, decoded, instant, &mut ready));
            }
        }
        ready.extend(state.multiline.as_mut().and_then(Multiline::flush));
        let end = state.done_until();
        let info = state.info.clone();
        let shared = state.shared.clone();
        if remove {
            self.streams.remove(&id);
        }
        self.count(cut, 0);
        self.emit(&info, shared.as_ref(), ready, end).await
    }

    async fn close(&mut self, id: u64) -> Result<(), SinksGone> {
        self.flush_stream(id, true).await
    }

    /// Runs the processors and hands the events to every sink.
    async fn emit(
        &mut self,
        info: &Arc<StreamInfo>,
        shared: Option<&Arc<SharedFields>>,
        mut events: Vec<Event>,
        end: u64,
    ) -> Result<(), SinksGone> {
        if events.is_empty() {
            if end > info.ack.registered() {
                info.ack.register(end, 0);
            }
            return Ok(());
        }
        for event in &mut events {
            self.process(event, info, shared);
        }
        let ack = info.ack.register(end, self.outputs.len() as u32);
        let chunk = Arc::new(Chunk {
            events,
            ack: Some(ack),
        });
        for out in &self.outputs {
            out.send(chunk.clone()).await.map_err(|_| SinksGone)?;
        }
        Ok(())
    }

    fn process(&self, event: &mut Event, info: &StreamInfo, shared: Option<&Arc<SharedFields>>) {
        let spec = &self.spec;
        if !spec.parser.apply(event) {
            self.metrics
                .parse_errors
                .with_label_values(&[spec.name.as_str(), "parser"])
                .inc();
        }
        if let Some(ts) = &spec.timestamp
            && !ts.apply(event)
        {
            self.metrics
                .parse_errors
                .with_label_values(&[spec.name.as_str(), "timestamp"])
                .inc();
        }
        spec.enrich.apply(event, info, shared);
        spec.redact.apply(event);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
