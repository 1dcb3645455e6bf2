//! An XML document fed to quick-xml as its bytes arrive: the [`XmlTranslator`] and its window.

use quick_xml::Reader;
use quick_xml::events::Event;
use quick_xml::name::NamespaceResolver;

use super::plan::Engine;
use super::report::{DocumentError, Translation, malformed};
use super::reuse::Reuse;
use super::run::{Run, Scratch};
use super::xml::{Xml, event_with};

/// How much of the document is parsed at a time (at least).
pub(super) const WINDOW: usize = 64 * 1024;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// An XML document translated as its bytes arrive ([`XmlTranslator::feed`]), so a fetch
/// translates the body chunk by chunk where it receives it. The bytes collect in a window of
/// at least [`WINDOW`] bytes that quick-xml parses in place (no copy of each event, as its
/// buffered reader makes); an event cut by the window's end is parsed again from its start
/// once more bytes are in. The window only grows to hold one event, so memory does not follow
/// the document.
#[derive(Debug)]
pub(super) struct XmlTranslator<'e> {
    run: Run<'e, Xml>,
    window: Vec<u8>,
    /// Position of `window[0]` in the document.
    window_start: u64,
    /// Parse once the window holds this much.
    parse_at: usize,
    min_window: usize,
    /// The longest one event (a tag, a text node) may be: the window holds an event whole, so
    /// a longer one refuses the document rather than take its size in memory.
    max_event: usize,
    /// The bindings in scope, when the mapping uses namespaces.
    namespaces: Option<NamespaceResolver>,
}

impl<'e> XmlTranslator<'e> {
    pub(super) fn with_window(
        engine: &'e Engine,
        mut scratch: Scratch,
        min_window: usize,
    ) -> XmlTranslator<'e> {
        let mut window = std::mem::take(&mut scratch.window);
        window.reuse();
        window.reserve(2 * min_window);
        XmlTranslator {
            run: Run::new(engine, Xml, scratch),
            window,
            window_start: 0,
            parse_at: min_window,
            min_window,
            max_event: usize::try_from(engine.mapping.limits.max_record_bytes)
                .unwrap_or(usize::MAX)
                .max(min_window),
            namespaces: engine
                .mapping
                .needs_namespaces
                .then(NamespaceResolver::default),
        }
    }

    /// Bytes received so far.
    pub(super) fn position(&self) -> u64 {
        self.window_start + self.window.len() as u64
    }

    /// The next bytes of the document. An error refuses the document: feed no more.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<(), DocumentError> {
        self.window.extend_from_slice(bytes);
        if self.window.len() >= self.parse_at {
            self.parse(false)?;
        }
        Ok(())
    }

    /// The document has ended: the rest is parsed and the translation made; and the buffers
    /// for the next document.
    pub(super) fn finish_keep(mut self) -> (Result<Translation, DocumentError>, Scratch) {
        let result = self.parse(true).and_then(|()| {
            let end = self.position();
            self.run.check_end(end)?;
            Ok(self.run.finish())
        });
        (result, self.into_scratch())
    }

    /// The buffers for the next document, when this one is abandoned.
    pub(super) fn into_scratch(self) -> Scratch {
        let mut scratch = self.run.into_scratch();
        scratch.window = self.window;
        scratch
    }

    /// Parses the window's complete events (all of them when `last`) and drops them.
    fn parse(&mut self, last: bool) -> Result<(), DocumentError> {
        let win = &self.window[..];
        let base = self.window_start;
        // quick-xml drops a byte order mark at the start of what it is given: right at the
        // document's start; anywhere else U+FEFF is text.
        let mut skip = 0;
        if win.starts_with(UTF8_BOM) {
            skip = UTF8_BOM.len();
            if base > 0 {
                self.run.text("\u{FEFF}", base)?;
            }
        }
        let view = &win[skip..];
        let mut reader = Reader::from_reader(view);
        configure(reader.config_mut());
        // What this window's events used up, from `view`'s start.
        let mut used = 0usize;
        loop {
            let pos = reader.buffer_position() as usize;
            let at = base + (skip + pos) as u64;
            match reader.read_event() {
                Ok(Event::Eof) => {
                    used = view.len();
                    break;
                }
                // A text that runs to the window's end may go on past it.
                Ok(Event::Text(_)) if !last && reader.buffer_position() as usize == view.len() => {
                    break;
                }
                Ok(_) if reader.buffer_position() as usize - pos > self.max_event => {
                    return Err(too_long(at, self.max_event));
                }
                Ok(ev) => {
                    event_with(&mut self.run, self.namespaces.as_mut(), ev, at)?;
                    used = reader.buffer_position() as usize;
                }
                Err(e) if !last && cut_by_window(&e, view, pos) => break,
                // Reported where the event starts (quick-xml has no position for some errors,
                // such as bad UTF-8).
                Err(e) => return Err(malformed(at, e.to_string())),
            }
        }
        let used = skip + used;
        let left = self.window.len() - used;
        if used == 0 && left > self.max_event {
            return Err(too_long(base, self.max_event));
        }
        // The window must grow when one event fills all of it.
        self.parse_at = if used == 0 {
            self.min_window.max(2 * self.window.len())
        } else {
            self.min_window.max(2 * left)
        };
        self.window.drain(..used);
        self.window_start += used as u64;
        Ok(())
    }
}

fn too_long(at: u64, max: usize) -> DocumentError {
    malformed(
        at,
        format!("a tag or text node longer than max_record_bytes ({max} bytes)"),
    )
}

fn configure(c: &mut quick_xml::reader::Config) {
    // End-tag matching is done by the run so lenient mode can recover and errors name both
    // tags (and so a reader started on a later window accepts the end tags of elements opened
    // before it).
    c.check_end_names = false;
    c.allow_unmatched_ends = true;
    c.expand_empty_elements = false;
    c.trim_text(false);
}

/// Did parsing fail only because the window ends inside the event that starts at `start`?
/// quick-xml's "unclosed" errors mean exactly that; a reference or a text whose UTF-8 is cut
/// only when nothing ends it before the window does. Anything else is the document's fault.
fn cut_by_window(e: &quick_xml::Error, win: &[u8], start: usize) -> bool {
    use quick_xml::errors::{IllFormedError, SyntaxError};
    let rest = win.get(start..).unwrap_or_default();
    let open_ref = |rest: &[u8]| !rest.iter().skip(1).any(|b| matches!(b, b';' | b'&' | b'<'));
    match e {
        // `<!` with nothing after it yet.
        quick_xml::Error::Syntax(SyntaxError::InvalidBangMarkup) => rest.len() < 3,
        quick_xml::Error::Syntax(_) => true,
        quick_xml::Error::IllFormed(IllFormedError::UnclosedReference) => open_ref(rest),
        quick_xml::Error::Encoding(_) => match rest.first() {
            // A complete tag was validated: its bytes are at fault.
            Some(b'<') => false,
            Some(b'&') => open_ref(rest),
            _ => !rest.iter().any(|b| matches!(b, b'<' | b'&')),
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::engine::Engine;
    use crate::mapping::Mapping;

    fn translate(attr: usize) -> Result<u64, String> {
        let mapping = "rules:\n  - {name: v, help: V., type: gauge, path: /d/v, value: '@n'}\n";
        let engine = Engine::new(Mapping::parse(mapping, "test.yaml").expect("mapping"));
        let doc = format!("<d><v n=\"1\" pad=\"{}\"/></d>", "x".repeat(attr));
        engine
            .translate(doc.as_bytes())
            .map(|t| t.series)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn one_event_longer_than_the_cap_refuses_the_document() {
        // The cap is max_record_bytes (1 MiB by default), and never less than the window.
        assert_eq!(translate(super::WINDOW / 2), Ok(1));
        let err = translate(2 << 20).expect_err("a 2 MiB tag");
        assert!(err.contains("longer than max_record_bytes"), "{err}");
    }
}
