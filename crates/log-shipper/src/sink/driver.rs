//! Runs one sink: an intake task that cuts the incoming chunks into batches (bounded by lines,
//! bytes and time) and a sender task that delivers them one at a time, retrying with backoff,
//! setting refused events aside, and acknowledging what is done.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::event::{Chunk, Event};
use crate::metrics::Metrics;
use crate::sink::deadletter::DeadLetter;
use crate::sink::disk::DiskBuffer;
use crate::sink::queue::{Item, SinkQueue};
use crate::sink::retry::Backoff;
use crate::sink::{Batch, BatchSpec, BufferSpec, Outcome, RetrySpec, Sink};

/// The delivery settings every sink has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub batch: BatchSpec,
    pub buffer: BufferSpec,
    pub retry: RetrySpec,
}

/// How a running sink is told to stop.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// Stopping: the intake closes when the pipelines are done; a failing sink's batches go to
    /// the disk buffer at once instead of waiting for retries.
    pub stopping: CancellationToken,
    /// Give up now: what is not acknowledged stays unacknowledged (read again next time).
    pub deadline: CancellationToken,
}

/// A running sink.
#[derive(Debug)]
pub struct SinkHandle {
    pub name: String,
    /// Where pipelines send chunks.
    pub input: mpsc::Sender<Arc<Chunk>>,
    intake: JoinHandle<()>,
    sender: JoinHandle<()>,
}

impl SinkHandle {
    /// Waits for both tasks (after the pipelines have dropped their senders).
    pub async fn finish(self) {
        let _ = self.intake.await;
        let _ = self.sender.await;
    }
}

/// Starts a sink; fails when its disk buffer cannot be opened.
pub fn start(
    name: &str,
    delivery: Delivery,
    sink: Arc<dyn Sink>,
    state_dir: &Path,
    metrics: Metrics,
    stop: Stop,
) -> std::io::Result<SinkHandle> {
    let disk = if delivery.buffer.max_bytes > 0 {
        Some(DiskBuffer::open(
            &state_dir.join("buffer").join(name),
            delivery.buffer.max_bytes,
        )?)
    } else {
        None
    };
    let queue = Arc::new(SinkQueue::new(
        name,
        disk,
        delivery.buffer.when_full,
        metrics.clone(),
    ));
    let (tx, rx) = mpsc::channel(4);
    let intake = tokio::spawn(intake(rx, delivery.batch, queue.clone(), stop.clone()));
    let sender = Sender {
        name: name.to_owned(),
        sink,
        queue,
        retry: delivery.retry,
        dead_letter: DeadLetter::new(state_dir, name),
        metrics,
        stop,
    };
    let sender = tokio::spawn(sender.run());
    Ok(SinkHandle {
        name: name.to_owned(),
        input: tx,
        intake,
        sender,
    })
}

async fn intake(
    mut rx: mpsc::Receiver<Arc<Chunk>>,
    spec: BatchSpec,
    queue: Arc<SinkQueue>,
    stop: Stop,
) {
    let mut batch = Batch::new();
    'outer: loop {
        let timeout = (!batch.is_empty()).then(|| batch.opened + spec.timeout);
        let chunk = tokio::select! {
            chunk = rx.recv() => chunk,
            () = sleep_until(timeout) => {
                if !close(&mut batch, &queue, &stop).await {
                    break 'outer;
                }
                continue;
            }
        };
        let Some(chunk) = chunk else { break };
        let n = chunk.events.len();
        let mut from = 0;
        while from < n {
            let (mut lines, mut bytes, mut to) = (batch.lines, batch.bytes, from);
            while to < n && lines < spec.max_lines {
                let size = chunk.events[to].size_hint();
                if lines > 0 && bytes + size > spec.max_bytes {
                    break;
                }
                lines += 1;
                bytes += size;
                to += 1;
            }
            if to > from {
                batch.push(&chunk, from..to);
                from = to;
            }
            if (batch.lines >= spec.max_lines || from < n || batch.bytes >= spec.max_bytes)
                && !close(&mut batch, &queue, &stop).await
            {
                break 'outer;
            }
        }
    }
    if !batch.is_empty() {
        close(&mut batch, &queue, &stop).await;
    }
    queue.close_intake();
}

/// Hands the batch to the queue; false at the deadline.
async fn close(batch: &mut Batch, queue: &SinkQueue, stop: &Stop) -> bool {
    let mut closed = std::mem::take(batch);
    closed.closed = Instant::now();
    queue.push(closed, &stop.deadline).await
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

struct Sender {
    name: String,
    sink: Arc<dyn Sink>,
    queue: Arc<SinkQueue>,
    retry: RetrySpec,
    dead_letter: DeadLetter,
    metrics: Metrics,
    stop: Stop,
}

/// How a delivery ended.
enum Done {
    /// Every event is delivered or set aside.
    Complete,
    /// Moved to the disk buffer (the sink failing) and acknowledged there, or left
    /// unacknowledged at the deadline.
    Handed,
}

impl Sender {
    async fn run(mut self) {
        while let Some(item) = self.queue.next(&self.stop.deadline).await {
            match self.deliver(&item).await {
                Done::Complete => match item {
                    Item::Memory(batch) => {
                        batch.acknowledge();
                        self.metrics
                            .batch_latency
                            .with_label_values(&[self.name.as_str()])
                            .observe(batch.closed.elapsed().as_secs_f64());
                    }
                    Item::Disk(id, _) => self.queue.consume(id),
                },
                Done::Handed => {}
            }
        }
        self.queue.sync();
    }

    async fn deliver(&mut self, item: &Item) -> Done {
        let events: Vec<&Event> = match item {
            Item::Memory(batch) => batch.events(),
            Item::Disk(_, events) => events.iter().collect(),
        };
        let name = self.name.clone();
        let mut pending: Vec<usize> = (0..events.len()).collect();
        let mut backoff = Backoff::new(self.retry);
        let mut attempt = 0u32;
        while !pending.is_empty() {
            attempt += 1;
            let subset: Vec<&Event> = pending.iter().map(|&i| events[i]).collect();
            let outcome = tokio::select! {
                o = self.sink.send(&subset) => o,
                () = self.stop.deadline.cancelled() => return Done::Handed,
            };
            let (status, reason, after) = match outcome {
                Outcome::Delivered { bytes } => {
                    self.sent(subset.len(), bytes);
                    pending.clear();
                    continue;
                }
                Outcome::Rejected { status, reason } => {
                    self.metrics
                        .sink_errors
                        .with_label_values(&[&name, &status])
                        .inc();
                    self.set_aside(&subset, &status, &reason);
                    pending.clear();
                    continue;
                }
                Outcome::Partial {
                    bytes,
                    status,
                    retry,
                    rejected,
                    after,
                } => {
                    let refused: Vec<&Event> = rejected
                        .iter()
                        .filter_map(|(i, _)| subset.get(*i).copied())
                        .collect();
                    let why = rejected.first().map(|(_, r)| r.clone()).unwrap_or_default();
                    if !refused.is_empty() {
                        self.set_aside(&refused, &status, &why);
                    }
                    self.sent(subset.len() - retry.len() - refused.len(), bytes);
                    pending = retry
                        .iter()
                        .filter_map(|&i| pending.get(i).copied())
                        .collect();
                    if pending.is_empty() {
                        continue;
                    }
                    (status, "some events must be sent again".to_owned(), after)
                }
                Outcome::Retry {
                    status,
                    reason,
                    after,
                } => (status, reason, after),
            };
            self.metrics
                .sink_errors
                .with_label_values(&[&name, &status])
                .inc();
            // A batch from memory goes to the disk buffer at its first failure (with those
            // queued behind it): the sources need not wait for the sink to come back.
            if let Item::Memory(batch) = item {
                let rest: Vec<&Event> = pending.iter().map(|&i| events[i]).collect();
                if let Some(moved) = self.queue.spill_in_flight(&rest) {
                    tracing::warn!(sink = %name, %status, %reason, "sink failed; its batches wait in the disk buffer");
                    batch.acknowledge();
                    moved.iter().for_each(Batch::acknowledge);
                    return Done::Handed;
                }
            } else {
                self.queue.set_failing(true);
            }
            if self.stop.stopping.is_cancelled() {
                // Stopping, and what is in memory could not go to disk: it stays unacknowledged.
                return Done::Handed;
            }
            let wait = backoff.next(after);
            tracing::warn!(sink = %name, %status, %reason, attempt, retry_in = ?wait, "sink failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.stop.stopping.cancelled() => {}
                () = self.stop.deadline.cancelled() => return Done::Handed,
            }
        }
        self.queue.set_failing(false);
        Done::Complete
    }

    fn sent(&self, lines: usize, bytes: u64) {
        let name = self.name.as_str();
        self.metrics
            .lines_sent
            .with_label_values(&[name])
            .inc_by(lines as u64);
        self.metrics
            .bytes_sent
            .with_label_values(&[name])
            .inc_by(bytes);
    }

    fn set_aside(&mut self, events: &[&Event], status: &str, reason: &str) {
        let name = self.name.as_str();
        match self.dead_letter.write(events, status, reason) {
            Ok(()) => {
                tracing::error!(sink = name, status, reason, lines = events.len(), file = %self.dead_letter.path().display(), "sink refused a batch; written to the dead-letter file, not retried");
                self.metrics
                    .lines_dead_lettered
                    .with_label_values(&[name])
                    .inc_by(events.len() as u64);
            }
            Err(e) => {
                tracing::error!(sink = name, status, reason, lines = events.len(), error = %e, "sink refused a batch and the dead-letter file cannot be written: the events are dropped");
                self.metrics
                    .lines_dropped
                    .with_label_values(&[name, "dead_letter_failed"])
                    .inc_by(events.len() as u64);
            }
        }
    }
}
