//! A mapping compiled for streaming: the trie of the rules' record paths, the capture plan of
//! what their relative paths read, and each rule's label order. Nothing here depends on the
//! input format.

use std::collections::HashMap;

use crate::encode::Kind;
use crate::mapping::{Mapping, Rule};
use crate::path::{Axis, Leaf, NameTest, Operand, Predicate, RelPath};

/// A mapping compiled for streaming. Cheap to share between scrapes. A document is translated
/// by [`Engine::translate`] or, as its bytes arrive, by a [`super::Translator`].
#[derive(Debug)]
pub struct Engine {
    pub mapping: Mapping,
    /// All rules' record paths merged into one trie of steps; the root is node 0.
    pub(super) trie: Vec<TrieNode>,
    /// Names of leaf children whose text is kept while their parent is open, for the relative
    /// paths that read an ancestor's child (`../measTypes`).
    pub(super) kept_children: Vec<NameTest>,
    /// A path reads an attribute above its record (`ancestor::view/@name`): the open elements
    /// that may be such ancestors keep their whole start tag, not only their name.
    pub(super) reads_ancestor_attributes: bool,
    /// A rule's records are leaves only (`[not(*)]`).
    pub(super) leaf_only: bool,
    /// A path reads or tests `position()`: elements' positions are worked out.
    pub(super) positions: bool,
    /// Per rule: its labels (record, const, state) sorted by name, so a sample's key is built
    /// without sorting; `None` when two labels share a name (then the general path sorts).
    pub(super) label_order: Vec<Option<Vec<Slot>>>,
    /// What the rules' relative paths read below their records (see [`PlanNode`]).
    pub(super) capture_plan: Vec<PlanNode>,
    /// Per rule: its root in `capture_plan`.
    pub(super) plan_roots: Vec<usize>,
}

#[derive(Debug)]
pub(super) struct TrieEdge {
    pub(super) axis: Axis,
    pub(super) test: NameTest,
    pub(super) predicates: Vec<Predicate>,
    pub(super) target: usize,
}

#[derive(Debug, Default)]
pub(super) struct TrieNode {
    pub(super) edges: Vec<TrieEdge>,
    pub(super) has_descendant_edge: bool,
    /// The rules whose record path ends here.
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
pub(super) struct PlanNode {
    pub(super) edges: Vec<(NameTest, usize)>,
    pub(super) text: bool,
}

impl Engine {
    pub fn new(mapping: Mapping) -> Engine {
        let trie = compile_trie(&mapping);
        let mut kept_children = Vec::new();
        let mut reads_ancestor_attributes = false;
        for p in mapping.rules.iter().flat_map(|r| r.paths()) {
            match p {
                RelPath::Up { child: Some(t), .. } if !kept_children.contains(t) => {
                    kept_children.push(t.clone());
                }
                RelPath::Up {
                    child: None,
                    leaf: Leaf::Attr(_),
                    ..
                } => reads_ancestor_attributes = true,
                _ => {}
            }
        }
        let label_order = mapping.rules.iter().map(label_order).collect();
        let mut capture_plan = Vec::new();
        let mut plan_roots = Vec::new();
        for r in &mapping.rules {
            capture_plan.push(PlanNode::default());
            let root = capture_plan.len() - 1;
            plan_roots.push(root);
            for p in &r.record_filter {
                plan_predicate(&mut capture_plan, root, p);
            }
            for l in &r.labels {
                plan_path(&mut capture_plan, root, &l.path);
            }
            // An info metric's value is always 1: its value path is never read.
            if r.kind != Kind::Info {
                plan_path(&mut capture_plan, root, &r.value);
            }
            if let Some(h) = &r.histogram {
                for p in [Some(&h.bucket), h.sum.as_ref(), h.count.as_ref()]
                    .into_iter()
                    .flatten()
                {
                    plan_path(&mut capture_plan, root, p);
                }
            }
            if let Some(t) = &r.timestamp {
                plan_path(&mut capture_plan, root, &t.path);
            }
        }
        Engine {
            leaf_only: mapping.rules.iter().any(|r| r.leaf_only),
            positions: mapping.rules.iter().any(uses_position),
            mapping,
            trie,
            kept_children,
            reads_ancestor_attributes,
            label_order,
            capture_plan,
            plan_roots,
        }
    }
}

/// The rules' record paths merged into one trie: steps equal in axis, test and predicates
/// share a node.
fn compile_trie(mapping: &Mapping) -> Vec<TrieNode> {
    let mut trie = vec![TrieNode::default()];
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
                    trie.push(TrieNode::default());
                    let target = trie.len() - 1;
                    trie[cur].edges.push(TrieEdge {
                        axis: step.axis,
                        test: step.test.clone(),
                        predicates: step.predicates.clone(),
                        target,
                    });
                    if step.axis == Axis::Descendant {
                        trie[cur].has_descendant_edge = true;
                    }
                    keys.insert(key, target);
                    target
                }
            };
        }
        trie[cur].rules.push(ri);
    }
    trie
}

fn plan_child(plan: &mut Vec<PlanNode>, at: usize, test: &NameTest) -> usize {
    if let Some((_, n)) = plan[at].edges.iter().find(|(t, _)| t == test) {
        return *n;
    }
    plan.push(PlanNode::default());
    let n = plan.len() - 1;
    plan[at].edges.push((test.clone(), n));
    n
}

fn plan_predicate(plan: &mut Vec<PlanNode>, at: usize, p: &Predicate) {
    match &p.operand {
        Operand::Child(t) => {
            let c = plan_child(plan, at, t);
            plan[c].text = true;
        }
        Operand::ChildPath(steps) => {
            let mut c = at;
            for t in steps {
                c = plan_child(plan, c, t);
            }
            plan[c].text = true;
        }
        Operand::Text => plan[at].text = true,
        Operand::Attr(_) | Operand::Name | Operand::LocalName | Operand::Position => {}
    }
}

fn plan_path(plan: &mut Vec<PlanNode>, root: usize, path: &RelPath) {
    if let RelPath::Concat(_) = path {
        for p in path.paths() {
            plan_path(plan, root, p);
        }
        return;
    }
    // Paths above the record read the open ancestors, not the record's subtree.
    let RelPath::Down { steps, leaf } = path else {
        return;
    };
    let mut cur = root;
    for (test, preds) in steps {
        cur = plan_child(plan, cur, test);
        for p in preds {
            plan_predicate(plan, cur, p);
        }
    }
    if let Leaf::Text = leaf {
        plan[cur].text = true;
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

/// Does the rule read or test an element's `position()`?
fn uses_position(rule: &Rule) -> bool {
    let pred = |p: &Predicate| matches!(p.operand, Operand::Position);
    rule.record
        .steps
        .iter()
        .flat_map(|s| &s.predicates)
        .chain(&rule.record_filter)
        .any(pred)
        || rule.paths().any(|p| match p {
            RelPath::Down { steps, leaf } => {
                matches!(leaf, Leaf::Position)
                    || steps.iter().flat_map(|(_, preds)| preds).any(pred)
            }
            RelPath::Up { leaf, .. } => matches!(leaf, Leaf::Position),
            RelPath::Concat(_) => false,
        })
}
