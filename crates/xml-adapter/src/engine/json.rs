//! A JSON document fed to json-event-parser's push parser as its bytes arrive, its events
//! turned into the elements a [`Run`] reads, so that the mapping language is the same:
//! - the top-level value is the root, which matches no step: `/a` is its member `a`;
//! - an object's member is an element named by its key; an array's item, an element named by
//!   its index (`0`, `1`, ...), so `*` matches every key or every item;
//! - a scalar is the text of its element: a number as written, a string decoded, `true` and
//!   `false`; a `null` member or item is absent (so `on_missing` decides, never a 0).
//!
//! Nothing of the document is kept but the parser's bytes not parsed yet (one token at most)
//! and what the run keeps of the open elements and records.

use json_event_parser::{JsonEvent, LowLevelJsonParser};

use super::input::{Format, StartTag};
use super::plan::Engine;
use super::report::{DocumentError, Translation, malformed_json};
use super::reuse::Reuse;
use super::run::{Run, Scratch};
use crate::path::NameTest;

/// The JSON input format: elements have no attributes.
#[derive(Debug)]
pub(super) struct Json;

impl Format for Json {
    const NAME: &'static str = "JSON";
    const PREFIXED_NAMES: bool = false;

    fn kept_attribute(&self, _: &str, _: usize, _: &NameTest, _: &mut String) -> bool {
        false
    }
}

/// A member's key or an item's index, as a start tag.
struct Key<'a>(&'a str);

impl StartTag for Key<'_> {
    fn name(&self) -> &str {
        self.0
    }

    fn namespace(&self) -> Option<String> {
        None
    }

    fn size(&self) -> usize {
        // The key, its quotes and the colon.
        self.0.len() + 3
    }

    fn source(&self) -> &str {
        self.0
    }

    fn attributes(&self, _: impl FnMut(Option<&str>, &str, &str)) -> Result<(), DocumentError> {
        Ok(())
    }
}

/// An open object or array.
#[derive(Debug, Clone, Copy)]
enum Container {
    Object,
    /// The index of its next item.
    Array(u64),
}

/// A JSON document translated as its bytes arrive (see [`super::Translator`]).
pub(super) struct JsonTranslator<'e> {
    run: Run<'e, Json>,
    parser: LowLevelJsonParser,
    /// Bytes received and not parsed yet: the start of a token cut by a chunk's end.
    window: Vec<u8>,
    /// Position of `window[0]` in the document.
    window_start: u64,
    containers: Vec<Container>,
    /// The key of the member whose value comes next, or an item's index: the name of the
    /// element that value starts.
    name: String,
    ended: bool,
}

impl std::fmt::Debug for JsonTranslator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonTranslator")
            .field("run", &self.run)
            .field("position", &self.position())
            .field("containers", &self.containers)
            .finish_non_exhaustive()
    }
}

impl<'e> JsonTranslator<'e> {
    pub(super) fn new(engine: &'e Engine, mut scratch: Scratch) -> JsonTranslator<'e> {
        let mut window = std::mem::take(&mut scratch.window);
        window.reuse();
        // The parser's own stack is bounded too: the run refuses deeper documents first.
        let depth = engine.mapping.limits.max_depth.saturating_add(2);
        JsonTranslator {
            run: Run::new(engine, Json, scratch),
            parser: LowLevelJsonParser::new().with_max_stack_size(depth),
            window,
            window_start: 0,
            containers: Vec::new(),
            name: String::new(),
            ended: false,
        }
    }

    pub(super) fn position(&self) -> u64 {
        self.window_start + self.window.len() as u64
    }

    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<(), DocumentError> {
        if self.window.is_empty() {
            // Parsed straight from the chunk; only a cut token's bytes are copied.
            let used = self.parse(bytes, false)?;
            self.window.extend_from_slice(&bytes[used..]);
            self.window_start += used as u64;
            return Ok(());
        }
        self.window.extend_from_slice(bytes);
        let window = std::mem::take(&mut self.window);
        let used = self.parse(&window, false);
        self.window = window;
        let used = used?;
        self.window.drain(..used);
        self.window_start += used as u64;
        Ok(())
    }

    pub(super) fn finish_keep(mut self) -> (Result<Translation, DocumentError>, Scratch) {
        let window = std::mem::take(&mut self.window);
        let result = self.parse(&window, true).and_then(|used| {
            let end = self.window_start + used as u64;
            if !self.ended {
                return Err(malformed_json(end, "the document ends early: truncated?"));
            }
            self.run.check_end(end)?;
            Ok(self.run.finish())
        });
        self.window = window;
        (result, self.into_scratch())
    }

    pub(super) fn into_scratch(self) -> Scratch {
        let mut scratch = self.run.into_scratch();
        scratch.window = self.window;
        scratch
    }

    /// Parses the complete tokens of `input`, which starts at `window_start`; all of them
    /// when `last`. Returns the bytes used.
    fn parse(&mut self, input: &[u8], last: bool) -> Result<usize, DocumentError> {
        let mut used = 0usize;
        loop {
            let r = self.parser.parse_next(&input[used..], last);
            let at = self.window_start + used as u64;
            used += r.consumed_bytes;
            match r.event {
                None => return Ok(used),
                Some(Ok(JsonEvent::Eof)) => {
                    self.ended = true;
                    return Ok(used);
                }
                Some(Ok(ev)) => self.event(ev, at)?,
                Some(Err(e)) => {
                    let at = e.location().start.offset;
                    // Every byte was offered before the end without an error: what fails
                    // only at the end is a value or container the document left open.
                    if last {
                        return Err(malformed_json(
                            at,
                            format!("the document ends early: truncated? ({})", e.message()),
                        ));
                    }
                    return Err(malformed_json(at, e.message()));
                }
            }
        }
    }

    /// One event, whose token starts at or after byte `pos`.
    fn event(&mut self, ev: JsonEvent<'_>, pos: u64) -> Result<(), DocumentError> {
        let value = match ev {
            JsonEvent::ObjectKey(k) => {
                self.name.clear();
                self.name.push_str(&k);
                return Ok(());
            }
            JsonEvent::EndObject | JsonEvent::EndArray => {
                self.containers.pop();
                self.run.end_top();
                return Ok(());
            }
            JsonEvent::Eof => return Ok(()),
            v => v,
        };
        // A value starts: its element is named by its key or index.
        match self.containers.last_mut() {
            None => self.run.start_root(),
            Some(Container::Array(next)) => {
                self.name.clear();
                push_index(&mut self.name, *next);
                *next += 1;
                if !matches!(value, JsonEvent::Null) {
                    self.run.start(&Key(&self.name), pos)?;
                }
            }
            Some(Container::Object) => {
                if !matches!(value, JsonEvent::Null) {
                    self.run.start(&Key(&self.name), pos)?;
                }
            }
        }
        let text: &str = match &value {
            JsonEvent::StartObject => {
                self.containers.push(Container::Object);
                return Ok(());
            }
            JsonEvent::StartArray => {
                self.containers.push(Container::Array(0));
                return Ok(());
            }
            JsonEvent::String(s) | JsonEvent::Number(s) => s,
            JsonEvent::Boolean(true) => "true",
            JsonEvent::Boolean(false) => "false",
            // Absent, unless it is the whole document (a root without text).
            JsonEvent::Null if !self.containers.is_empty() => return Ok(()),
            _ => "",
        };
        if !text.is_empty() {
            if self.run.needs_text() {
                self.run.text(text, pos)?;
            } else {
                self.run.skip_text(text.len());
            }
        }
        self.run.end_top();
        Ok(())
    }
}

/// Appends `n` in decimal: an item's index, the name of its element (formatting machinery
/// costs more than the rest of reading a small item).
fn push_index(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn indexes_are_written_in_decimal() {
        for n in [0, 7, 10, 99, 1234567, u64::MAX] {
            let mut s = String::from("x");
            s.clear();
            super::push_index(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }
}
