//! The streaming evaluator: one pass over quick-xml events, no DOM of the document.
//!
//! All rules' record paths are merged into one trie of steps. Every open element carries the
//! set of trie states it matched; an element whose set is empty (and whose parent has no `//`
//! state) costs only the well-formedness bookkeeping. When an element completes a record path,
//! only that element's subtree is captured (a small arena, capped by `max_record_bytes`) and the
//! rule's relative paths are evaluated against it when the element closes.

use std::collections::HashMap;
use std::io::BufRead;

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{QName, ResolveResult};
use quick_xml::{NsReader, Reader};

use crate::encode::{Family, Kind, Sample, Suffix};
use crate::mapping::{DuplicatePolicy, Mapping, MissingPolicy, Rule};
use crate::path::{AncestorSel, Axis, Leaf, NameTest, Op, Operand, Predicate, RelPath};
use crate::transform::{self, Outcome};

/// Why a document was refused. Nothing from a refused document is served.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("malformed XML at byte {position}: {message}")]
    Malformed { position: u64, message: String },
    #[error("reading the document failed after {position} bytes: {source}")]
    Read {
        position: u64,
        source: std::io::Error,
    },
}

/// Why a rule dropped a sample (the `reason` label of the per-rule error counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Missing,
    BadValue,
    BadLabel,
    Duplicate,
    Zip,
    RecordTooLarge,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::BadValue => "bad_value",
            Reason::BadLabel => "bad_label",
            Reason::Duplicate => "duplicate",
            Reason::Zip => "zip_mismatch",
            Reason::RecordTooLarge => "record_too_large",
        }
    }

    /// `missing` under the default `skip` policy is expected of optional data, not an error.
    pub fn is_error(self) -> bool {
        self != Reason::Missing
    }
}

/// What one document translated to.
#[derive(Debug, Default)]
pub struct Translation {
    pub families: Vec<Family>,
    /// (rule name, reason) -> count of dropped samples.
    pub rule_issues: std::collections::BTreeMap<(String, Reason), u64>,
    /// A few messages about dropped samples, for the log and for `check`.
    pub messages: Vec<String>,
    pub records: u64,
    pub series: u64,
    /// Caps that truncated this translation (`records`, `series`).
    pub truncated: Vec<&'static str>,
    /// End tags recovered in lenient mode.
    pub recovered: u64,
    pub bytes: u64,
}

const MAX_MESSAGES: usize = 20;

#[derive(Debug)]
struct Edge {
    axis: Axis,
    test: NameTest,
    preds: Vec<Predicate>,
    target: usize,
}

#[derive(Debug, Default)]
struct Node {
    edges: Vec<Edge>,
    has_descendant_edge: bool,
    rules: Vec<usize>,
}

/// A mapping compiled for streaming. Cheap to share between scrapes.
#[derive(Debug)]
pub struct Engine {
    pub mapping: Mapping,
    nodes: Vec<Node>,
    /// Names of leaf children that relative paths read from ancestors (`../measTypes`).
    captured_children: Vec<NameTest>,
}

impl Engine {
    pub fn new(mapping: Mapping) -> Engine {
        let mut nodes = vec![Node::default()];
        let mut keys: HashMap<(usize, String), usize> = HashMap::new();
        for (ri, rule) in mapping.rules.iter().enumerate() {
            let mut cur = 0;
            for step in &rule.record.steps {
                let key = (
                    cur,
                    format!("{:?}|{:?}|{:?}", step.axis, step.test, step.preds_key()),
                );
                cur = match keys.get(&key) {
                    Some(&n) => n,
                    None => {
                        nodes.push(Node::default());
                        let target = nodes.len() - 1;
                        nodes[cur].edges.push(Edge {
                            axis: step.axis,
                            test: step.test.clone(),
                            preds: step.predicates.clone(),
                            target,
                        });
                        if step.axis == Axis::Descendant {
                            nodes[cur].has_descendant_edge = true;
                        }
                        keys.insert(key, target);
                        target
                    }
                };
            }
            nodes[cur].rules.push(ri);
        }
        let mut captured_children = Vec::new();
        let mut add = |p: &RelPath| {
            if let RelPath::Up { child: Some(t), .. } = p
                && !captured_children.contains(t)
            {
                captured_children.push(t.clone());
            }
        };
        for r in &mapping.rules {
            add(&r.value);
            for l in &r.labels {
                add(&l.path);
            }
            if let Some(h) = &r.histogram {
                add(&h.bucket);
            }
        }
        Engine {
            mapping,
            nodes,
            captured_children,
        }
    }

    /// Reads a whole document and translates it. Any error refuses the whole document.
    pub fn translate<R: BufRead>(&self, input: R) -> Result<Translation, DocumentError> {
        let mut run = Run::new(self);
        run.read(input)?;
        Ok(run.finish())
    }
}

impl crate::path::Step {
    fn preds_key(&self) -> String {
        format!("{:?}", self.predicates)
    }
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
    /// Text of this element while it may still be a captured leaf child.
    leaf_text: Option<String>,
    has_child: bool,
}

#[derive(Debug)]
struct OpenRecord {
    depth: usize,
    node: usize,
    rules: Vec<usize>,
}

/// A sample before families are finalised: which rule made it (for its duplicate policy).
#[derive(Debug)]
struct Pending {
    rule: usize,
    value: f64,
    /// Records that gave this series (more than one: the duplicate policy applies).
    count: u64,
}

/// Per family: label set -> (rule, (upper bound, count) per bucket record).
type HistogramGroups = HashMap<Vec<(String, String)>, (usize, Vec<(f64, f64)>)>;

struct Run<'e> {
    engine: &'e Engine,
    tags: String,
    frames: Vec<Frame>,
    states: Vec<(u32, bool)>,
    arena: Vec<CNode>,
    abuf: String,
    cattrs: Vec<CAttr>,
    segs: Vec<(usize, usize)>,
    uris: Vec<String>,
    arena_bytes: u64,
    arena_overflow: bool,
    records_open: Vec<OpenRecord>,
    /// (parent depth, child local name, text) of captured leaf children of open elements.
    child_caps: Vec<(usize, String, String)>,
    /// Per family: series -> value so far. Duplicates fold in as they come, so memory follows
    /// the number of series, not of records.
    pending: Vec<HashMap<Vec<(String, String)>, Pending>>,
    pending_series: u64,
    /// Histogram buckets per family: labels -> (bound -> value).
    hist: Vec<HistogramGroups>,
    out: Translation,
    root_seen: bool,
    root_closed: bool,
}

fn malformed(position: u64, message: impl Into<String>) -> DocumentError {
    DocumentError::Malformed {
        position,
        message: message.into(),
    }
}

/// The event source: a plain reader unless the mapping uses namespaces (the namespace-aware
/// reader inspects every start tag's attributes, which costs throughput for nothing).
#[derive(Debug)]
enum Source<R> {
    Plain(Reader<R>),
    Ns(NsReader<R>),
}

impl<R: BufRead> Source<R> {
    fn new(input: R, namespaces: bool) -> Source<R> {
        let mut src = if namespaces {
            Source::Ns(NsReader::from_reader(input))
        } else {
            Source::Plain(Reader::from_reader(input))
        };
        let c = match &mut src {
            Source::Plain(r) => r.config_mut(),
            Source::Ns(r) => r.config_mut(),
        };
        // End-tag matching is done here so lenient mode can recover and errors name both tags.
        c.check_end_names = false;
        c.expand_empty_elements = false;
        c.trim_text(false);
        src
    }

    fn read_event_into<'b>(&mut self, buf: &'b mut Vec<u8>) -> quick_xml::Result<Event<'b>> {
        match self {
            Source::Plain(r) => r.read_event_into(buf),
            Source::Ns(r) => r.read_event_into(buf),
        }
    }
}

impl<R> Source<R> {
    fn buffer_position(&self) -> u64 {
        match self {
            Source::Plain(r) => r.buffer_position(),
            Source::Ns(r) => r.buffer_position(),
        }
    }

    fn error_position(&self) -> u64 {
        match self {
            Source::Plain(r) => r.error_position(),
            Source::Ns(r) => r.error_position(),
        }
    }

    fn resolve_element(&self, q: QName<'_>) -> Option<String> {
        match self {
            Source::Plain(_) => None,
            Source::Ns(r) => resolve_uri(r.resolver().resolve_element(q).0),
        }
    }

    fn resolve_attribute<'n>(&self, q: QName<'n>) -> (Option<String>, &'n str) {
        match self {
            Source::Plain(_) => (None, q.local_name().into_inner()),
            Source::Ns(r) => {
                let (res, local) = r.resolver().resolve_attribute(q);
                (resolve_uri(res), local.into_inner())
            }
        }
    }
}

fn resolve_uri(r: ResolveResult<'_>) -> Option<String> {
    match r {
        ResolveResult::Bound(ns) => Some(ns.0.to_string()),
        _ => None,
    }
}

impl<'e> Run<'e> {
    fn new(engine: &'e Engine) -> Run<'e> {
        let n = engine.mapping.families.len();
        Run {
            engine,
            tags: String::with_capacity(4096),
            frames: Vec::with_capacity(64),
            states: vec![(0, false)],
            arena: Vec::new(),
            abuf: String::new(),
            cattrs: Vec::new(),
            segs: Vec::new(),
            uris: Vec::new(),
            arena_bytes: 0,
            arena_overflow: false,
            records_open: Vec::new(),
            child_caps: Vec::new(),
            pending: (0..n).map(|_| HashMap::new()).collect(),
            pending_series: 0,
            hist: (0..n).map(|_| HashMap::new()).collect(),
            out: Translation::default(),
            root_seen: false,
            root_closed: false,
        }
    }

    fn issue(&mut self, rule: usize, reason: Reason, message: impl FnOnce() -> String) {
        let name = self.engine.mapping.rules[rule].name.clone();
        *self
            .out
            .rule_issues
            .entry((name.clone(), reason))
            .or_default() += 1;
        if reason.is_error() && self.out.messages.len() < MAX_MESSAGES {
            let m = message();
            self.out.messages.push(format!("rule `{name}`: {m}"));
        }
    }

    fn read<R: BufRead>(&mut self, input: R) -> Result<(), DocumentError> {
        let mut reader = Source::new(input, self.engine.mapping.needs_namespaces);
        let mut buf = Vec::with_capacity(8192);
        let mut decl_seen = false;
        loop {
            let pos = reader.buffer_position();
            let ev = match reader.read_event_into(&mut buf) {
                Ok(ev) => ev,
                Err(quick_xml::Error::Io(e)) => {
                    return Err(DocumentError::Read {
                        position: pos,
                        source: std::io::Error::new(e.kind(), e.to_string()),
                    });
                }
                Err(e) => return Err(malformed(reader.error_position(), e.to_string())),
            };
            match ev {
                Event::Start(e) => self.start(&reader, &e, pos, false)?,
                Event::Empty(e) => {
                    self.start(&reader, &e, pos, true)?;
                    self.end(e.name(), pos)?;
                }
                Event::End(e) => self.end(e.name(), pos)?,
                Event::Text(t) => {
                    let text = t.xml10_content();
                    self.text(&text, pos)?;
                }
                Event::CData(t) => {
                    let text = t.xml10_content();
                    self.text(&text, pos)?;
                }
                Event::GeneralRef(r) => {
                    let ch = match r.resolve_char_ref() {
                        Ok(Some(c)) => c.to_string(),
                        Ok(None) => match &*r.xml10_content() {
                            "amp" => "&".into(),
                            "lt" => "<".into(),
                            "gt" => ">".into(),
                            "quot" => "\"".into(),
                            "apos" => "'".into(),
                            other => {
                                return Err(malformed(
                                    pos,
                                    format!(
                                        "undefined entity `&{other};` (entities from a DTD are never expanded)"
                                    ),
                                ));
                            }
                        },
                        Err(e) => return Err(malformed(pos, e.to_string())),
                    };
                    self.text(&ch, pos)?;
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
                    decl_seen = true;
                }
                Event::DocType(_) | Event::Comment(_) | Event::PI(_) => {}
                Event::Eof => break,
            }
            buf.clear();
        }
        let _ = decl_seen;
        let end = reader.buffer_position();
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

    fn start<R>(
        &mut self,
        reader: &Source<R>,
        e: &BytesStart<'_>,
        pos: u64,
        _empty: bool,
    ) -> Result<(), DocumentError> {
        let depth = self.frames.len();
        if depth == 0 {
            if self.root_closed && !self.engine.mapping.lenient {
                return Err(malformed(
                    pos,
                    "a second root element (only one is allowed)",
                ));
            }
            self.root_seen = true;
        }
        if depth >= self.engine.mapping.limits.max_depth {
            return Err(malformed(
                pos,
                format!(
                    "elements nested deeper than max_depth {}",
                    self.engine.mapping.limits.max_depth
                ),
            ));
        }
        let needs_ns = self.engine.mapping.needs_namespaces;
        let qname = e.name();
        let local = qname.local_name();
        let local: &str = local.as_ref();
        let uri = if needs_ns {
            reader.resolve_element(qname)
        } else {
            None
        };
        if let Some(parent) = self.frames.last_mut() {
            parent.has_child = true;
            parent.leaf_text = None;
        }
        // Trie states for this element.
        let (ps, pe) = match self.frames.last() {
            Some(f) => (f.states_start, f.states_end),
            None => (0, 1),
        };
        let states_start = self.states.len();
        let mut matched_rules: Vec<usize> = Vec::new();
        for i in ps..pe {
            let (node, carried) = self.states[i];
            let n = &self.engine.nodes[node as usize];
            for edge in &n.edges {
                if carried && edge.axis == Axis::Child {
                    continue;
                }
                if !edge.test.matches(uri.as_deref(), local) {
                    continue;
                }
                if !edge
                    .preds
                    .iter()
                    .all(|p| start_predicate(p, e, reader, needs_ns, qname, local))
                {
                    continue;
                }
                let st = (edge.target as u32, false);
                if !self.states[states_start..].contains(&st) {
                    self.states.push(st);
                    matched_rules.extend_from_slice(&self.engine.nodes[edge.target].rules);
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

        // Capture: inside an open record, or starting one.
        let parent_capture = self.frames.last().and_then(|f| f.capture);
        let capturing = parent_capture.is_some() || !matched_rules.is_empty();
        let mut capture = None;
        if capturing && !self.arena_overflow {
            let q0 = self.abuf.len();
            self.abuf.push_str(qname.0);
            let q1 = self.abuf.len();
            let a0 = self.cattrs.len();
            let node_uri = uri.as_deref().map(|u| self.intern(u));
            for a in e.attributes().with_checks(true) {
                let a = a.map_err(|err| {
                    malformed(pos, format!("bad attribute in <{}>: {err}", qname.0))
                })?;
                let v = a
                    .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                    .map_err(|err| {
                        malformed(pos, format!("attribute value in <{}>: {err}", qname.0))
                    })?;
                let (auri, alocal) = reader.resolve_attribute(a.key);
                let auri = auri.map(|u| self.intern(&u));
                let l0 = self.abuf.len();
                self.abuf.push_str(alocal);
                let l1 = self.abuf.len();
                self.abuf.push_str(&v);
                let v1 = self.abuf.len();
                self.cattrs.push(CAttr {
                    uri: auri,
                    local: (l0, l1),
                    value: (l1, v1),
                });
            }
            self.arena_bytes += (self.abuf.len() - q0) as u64 + 64;
            if self.arena_bytes > self.engine.mapping.limits.max_record_bytes {
                self.arena_overflow = true;
            } else {
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
        }
        if !matched_rules.is_empty() {
            matched_rules.sort_unstable();
            matched_rules.dedup();
            // An overflowed arena still gets a record entry so the rules can count the drop.
            self.records_open.push(OpenRecord {
                depth,
                node: capture.unwrap_or(usize::MAX),
                rules: matched_rules,
            });
        }
        let leaf_text = if self
            .engine
            .captured_children
            .iter()
            .any(|t| t.matches(uri.as_deref(), local))
        {
            Some(String::new())
        } else {
            None
        };
        let tag_start = self.tags.len();
        self.tags.push_str(e);
        self.frames.push(Frame {
            tag_start,
            tag_len: e.len(),
            name_len: qname.0.len(),
            states_start,
            states_end,
            capture,
            leaf_text,
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
        if let Some(t) = &mut f.leaf_text {
            t.push_str(text);
        }
        if f.capture.is_some() {
            self.arena_bytes += text.len() as u64;
            if self.arena_bytes > self.engine.mapping.limits.max_record_bytes {
                self.arena_overflow = true;
            } else {
                let t0 = self.abuf.len();
                self.abuf.push_str(text);
                self.segs.push((t0, self.abuf.len()));
            }
        }
        Ok(())
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
            for &ri in &rec.rules {
                self.eval_record(ri, node);
            }
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
        if let Some(text) = f.leaf_text
            && !f.has_child
            && depth > 0
        {
            let name = &self.tags[f.tag_start..f.tag_start + f.name_len];
            let local = name.rsplit(':').next().unwrap_or(name).to_string();
            self.child_caps.push((depth - 1, local, text));
        }
        self.tags.truncate(f.tag_start);
        self.states.truncate(f.states_start);
        let _ = f.tag_len;
        if self.frames.is_empty() {
            self.root_closed = true;
        }
    }

    /// Value of a relative path from a record. `None` when the path selects nothing.
    fn eval_rel(&self, node: usize, path: &RelPath) -> Option<String> {
        match path {
            RelPath::Down { steps, leaf } => {
                let mut cur = node;
                for (test, preds) in steps {
                    cur = self.children(cur).find(|&c| {
                        test.matches(self.curi(c), self.clocal(c))
                            && preds.iter().all(|p| self.node_predicate(c, p))
                    })?;
                }
                self.leaf_of(cur, leaf)
            }
            RelPath::Up { sel, child, leaf } => {
                let record_depth = self.frames.len() - 1;
                let depth = match sel {
                    AncestorSel::Up(n) => record_depth.checked_sub(*n)?,
                    AncestorSel::Named(test) => (0..record_depth).rev().find(|&d| {
                        let f = &self.frames[d];
                        let name = &self.tags[f.tag_start..f.tag_start + f.name_len];
                        test.matches(None, name.rsplit(':').next().unwrap_or(name))
                    })?,
                };
                if let Some(child) = child {
                    return self
                        .child_caps
                        .iter()
                        .find(|(d, n, _)| *d == depth && child.matches(None, n))
                        .map(|(_, _, t)| t.clone());
                }
                let f = &self.frames[depth];
                let tag = &self.tags[f.tag_start..f.tag_start + f.tag_len];
                let name = &tag[..f.name_len];
                match leaf {
                    Leaf::Name => Some(name.to_string()),
                    Leaf::LocalName => Some(name.rsplit(':').next().unwrap_or(name).to_string()),
                    Leaf::Attr(test) => {
                        let start = BytesStart::from_content(tag, f.name_len);
                        start.attributes().flatten().find_map(|a| {
                            test.matches(None, a.key.local_name().as_ref())
                                .then(|| {
                                    a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                        .ok()
                                        .map(|v| v.into_owned())
                                })
                                .flatten()
                        })
                    }
                    // Text of an open ancestor is not complete yet: refused at load.
                    Leaf::Text => None,
                }
            }
        }
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

    fn leaf_of(&self, node: usize, leaf: &Leaf) -> Option<String> {
        let n = &self.arena[node];
        match leaf {
            Leaf::Text => {
                // All text inside the node: its segments and its descendants', in order.
                let end = if n.segs.1 == NONE {
                    self.segs.len()
                } else {
                    n.segs.1
                };
                let mut s = String::new();
                for &(a, b) in &self.segs[n.segs.0..end] {
                    s.push_str(&self.abuf[a..b]);
                }
                Some(s)
            }
            Leaf::Name => Some(self.cname(node).to_string()),
            Leaf::LocalName => Some(self.clocal(node).to_string()),
            Leaf::Attr(test) => self.cattrs[n.attrs.0..n.attrs.1]
                .iter()
                .find(|a| {
                    test.matches(
                        a.uri.map(|i| self.uris[i].as_str()),
                        &self.abuf[a.local.0..a.local.1],
                    )
                })
                .map(|a| self.abuf[a.value.0..a.value.1].to_string()),
        }
    }

    fn node_predicate(&self, node: usize, p: &Predicate) -> bool {
        let v = match &p.operand {
            Operand::Attr(t) => self.leaf_of(node, &Leaf::Attr(t.clone())),
            Operand::Child(t) => self
                .children(node)
                .find(|&c| t.matches(self.curi(c), self.clocal(c)))
                .and_then(|c| self.leaf_of(c, &Leaf::Text)),
            Operand::Text => self.leaf_of(node, &Leaf::Text),
            Operand::Name => Some(self.cname(node).to_string()),
            Operand::LocalName => Some(self.clocal(node).to_string()),
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
        let rule = &self.engine.mapping.rules[ri];
        if rule.kind == Kind::Counter && (v.is_nan() || v < 0.0) {
            return self.issue(ri, Reason::BadValue, || {
                format!("a counter cannot be {}", crate::encode::format_value(v))
            });
        }
        self.push(ri, labels, v);
    }

    fn push(&mut self, ri: usize, mut labels: Vec<(String, String)>, value: f64) {
        let rule: &Rule = &self.engine.mapping.rules[ri];
        labels.extend(rule.const_labels.iter().cloned());
        labels.sort();
        let policy = rule.on_duplicate;
        let family = rule.family;
        if let Some(p) = self.pending[family].get_mut(&labels) {
            p.count += 1;
            match policy {
                DuplicatePolicy::First | DuplicatePolicy::Error => {}
                DuplicatePolicy::Last => p.value = value,
                DuplicatePolicy::Sum => p.value += value,
            }
            return;
        }
        if self.pending_series >= self.engine.mapping.limits.max_series {
            if !self.out.truncated.contains(&"series") {
                self.out.truncated.push("series");
            }
            return;
        }
        self.pending_series += 1;
        self.pending[family].insert(
            labels,
            Pending {
                rule: ri,
                value,
                count: 1,
            },
        );
    }

    fn finish(mut self) -> Translation {
        let engine = self.engine;
        let max_series = engine.mapping.limits.max_series;
        let mut series = 0u64;
        let mut families = Vec::new();
        let pending = std::mem::take(&mut self.pending);
        let hist = std::mem::take(&mut self.hist);
        for (fi, (samples, hist)) in pending.into_iter().zip(hist).enumerate() {
            let spec = &engine.mapping.families[fi];
            let mut fam = Family::new(&spec.name, &spec.help, spec.kind);
            fam.unit = spec.unit.clone();
            let mut samples: Vec<_> = samples.into_iter().collect();
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
        self.out.series = series;
        self.out.families = families;
        self.out
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

fn start_predicate<R>(
    p: &Predicate,
    e: &BytesStart<'_>,
    reader: &Source<R>,
    needs_ns: bool,
    qname: QName<'_>,
    local: &str,
) -> bool {
    let value: Option<String> = match &p.operand {
        Operand::Name => Some(qname.0.to_string()),
        Operand::LocalName => Some(local.to_string()),
        Operand::Attr(test) => e.attributes().flatten().find_map(|a| {
            let (uri, l) = if needs_ns {
                let (r, l) = reader.resolve_attribute(a.key);
                (r, l.to_string())
            } else {
                (None, a.key.local_name().as_ref().to_string())
            };
            test.matches(uri.as_deref(), &l)
                .then(|| {
                    a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .ok()
                        .map(|v| v.into_owned())
                })
                .flatten()
        }),
        // Content predicates were moved to the rule's record filter at load.
        Operand::Child(_) | Operand::Text => return true,
    };
    if let (Op::Exists, Some(_)) = (&p.op, &value) {
        return true;
    }
    p.test(value.as_deref())
}

/// The result of one scrape, failed or not, with what `/metrics` and `/json` serve.
pub fn failure_families(mapping: &Mapping) -> Vec<Family> {
    match &mapping.up_metric {
        Some(up) => {
            let mut f = Family::new(
                up,
                "Whether the last read of the upstream document succeeded.",
                Kind::Gauge,
            );
            f.samples.push(Sample {
                suffix: Suffix::None,
                labels: vec![],
                value: 0.0,
            });
            vec![f]
        }
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mapping: &str, doc: &str) -> Result<Translation, DocumentError> {
        Engine::new(Mapping::parse(mapping, "test.yaml").unwrap()).translate(doc.as_bytes())
    }

    fn samples(t: &Translation) -> Vec<String> {
        t.families
            .iter()
            .flat_map(|f| {
                f.samples.iter().map(move |s| {
                    let labels: Vec<String> =
                        s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!("{}{{{}}} {}", f.name, labels.join(","), s.value)
                })
            })
            .collect()
    }

    #[test]
    fn descendant_steps_match_each_element_once() {
        let t = run(
            "rules:\n  - {name: n, type: gauge, path: '//a//b', labels: {id: '@id'}, value: '@v'}\n",
            "<r><a><a><b id='1' v='1'/></a></a><b id='2' v='2'/><a><c><b id='3' v='3'/></c></a></r>",
        )
        .unwrap();
        assert_eq!(samples(&t), vec!["n{id=1} 1", "n{id=3} 3"]);
    }

    #[test]
    fn nested_records_and_child_text_predicates() {
        let t = run(
            "rules:\n  - {name: outer, type: gauge, path: '/r/s[kind=\"x\"]', labels: {n: name}, value: v}\n  - {name: inner, type: gauge, path: '/r/s/t', labels: {n: '../@n'}, value: .}\n",
            "<r><s n='a'><name>a</name><kind>x</kind><v>1</v><t>5</t></s><s n='b'><name>b</name><kind>y</kind><v>2</v><t>6</t></s></r>",
        )
        .unwrap();
        assert_eq!(
            samples(&t),
            vec!["outer{n=a} 1", "inner{n=a} 5", "inner{n=b} 6"]
        );
    }

    #[test]
    fn duplicate_policies() {
        let doc = "<r><i k='a'>1</i><i k='a'>2</i><i k='b'>3</i></r>";
        for (policy, want) in [
            ("error", vec!["m{k=b} 3"]),
            ("first", vec!["m{k=a} 1", "m{k=b} 3"]),
            ("last", vec!["m{k=a} 2", "m{k=b} 3"]),
            ("sum", vec!["m{k=a} 3", "m{k=b} 3"]),
        ] {
            let t = run(
                &format!("rules:\n  - {{name: m, type: gauge, path: /r/i, labels: {{k: '@k'}}, on_duplicate: {policy}}}\n"),
                doc,
            )
            .unwrap();
            assert_eq!(samples(&t), want, "{policy}");
            let dup = t
                .rule_issues
                .get(&("m".to_string(), Reason::Duplicate))
                .copied();
            assert_eq!(dup, (policy == "error").then_some(1), "{policy}");
        }
    }

    #[test]
    fn missing_policies() {
        let doc = "<r><i k='a'><v>1</v></i><i k='b'/></r>";
        for (policy, want) in [
            ("skip", vec!["m{k=a} 1"]),
            ("zero", vec!["m{k=a} 1", "m{k=b} 0"]),
            ("error", vec!["m{k=a} 1"]),
        ] {
            let t = run(
                &format!("rules:\n  - {{name: m, type: gauge, path: /r/i, labels: {{k: '@k'}}, value: v, on_missing: {policy}}}\n"),
                doc,
            )
            .unwrap();
            assert_eq!(samples(&t), want, "{policy}");
            let reason = if policy == "error" {
                Reason::BadValue
            } else {
                Reason::Missing
            };
            let n = t.rule_issues.get(&("m".to_string(), reason)).copied();
            assert_eq!(n, (policy != "zero").then_some(1), "{policy}");
        }
    }

    #[test]
    fn record_size_cap_drops_and_counts() {
        let big = "x".repeat(5000);
        let t = run(
            "limits: {max_record_bytes: 1000}\nrules:\n  - {name: m, type: gauge, path: /r/i, value: '@v'}\n",
            &format!("<r><i v='1'>{big}</i><i v='2'/></r>"),
        )
        .unwrap();
        assert_eq!(samples(&t), vec!["m{} 2"]);
        assert_eq!(
            t.rule_issues
                .get(&("m".to_string(), Reason::RecordTooLarge)),
            Some(&1)
        );
    }

    #[test]
    fn records_cap_truncates_visibly() {
        let t = run(
            "limits: {max_records: 2}\nrules:\n  - {name: m, type: gauge, path: /r/i, labels: {k: '@k'}, value: '@k'}\n",
            "<r><i k='1'/><i k='2'/><i k='3'/></r>",
        )
        .unwrap();
        assert_eq!(samples(&t).len(), 2);
        assert_eq!(t.truncated, vec!["records"]);
    }

    #[test]
    fn well_formedness_errors_are_refusals() {
        let m = "rules:\n  - {name: m, type: gauge, path: /r/i}\n";
        for (doc, want) in [
            ("<r><i>1</i>", "still open (innermost <r>)"),
            ("<r><i>1</r>", "expected </i>, found </r>"),
            ("<r/><r/>", "second root"),
            ("<r/>junk", "text outside the root"),
            ("", "no root element"),
            ("<r><i>&nope;</i></r>", "undefined entity `&nope;`"),
            ("<r></i></r>", "expected </r>, found </i>"),
            (
                "<?xml version='1.0' encoding='EBCDIC'?><r/>",
                "unsupported encoding",
            ),
        ] {
            let e = run(m, doc).unwrap_err().to_string();
            assert!(e.contains(want), "{doc:?}: {e}");
        }
        // Entities and character references that need no DTD are fine.
        let t = run(m, "<r><i>&#49;&#x30;</i></r>").unwrap();
        assert_eq!(samples(&t), vec!["m{} 10"]);
    }

    #[test]
    fn lenient_mode_recovers_missing_end_tags_only() {
        let m = "lenient: true\nrules:\n  - {name: m, type: gauge, path: /r/a/i}\n";
        let t = run(m, "<r><a><i>1</i><b></a></r>").unwrap();
        assert_eq!(t.recovered, 1);
        assert_eq!(samples(&t), vec!["m{} 1"]);
        assert!(run(m, "<r><a><i>1</i>").is_err(), "truncated stays refused");
    }

    #[test]
    fn histogram_accumulates_per_bucket_counters() {
        let t = run(
            "rules:\n  - {name: h, type: histogram, path: '/r/c', bucket: '@n', buckets: {a: 1, b: 2, c: +Inf}}\n",
            "<r><c n='a'>1</c><c n='b'>2</c><c n='c'>3</c><c n='other'>100</c></r>",
        )
        .unwrap();
        assert_eq!(
            samples(&t),
            vec!["h{le=1} 1", "h{le=2} 3", "h{le=+Inf} 6", "h{} 6"]
        );
        assert_eq!(t.families[0].samples[3].suffix, Suffix::Count);
    }

    #[test]
    fn element_per_field_with_name_function() {
        // BIND's old v2 schema: one element per counter.
        let t = run(
            "rules:\n  - {name: m_total, type: counter, path: '/s/nsstat/*', labels: {name: 'local-name()'}}\n",
            "<s><nsstat><Requestv4>5</Requestv4><Requestv6>0</Requestv6></nsstat></s>",
        )
        .unwrap();
        assert_eq!(
            samples(&t),
            vec!["m{name=Requestv4} 5", "m{name=Requestv6} 0"]
        );
    }
}
