//! Acknowledgements: when may a source forget a position?
//!
//! Each stream (a file; later a receiver's connection) has an [`AckStream`]. A pipeline
//! registers a position (the offset just past the last line it has turned into events) with the
//! number of sinks the events go to, and gets an [`AckRef`]; every sink calls [`AckRef::ack`]
//! once when it is done with them. Sinks finish out of order (one is down, another is not), so
//! the stream's acknowledged position only moves over a contiguous prefix of fully acknowledged
//! entries: a line's position counts as done only when every sink it went to is done with it,
//! and with every line before it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

#[derive(Debug)]
struct Entry {
    end: u64,
    remaining: u32,
}

#[derive(Debug)]
struct State {
    /// Sequence number of `entries[0]`.
    base: u64,
    entries: VecDeque<Entry>,
    /// The furthest position registered.
    registered: u64,
}

/// The in-flight positions of one stream.
#[derive(Debug)]
pub struct AckStream {
    state: Mutex<State>,
    acked: watch::Sender<u64>,
}

impl AckStream {
    /// A stream whose positions before `start` are already acknowledged.
    pub fn new(start: u64) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                base: 0,
                entries: VecDeque::new(),
                registered: start,
            }),
            acked: watch::Sender::new(start),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves consistent state (no multi-step updates).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `end` (everything before it is in events) for `sinks` acknowledgements.
    /// Positions must be registered in increasing order. With 0 sinks it counts as done at once.
    pub fn register(self: &Arc<Self>, end: u64, sinks: u32) -> AckRef {
        let mut state = self.lock();
        let seq = state.base + state.entries.len() as u64;
        state.registered = state.registered.max(end);
        state.entries.push_back(Entry {
            end,
            remaining: sinks,
        });
        if sinks == 0 {
            self.advance(&mut state);
        }
        AckRef {
            stream: self.clone(),
            seq,
        }
    }

    fn complete(&self, seq: u64) {
        let mut state = self.lock();
        let Some(index) = seq.checked_sub(state.base) else {
            return;
        };
        if let Some(entry) = state.entries.get_mut(index as usize) {
            entry.remaining = entry.remaining.saturating_sub(1);
        }
        self.advance(&mut state);
    }

    fn advance(&self, state: &mut State) {
        let mut moved = None;
        while state.entries.front().is_some_and(|e| e.remaining == 0) {
            if let Some(e) = state.entries.pop_front() {
                moved = Some(e.end);
                state.base += 1;
            }
        }
        if let Some(end) = moved {
            self.acked.send_if_modified(|a| {
                let changed = end > *a;
                *a = (*a).max(end);
                changed
            });
        }
    }

    /// The position up to which every sink has acknowledged everything.
    pub fn acked(&self) -> u64 {
        *self.acked.borrow()
    }

    /// The furthest position registered (handed to sinks or skipped).
    pub fn registered(&self) -> u64 {
        self.lock().registered
    }

    /// Whether every registered position is acknowledged.
    pub fn is_settled(&self) -> bool {
        self.lock().entries.is_empty()
    }

    /// Waits until `position` is acknowledged (for receivers that answer their client then).
    pub async fn wait_acked(&self, position: u64) {
        let mut rx = self.acked.subscribe();
        // The sender lives in self, so the wait ends only by reaching the position.
        let _ = rx.wait_for(|a| *a >= position).await;
    }
}

/// One registered position, acknowledged once by each sink it was registered for.
#[derive(Debug)]
pub struct AckRef {
    stream: Arc<AckStream>,
    seq: u64,
}

impl AckRef {
    /// One sink is done with the events before this position.
    pub fn ack(&self) {
        self.stream.complete(self.seq);
    }

    /// The stream it belongs to.
    pub fn stream(&self) -> &Arc<AckStream> {
        &self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_only_over_a_fully_acknowledged_prefix() {
        let s = AckStream::new(10);
        let a = s.register(20, 2);
        let b = s.register(30, 2);
        let c = s.register(40, 1);
        c.ack();
        b.ack();
        b.ack();
        assert_eq!(s.acked(), 10, "a is still waiting for both sinks");
        a.ack();
        assert_eq!(s.acked(), 10, "a is still waiting for one sink");
        a.ack();
        assert_eq!(s.acked(), 40);
        assert!(s.is_settled());
        assert_eq!(s.registered(), 40);
    }

    #[test]
    fn zero_sinks_counts_at_once_but_keeps_order() {
        let s = AckStream::new(0);
        let a = s.register(5, 1);
        let _b = s.register(9, 0);
        assert_eq!(s.acked(), 0);
        a.ack();
        assert_eq!(s.acked(), 9);
    }

    #[tokio::test]
    async fn waiters_wake_when_the_position_is_reached() {
        let s = AckStream::new(0);
        let a = s.register(7, 1);
        let waiter = {
            let s = s.clone();
            tokio::spawn(async move { s.wait_acked(7).await })
        };
        a.ack();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
