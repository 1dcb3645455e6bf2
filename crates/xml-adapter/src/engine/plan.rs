//! A mapping compiled for streaming: the record paths' trie, the capture plan, label order.

use std::collections::HashMap;

use crate::encode::Kind;
use crate::mapping::{Mapping, Rule};
use crate::path::{Axis, Leaf, NameTest, Operand, Predicate, RelPath};

#[derive(Debug)]
pub(super) struct Edge {
    pub(super) axis: Axis,
    pub(super) test: NameTest,
    pub(super) preds: Vec<Predicate>,
    pub(super) target: usize,
}

#[derive(Debug, Default)]
pub(super) struct Node {
    pub(super) edges: Vec<Edge>,
    pub(super) has_descendant_edge: bool,
    pub(super) rules: Vec<usize>,
}

/// Where one label of a sample comes from, in the order the labels are sorted by name.
#[derive(Debug, Clone, Copy)]
pub(super) enum Slot {
    Label(usize),
    Const(usize),
    /// A stateset's own label (named after the metric).
    State,
}

/// What a record's relative paths can read below it: a trie of child steps. Only elements on
/// it are captured as nodes; text is kept only where a path reads it (`text`: this node's
/// whole text, descendants included). The rest of a record streams past uncopied.
#[derive(Debug, Default)]
pub(super) struct NeedNode {
    pub(super) edges: Vec<(NameTest, usize)>,
    pub(super) text: bool,
}

fn need_child(need: &mut Vec<NeedNode>, at: usize, test: &NameTest) -> usize {
    if let Some((_, n)) = need[at].edges.iter().find(|(t, _)| t == test) {
        return *n;
    }
    need.push(NeedNode::default());
    let n = need.len() - 1;
    need[at].edges.push((test.clone(), n));
    n
}

fn need_predicate(need: &mut Vec<NeedNode>, at: usize, p: &Predicate) {
    match &p.operand {
        Operand::Child(t) => {
            let c = need_child(need, at, t);
            need[c].text = true;
        }
        Operand::Text => need[at].text = true,
        Operand::Attr(_) | Operand::Name | Operand::LocalName => {}
    }
}

fn need_path(need: &mut Vec<NeedNode>, root: usize, path: &RelPath) {
    // Paths above the record read the open ancestors, not the record's subtree.
    let RelPath::Down { steps, leaf } = path else {
        return;
    };
    let mut cur = root;
    for (test, preds) in steps {
        cur = need_child(need, cur, test);
        for p in preds {
            need_predicate(need, cur, p);
        }
    }
    if let Leaf::Text = leaf {
        need[cur].text = true;
    }
}

/// A mapping compiled for streaming. Cheap to share between scrapes.
#[derive(Debug)]
pub struct Engine {
    pub mapping: Mapping,
    pub(super) nodes: Vec<Node>,
    /// Names of leaf children that relative paths read from ancestors (`../measTypes`).
    pub(super) captured_children: Vec<NameTest>,
    /// Per rule: its labels (record, const, state) sorted by name, so a sample's key is built
    /// without sorting; `None` when two labels share a name (then the general path sorts).
    pub(super) label_order: Vec<Option<Vec<Slot>>>,
    pub(super) need: Vec<NeedNode>,
    /// Per rule: its root in `need`.
    pub(super) need_root: Vec<usize>,
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
                    format!("{:?}|{:?}|{:?}", step.axis, step.test, step.predicates),
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
        let label_order = mapping.rules.iter().map(label_order).collect();
        let mut need = Vec::new();
        let mut need_root = Vec::new();
        for r in &mapping.rules {
            need.push(NeedNode::default());
            let root = need.len() - 1;
            need_root.push(root);
            for p in &r.record_filter {
                need_predicate(&mut need, root, p);
            }
            for l in &r.labels {
                need_path(&mut need, root, &l.path);
            }
            // An info metric's value is always 1: its value path is never read.
            if r.kind != Kind::Info {
                need_path(&mut need, root, &r.value);
            }
            if let Some(h) = &r.histogram {
                need_path(&mut need, root, &h.bucket);
            }
        }
        Engine {
            mapping,
            nodes,
            captured_children,
            label_order,
            need,
            need_root,
        }
    }
}

fn label_order(rule: &Rule) -> Option<Vec<Slot>> {
    let mut slots: Vec<(&str, Slot)> = Vec::new();
    for (i, l) in rule.labels.iter().enumerate() {
        slots.push((&l.name, Slot::Label(i)));
    }
    for (i, (k, _)) in rule.const_labels.iter().enumerate() {
        slots.push((k, Slot::Const(i)));
    }
    if rule.kind == Kind::Stateset {
        slots.push((&rule.name, Slot::State));
    }
    slots.sort_by(|a, b| a.0.cmp(b.0));
    if slots.windows(2).any(|w| w[0].0 == w[1].0) {
        return None;
    }
    Some(slots.into_iter().map(|(_, s)| s).collect())
}
