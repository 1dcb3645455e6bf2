//! One document's translation, fed element by element by its input format: the
//! format-independent stages from matching a start tag to the finished families.

use super::capture::{Capture, NO_NODE};
use super::defer::{Deferred, Fold};
use super::input::{Format, StartTag};
use super::open::OpenRecords;
use super::plan::Engine;
use super::record::{Recorder, Values, View};
use super::report::{DocumentError, Reason, Report, Translation, malformed};
use super::series::Series;
use super::stack::{Element, Frame, Stack};

/// What a translation leaves for the next one: a fetcher translates one document at a time,
/// and the next finds its buffers grown and the series it shares with the last one keyed
/// already (no allocation for either). Series no longer seen are dropped once they outnumber
/// the live ones; a buffer that one large document grew past a megabyte is not kept.
#[derive(Debug, Default)]
pub struct Scratch {
    /// The input format's bytes not parsed yet.
    pub(super) window: Vec<u8>,
    stack: Stack,
    capture: Capture,
    records: OpenRecords,
    values: Values,
    series: Series,
    deferred: Deferred,
}

/// A document being translated, in the input format `F`.
#[derive(Debug)]
pub(super) struct Run<'e, F> {
    engine: &'e Engine,
    format: F,
    scratch: Scratch,
    report: Report<'e>,
}

/// The local part of a qualified name (after the first `:`, as quick-xml splits it).
fn local_part(q: &str) -> &str {
    match q.bytes().position(|b| b == b':') {
        Some(i) => &q[i + 1..],
        None => q,
    }
}

impl<'e, F: Format> Run<'e, F> {
    /// A run on the buffers of `scratch` (emptied, see [`Scratch`]; the window is the input
    /// format's to take).
    pub(super) fn new(engine: &'e Engine, format: F, mut scratch: Scratch) -> Run<'e, F> {
        scratch.stack.reuse();
        scratch.capture.reuse();
        scratch.records.reuse();
        scratch.values.reuse();
        scratch.deferred.reuse();
        scratch.series.begin(engine.mapping.families.len());
        Run {
            engine,
            format,
            scratch,
            report: Report::new(&engine.mapping.rules),
        }
    }

    /// The buffers back, for the next document (the input format puts its window back).
    pub(super) fn into_scratch(mut self) -> Scratch {
        self.scratch.series.end();
        self.scratch
    }

    /// Has the root element started?
    pub(super) fn root_seen(&self) -> bool {
        self.scratch.stack.root_seen
    }

    /// Is text here read, or checked (outside the root element, where only whitespace is
    /// allowed)? Other text goes to [`Run::skip_text`], uncopied.
    pub(super) fn needs_text(&self) -> bool {
        self.scratch
            .stack
            .top()
            .is_none_or(|f| f.reads_text || f.kept_child)
    }

    /// Text nobody reads: inside an open record it still counts towards the record's size.
    pub(super) fn skip_text(&mut self, len: usize) {
        let s = &mut self.scratch;
        if !s.records.is_empty() {
            let max = self.engine.mapping.limits.max_record_bytes;
            s.capture.count(len as u64, max);
        }
    }

    /// An element starts, at byte `pos` of the document.
    pub(super) fn start<T: StartTag>(&mut self, tag: &T, pos: u64) -> Result<(), DocumentError> {
        let engine = self.engine;
        let limits = &engine.mapping.limits;
        let s = &mut self.scratch;
        let depth = s.stack.depth();
        if depth == 0 {
            if s.stack.root_closed && !engine.mapping.lenient {
                return Err(malformed(
                    pos,
                    "a second root element (only one is allowed)",
                ));
            }
            s.stack.root_seen = true;
        }
        if depth >= limits.max_depth {
            return Err(DocumentError::Malformed {
                format: F::NAME,
                position: pos,
                message: format!("elements nested deeper than max_depth {}", limits.max_depth),
            });
        }
        if engine.leaf_only
            && s.stack.top().is_some_and(|f| f.children == 0)
            && s.records.drop_leaf_only(depth - 1, &engine.mapping.rules)
        {
            // The element's parent was a record only for leaf-only rules: it is not one.
            if s.records.is_empty() {
                s.capture.clear();
                s.stack.uncapture_top();
            }
        }
        let qname = tag.name();
        let uri = if engine.mapping.needs_namespaces {
            tag.namespace()
        } else {
            None
        };
        let el = Element {
            tag,
            qname,
            local: if F::PREFIXED_NAMES {
                local_part(qname)
            } else {
                qname
            },
            uri: uri.as_deref(),
            // Worked out only for a mapping that reads positions: it costs every element.
            position: if engine.positions {
                s.stack.next_position()
            } else {
                0
            },
        };
        s.capture.new_tag();

        // Trie states for this element, and the rules whose record it is.
        let rules_start = s.records.rules.len();
        let trie_states =
            s.stack
                .match_trie(&engine.trie, &el, &mut s.capture, &mut s.records.rules)?;
        let is_record = s.records.rules.len() > rules_start;

        // Capture plan: what the open records' paths can still read below this element.
        let (plan_states, reads_text) =
            s.stack
                .match_plan(engine, el.uri, el.local, &s.records.rules[rules_start..]);

        // The record size cap counts the whole subtree, captured or not.
        if is_record || !s.records.is_empty() {
            s.capture
                .count(tag.size() as u64 + 64, limits.max_record_bytes);
        }
        let mut capture = None;
        if plan_states.1 > plan_states.0 && !s.capture.too_large {
            let parent = s.stack.top().and_then(|f| f.capture);
            capture = Some(
                s.capture
                    .add_node(tag, el.local, el.uri, parent, el.position)?,
            );
        }
        if is_record {
            // A record too large to capture still opens, so that its rules count the drop.
            s.records
                .open(depth, capture.unwrap_or(NO_NODE), rules_start);
        }
        let kept_child = !engine.kept_children.is_empty()
            && engine
                .kept_children
                .iter()
                .any(|t| t.matches(el.uri, el.local));
        if kept_child {
            s.stack.child_text.clear();
        }
        // Ancestors' attributes are read only by records below them, which need trie states.
        let kept = if engine.reads_ancestor_attributes && trie_states.1 > trie_states.0 {
            tag.source()
        } else {
            qname
        };
        // The attributes open elements keep are bounded like a record, whatever the nesting
        // (a name alone is bounded by the longest event and max_depth).
        if kept.len() > qname.len()
            && (s.stack.kept_bytes() + kept.len()) as u64 > limits.max_record_bytes
        {
            return Err(DocumentError::Malformed {
                format: F::NAME,
                position: pos,
                message: format!(
                    "the start tags of the {} open elements hold more than max_record_bytes \
                     ({} bytes)",
                    depth + 1,
                    limits.max_record_bytes
                ),
            });
        }
        let mut frame = Frame::new(qname.len());
        frame.position = el.position;
        frame.trie_states = trie_states;
        frame.capture = capture;
        frame.plan_states = plan_states;
        frame.reads_text = reads_text;
        frame.kept_child = kept_child;
        s.stack.push(kept, frame);
        Ok(())
    }

    /// The document's top-level value, for a format whose paths start inside it (JSON: `/a`
    /// selects the member `a` of the top-level object). It matches no step of a path.
    pub(super) fn start_root(&mut self) {
        let s = &mut self.scratch;
        s.stack.root_seen = true;
        s.stack.push_root();
    }

    /// Closes the innermost element, whatever its name (a format whose parser checked the
    /// nesting).
    pub(super) fn end_top(&mut self) {
        self.close_top();
    }

    /// Text of the innermost open element (or outside the root), at byte `pos`.
    pub(super) fn text(&mut self, text: &str, pos: u64) -> Result<(), DocumentError> {
        let s = &mut self.scratch;
        let Some(f) = s.stack.top() else {
            if text.trim().is_empty() {
                return Ok(());
            }
            return Err(malformed(pos, "text outside the root element"));
        };
        let reads_text = f.reads_text;
        if f.kept_child {
            s.stack.child_text.push_str(text);
        }
        if !s.records.is_empty() {
            let max = self.engine.mapping.limits.max_record_bytes;
            s.capture.count(text.len() as u64, max);
            if reads_text && !s.capture.too_large {
                s.capture.add_text(text);
            }
        }
        Ok(())
    }

    /// The end tag `name`, at byte `pos`. It must close the innermost element; in lenient
    /// mode it may close an ancestor, implying the end tags missing below it.
    pub(super) fn end(&mut self, name: &str, pos: u64) -> Result<(), DocumentError> {
        loop {
            let stack = &self.scratch.stack;
            let Some(top) = stack.top() else {
                return Err(malformed(
                    pos,
                    format!("end tag </{name}> without a start tag"),
                ));
            };
            let top_name = stack.name(top);
            if top_name == name {
                self.close_top();
                return Ok(());
            }
            let open_above = stack.is_open(name);
            if self.engine.mapping.lenient && open_above {
                self.report.translation.recovered += 1;
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

    /// Closes the innermost element; a record closing is read by its rules first.
    fn close_top(&mut self) {
        let s = &mut self.scratch;
        let depth = s.stack.depth() - 1;
        if let Some(c) = s.stack.top().and_then(|f| f.capture) {
            s.capture.close_node(c);
        }
        if let Some(record) = s.records.close(depth) {
            // What was captured of a record too large is partial: never read it.
            let node = if s.capture.too_large {
                NO_NODE
            } else {
                record.node
            };
            let mut recorder = Recorder {
                engine: self.engine,
                view: View {
                    capture: &s.capture,
                    stack: &s.stack,
                    format: &self.format,
                    kept: &self.engine.kept_children,
                },
                values: &mut s.values,
                series: &mut s.series,
                report: &mut self.report,
                deferred: &mut s.deferred,
            };
            for &ri in s.records.rules_of(&record) {
                recorder.record(ri, node);
            }
            s.records.release(record);
            if s.records.is_empty() {
                s.capture.clear();
            }
        }
        s.stack.pop(&self.engine.kept_children);
        if !s.deferred.is_empty() {
            let mut fold = Fold {
                engine: self.engine,
                series: &mut s.series,
                report: &mut self.report,
            };
            if let Some((parent_depth, local, text)) = s.stack.just_kept() {
                s.deferred.arrived(parent_depth, local, text, &mut fold);
            }
            s.deferred.closed(s.stack.depth(), &mut fold);
        }
        if !s.stack.late.is_empty() {
            for (rule, records) in s.stack.late.drain(..) {
                self.report.issues(rule, Reason::LateChild, records, || {
                    format!(
                        "{records} record(s) read a child of an ancestor that the document prints \
                         after them: they read nothing there (an empty label, or a missing value)"
                    )
                });
            }
        }
    }

    /// The checks once the document has ended at byte `end`.
    pub(super) fn check_end(&mut self, end: u64) -> Result<(), DocumentError> {
        self.report.translation.bytes = end;
        let stack = &self.scratch.stack;
        if let Some(f) = stack.top() {
            let name = stack.name(f);
            return Err(malformed(
                end,
                format!(
                    "document ends with {} element(s) still open (innermost <{name}>): truncated?",
                    stack.depth()
                ),
            ));
        }
        if !stack.root_seen {
            return Err(malformed(end, "no root element"));
        }
        Ok(())
    }

    /// The translation of the document, which has ended.
    pub(super) fn finish(&mut self) -> Translation {
        let (families, series) = self.scratch.series.finish(self.engine, &mut self.report);
        self.report.translation.series = series;
        self.report.translation.families = families;
        self.report.finish()
    }
}
