//! What the rules can read of the elements the document is at: the current start tag's
//! attributes, and the captured subtree of the open records.
//!
//! Only the elements a record's relative paths can reach are captured (the capture plan, see
//! [`super::plan::PlanNode`]), in an arena whose names, attributes and text live in buffers
//! shared by all nodes and reused for the whole document: capturing allocates nothing per
//! node. The arena is emptied when the outermost open record closes.

use std::borrow::Cow;

use super::input::StartTag;
use super::report::DocumentError;
use super::reuse::Reuse;
use crate::path::{Leaf, NameTest, Operand, Predicate};

/// No node: the end of a child or sibling list, or a record whose subtree was not captured.
pub(super) const NO_NODE: usize = usize::MAX;

/// An attribute: its namespace (an index into [`Capture::uris`]) and ranges of a string buffer.
#[derive(Debug)]
struct Attr {
    uri: Option<usize>,
    local: (usize, usize),
    value: (usize, usize),
}

/// A captured element. Ranges into the buffers of its [`Capture`].
#[derive(Debug)]
struct Node {
    qname: (usize, usize),
    local_at: usize,
    uri: Option<usize>,
    attrs: (usize, usize),
    first_child: usize,
    last_child: usize,
    next_sibling: usize,
    /// Text segments of this node and its descendants, in document order: a range of
    /// `Capture::texts` (its end is `NO_NODE` while the node is open).
    texts: (usize, usize),
    /// Its 1-based position among its parent's element children (captured or not).
    position: u32,
}

#[derive(Debug, Default)]
pub(super) struct Capture {
    /// The current start tag's attributes, parsed once when a predicate or a capture needs
    /// them (`tag_parsed`): ranges into `tag_strings`.
    tag_attrs: Vec<Attr>,
    tag_strings: String,
    tag_parsed: bool,
    nodes: Vec<Node>,
    /// Names, attribute values and texts of the captured nodes, one after another.
    strings: String,
    attrs: Vec<Attr>,
    /// Text segments (ranges of `strings`) in document order.
    texts: Vec<(usize, usize)>,
    /// Namespace URIs of the document, interned: attributes and nodes refer to them by index.
    uris: Vec<String>,
    /// Bytes of the open records so far, captured or not, against `max_record_bytes`.
    record_bytes: u64,
    /// The open records grew past `max_record_bytes`: what is captured of them is partial.
    pub(super) too_large: bool,
}

impl Capture {
    /// Ready for a new document.
    pub(super) fn reuse(&mut self) {
        self.tag_attrs.reuse();
        self.tag_strings.reuse();
        self.tag_parsed = false;
        self.nodes.reuse();
        self.strings.reuse();
        self.attrs.reuse();
        self.texts.reuse();
        self.uris.clear();
        self.record_bytes = 0;
        self.too_large = false;
    }

    /// A new start tag: its attributes are parsed when first asked for.
    #[inline]
    pub(super) fn new_tag(&mut self) {
        self.tag_parsed = false;
    }

    fn parse_tag<T: StartTag>(&mut self, tag: &T) -> Result<(), DocumentError> {
        if self.tag_parsed {
            return Ok(());
        }
        self.tag_parsed = true;
        self.tag_attrs.clear();
        self.tag_strings.clear();
        tag.attributes(|uri, local, value| {
            let uri = uri.map(|u| intern(&mut self.uris, u));
            let l0 = self.tag_strings.len();
            self.tag_strings.push_str(local);
            let l1 = self.tag_strings.len();
            self.tag_strings.push_str(value);
            self.tag_attrs.push(Attr {
                uri,
                local: (l0, l1),
                value: (l1, self.tag_strings.len()),
            });
        })
    }

    /// The value of the current start tag's attribute that `test` matches.
    pub(super) fn tag_attr<T: StartTag>(
        &mut self,
        tag: &T,
        test: &NameTest,
    ) -> Result<Option<&str>, DocumentError> {
        self.parse_tag(tag)?;
        Ok(find_attr(
            &self.tag_attrs,
            &self.tag_strings,
            &self.uris,
            test,
        ))
    }

    /// Counts `bytes` of an open record towards `max_record_bytes`.
    #[inline]
    pub(super) fn count(&mut self, bytes: u64, max_record_bytes: u64) {
        self.record_bytes += bytes;
        if self.record_bytes > max_record_bytes {
            self.too_large = true;
        }
    }

    /// Captures the element of the current start tag, below the captured `parent`.
    pub(super) fn add_node<T: StartTag>(
        &mut self,
        tag: &T,
        local: &str,
        uri: Option<&str>,
        parent: Option<usize>,
        position: u32,
    ) -> Result<usize, DocumentError> {
        self.parse_tag(tag)?;
        let q0 = self.strings.len();
        self.strings.push_str(tag.name());
        let q1 = self.strings.len();
        let a0 = self.attrs.len();
        let uri = uri.map(|u| intern(&mut self.uris, u));
        for a in &self.tag_attrs {
            let l0 = self.strings.len();
            self.strings
                .push_str(&self.tag_strings[a.local.0..a.local.1]);
            let l1 = self.strings.len();
            self.strings
                .push_str(&self.tag_strings[a.value.0..a.value.1]);
            self.attrs.push(Attr {
                uri: a.uri,
                local: (l0, l1),
                value: (l1, self.strings.len()),
            });
        }
        let idx = self.nodes.len();
        self.nodes.push(Node {
            qname: (q0, q1),
            local_at: q1 - local.len(),
            uri,
            attrs: (a0, self.attrs.len()),
            first_child: NO_NODE,
            last_child: NO_NODE,
            next_sibling: NO_NODE,
            texts: (self.texts.len(), NO_NODE),
            position,
        });
        if let Some(p) = parent {
            match self.nodes[p].last_child {
                NO_NODE => self.nodes[p].first_child = idx,
                last => self.nodes[last].next_sibling = idx,
            }
            self.nodes[p].last_child = idx;
        }
        Ok(idx)
    }

    /// Text inside the innermost captured node (and so inside its ancestors).
    #[inline]
    pub(super) fn add_text(&mut self, text: &str) {
        let t0 = self.strings.len();
        self.strings.push_str(text);
        self.texts.push((t0, self.strings.len()));
    }

    /// `node`'s element has ended: its text is complete.
    #[inline]
    pub(super) fn close_node(&mut self, node: usize) {
        self.nodes[node].texts.1 = self.texts.len();
    }

    /// The outermost open record has closed: nothing captured is read any more.
    pub(super) fn clear(&mut self) {
        self.nodes.clear();
        self.strings.clear();
        self.attrs.clear();
        self.texts.clear();
        self.record_bytes = 0;
        self.too_large = false;
    }

    /// Appends what `steps` then `leaf` select below `node` to `out`. `false` when they select
    /// nothing (then nothing is appended).
    pub(super) fn read_down(
        &self,
        node: usize,
        steps: &[(NameTest, Vec<Predicate>)],
        leaf: &Leaf,
        out: &mut String,
    ) -> bool {
        let mut cur = node;
        for (test, preds) in steps {
            let next = self.children(cur).find(|&c| {
                test.matches(self.uri(c), self.local(c))
                    && preds.iter().all(|p| self.predicate(c, p))
            });
            match next {
                Some(c) => cur = c,
                None => return false,
            }
        }
        match leaf {
            Leaf::Text => {
                for &(a, b) in self.text_segments(cur) {
                    out.push_str(&self.strings[a..b]);
                }
            }
            Leaf::Name => out.push_str(self.name(cur)),
            Leaf::LocalName => out.push_str(self.local(cur)),
            Leaf::Position => push_number(out, self.nodes[cur].position),
            Leaf::Attr(test) => match self.attr(cur, test) {
                Some(v) => out.push_str(v),
                None => return false,
            },
        }
        true
    }

    /// Does the captured `node` pass predicate `p`?
    pub(super) fn predicate(&self, node: usize, p: &Predicate) -> bool {
        let v: Option<Cow<'_, str>> = match &p.operand {
            Operand::Attr(t) => self.attr(node, t).map(Cow::Borrowed),
            Operand::Child(t) => self
                .children(node)
                .find(|&c| t.matches(self.uri(c), self.local(c)))
                .map(|c| self.text(c)),
            Operand::ChildPath(steps) => {
                let mut at = Some(node);
                for t in steps {
                    at = at.and_then(|n| {
                        self.children(n)
                            .find(|&c| t.matches(self.uri(c), self.local(c)))
                    });
                }
                at.map(|c| self.text(c))
            }
            Operand::Text => Some(self.text(node)),
            Operand::Name => Some(Cow::Borrowed(self.name(node))),
            Operand::LocalName => Some(Cow::Borrowed(self.local(node))),
            Operand::Position => Some(Cow::Owned(self.nodes[node].position.to_string())),
        };
        p.test(v.as_deref())
    }

    fn name(&self, n: usize) -> &str {
        let (a, b) = self.nodes[n].qname;
        &self.strings[a..b]
    }

    fn local(&self, n: usize) -> &str {
        &self.strings[self.nodes[n].local_at..self.nodes[n].qname.1]
    }

    fn uri(&self, n: usize) -> Option<&str> {
        self.nodes[n].uri.map(|i| self.uris[i].as_str())
    }

    fn children(&self, n: usize) -> impl Iterator<Item = usize> + '_ {
        let mut next = self.nodes[n].first_child;
        std::iter::from_fn(move || {
            let cur = next;
            if cur == NO_NODE {
                return None;
            }
            next = self.nodes[cur].next_sibling;
            Some(cur)
        })
    }

    fn attr(&self, node: usize, test: &NameTest) -> Option<&str> {
        let n = &self.nodes[node];
        find_attr(
            &self.attrs[n.attrs.0..n.attrs.1],
            &self.strings,
            &self.uris,
            test,
        )
    }

    fn text_segments(&self, node: usize) -> &[(usize, usize)] {
        let n = &self.nodes[node];
        let end = if n.texts.1 == NO_NODE {
            self.texts.len()
        } else {
            n.texts.1
        };
        &self.texts[n.texts.0..end]
    }

    /// All text inside a captured node: its segments and its descendants', in order.
    fn text(&self, node: usize) -> Cow<'_, str> {
        match self.text_segments(node) {
            [] => Cow::Borrowed(""),
            [(a, b)] => Cow::Borrowed(&self.strings[*a..*b]),
            segs => {
                let mut s = String::new();
                for &(a, b) in segs {
                    s.push_str(&self.strings[a..b]);
                }
                Cow::Owned(s)
            }
        }
    }
}

/// Appends `n` in decimal.
pub(super) fn push_number(out: &mut String, n: u32) {
    use std::fmt::Write;
    let _ = write!(out, "{n}");
}

fn intern(uris: &mut Vec<String>, uri: &str) -> usize {
    match uris.iter().position(|u| u == uri) {
        Some(i) => i,
        None => {
            uris.push(uri.to_string());
            uris.len() - 1
        }
    }
}

fn find_attr<'a>(
    attrs: &[Attr],
    strings: &'a str,
    uris: &[String],
    test: &NameTest,
) -> Option<&'a str> {
    attrs
        .iter()
        .find(|a| {
            test.matches(
                a.uri.map(|i| uris[i].as_str()),
                &strings[a.local.0..a.local.1],
            )
        })
        .map(|a| &strings[a.value.0..a.value.1])
}
