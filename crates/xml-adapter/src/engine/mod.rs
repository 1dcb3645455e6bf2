//! The streaming evaluator: one pass over quick-xml events, no DOM of the document.
//!
//! All rules' record paths are merged into one trie of steps. Every open element carries the
//! set of trie states it matched; an element whose set is empty (and whose parent has no `//`
//! state) costs only the well-formedness bookkeeping. When an element completes a record path,
//! only that element's subtree is captured (a small arena, capped by `max_record_bytes`) and the
//! rule's relative paths are evaluated against it when the element closes.
//!
//! The per-event and per-record work allocates nothing in the common case: names, attributes
//! and text live in buffers reused for the whole document, values are read as slices of them,
//! and a sample's label set is looked up by an encoded key built in a reused buffer (a new
//! series allocates its key once).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::BufRead;

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{NamespaceResolver, QName, ResolveResult};

use crate::encode::{Family, Kind, Sample, Suffix};
use crate::mapping::{DuplicatePolicy, MissingPolicy, Rule};
use crate::path::{AncestorSel, Axis, Leaf, NameTest, Operand, Predicate, RelPath};
use crate::transform::{self, Outcome};

mod plan;
mod report;
#[cfg(test)]
mod tests;

pub use plan::Engine;
use plan::Slot;
pub use report::{DocumentError, Reason, Translation, failure_families};
use report::{MAX_MESSAGES, REASONS, malformed};

impl Engine {
    /// Reads a whole document and translates it. Any error refuses the whole document.
    pub fn translate<R: BufRead>(&self, mut input: R) -> Result<Translation, DocumentError> {
        let mut t = Translator::new(self);
        loop {
            let chunk = match input.fill_buf() {
                Ok([]) => break,
                Ok(chunk) => chunk,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(DocumentError::Read {
                        position: t.position(),
                        source,
                    });
                }
            };
            let n = chunk.len();
            t.feed(chunk)?;
            input.consume(n);
        }
        t.finish()
    }
}

/// A document translated as its bytes arrive ([`Translator::feed`]), so a fetch translates
/// the body chunk by chunk where it receives it. The bytes collect in a window of at least
/// [`WINDOW`] bytes that quick-xml parses in place (no copy of each event, as its buffered
/// reader makes); an event cut by the window's end is parsed again from its start once more
/// bytes are in. The window only grows to hold one event, so memory does not follow the
/// document.
#[derive(Debug)]
pub struct Translator<'e> {
    run: Run<'e>,
    win: Vec<u8>,
    /// Position of `win[0]` in the document.
    base: u64,
    /// Parse once the window holds this much.
    target: usize,
    window: usize,
    /// The bindings in scope, when the mapping uses namespaces.
    ns: Option<NamespaceResolver>,
}

impl<'e> Translator<'e> {
    pub fn new(engine: &'e Engine) -> Translator<'e> {
        Translator::with_scratch(engine, Scratch::default())
    }

    /// A translator on the buffers an earlier one left ([`Translator::finish_keep`]).
    pub fn with_scratch(engine: &'e Engine, scratch: Scratch) -> Translator<'e> {
        Translator::with_window(engine, scratch, WINDOW)
    }

    fn with_window(engine: &'e Engine, scratch: Scratch, window: usize) -> Translator<'e> {
        let (run, mut win) = Run::new(engine, scratch);
        win.reserve(2 * window);
        Translator {
            run,
            win,
            base: 0,
            target: window,
            window,
            ns: engine
                .mapping
                .needs_namespaces
                .then(NamespaceResolver::default),
        }
    }

    /// Bytes received so far.
    pub fn position(&self) -> u64 {
        self.base + self.win.len() as u64
    }

    /// The next bytes of the document. An error refuses the document: feed no more.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), DocumentError> {
        self.win.extend_from_slice(bytes);
        if self.win.len() >= self.target {
            self.parse(false)?;
        }
        Ok(())
    }

    /// The document has ended: the rest is parsed and the translation made.
    pub fn finish(self) -> Result<Translation, DocumentError> {
        self.finish_keep().0
    }

    /// [`Translator::finish`], and the buffers for the next document.
    pub fn finish_keep(mut self) -> (Result<Translation, DocumentError>, Scratch) {
        let result = self.parse(true).and_then(|()| {
            let end = self.position();
            self.run.check_end(end)?;
            Ok(self.run.finish())
        });
        (result, self.into_scratch())
    }

    /// The buffers for the next document, when this one is abandoned.
    pub fn into_scratch(self) -> Scratch {
        self.run.into_scratch(self.win)
    }

    /// Parses the window's complete events (all of them when `last`) and drops them.
    fn parse(&mut self, last: bool) -> Result<(), DocumentError> {
        let win = &self.win[..];
        let base = self.base;
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
                Ok(ev) => {
                    event_with(&mut self.run, self.ns.as_mut(), ev, at)?;
                    used = reader.buffer_position() as usize;
                }
                Err(e) if !last && cut_by_window(&e, view, pos) => break,
                // Reported where the event starts (quick-xml has no position for some errors,
                // such as bad UTF-8).
                Err(e) => return Err(malformed(at, e.to_string())),
            }
        }
        let used = skip + used;
        let left = self.win.len() - used;
        // The window must grow when one event fills all of it.
        self.target = if used == 0 {
            self.window.max(2 * self.win.len())
        } else {
            self.window.max(2 * left)
        };
        self.win.drain(..used);
        self.base += used as u64;
        Ok(())
    }
}

/// One event, with the namespace scopes kept as quick-xml's `NsReader` keeps them: a start
/// tag's bindings are in scope for it and its content, an end tag's until it is handled.
fn event_with(
    run: &mut Run<'_>,
    ns: Option<&mut NamespaceResolver>,
    ev: Event<'_>,
    at: u64,
) -> Result<(), DocumentError> {
    let Some(ns) = ns else {
        return run.event(&NoNamespaces, ev, at);
    };
    let scope = |r: Result<(), quick_xml::name::NamespaceError>| {
        r.map_err(|e| malformed(at, format!("namespace declaration: {e}")))
    };
    match ev {
        Event::Start(e) => {
            scope(ns.push(&e))?;
            run.event(ns, Event::Start(e), at)
        }
        Event::Empty(e) => {
            scope(ns.push(&e))?;
            let r = run.event(ns, Event::Empty(e), at);
            ns.pop();
            r
        }
        Event::End(e) => {
            let r = run.event(ns, Event::End(e), at);
            ns.pop();
            r
        }
        ev => run.event(ns, ev, at),
    }
}

/// The local part of a qualified name (after the first `:`, as quick-xml splits it).
fn local_part(q: &str) -> &str {
    match q.bytes().position(|b| b == b':') {
        Some(i) => &q[i + 1..],
        None => q,
    }
}

/// Appends one (name, value) pair to a series key. Lengths make the encoding unambiguous.
fn key_push(key: &mut Vec<u8>, name: &str, value: &str) {
    key.extend_from_slice(&(name.len() as u64).to_le_bytes());
    key.extend_from_slice(name.as_bytes());
    key.extend_from_slice(&(value.len() as u64).to_le_bytes());
    key.extend_from_slice(value.as_bytes());
}

/// The label pairs of a series key, in key order (sorted by name).
fn key_decode(mut key: &[u8]) -> Vec<(String, String)> {
    fn take<'k>(key: &mut &'k [u8]) -> &'k [u8] {
        let (len, rest) = key.split_at_checked(8).unwrap_or((&[], &[]));
        let len = <[u8; 8]>::try_from(len).map_or(0, u64::from_le_bytes) as usize;
        let (s, rest) = rest.split_at_checked(len).unwrap_or((rest, &[]));
        *key = rest;
        s
    }
    let mut out = Vec::new();
    while !key.is_empty() {
        // Keys are built from `&str`s: the bytes are UTF-8.
        let k = String::from_utf8_lossy(take(&mut key)).into_owned();
        let v = String::from_utf8_lossy(take(&mut key)).into_owned();
        out.push((k, v));
    }
    out
}

const NONE: usize = usize::MAX;

/// A node of a captured record subtree. Names, values and text live in the run's shared
/// buffers (no allocation per node): ranges into `Run::abuf`, `Run::cattrs`, `Run::segs`.
#[derive(Debug)]
struct CNode {
    qname: (usize, usize),
    local_at: usize,
    uri: Option<usize>,
    attrs: (usize, usize),
    first_child: usize,
    last_child: usize,
    next_sibling: usize,
    /// Text segments of this node and its descendants, in document order.
    segs: (usize, usize),
}

#[derive(Debug)]
struct CAttr {
    uri: Option<usize>,
    local: (usize, usize),
    value: (usize, usize),
}

#[derive(Debug)]
struct Frame {
    tag_start: usize,
    tag_len: usize,
    name_len: usize,
    states_start: usize,
    states_end: usize,
    capture: Option<usize>,
    /// Capture-plan states (`Engine::need`) of this element: a range of `Run::cstates`.
    cstates: (usize, usize),
    /// Text inside this element is kept (a path reads it).
    text_on: bool,
    /// This element may be a captured leaf child: its text collects in `Run::leaf_buf`
    /// (only the innermost open element can be a leaf, so one buffer serves).
    leaf: bool,
    has_child: bool,
}

#[derive(Debug)]
struct OpenRecord {
    depth: usize,
    node: usize,
    /// The rules this record is for: a range of `Run::record_rules`.
    rules: (usize, usize),
}

/// A sample before families are finalised: which rule made it (for its duplicate policy).
#[derive(Debug, Clone, Copy)]
struct Pending {
    rule: usize,
    value: f64,
    /// Records that gave this series (more than one: the duplicate policy applies).
    count: u64,
    /// The document that gave it: a table outlives a document (see [`Scratch`]), and a series
    /// last seen in an earlier one is new in this one.
    generation: u64,
}

/// One family's series so far, by key. Consecutive records often give the same series (a
/// counter per task state, say): the last key found is remembered, which spares its hashing.
#[derive(Debug, Default)]
struct SeriesTable {
    index: HashMap<Box<[u8]>, usize>,
    entries: Vec<Pending>,
    last_key: Vec<u8>,
    last: Option<usize>,
    /// Entries of the current document.
    live: usize,
}

/// What a translation leaves for the next one: a fetcher translates one document at a time,
/// and the next finds its buffers grown and the series it shares with the last one keyed
/// already (no allocation for either). Series no longer seen are dropped once they outnumber
/// the live ones; buffers that grew past [`KEEP_BYTES`] for one large document are not kept.
#[derive(Debug, Default)]
pub struct Scratch {
    generation: u64,
    win: Vec<u8>,
    tags: String,
    frames: Vec<Frame>,
    states: Vec<(u32, bool)>,
    cstates: Vec<usize>,
    arena: Vec<CNode>,
    abuf: String,
    cattrs: Vec<CAttr>,
    segs: Vec<(usize, usize)>,
    records_open: Vec<OpenRecord>,
    record_rules: Vec<usize>,
    sattrs: Vec<CAttr>,
    sbuf: String,
    vbuf: String,
    vranges: Vec<(usize, usize)>,
    key: Vec<u8>,
    leaf_buf: String,
    pending: Vec<SeriesTable>,
}

/// Buffers larger than this are freed after a document rather than kept.
const KEEP_BYTES: usize = 1 << 20;

fn kept<T>(mut v: Vec<T>) -> Vec<T> {
    if v.capacity() * std::mem::size_of::<T>() > KEEP_BYTES {
        return Vec::new();
    }
    v.clear();
    v
}

fn kept_string(mut s: String) -> String {
    if s.capacity() > KEEP_BYTES {
        return String::new();
    }
    s.clear();
    s
}

/// Per family: label set -> (rule, (upper bound, count) per bucket record).
type HistogramGroups = HashMap<Vec<(String, String)>, (usize, Vec<(f64, f64)>)>;

#[derive(Debug)]
struct Run<'e> {
    engine: &'e Engine,
    tags: String,
    frames: Vec<Frame>,
    states: Vec<(u32, bool)>,
    cstates: Vec<usize>,
    arena: Vec<CNode>,
    abuf: String,
    cattrs: Vec<CAttr>,
    segs: Vec<(usize, usize)>,
    uris: Vec<String>,
    arena_bytes: u64,
    arena_overflow: bool,
    records_open: Vec<OpenRecord>,
    /// Rules of the open records (a stack, ranges in `OpenRecord::rules`).
    record_rules: Vec<usize>,
    /// The current start tag's attributes, parsed once when a predicate or a capture needs
    /// them: ranges into `sbuf`.
    sattrs: Vec<CAttr>,
    sbuf: String,
    sattrs_ready: bool,
    /// Scratch for one record's label values and value (ranges in `vranges`).
    vbuf: String,
    vranges: Vec<(usize, usize)>,
    /// Scratch for the key of the series being folded in.
    key: Vec<u8>,
    /// (parent depth, child local name, text) of captured leaf children of open elements.
    child_caps: Vec<(usize, String, String)>,
    leaf_buf: String,
    /// Per family: series key -> value so far. Duplicates fold in as they come, so memory
    /// follows the number of series, not of records.
    pending: Vec<SeriesTable>,
    pending_series: u64,
    /// Histogram buckets per family: labels -> (bound -> value).
    hist: Vec<HistogramGroups>,
    /// Per rule, per reason: dropped samples (turned into `Translation::rule_issues`).
    issues: Vec<[u64; REASONS.len()]>,
    out: Translation,
    root_seen: bool,
    root_closed: bool,
    generation: u64,
}

/// Namespace resolution for the current event: none unless the mapping uses namespaces (the
/// namespace-aware reader inspects every start tag's attributes, which costs throughput for
/// nothing).
trait Names {
    fn element_uri(&self, q: QName<'_>) -> Option<String>;
    fn attribute<'n>(&self, q: QName<'n>) -> (Option<String>, &'n str);
}

struct NoNamespaces;

impl Names for NoNamespaces {
    fn element_uri(&self, _: QName<'_>) -> Option<String> {
        None
    }
    fn attribute<'n>(&self, q: QName<'n>) -> (Option<String>, &'n str) {
        (None, q.local_name().into_inner())
    }
}

impl Names for NamespaceResolver {
    fn element_uri(&self, q: QName<'_>) -> Option<String> {
        resolve_uri(self.resolve_element(q).0)
    }
    fn attribute<'n>(&self, q: QName<'n>) -> (Option<String>, &'n str) {
        let (res, local) = self.resolve_attribute(q);
        (resolve_uri(res), local.into_inner())
    }
}

fn resolve_uri(r: ResolveResult<'_>) -> Option<String> {
    match r {
        ResolveResult::Bound(ns) => Some(ns.0.to_string()),
        _ => None,
    }
}

fn configure(c: &mut quick_xml::reader::Config) {
    // End-tag matching is done here so lenient mode can recover and errors name both tags
    // (and so a reader started on a later window accepts the end tags of elements opened
    // before it).
    c.check_end_names = false;
    c.allow_unmatched_ends = true;
    c.expand_empty_elements = false;
    c.trim_text(false);
}

/// How much of the document is parsed at a time (at least).
const WINDOW: usize = 64 * 1024;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

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

/// The five entities XML predefines; anything else would need a DTD, which is never read.
fn predefined_entity(name: &str) -> Option<&'static str> {
    Some(match name {
        "amp" => "&",
        "lt" => "<",
        "gt" => ">",
        "quot" => "\"",
        "apos" => "'",
        _ => return None,
    })
}

impl<'e> Run<'e> {
    /// A run on the buffers of `s` (emptied; see [`Scratch`]); the window is returned apart.
    fn new(engine: &'e Engine, s: Scratch) -> (Run<'e>, Vec<u8>) {
        let n = engine.mapping.families.len();
        let mut pending = s.pending;
        pending.resize_with(n, SeriesTable::default);
        pending.truncate(n);
        for t in &mut pending {
            t.live = 0;
            t.last = None;
        }
        let mut states = kept(s.states);
        states.push((0, false));
        let run = Run {
            engine,
            tags: kept_string(s.tags),
            frames: kept(s.frames),
            states,
            cstates: kept(s.cstates),
            arena: kept(s.arena),
            abuf: kept_string(s.abuf),
            cattrs: kept(s.cattrs),
            segs: kept(s.segs),
            uris: Vec::new(),
            arena_bytes: 0,
            arena_overflow: false,
            records_open: kept(s.records_open),
            record_rules: kept(s.record_rules),
            sattrs: kept(s.sattrs),
            sbuf: kept_string(s.sbuf),
            sattrs_ready: false,
            vbuf: kept_string(s.vbuf),
            vranges: kept(s.vranges),
            key: kept(s.key),
            child_caps: Vec::new(),
            leaf_buf: kept_string(s.leaf_buf),
            pending,
            pending_series: 0,
            hist: (0..n).map(|_| HashMap::new()).collect(),
            issues: vec![[0; REASONS.len()]; engine.mapping.rules.len()],
            out: Translation::default(),
            root_seen: false,
            root_closed: false,
            generation: s.generation + 1,
        };
        (run, kept(s.win))
    }

    /// The buffers back, for the next document.
    fn into_scratch(self, win: Vec<u8>) -> Scratch {
        let mut pending = self.pending;
        for t in &mut pending {
            // Series of earlier documents are kept while they are few.
            if t.index.len() > 2 * t.live + 64 {
                t.index.clear();
                t.entries.clear();
                t.last = None;
            }
        }
        Scratch {
            generation: self.generation,
            win,
            tags: self.tags,
            frames: self.frames,
            states: self.states,
            cstates: self.cstates,
            arena: self.arena,
            abuf: self.abuf,
            cattrs: self.cattrs,
            segs: self.segs,
            records_open: self.records_open,
            record_rules: self.record_rules,
            sattrs: self.sattrs,
            sbuf: self.sbuf,
            vbuf: self.vbuf,
            vranges: self.vranges,
            key: self.key,
            leaf_buf: self.leaf_buf,
            pending,
        }
    }

    fn issue(&mut self, rule: usize, reason: Reason, message: impl FnOnce() -> String) {
        self.issues[rule][reason.index()] += 1;
        if reason.is_error() && self.out.messages.len() < MAX_MESSAGES {
            let m = message();
            let name = &self.engine.mapping.rules[rule].name;
            self.out.messages.push(format!("rule `{name}`: {m}"));
        }
    }

    /// Does text inside the innermost open element matter to anyone?
    fn wants_text(&self) -> bool {
        self.frames.last().is_some_and(|f| f.text_on || f.leaf)
    }

    /// The checks once the document has ended at byte `end`.
    fn check_end(&mut self, end: u64) -> Result<(), DocumentError> {
        self.out.bytes = end;
        if let Some(f) = self.frames.last() {
            let name = &self.tags[f.tag_start..f.tag_start + f.name_len];
            return Err(malformed(
                end,
                format!(
                    "document ends with {} element(s) still open (innermost <{name}>): truncated?",
                    self.frames.len()
                ),
            ));
        }
        if !self.root_seen {
            return Err(malformed(end, "no root element"));
        }
        Ok(())
    }

    /// One event (anything but `Eof`), at byte `pos` of the document.
    fn event<N: Names>(&mut self, names: &N, ev: Event<'_>, pos: u64) -> Result<(), DocumentError> {
        match ev {
            Event::Start(e) => self.start(names, &e, pos)?,
            Event::Empty(e) => {
                self.start(names, &e, pos)?;
                self.end(e.name(), pos)?;
            }
            Event::End(e) => self.end(e.name(), pos)?,
            // Text nobody reads is not copied or normalised; outside the root it must be
            // whitespace (line ends do not matter for that).
            Event::Text(t) => {
                if !self.frames.is_empty() && !self.wants_text() {
                    if !self.records_open.is_empty() {
                        self.count_record_text(t.len());
                    }
                } else {
                    // Short texts without `\r` need no line-end normalisation; a byte loop
                    // decides that faster than a library call.
                    let raw: &str = &t;
                    if raw.len() <= 64 && !raw.bytes().any(|b| b == b'\r') {
                        self.text(raw, pos)?;
                    } else {
                        self.text(&t.xml10_content(), pos)?;
                    }
                }
            }
            Event::CData(t) => {
                if !self.frames.is_empty() && !self.wants_text() {
                    if !self.records_open.is_empty() {
                        self.count_record_text(t.len());
                    }
                } else {
                    self.text(&t.xml10_content(), pos)?;
                }
            }
            Event::GeneralRef(r) => {
                // Checked even where nobody reads the text: an undefined entity is an error.
                let mut utf8 = [0u8; 4];
                let text: &str = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.encode_utf8(&mut utf8),
                    Ok(None) => match predefined_entity(&r) {
                        Some(s) => s,
                        None => {
                            return Err(malformed(
                                pos,
                                format!(
                                    "undefined entity `&{};` (entities from a DTD are never expanded)",
                                    &*r
                                ),
                            ));
                        }
                    },
                    Err(e) => return Err(malformed(pos, e.to_string())),
                };
                self.text(text, pos)?;
            }
            Event::Decl(d) => {
                // Documented leniency: passenger-status prints a second declaration, and
                // some servers print a comment first. Only the encoding matters here.
                if let Some(Ok(enc)) = d.encoding() {
                    let e = enc.to_ascii_lowercase().replace('_', "-");
                    let ok = matches!(
                        e.as_str(),
                        "utf-8"
                            | "utf8"
                            | "us-ascii"
                            | "ascii"
                            | "iso-8859-1"
                            | "iso8859-1"
                            | "latin1"
                            | "latin-1"
                    );
                    if !ok {
                        return Err(malformed(
                            pos,
                            format!(
                                "unsupported encoding `{enc}` (UTF-8 and ASCII-compatible text only)"
                            ),
                        ));
                    }
                }
                if self.root_seen {
                    return Err(malformed(pos, "XML declaration after the root element"));
                }
            }
            Event::DocType(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => {}
        }
        Ok(())
    }

    /// Parses the current start tag's attributes into `sattrs` (once per tag), checked: a
    /// broken or repeated attribute on an element the mapping looks at refuses the document.
    fn parse_attrs<N: Names>(
        &mut self,
        names: &N,
        e: &BytesStart<'_>,
        pos: u64,
    ) -> Result<(), DocumentError> {
        if self.sattrs_ready {
            return Ok(());
        }
        self.sattrs_ready = true;
        self.sattrs.clear();
        self.sbuf.clear();
        if e.attributes_raw().trim_ascii().is_empty() {
            return Ok(());
        }
        let qname = e.name();
        // Repeated names are checked here: quick-xml's own check allocates for every tag.
        let mut keys: [&str; 16] = [""; 16];
        let mut n = 0usize;
        let mut many: Option<std::collections::HashSet<&str>> = None;
        for a in e.attributes().with_checks(false) {
            let a =
                a.map_err(|err| malformed(pos, format!("bad attribute in <{}>: {err}", qname.0)))?;
            let key = a.key.0;
            let repeated = match &mut many {
                Some(set) => !set.insert(key),
                None if n < keys.len() => {
                    let r = keys[..n].contains(&key);
                    keys[n] = key;
                    n += 1;
                    r
                }
                None => {
                    let mut set: std::collections::HashSet<&str> = keys.iter().copied().collect();
                    let r = !set.insert(key);
                    many = Some(set);
                    r
                }
            };
            if repeated {
                return Err(malformed(
                    pos,
                    format!("bad attribute in <{}>: `{key}` appears twice", qname.0),
                ));
            }
            let v = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|err| {
                    malformed(pos, format!("attribute value in <{}>: {err}", qname.0))
                })?;
            let (auri, alocal) = names.attribute(a.key);
            let auri = auri.map(|u| self.intern(&u));
            let l0 = self.sbuf.len();
            self.sbuf.push_str(alocal);
            let l1 = self.sbuf.len();
            self.sbuf.push_str(&v);
            let v1 = self.sbuf.len();
            self.sattrs.push(CAttr {
                uri: auri,
                local: (l0, l1),
                value: (l1, v1),
            });
        }
        Ok(())
    }

    /// A predicate decided from the start tag (content predicates wait for the record's end).
    fn start_predicate<N: Names>(
        &mut self,
        p: &Predicate,
        names: &N,
        e: &BytesStart<'_>,
        pos: u64,
        local: &str,
    ) -> Result<bool, DocumentError> {
        let qname = e.name();
        let value: Option<&str> = match &p.operand {
            Operand::Name => Some(qname.0),
            Operand::LocalName => Some(local),
            Operand::Attr(test) => {
                self.parse_attrs(names, e, pos)?;
                self.sattrs
                    .iter()
                    .find(|a| {
                        test.matches(
                            a.uri.map(|i| self.uris[i].as_str()),
                            &self.sbuf[a.local.0..a.local.1],
                        )
                    })
                    .map(|a| &self.sbuf[a.value.0..a.value.1])
            }
            // Content predicates were moved to the rule's record filter at load.
            Operand::Child(_) | Operand::Text => return Ok(true),
        };
        Ok(p.test(value))
    }

    fn start<N: Names>(
        &mut self,
        names: &N,
        e: &BytesStart<'_>,
        pos: u64,
    ) -> Result<(), DocumentError> {
        let engine = self.engine;
        let depth = self.frames.len();
        if depth == 0 {
            if self.root_closed && !engine.mapping.lenient {
                return Err(malformed(
                    pos,
                    "a second root element (only one is allowed)",
                ));
            }
            self.root_seen = true;
        }
        if depth >= engine.mapping.limits.max_depth {
            return Err(malformed(
                pos,
                format!(
                    "elements nested deeper than max_depth {}",
                    engine.mapping.limits.max_depth
                ),
            ));
        }
        let needs_ns = engine.mapping.needs_namespaces;
        let qname = e.name();
        let local = local_part(qname.0);
        let uri = if needs_ns {
            names.element_uri(qname)
        } else {
            None
        };
        self.sattrs_ready = false;
        if let Some(parent) = self.frames.last_mut() {
            parent.has_child = true;
            parent.leaf = false;
        }
        // Trie states for this element, and the rules whose record it is.
        let (ps, pe) = match self.frames.last() {
            Some(f) => (f.states_start, f.states_end),
            None => (0, 1),
        };
        let states_start = self.states.len();
        let rules_start = self.record_rules.len();
        for i in ps..pe {
            let (node, carried) = self.states[i];
            let n = &engine.nodes[node as usize];
            for edge in &n.edges {
                if carried && edge.axis == Axis::Child {
                    continue;
                }
                if !edge.test.matches(uri.as_deref(), local) {
                    continue;
                }
                let mut pass = true;
                for p in &edge.preds {
                    if !self.start_predicate(p, names, e, pos, local)? {
                        pass = false;
                        break;
                    }
                }
                if !pass {
                    continue;
                }
                let target = &engine.nodes[edge.target];
                // A state with nowhere to go is not kept for the children (duplicate rules
                // are removed below).
                let st = (edge.target as u32, false);
                if target.edges.is_empty() {
                    self.record_rules.extend_from_slice(&target.rules);
                } else if !self.states[states_start..].contains(&st) {
                    self.states.push(st);
                    self.record_rules.extend_from_slice(&target.rules);
                }
            }
            if n.has_descendant_edge {
                let st = (node, true);
                if !self.states[states_start..].contains(&st) {
                    self.states.push(st);
                }
            }
        }
        let states_end = self.states.len();
        let is_record = self.record_rules.len() > rules_start;

        // Capture plan: what the open records' paths can still read below this element.
        let parent = self.frames.last();
        let parent_capture = parent.and_then(|f| f.capture);
        let mut text_on = parent.is_some_and(|f| f.text_on);
        let cs_start = self.cstates.len();
        if let Some(f) = parent
            && f.capture.is_some()
        {
            for k in f.cstates.0..f.cstates.1 {
                for (test, target) in &engine.need[self.cstates[k]].edges {
                    if test.matches(uri.as_deref(), local)
                        && !self.cstates[cs_start..].contains(target)
                    {
                        self.cstates.push(*target);
                        text_on |= engine.need[*target].text;
                    }
                }
            }
        }
        if is_record {
            for k in rules_start..self.record_rules.len() {
                let root = engine.need_root[self.record_rules[k]];
                self.cstates.push(root);
                text_on |= engine.need[root].text;
            }
        }
        let cs_end = self.cstates.len();
        // The record size cap counts the whole subtree, captured or not.
        let in_record = is_record || !self.records_open.is_empty();
        if in_record {
            self.arena_bytes += e.len() as u64 + 64;
            if self.arena_bytes > engine.mapping.limits.max_record_bytes {
                self.arena_overflow = true;
            }
        }
        let mut capture = None;
        if cs_end > cs_start && !self.arena_overflow {
            self.parse_attrs(names, e, pos)?;
            let q0 = self.abuf.len();
            self.abuf.push_str(qname.0);
            let q1 = self.abuf.len();
            let a0 = self.cattrs.len();
            let node_uri = uri.as_deref().map(|u| self.intern(u));
            for a in &self.sattrs {
                let l0 = self.abuf.len();
                self.abuf.push_str(&self.sbuf[a.local.0..a.local.1]);
                let l1 = self.abuf.len();
                self.abuf.push_str(&self.sbuf[a.value.0..a.value.1]);
                let v1 = self.abuf.len();
                self.cattrs.push(CAttr {
                    uri: a.uri,
                    local: (l0, l1),
                    value: (l1, v1),
                });
            }
            let idx = self.arena.len();
            self.arena.push(CNode {
                qname: (q0, q1),
                local_at: q1 - local.len(),
                uri: node_uri,
                attrs: (a0, self.cattrs.len()),
                first_child: NONE,
                last_child: NONE,
                next_sibling: NONE,
                segs: (self.segs.len(), NONE),
            });
            if let Some(p) = parent_capture {
                match self.arena[p].last_child {
                    NONE => self.arena[p].first_child = idx,
                    last => self.arena[last].next_sibling = idx,
                }
                self.arena[p].last_child = idx;
            }
            capture = Some(idx);
        }
        if is_record {
            let rules = &mut self.record_rules[rules_start..];
            rules.sort_unstable();
            // Dedup the tail in place (a rule reached through two trie states runs once).
            let mut w = rules_start;
            for r in rules_start..self.record_rules.len() {
                if w == rules_start || self.record_rules[w - 1] != self.record_rules[r] {
                    self.record_rules[w] = self.record_rules[r];
                    w += 1;
                }
            }
            self.record_rules.truncate(w);
            // An overflowed arena still gets a record entry so the rules can count the drop.
            self.records_open.push(OpenRecord {
                depth,
                node: capture.unwrap_or(usize::MAX),
                rules: (rules_start, w),
            });
        }
        let leaf = !engine.captured_children.is_empty()
            && engine
                .captured_children
                .iter()
                .any(|t| t.matches(uri.as_deref(), local));
        if leaf {
            self.leaf_buf.clear();
        }
        // Ancestors' attributes are read only by records below them, which need trie states.
        let tag_start = self.tags.len();
        let tag: &str = if states_end > states_start {
            e
        } else {
            qname.0
        };
        self.tags.push_str(tag);
        self.frames.push(Frame {
            tag_start,
            tag_len: tag.len(),
            name_len: qname.0.len(),
            states_start,
            states_end,
            capture,
            cstates: (cs_start, cs_end),
            text_on,
            leaf,
            has_child: false,
        });
        Ok(())
    }

    fn text(&mut self, text: &str, pos: u64) -> Result<(), DocumentError> {
        let Some(f) = self.frames.last_mut() else {
            if text.trim().is_empty() {
                return Ok(());
            }
            return Err(malformed(pos, "text outside the root element"));
        };
        if f.leaf {
            self.leaf_buf.push_str(text);
        }
        let keep = f.text_on;
        if !self.records_open.is_empty() {
            self.count_record_text(text.len());
            if keep && !self.arena_overflow {
                let t0 = self.abuf.len();
                self.abuf.push_str(text);
                self.segs.push((t0, self.abuf.len()));
            }
        }
        Ok(())
    }

    /// Text inside an open record counts towards its size cap, kept or not.
    fn count_record_text(&mut self, len: usize) {
        self.arena_bytes += len as u64;
        if self.arena_bytes > self.engine.mapping.limits.max_record_bytes {
            self.arena_overflow = true;
        }
    }

    fn end(&mut self, name: QName<'_>, pos: u64) -> Result<(), DocumentError> {
        let name = name.0;
        loop {
            let Some(top) = self.frames.last() else {
                return Err(malformed(
                    pos,
                    format!("end tag </{name}> without a start tag"),
                ));
            };
            let top_name = &self.tags[top.tag_start..top.tag_start + top.name_len];
            if top_name == name {
                self.close_top();
                return Ok(());
            }
            let open_above = self
                .frames
                .iter()
                .any(|f| &self.tags[f.tag_start..f.tag_start + f.name_len] == name);
            if self.engine.mapping.lenient && open_above {
                // Lenient: the missing end tag of `top_name` is implied by its ancestor's.
                self.out.recovered += 1;
                self.close_top();
                continue;
            }
            return Err(malformed(
                pos,
                format!(
                    "expected </{top_name}>, found </{name}>{}",
                    if open_above {
                        " (a missing end tag: the mapping's `lenient: true` recovers these)"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }

    fn close_top(&mut self) {
        let depth = self.frames.len() - 1;
        if let Some(c) = self.frames.last().and_then(|f| f.capture) {
            self.arena[c].segs.1 = self.segs.len();
        }
        if self.records_open.last().is_some_and(|r| r.depth == depth)
            && let Some(rec) = self.records_open.pop()
        {
            // An overflowed arena holds a partial subtree: never evaluate it.
            let node = if self.arena_overflow {
                usize::MAX
            } else {
                rec.node
            };
            for k in rec.rules.0..rec.rules.1 {
                let ri = self.record_rules[k];
                self.eval_record(ri, node);
            }
            self.record_rules.truncate(rec.rules.0);
            if self.records_open.is_empty() {
                self.arena.clear();
                self.abuf.clear();
                self.cattrs.clear();
                self.segs.clear();
                self.arena_bytes = 0;
                self.arena_overflow = false;
            }
        }
        let Some(f) = self.frames.pop() else { return };
        // Children captured for ancestor references die with their parent.
        while self.child_caps.last().is_some_and(|c| c.0 >= depth) {
            self.child_caps.pop();
        }
        if f.leaf && !f.has_child && depth > 0 {
            let name = &self.tags[f.tag_start..f.tag_start + f.name_len];
            let local = name.rsplit(':').next().unwrap_or(name).to_string();
            self.child_caps
                .push((depth - 1, local, self.leaf_buf.clone()));
        }
        self.tags.truncate(f.tag_start);
        self.states.truncate(f.states_start);
        self.cstates.truncate(f.cstates.0);
        let _ = f.tag_len;
        if self.frames.is_empty() {
            self.root_closed = true;
        }
    }

    /// Appends the value of a relative path from a record to `out`. `false` when the path
    /// selects nothing (then nothing is appended).
    fn eval_rel_into(&self, node: usize, path: &RelPath, out: &mut String) -> bool {
        match path {
            RelPath::Down { steps, leaf } => {
                let mut cur = node;
                for (test, preds) in steps {
                    let next = self.children(cur).find(|&c| {
                        test.matches(self.curi(c), self.clocal(c))
                            && preds.iter().all(|p| self.node_predicate(c, p))
                    });
                    match next {
                        Some(c) => cur = c,
                        None => return false,
                    }
                }
                self.leaf_into(cur, leaf, out)
            }
            RelPath::Up { sel, child, leaf } => {
                let record_depth = self.frames.len() - 1;
                let depth = match sel {
                    AncestorSel::Up(n) => record_depth.checked_sub(*n),
                    AncestorSel::Named(test) => (0..record_depth).rev().find(|&d| {
                        let f = &self.frames[d];
                        let name = &self.tags[f.tag_start..f.tag_start + f.name_len];
                        test.matches(None, name.rsplit(':').next().unwrap_or(name))
                    }),
                };
                let Some(depth) = depth else { return false };
                if let Some(child) = child {
                    return match self
                        .child_caps
                        .iter()
                        .find(|(d, n, _)| *d == depth && child.matches(None, n))
                    {
                        Some((_, _, t)) => {
                            out.push_str(t);
                            true
                        }
                        None => false,
                    };
                }
                let f = &self.frames[depth];
                let tag = &self.tags[f.tag_start..f.tag_start + f.tag_len];
                let name = &tag[..f.name_len];
                match leaf {
                    Leaf::Name => out.push_str(name),
                    Leaf::LocalName => out.push_str(name.rsplit(':').next().unwrap_or(name)),
                    Leaf::Attr(test) => {
                        let start = BytesStart::from_content(tag, f.name_len);
                        let found = start.attributes().flatten().find_map(|a| {
                            test.matches(None, a.key.local_name().as_ref())
                                .then(|| {
                                    a.normalized_value(quick_xml::XmlVersion::Implicit1_0).ok()
                                })
                                .flatten()
                        });
                        match found {
                            Some(v) => out.push_str(&v),
                            None => return false,
                        }
                    }
                    // Text of an open ancestor is not complete yet: refused at load.
                    Leaf::Text => return false,
                }
                true
            }
        }
    }

    /// Value of a relative path from a record. `None` when the path selects nothing.
    fn eval_rel(&self, node: usize, path: &RelPath) -> Option<String> {
        let mut s = String::new();
        self.eval_rel_into(node, path, &mut s).then_some(s)
    }

    fn intern(&mut self, uri: &str) -> usize {
        match self.uris.iter().position(|u| u == uri) {
            Some(i) => i,
            None => {
                self.uris.push(uri.to_string());
                self.uris.len() - 1
            }
        }
    }

    fn cname(&self, n: usize) -> &str {
        let (a, b) = self.arena[n].qname;
        &self.abuf[a..b]
    }

    fn clocal(&self, n: usize) -> &str {
        &self.abuf[self.arena[n].local_at..self.arena[n].qname.1]
    }

    fn curi(&self, n: usize) -> Option<&str> {
        self.arena[n].uri.map(|i| self.uris[i].as_str())
    }

    fn children(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        let mut next = self.arena[n].first_child;
        std::iter::from_fn(move || {
            let cur = next;
            if cur == NONE {
                return None;
            }
            next = self.arena[cur].next_sibling;
            Some(cur)
        })
    }

    fn attr_of(&self, node: usize, test: &NameTest) -> Option<&str> {
        let n = &self.arena[node];
        self.cattrs[n.attrs.0..n.attrs.1]
            .iter()
            .find(|a| {
                test.matches(
                    a.uri.map(|i| self.uris[i].as_str()),
                    &self.abuf[a.local.0..a.local.1],
                )
            })
            .map(|a| &self.abuf[a.value.0..a.value.1])
    }

    /// All text inside a captured node: its segments and its descendants', in order.
    fn text_of(&self, node: usize) -> Cow<'_, str> {
        let n = &self.arena[node];
        let end = if n.segs.1 == NONE {
            self.segs.len()
        } else {
            n.segs.1
        };
        match &self.segs[n.segs.0..end] {
            [] => Cow::Borrowed(""),
            [(a, b)] => Cow::Borrowed(&self.abuf[*a..*b]),
            segs => {
                let mut s = String::new();
                for &(a, b) in segs {
                    s.push_str(&self.abuf[a..b]);
                }
                Cow::Owned(s)
            }
        }
    }

    fn leaf_into(&self, node: usize, leaf: &Leaf, out: &mut String) -> bool {
        match leaf {
            Leaf::Text => {
                let n = &self.arena[node];
                let end = if n.segs.1 == NONE {
                    self.segs.len()
                } else {
                    n.segs.1
                };
                for &(a, b) in &self.segs[n.segs.0..end] {
                    out.push_str(&self.abuf[a..b]);
                }
            }
            Leaf::Name => out.push_str(self.cname(node)),
            Leaf::LocalName => out.push_str(self.clocal(node)),
            Leaf::Attr(test) => match self.attr_of(node, test) {
                Some(v) => out.push_str(v),
                None => return false,
            },
        }
        true
    }

    fn node_predicate(&self, node: usize, p: &Predicate) -> bool {
        let v: Option<Cow<'_, str>> = match &p.operand {
            Operand::Attr(t) => self.attr_of(node, t).map(Cow::Borrowed),
            Operand::Child(t) => self
                .children(node)
                .find(|&c| t.matches(self.curi(c), self.clocal(c)))
                .map(|c| self.text_of(c)),
            Operand::Text => Some(self.text_of(node)),
            Operand::Name => Some(Cow::Borrowed(self.cname(node))),
            Operand::LocalName => Some(Cow::Borrowed(self.clocal(node))),
        };
        p.test(v.as_deref())
    }

    fn eval_record(&mut self, ri: usize, node: usize) {
        let engine = self.engine;
        let rule = &engine.mapping.rules[ri];
        if node == usize::MAX {
            let max = engine.mapping.limits.max_record_bytes;
            self.issue(ri, Reason::RecordTooLarge, || {
                format!("a record is larger than max_record_bytes ({max})")
            });
            return;
        }
        if !rule
            .record_filter
            .iter()
            .all(|p| self.node_predicate(node, p))
        {
            return;
        }
        self.out.records += 1;
        if self.out.records > engine.mapping.limits.max_records {
            if !self.out.truncated.contains(&"records") {
                self.out.truncated.push("records");
            }
            return;
        }
        match &engine.label_order[ri] {
            Some(order) if !rule.split && rule.histogram.is_none() => {
                let mut vbuf = std::mem::take(&mut self.vbuf);
                let mut ranges = std::mem::take(&mut self.vranges);
                vbuf.clear();
                ranges.clear();
                self.eval_simple(ri, node, order, &mut vbuf, &mut ranges);
                self.vbuf = vbuf;
                self.vranges = ranges;
            }
            _ => self.eval_general(ri, node),
        }
    }

    /// One sample per record (or one per state): the common case, read without allocating.
    /// Label values go to `vbuf` (ranges in `ranges`, in the rule's label order).
    fn eval_simple(
        &mut self,
        ri: usize,
        node: usize,
        order: &[Slot],
        vbuf: &mut String,
        ranges: &mut Vec<(usize, usize)>,
    ) {
        let engine = self.engine;
        let rule = &engine.mapping.rules[ri];
        for l in &rule.labels {
            let start = vbuf.len();
            // A label path that selects nothing gives an empty value.
            self.eval_rel_into(node, &l.path, vbuf);
            // Leading `trim`s only narrow the range; the rest of a chain makes a new text.
            let trims = transform::leading_trims(&l.transforms);
            let (mut a, mut b) = (start, vbuf.len());
            if trims > 0 {
                let raw = &vbuf[a..b];
                a += raw.len() - raw.trim_start().len();
                b = a + raw.trim().len();
            }
            if trims == l.transforms.len() {
                ranges.push((a, b));
                continue;
            }
            match transform::apply_text(&l.transforms[trims..], &vbuf[a..b]) {
                Ok(Some(s)) => {
                    vbuf.truncate(start);
                    vbuf.push_str(&s);
                    ranges.push((start, vbuf.len()));
                }
                Ok(None) => return,
                Err(e) => {
                    let name = l.name.clone();
                    self.issue(ri, Reason::BadLabel, || format!("label `{name}`: {e}"));
                    return;
                }
            }
        }
        let vstart = vbuf.len();
        let found = match rule.kind {
            Kind::Info => {
                vbuf.push('1');
                true
            }
            _ => self.eval_rel_into(node, &rule.value, vbuf),
        };
        let raw: &str = if rule.present {
            if found { "1" } else { "0" }
        } else if found {
            &vbuf[vstart..]
        } else {
            let value = match rule.on_missing {
                MissingPolicy::Skip => {
                    return self.issue(ri, Reason::Missing, || {
                        "the value path selects nothing".into()
                    });
                }
                MissingPolicy::Error => {
                    return self.issue(ri, Reason::BadValue, || {
                        "the value path selects nothing".into()
                    });
                }
                MissingPolicy::Zero => 0.0,
                MissingPolicy::Nan => f64::NAN,
            };
            return self.push_simple(ri, order, vbuf, ranges, None, value);
        };
        if rule.kind == Kind::Stateset {
            let state = match transform::apply_text(&rule.transforms, raw) {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) => return self.issue(ri, Reason::BadValue, || e),
            };
            if !rule.states.contains(&state) {
                let known = rule.states.join(", ");
                return self.issue(ri, Reason::BadValue, || {
                    format!("state `{state}` is not one of: {known}")
                });
            }
            for s in &rule.states {
                let v = if *s == state { 1.0 } else { 0.0 };
                self.push_simple(ri, order, vbuf, ranges, Some(s), v);
            }
            return;
        }
        let value = match transform::apply_numeric_fast(&rule.transforms, raw) {
            Ok(Some(v)) => v,
            // A sentinel (`skip_if`): no sample, quietly.
            Ok(None) => return,
            Err(e) => return self.issue(ri, Reason::BadValue, || e),
        };
        self.push_simple(ri, order, vbuf, ranges, None, value);
    }

    fn push_simple(
        &mut self,
        ri: usize,
        order: &[Slot],
        vbuf: &str,
        ranges: &[(usize, usize)],
        state: Option<&str>,
        value: f64,
    ) {
        let engine = self.engine;
        let rule = &engine.mapping.rules[ri];
        if rule.kind == Kind::Counter && (value.is_nan() || value < 0.0) {
            return self.issue(ri, Reason::BadValue, || {
                format!("a counter cannot be {}", crate::encode::format_value(value))
            });
        }
        self.key.clear();
        for slot in order {
            let (name, v): (&str, &str) = match *slot {
                Slot::Label(i) => (&rule.labels[i].name, &vbuf[ranges[i].0..ranges[i].1]),
                Slot::Const(i) => (&rule.const_labels[i].0, &rule.const_labels[i].1),
                // A stateset sample without a state (`on_missing: zero|nan`) has no such label.
                Slot::State => match state {
                    Some(s) => (&rule.name, s),
                    None => continue,
                },
            };
            key_push(&mut self.key, name, v);
        }
        self.fold(ri, value);
    }

    /// Split values, histograms, or labels that share a name: the general (allocating) path.
    fn eval_general(&mut self, ri: usize, node: usize) {
        let engine = self.engine;
        let rule = &engine.mapping.rules[ri];
        // Labels (split labels give one value per item).
        let mut labels: Vec<(String, Vec<String>)> = Vec::with_capacity(rule.labels.len());
        for l in &rule.labels {
            let raw = self.eval_rel(node, &l.path).unwrap_or_default();
            let items: Vec<&str> = if l.split {
                raw.split_whitespace().collect()
            } else {
                vec![raw.as_str()]
            };
            let mut vals = Vec::with_capacity(items.len());
            for it in items {
                match transform::apply_text(&l.transforms, it) {
                    Ok(Some(v)) => vals.push(v),
                    Ok(None) => return,
                    Err(e) => {
                        let name = l.name.clone();
                        self.issue(ri, Reason::BadLabel, || format!("label `{name}`: {e}"));
                        return;
                    }
                }
            }
            labels.push((l.name.clone(), vals));
        }
        let raw_value = match rule.kind {
            Kind::Info => Some("1".to_string()),
            _ => self.eval_rel(node, &rule.value),
        };
        let raw_value = if rule.present {
            Some(if raw_value.is_some() { "1" } else { "0" }.to_string())
        } else {
            raw_value
        };
        let Some(raw_value) = raw_value else {
            match rule.on_missing {
                MissingPolicy::Skip | MissingPolicy::Error => {
                    let reason = if rule.on_missing == MissingPolicy::Error {
                        Reason::BadValue
                    } else {
                        Reason::Missing
                    };
                    self.issue(ri, reason, || "the value path selects nothing".into());
                    return;
                }
                MissingPolicy::Zero => return self.emit_values(ri, labels, vec![0.0]),
                MissingPolicy::Nan => return self.emit_values(ri, labels, vec![f64::NAN]),
            }
        };
        if rule.kind == Kind::Stateset {
            let state = match transform::apply_text(&rule.transforms, &raw_value) {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) => return self.issue(ri, Reason::BadValue, || e),
            };
            if !rule.states.contains(&state) {
                let known = rule.states.join(", ");
                return self.issue(ri, Reason::BadValue, || {
                    format!("state `{state}` is not one of: {known}")
                });
            }
            let base = flatten(&labels, 0);
            for s in &rule.states {
                let mut l = base.clone();
                l.push((rule.name.clone(), s.clone()));
                self.push(ri, l, if *s == state { 1.0 } else { 0.0 });
            }
            return;
        }
        let items: Vec<&str> = if rule.split {
            raw_value.split_whitespace().collect()
        } else {
            vec![raw_value.as_str()]
        };
        let mut values = Vec::with_capacity(items.len());
        for it in items {
            match transform::apply_chain(&rule.transforms, it) {
                Ok(Outcome::Skip) => values.push(None),
                Ok(Outcome::Value(v)) => {
                    let n = match v {
                        transform::Val::Num(n) => Ok(n),
                        transform::Val::Str(s) => transform::parse_number(&s),
                    };
                    match n {
                        Ok(n) => values.push(Some(n)),
                        Err(e) => return self.issue(ri, Reason::BadValue, || e),
                    }
                }
                Err(e) => return self.issue(ri, Reason::BadValue, || e),
            }
        }
        if rule.split {
            for (name, vals) in &labels {
                if rule.labels.iter().any(|l| l.split && &l.name == name)
                    && vals.len() != values.len()
                {
                    let (a, b) = (vals.len(), values.len());
                    let name = name.clone();
                    return self.issue(ri, Reason::Zip, || {
                        format!("label `{name}` has {a} items but the value has {b}: not zipped")
                    });
                }
            }
        }
        if let Some(h) = &rule.histogram {
            let Some(key) = self.eval_rel(node, &h.bucket) else {
                return self.issue(ri, Reason::Missing, || "no bucket key".into());
            };
            // Records whose key is not a bucket are not part of this histogram.
            let Some(&bound) = h.bounds.get(key.trim()) else {
                return;
            };
            let Some(Some(v)) = values.first().copied() else {
                return;
            };
            let family = rule.family;
            let entry = self.hist[family]
                .entry(flatten(&labels, 0))
                .or_insert_with(|| (ri, Vec::new()));
            entry.1.push((bound, v));
            return;
        }
        let mut out = Vec::with_capacity(values.len());
        for v in values.into_iter().flatten() {
            out.push(v);
        }
        if rule.split {
            for (i, v) in out.into_iter().enumerate() {
                let l = flatten(&labels, i);
                self.push_checked(ri, l, v);
            }
        } else {
            self.emit_values(ri, labels, out);
        }
    }

    fn emit_values(&mut self, ri: usize, labels: Vec<(String, Vec<String>)>, values: Vec<f64>) {
        for v in values {
            let l = flatten(&labels, 0);
            self.push_checked(ri, l, v);
        }
    }

    fn push_checked(&mut self, ri: usize, labels: Vec<(String, String)>, v: f64) {
        let engine = self.engine;
        let rule = &engine.mapping.rules[ri];
        if rule.kind == Kind::Counter && (v.is_nan() || v < 0.0) {
            return self.issue(ri, Reason::BadValue, || {
                format!("a counter cannot be {}", crate::encode::format_value(v))
            });
        }
        self.push(ri, labels, v);
    }

    fn push(&mut self, ri: usize, mut labels: Vec<(String, String)>, value: f64) {
        let engine = self.engine;
        let rule: &Rule = &engine.mapping.rules[ri];
        labels.extend(rule.const_labels.iter().cloned());
        labels.sort();
        self.key.clear();
        for (k, v) in &labels {
            key_push(&mut self.key, k, v);
        }
        self.fold(ri, value);
    }

    /// Folds a sample (its series key in `self.key`) into the pending series.
    fn fold(&mut self, ri: usize, value: f64) {
        let engine = self.engine;
        let rule: &Rule = &engine.mapping.rules[ri];
        let policy = rule.on_duplicate;
        let family = rule.family;
        let table = &mut self.pending[family];
        let found = match table.last {
            Some(i) if table.last_key == self.key => Some(i),
            _ => table.index.get(self.key.as_slice()).copied().inspect(|&i| {
                table.last_key.clone_from(&self.key);
                table.last = Some(i);
            }),
        };
        let generation = self.generation;
        if let Some(i) = found
            && table.entries[i].generation == generation
        {
            let p = &mut table.entries[i];
            p.count += 1;
            match policy {
                DuplicatePolicy::First | DuplicatePolicy::Error => {}
                DuplicatePolicy::Last => p.value = value,
                DuplicatePolicy::Sum => p.value += value,
            }
            return;
        }
        if self.pending_series >= engine.mapping.limits.max_series {
            if !self.out.truncated.contains(&"series") {
                self.out.truncated.push("series");
            }
            return;
        }
        self.pending_series += 1;
        let table = &mut self.pending[family];
        table.live += 1;
        let fresh = Pending {
            rule: ri,
            value,
            count: 1,
            generation,
        };
        // A series of an earlier document keeps its key and its slot.
        if let Some(i) = found {
            table.entries[i] = fresh;
            return;
        }
        table.entries.push(fresh);
        let i = table.entries.len() - 1;
        table.index.insert(self.key.as_slice().into(), i);
        table.last_key.clone_from(&self.key);
        table.last = Some(i);
    }

    fn finish(&mut self) -> Translation {
        let engine = self.engine;
        let max_series = engine.mapping.limits.max_series;
        let generation = self.generation;
        let mut series = 0u64;
        let mut families = Vec::new();
        let hist = std::mem::take(&mut self.hist);
        for (fi, hist) in hist.into_iter().enumerate() {
            let spec = &engine.mapping.families[fi];
            let mut fam = Family::new(&spec.name, &spec.help, spec.kind);
            fam.unit = spec.unit.clone();
            let table = &self.pending[fi];
            let mut samples: Vec<_> = table
                .index
                .iter()
                .filter_map(|(k, &i)| {
                    let p = *table.entries.get(i)?;
                    (p.generation == generation).then(|| (key_decode(k), p))
                })
                .collect();
            samples.sort_by(|a, b| a.0.cmp(&b.0));
            for (labels, p) in samples {
                let policy = engine.mapping.rules[p.rule].on_duplicate;
                if p.count > 1 && policy == DuplicatePolicy::Error {
                    let l = format!("{labels:?}");
                    let n = p.count;
                    self.issue(p.rule, Reason::Duplicate, || {
                        format!("{n} records give the series {l}; none served")
                    });
                    continue;
                }
                if series >= max_series {
                    if !self.out.truncated.contains(&"series") {
                        self.out.truncated.push("series");
                    }
                    continue;
                }
                series += 1;
                fam.samples.push(Sample {
                    suffix: Suffix::None,
                    labels,
                    value: p.value,
                });
            }
            let mut groups: Vec<_> = hist.into_iter().collect();
            groups.sort_by(|a, b| a.0.cmp(&b.0));
            for (labels, (ri, mut buckets)) in groups {
                let rule = &engine.mapping.rules[ri];
                let Some(h) = &rule.histogram else { continue };
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                if buckets.windows(2).any(|w| w[0].0 == w[1].0) {
                    let l = format!("{labels:?}");
                    self.issue(ri, Reason::Duplicate, || {
                        format!("a bucket appears twice for {l}")
                    });
                    continue;
                }
                if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
                    let l = format!("{labels:?}");
                    self.issue(ri, Reason::Missing, || format!("no +Inf bucket for {l}"));
                    continue;
                }
                if series + buckets.len() as u64 + 1 > max_series {
                    if !self.out.truncated.contains(&"series") {
                        self.out.truncated.push("series");
                    }
                    continue;
                }
                let mut acc = 0.0;
                let mut full = Vec::new();
                for (bound, v) in &buckets {
                    acc = if h.cumulative { *v } else { acc + v };
                    let mut l = labels.clone();
                    l.extend(rule.const_labels.iter().cloned());
                    l.sort();
                    l.push(("le".into(), crate::encode::format_value(*bound)));
                    full.push(Sample {
                        suffix: Suffix::Bucket,
                        labels: l,
                        value: acc,
                    });
                }
                if full.windows(2).any(|w| w[1].value < w[0].value) {
                    let l = format!("{labels:?}");
                    self.issue(ri, Reason::BadValue, || {
                        format!("cumulative buckets decrease for {l}")
                    });
                    continue;
                }
                let mut l = labels.clone();
                l.extend(rule.const_labels.iter().cloned());
                l.sort();
                series += full.len() as u64 + 1;
                fam.samples.extend(full);
                fam.samples.push(Sample {
                    suffix: Suffix::Count,
                    labels: l,
                    value: acc,
                });
            }
            families.push(fam);
        }
        if let Some(up) = &engine.mapping.up_metric {
            let mut f = Family::new(
                up,
                "Whether the last read of the upstream document succeeded.",
                Kind::Gauge,
            );
            f.samples.push(Sample {
                suffix: Suffix::None,
                labels: vec![],
                value: 1.0,
            });
            families.insert(0, f);
        }
        for (ri, counts) in self.issues.iter().enumerate() {
            for (reason, &n) in REASONS.iter().zip(counts) {
                if n > 0 {
                    let name = engine.mapping.rules[ri].name.clone();
                    *self.out.rule_issues.entry((name, *reason)).or_default() += n;
                }
            }
        }
        self.out.series = series;
        self.out.families = families;
        std::mem::take(&mut self.out)
    }
}

/// The label set for item `i` of a (possibly split) record.
fn flatten(labels: &[(String, Vec<String>)], i: usize) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(k, v)| {
            let val = if v.len() == 1 {
                &v[0]
            } else {
                v.get(i).unwrap_or(&v[0])
            };
            (k.clone(), val.clone())
        })
        .collect()
}
