//! The open elements: the start tag each keeps, the trie states and capture-plan states it
//! reached, and the text of the leaf children that paths read from an ancestor; reading a path
//! that climbs above a record.
//!
//! A record that reads an ancestor's leaf child the document prints only after the record
//! (`ancestor::x/id` with `<id>` after it) reads nothing there. Its sample waits for the child
//! when it can (see `defer`); otherwise, when that child then arrives, the records that
//! missed it are counted (`late_child`), so the empty values are not silent.
//!
//! Every open element carries the set of trie states it matched. An element whose set is empty
//! (and whose parent has no `//` state) costs only the well-formedness bookkeeping.

use std::cell::{Cell, RefCell};

use super::capture::{Capture, push_number};
use super::input::{Format, StartTag};
use super::plan::{Engine, TrieNode};
use super::report::DocumentError;
use super::reuse::Reuse;
use crate::path::{AncestorSel, Axis, Leaf, NameTest, Operand, Predicate};

/// An element being opened: its start tag and the names read from it.
pub(super) struct Element<'a, T> {
    pub(super) tag: &'a T,
    pub(super) qname: &'a str,
    pub(super) local: &'a str,
    pub(super) uri: Option<&'a str>,
    /// Its 1-based position among its parent's element children.
    pub(super) position: u32,
}

#[derive(Debug)]
pub(super) struct Frame {
    /// What it keeps of its start tag: `tag_len` bytes of `Stack::tags` from `tag_start`, its
    /// name (`name_len` bytes) first.
    tag_start: usize,
    tag_len: usize,
    name_len: usize,
    /// The trie states it reached: a range of `Stack::trie_states`.
    pub(super) trie_states: (usize, usize),
    /// Its node in the capture, when captured.
    pub(super) capture: Option<usize>,
    /// The capture-plan states it reached: a range of `Stack::plan_states`.
    pub(super) plan_states: (usize, usize),
    /// Text inside it is kept (a path reads it).
    pub(super) reads_text: bool,
    /// It may be a kept leaf child: its text collects in `Stack::child_text` (only the
    /// innermost open element can be a leaf, so one buffer serves).
    pub(super) kept_child: bool,
    /// Its element children so far (wrapping after 2^32: no document has that many).
    pub(super) children: u32,
    /// Its 1-based position among its parent's element children.
    pub(super) position: u32,
}

impl Frame {
    pub(super) fn new(name_len: usize) -> Frame {
        Frame {
            tag_start: 0,
            tag_len: 0,
            name_len,
            trie_states: (0, 0),
            capture: None,
            plan_states: (0, 0),
            reads_text: false,
            kept_child: false,
            children: 0,
            position: 1,
        }
    }
}

/// The text of a leaf child of an open element, kept for the paths that read it from a
/// record below its parent (`../measTypes`).
#[derive(Debug)]
struct KeptChild {
    parent_depth: usize,
    local: String,
    text: String,
}

/// Records of `rule` that read the leaf child `child` (an index of `Engine::kept_children`)
/// of the open element at `parent_depth` and found none yet.
#[derive(Debug)]
struct Miss {
    parent_depth: usize,
    child: usize,
    rule: usize,
    records: u64,
}

#[derive(Debug, Default)]
pub(super) struct Stack {
    /// What the open elements keep of their start tags, one after another.
    tags: String,
    frames: Vec<Frame>,
    /// (trie node, carried by a `//` step) per open element; the document's is the root's.
    trie_states: Vec<(u32, bool)>,
    /// Capture-plan nodes (`Engine::capture_plan`) per open element.
    plan_states: Vec<usize>,
    /// Leaf children of open elements that closed before their parent.
    kept_children: Vec<KeptChild>,
    /// The text of the innermost element while it may be a kept child.
    pub(super) child_text: String,
    /// Kept children that records below their parent read before they arrived.
    misses: RefCell<Vec<Miss>>,
    /// (rule, records) that read a kept child which arrived after them: to be reported.
    pub(super) late: Vec<(usize, u64)>,
    /// The last kept child a path missed: (its parent's depth, index in `kept`).
    last_miss: Cell<Option<(usize, usize)>>,
    /// The last `pop` kept the element it closed as a leaf child.
    just_kept: bool,
    pub(super) root_seen: bool,
    pub(super) root_closed: bool,
}

impl Stack {
    /// Ready for a new document.
    pub(super) fn reuse(&mut self) {
        self.tags.reuse();
        self.frames.reuse();
        self.trie_states.reuse();
        self.trie_states.push((0, false));
        self.plan_states.reuse();
        self.kept_children.clear();
        self.misses.get_mut().clear();
        self.late.clear();
        self.last_miss.set(None);
        self.just_kept = false;
        self.child_text.reuse();
        self.root_seen = false;
        self.root_closed = false;
    }

    /// How many elements are open.
    #[inline]
    pub(super) fn depth(&self) -> usize {
        self.frames.len()
    }

    #[inline]
    pub(super) fn top(&self) -> Option<&Frame> {
        self.frames.last()
    }

    #[inline]
    pub(super) fn name(&self, f: &Frame) -> &str {
        &self.tags[f.tag_start..f.tag_start + f.name_len]
    }

    /// Bytes the open elements keep of their start tags.
    #[inline]
    pub(super) fn kept_bytes(&self) -> usize {
        self.tags.len()
    }

    /// The position the next element child of the innermost open element will have.
    #[inline]
    pub(super) fn next_position(&self) -> u32 {
        self.frames.last().map_or(1, |f| f.children.wrapping_add(1))
    }

    /// The innermost element no longer has a capture node (its record was cancelled).
    pub(super) fn uncapture_top(&mut self) {
        if let Some(f) = self.frames.last_mut() {
            f.capture = None;
        }
    }

    /// The kept child the last path read above its record missed, if it did: (the depth
    /// of its parent, its index in `Engine::kept_children`).
    #[inline]
    pub(super) fn take_miss(&self) -> Option<(usize, usize)> {
        self.last_miss.take()
    }

    /// A miss of rule `rule` is not to be counted: its sample waits for the child.
    pub(super) fn unnote_miss(&self, parent_depth: usize, child: usize, rule: usize) {
        let mut misses = self.misses.borrow_mut();
        if let Some(i) = misses
            .iter()
            .position(|m| m.parent_depth == parent_depth && m.child == child && m.rule == rule)
        {
            misses[i].records -= 1;
            if misses[i].records == 0 {
                misses.remove(i);
            }
        }
    }

    /// The leaf child the last `pop` kept: its parent's depth, its local name and its text.
    pub(super) fn just_kept(&self) -> Option<(usize, &str, &str)> {
        if !self.just_kept {
            return None;
        }
        self.kept_children
            .last()
            .map(|c| (c.parent_depth, c.local.as_str(), c.text.as_str()))
    }

    /// Is an element named `name` open?
    pub(super) fn is_open(&self, name: &str) -> bool {
        self.frames.iter().any(|f| self.name(f) == name)
    }

    /// The leaf child `local` of the open element at `parent_depth` has closed: the records
    /// that missed it are late.
    #[cold]
    fn arrived(&mut self, parent_depth: usize, local: &str, kept: &[NameTest]) {
        let late = &mut self.late;
        self.misses.get_mut().retain(|m| {
            let arrived = m.parent_depth == parent_depth
                && kept.get(m.child).is_some_and(|t| t.matches(None, local));
            if arrived {
                late.push((m.rule, m.records));
            }
            !arrived
        });
    }

    /// Pushes the trie states `el` reaches from its parent's, and appends to `rules` those
    /// whose record it is (unsorted, perhaps repeated). Returns the range of its states.
    #[inline]
    pub(super) fn match_trie<T: StartTag>(
        &mut self,
        trie: &[TrieNode],
        el: &Element<'_, T>,
        capture: &mut Capture,
        rules: &mut Vec<usize>,
    ) -> Result<(usize, usize), DocumentError> {
        let (ps, pe) = match self.frames.last() {
            Some(f) => f.trie_states,
            None => (0, 1),
        };
        let start = self.trie_states.len();
        for i in ps..pe {
            let (node, carried) = self.trie_states[i];
            let n = &trie[node as usize];
            for edge in &n.edges {
                if carried && edge.axis == Axis::Child {
                    continue;
                }
                if !edge.test.matches(el.uri, el.local) {
                    continue;
                }
                let mut pass = true;
                for p in &edge.predicates {
                    if !start_predicate(p, el, capture)? {
                        pass = false;
                        break;
                    }
                }
                if !pass {
                    continue;
                }
                let target = &trie[edge.target];
                // A state with nowhere to go is not kept for the children (duplicate rules
                // are removed when the record opens).
                let st = (edge.target as u32, false);
                if target.edges.is_empty() {
                    rules.extend_from_slice(&target.rules);
                } else if !self.trie_states[start..].contains(&st) {
                    self.trie_states.push(st);
                    rules.extend_from_slice(&target.rules);
                }
            }
            if n.has_descendant_edge {
                let st = (node, true);
                if !self.trie_states[start..].contains(&st) {
                    self.trie_states.push(st);
                }
            }
        }
        Ok((start, self.trie_states.len()))
    }

    /// Pushes the capture-plan states of an element named (`uri`, `local`): those its parent's
    /// lead to, when the parent is captured, and the plan roots of `record_rules`, the rules
    /// whose record it is. Returns their range, and whether a path reads its text.
    // Inlined: it runs for every element, and a call costs more than its usual work.
    #[inline(always)]
    pub(super) fn match_plan(
        &mut self,
        engine: &Engine,
        uri: Option<&str>,
        local: &str,
        record_rules: &[usize],
    ) -> ((usize, usize), bool) {
        let plan = &engine.capture_plan;
        let parent = self.frames.last();
        let mut reads_text = parent.is_some_and(|f| f.reads_text);
        let start = self.plan_states.len();
        if let Some(f) = parent
            && f.capture.is_some()
        {
            for k in f.plan_states.0..f.plan_states.1 {
                for (test, target) in &plan[self.plan_states[k]].edges {
                    if test.matches(uri, local) && !self.plan_states[start..].contains(target) {
                        self.plan_states.push(*target);
                        reads_text |= plan[*target].text;
                    }
                }
            }
        }
        for &rule in record_rules {
            let root = engine.plan_roots[rule];
            self.plan_states.push(root);
            reads_text |= plan[root].text;
        }
        ((start, self.plan_states.len()), reads_text)
    }

    /// Opens an element that keeps `tag` (which starts with its name).
    #[inline]
    pub(super) fn push(&mut self, tag: &str, mut frame: Frame) {
        frame.tag_start = self.tags.len();
        frame.tag_len = tag.len();
        self.tags.push_str(tag);
        if let Some(parent) = self.frames.last_mut() {
            parent.children = parent.children.wrapping_add(1);
            parent.kept_child = false;
        }
        self.frames.push(frame);
    }

    /// Opens the document's top-level value (see [`super::run::Run::start_root`]): its trie
    /// states are the document's own, so its children match the paths' first steps.
    pub(super) fn push_root(&mut self) {
        let start = self.trie_states.len();
        self.trie_states.push((0, false));
        let mut frame = Frame::new(0);
        frame.trie_states = (start, start + 1);
        frame.plan_states = (self.plan_states.len(), self.plan_states.len());
        self.push("", frame);
    }

    /// Closes the innermost element. `kept` are the names of the children kept for paths
    /// above a record (`Engine::kept_children`).
    #[inline]
    pub(super) fn pop(&mut self, kept: &[NameTest]) {
        self.just_kept = false;
        let Some(f) = self.frames.pop() else { return };
        let depth = self.frames.len();
        // Children kept for ancestor references die with their parent.
        while self
            .kept_children
            .last()
            .is_some_and(|c| c.parent_depth >= depth)
        {
            self.kept_children.pop();
        }
        if !self.misses.get_mut().is_empty() {
            self.misses.get_mut().retain(|m| m.parent_depth < depth);
        }
        if f.kept_child && f.children == 0 && depth > 0 {
            let name = self.name(&f);
            let local = name.rsplit(':').next().unwrap_or(name).to_string();
            if !self.misses.get_mut().is_empty() {
                self.arrived(depth - 1, &local, kept);
            }
            self.just_kept = true;
            self.kept_children.push(KeptChild {
                parent_depth: depth - 1,
                local,
                text: self.child_text.clone(),
            });
        }
        self.tags.truncate(f.tag_start);
        self.trie_states.truncate(f.trie_states.0);
        self.plan_states.truncate(f.plan_states.0);
        if self.frames.is_empty() {
            self.root_closed = true;
        }
    }

    /// Appends to `out` what a path above the record (the innermost open element) selects:
    /// the ancestor `sel`, then its kept `child`'s text or its `leaf`. `false` when that selects
    /// nothing; a child not there (yet) is noted against rule `rule`, see [`Miss`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn read_up<F: Format>(
        &self,
        format: &F,
        sel: &AncestorSel,
        child: Option<&NameTest>,
        leaf: &Leaf,
        out: &mut String,
        rule: usize,
        kept: &[NameTest],
    ) -> bool {
        self.last_miss.set(None);
        let record_depth = self.frames.len() - 1;
        let depth = match sel {
            AncestorSel::Up(n) => record_depth.checked_sub(*n),
            AncestorSel::Named(test) => (0..record_depth).rev().find(|&d| {
                let name = self.name(&self.frames[d]);
                test.matches(None, name.rsplit(':').next().unwrap_or(name))
            }),
        };
        let Some(depth) = depth else { return false };
        if let Some(child) = child {
            return match self
                .kept_children
                .iter()
                .find(|c| c.parent_depth == depth && child.matches(None, &c.local))
            {
                Some(c) => {
                    out.push_str(&c.text);
                    true
                }
                None => {
                    if let Some(child) = kept.iter().position(|t| t == child) {
                        self.last_miss.set(Some((depth, child)));
                        let mut misses = self.misses.borrow_mut();
                        match misses
                            .iter_mut()
                            .find(|m| m.parent_depth == depth && m.child == child && m.rule == rule)
                        {
                            Some(m) => m.records += 1,
                            None => misses.push(Miss {
                                parent_depth: depth,
                                child,
                                rule,
                                records: 1,
                            }),
                        }
                    }
                    false
                }
            };
        }
        let f = &self.frames[depth];
        let tag = &self.tags[f.tag_start..f.tag_start + f.tag_len];
        let name = &tag[..f.name_len];
        match leaf {
            Leaf::Name => out.push_str(name),
            Leaf::LocalName => out.push_str(name.rsplit(':').next().unwrap_or(name)),
            Leaf::Position => push_number(out, f.position),
            Leaf::Attr(test) => return format.kept_attribute(tag, f.name_len, test, out),
            // Text of an open ancestor is not complete yet: refused at load.
            Leaf::Text => return false,
        }
        true
    }
}

/// A predicate decided from the start tag (content predicates wait for the record's end).
fn start_predicate<T: StartTag>(
    p: &Predicate,
    el: &Element<'_, T>,
    capture: &mut Capture,
) -> Result<bool, DocumentError> {
    let value = match &p.operand {
        Operand::Name => Some(el.qname),
        Operand::LocalName => Some(el.local),
        Operand::Position => {
            let mut buf = [0u8; 10];
            return Ok(p.test(Some(format_u32(&mut buf, el.position))));
        }
        Operand::Attr(test) => capture.tag_attr(el.tag, test)?,
        // Content predicates were moved to the rule's record filter at load.
        Operand::Child(_) | Operand::ChildPath(_) | Operand::Text => return Ok(true),
    };
    Ok(p.test(value))
}

/// `n` in decimal, written into `buf` (no allocation in the matching of a start tag).
fn format_u32(buf: &mut [u8; 10], mut n: u32) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}
