//! Line formats: how one line of a stream becomes an event, per the stream's
//! [`Format`]. Raw text is the message as it is; the container runtimes' formats
//! ([`container`]) carry a time, a stream name and partial lines to be joined; the receivers'
//! structured lines ([`structured`]) are JSON values or syslog messages.
//!
//! A format may hold a line back (the first parts of a long line split by the runtime): it says
//! where the held part starts, so the stream's acknowledged position does not pass it, and gives
//! it up when the stream ends.

pub mod container;
pub mod structured;

use crate::event::{Event, Fields};
use crate::source::Format;

/// An event decoded from one or more lines.
#[derive(Debug)]
pub struct Decoded {
    pub event: Event,
    /// The stream position of its first line.
    pub start: u64,
    /// Cut to the maximum event size (the pipeline marks and counts it).
    pub cut: bool,
}

/// Turns lines into events, holding the parts of a split line until its last part.
pub trait LineFormat: Send + std::fmt::Debug {
    /// `line`: its bytes without the newline; `start`: its stream position; `now`: the read
    /// time in nanoseconds. `None` while the line is held (a partial line).
    fn decode(&mut self, line: &[u8], start: u64, now: i64) -> Option<Decoded>;
    /// The position of the first line held, if any (it is not shipped yet).
    fn pending_start(&self) -> Option<u64> {
        None
    }
    /// The stream ended: what is held, as events (a split line whose last part never came).
    fn flush(&mut self) -> Vec<Decoded> {
        Vec::new()
    }
    /// Lines that were not in the format since the last call (shipped as raw text).
    fn take_errors(&mut self) -> u64 {
        0
    }
}

/// The decoder for `format`; joined lines are cut at `max_bytes`.
pub fn build(format: &Format, max_bytes: usize) -> Box<dyn LineFormat> {
    match format {
        Format::Raw => Box::new(Raw),
        Format::Cri => Box::new(container::Cri::new(max_bytes)),
        Format::Docker => Box::new(container::Docker::new(max_bytes)),
        Format::Json { message_key } => Box::new(structured::Json::new(message_key)),
        Format::Syslog => Box::new(structured::Syslog::default()),
    }
}

/// The line is the message; invalid UTF-8 is replaced by U+FFFD (shipped, never an error).
#[derive(Debug, Default)]
pub struct Raw;

impl LineFormat for Raw {
    fn decode(&mut self, line: &[u8], start: u64, now: i64) -> Option<Decoded> {
        Some(Decoded {
            event: Event {
                timestamp: now,
                message: text(line),
                fields: Fields::new(),
                shared: None,
            },
            start,
            cut: false,
        })
    }
}

/// The bytes as text, invalid UTF-8 replaced.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
