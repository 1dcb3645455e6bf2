//! A sink's queue between its intake (batches closing) and its sender (one request at a time):
//! a few batches in memory, and the disk buffer.
//!
//! While the sink answers, batches wait in memory and the intake waits for room: reading slows
//! to the sink's pace and the files keep the lines (no disk write on the healthy path). While it
//! fails, closed batches go to the disk buffer, fsynced, and count as acknowledged, so the
//! sources move on; when it is full the policy decides: wait (back-pressure) or drop the oldest
//! segment (counted). Order is kept: memory first, then disk, and nothing new goes to memory
//! while the disk buffer still holds records.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::event::Event;
use crate::metrics::Metrics;
use crate::sink::disk::{DiskBuffer, RecordId};
use crate::sink::{Batch, WhenFull};

/// Batches held in memory before the intake waits (or spills, while the sink fails).
const MEMORY_BATCHES: usize = 2;

/// What the sender gets.
#[derive(Debug)]
pub enum Item {
    Memory(Batch),
    Disk(RecordId, Vec<Event>),
}

#[derive(Debug)]
struct State {
    memory: VecDeque<Batch>,
    disk: Option<DiskBuffer>,
    failing: bool,
    intake_closed: bool,
}

#[derive(Debug)]
enum Spill {
    Done,
    NoRoom,
}

#[derive(Debug)]
pub struct SinkQueue {
    name: String,
    when_full: WhenFull,
    state: Mutex<State>,
    changed: Notify,
    metrics: Metrics,
}

impl SinkQueue {
    pub fn new(
        name: &str,
        disk: Option<DiskBuffer>,
        when_full: WhenFull,
        metrics: Metrics,
    ) -> Self {
        let q = Self {
            name: name.to_owned(),
            when_full,
            state: Mutex::new(State {
                memory: VecDeque::new(),
                disk,
                failing: false,
                intake_closed: false,
            }),
            changed: Notify::new(),
            metrics,
        };
        q.gauges(&q.lock());
        q
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gauges(&self, state: &State) {
        if let Some(disk) = &state.disk {
            let name = self.name.as_str();
            self.metrics
                .buffer_bytes
                .with_label_values(&[name])
                .set(disk.bytes() as i64);
            self.metrics
                .buffer_lines
                .with_label_values(&[name])
                .set(disk.lines() as i64);
        }
    }

    /// Queues a closed batch; false when `deadline` came first (the batch is not acknowledged:
    /// its lines will be read again).
    pub async fn push(&self, batch: Batch, deadline: &CancellationToken) -> bool {
        let mut payload = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                let disk_empty = state.disk.as_ref().is_none_or(DiskBuffer::is_empty);
                if state.memory.len() < MEMORY_BATCHES && disk_empty {
                    state.memory.push_back(batch);
                    drop(state);
                    self.changed.notify_waiters();
                    return true;
                }
                if state.failing && state.disk.is_some() {
                    let p = payload.get_or_insert_with(|| DiskBuffer::encode(&batch.events()));
                    if let Spill::Done = self.spill(&mut state, p, batch.lines) {
                        drop(state);
                        batch.acknowledge();
                        self.changed.notify_waiters();
                        return true;
                    }
                }
            }
            tokio::select! {
                () = &mut notified => {}
                () = deadline.cancelled() => return false,
            }
        }
    }

    fn spill(&self, state: &mut State, payload: &[u8], lines: usize) -> Spill {
        let Some(disk) = state.disk.as_mut() else {
            return Spill::NoRoom;
        };
        while !disk.has_room(payload.len()) {
            if self.when_full == WhenFull::Block {
                return Spill::NoRoom;
            }
            match disk.drop_oldest() {
                Ok(Some(dropped)) => {
                    tracing::warn!(sink = %self.name, lines = dropped.lines, "disk buffer full: dropped its oldest events (when_full: drop_oldest)");
                    self.metrics
                        .lines_dropped
                        .with_label_values(&[self.name.as_str(), "buffer_full"])
                        .inc_by(dropped.lines);
                }
                Ok(None) => return Spill::NoRoom,
                Err(e) => {
                    tracing::error!(sink = %self.name, error = %e, "cannot drop from the disk buffer");
                    return Spill::NoRoom;
                }
            }
        }
        match disk.append(payload, u32::try_from(lines).unwrap_or(u32::MAX)) {
            Ok(()) => {
                self.gauges(state);
                Spill::Done
            }
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, "cannot write to the disk buffer; waiting instead");
                Spill::NoRoom
            }
        }
    }

    /// The next thing to send; `None` once the intake has closed and memory is empty (the disk
    /// buffer is kept for the next start), or at the deadline.
    pub async fn next(&self, deadline: &CancellationToken) -> Option<Item> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if let Some(batch) = state.memory.pop_front() {
                    drop(state);
                    self.changed.notify_waiters();
                    return Some(Item::Memory(batch));
                }
                if state.intake_closed {
                    return None;
                }
                if let Some(disk) = state.disk.as_mut()
                    && !disk.is_empty()
                {
                    match disk.peek() {
                        Ok(Some((id, events))) => return Some(Item::Disk(id, events)),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::error!(sink = %self.name, error = %e, "cannot read the disk buffer");
                        }
                    }
                }
            }
            tokio::select! {
                () = &mut notified => {}
                () = deadline.cancelled() => return None,
            }
        }
    }

    pub fn set_failing(&self, failing: bool) {
        let mut state = self.lock();
        if state.failing != failing {
            state.failing = failing;
            drop(state);
            self.changed.notify_waiters();
        }
    }

    /// A disk record was delivered or set aside.
    pub fn consume(&self, id: RecordId) {
        let mut state = self.lock();
        if let Some(disk) = state.disk.as_mut()
            && let Err(e) = disk.consume(id)
        {
            tracing::error!(sink = %self.name, error = %e, "cannot update the disk buffer");
        }
        self.gauges(&state);
        drop(state);
        self.changed.notify_waiters();
    }

    /// The sink has just failed: the events of the batch being sent, then the batches waiting
    /// in memory, go to the disk buffer, in that order, so that they count as acknowledged and
    /// the sources move on. All of them or none (no buffer, or not enough room); the sink is
    /// marked failing either way. Returns the memory batches moved, for their acknowledgement.
    pub fn spill_in_flight(&self, current: &[&Event]) -> Option<Vec<Batch>> {
        let mut state = self.lock();
        state.failing = true;
        let mut payloads = vec![(DiskBuffer::encode(current), current.len())];
        for batch in &state.memory {
            payloads.push((DiskBuffer::encode(&batch.events()), batch.lines));
        }
        let total: usize = payloads.iter().map(|(p, _)| p.len() + 64).sum();
        let fits = state.disk.as_ref().is_some_and(|d| d.has_room(total));
        let mut moved = None;
        if fits {
            let written = payloads
                .iter()
                .all(|(p, lines)| matches!(self.spill(&mut state, p, *lines), Spill::Done));
            if written {
                moved = Some(state.memory.drain(..).collect());
            } else {
                tracing::error!(sink = %self.name, "cannot move the batches in memory to the disk buffer; they wait in memory");
            }
        }
        drop(state);
        self.changed.notify_waiters();
        moved
    }

    pub fn close_intake(&self) {
        self.lock().intake_closed = true;
        self.changed.notify_waiters();
    }

    /// Writes the disk buffer's read position durably.
    pub fn sync(&self) {
        if let Some(disk) = self.lock().disk.as_ref()
            && let Err(e) = disk.sync()
        {
            tracing::error!(sink = %self.name, error = %e, "cannot write the disk buffer's cursor");
        }
    }
}
