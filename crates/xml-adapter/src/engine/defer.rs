//! Records waiting for an ancestor's child the document prints after them
//! (`ancestor::pool/id` with `<id>` after the pool's members): such a record's sample is read
//! as usual but for that one label, and kept until the child arrives (then the label is its
//! text) or the ancestor closes without it (then the label is empty, as for any path that
//! selects nothing). What waits is bounded by `max_record_bytes`; a record past that is served
//! at once with the empty label and counted (`late_child`) if the child then arrives.

use super::plan::{Engine, Slot};
use super::report::{Reason, Report};
use super::series::Series;
use crate::transform;

/// One waiting sample.
#[derive(Debug)]
pub(super) struct Waiting {
    /// Depth of the ancestor whose child it waits for.
    pub(super) parent_depth: usize,
    /// The child: an index of `Engine::kept_children`.
    pub(super) child: usize,
    pub(super) rule: usize,
    /// The label it waits for (an index of the rule's labels); the others are read.
    pub(super) label: usize,
    pub(super) labels: Vec<String>,
    pub(super) value: f64,
    pub(super) timestamp: Option<f64>,
}

impl Waiting {
    fn bytes(&self) -> usize {
        self.labels.iter().map(|l| l.len() + 24).sum::<usize>() + 64
    }
}

#[derive(Debug, Default)]
pub(super) struct Deferred {
    waiting: Vec<Waiting>,
    bytes: usize,
    /// The deepest ancestor a sample waits on: closing anything deeper settles nothing.
    deepest: usize,
}

impl Deferred {
    pub(super) fn reuse(&mut self) {
        self.waiting.clear();
        self.bytes = 0;
        self.deepest = 0;
    }

    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Keeps `w` unless that would hold more than `max` bytes; gives it back then.
    pub(super) fn wait(&mut self, w: Waiting, max: u64) -> Result<(), Waiting> {
        let bytes = w.bytes();
        if (self.bytes + bytes) as u64 > max {
            return Err(w);
        }
        self.bytes += bytes;
        self.deepest = self.deepest.max(w.parent_depth);
        self.waiting.push(w);
        Ok(())
    }

    /// The child `child_local` of the open element at `parent_depth` has arrived, its text
    /// `text`: the samples waiting for it are served.
    pub(super) fn arrived(
        &mut self,
        parent_depth: usize,
        child_local: &str,
        text: &str,
        out: &mut Fold<'_, '_>,
    ) {
        let kept = &out.engine.kept_children;
        self.settle(
            |w| {
                w.parent_depth == parent_depth
                    && kept
                        .get(w.child)
                        .is_some_and(|t| t.matches(None, child_local))
            },
            text,
            out,
        );
    }

    /// The elements at `depth` and deeper have closed: samples waiting for a child of one of
    /// them are served with the empty label.
    pub(super) fn closed(&mut self, depth: usize, out: &mut Fold<'_, '_>) {
        if depth > self.deepest || self.waiting.is_empty() {
            return;
        }
        self.settle(|w| w.parent_depth >= depth, "", out);
    }

    fn settle(&mut self, which: impl Fn(&Waiting) -> bool, text: &str, out: &mut Fold<'_, '_>) {
        let mut i = 0;
        while i < self.waiting.len() {
            if which(&self.waiting[i]) {
                let w = self.waiting.remove(i);
                self.bytes -= w.bytes();
                out.serve(w, text);
            } else {
                i += 1;
            }
        }
        self.deepest = self
            .waiting
            .iter()
            .map(|w| w.parent_depth)
            .max()
            .unwrap_or(0);
    }
}

/// Where waiting samples go once served.
pub(super) struct Fold<'a, 'e> {
    pub(super) engine: &'e Engine,
    pub(super) series: &'a mut Series,
    pub(super) report: &'a mut Report<'e>,
}

impl Fold<'_, '_> {
    /// Serves `w` with `text` as its waiting label's raw value.
    pub(super) fn serve(&mut self, mut w: Waiting, text: &str) {
        let rule = &self.engine.mapping.rules[w.rule];
        let label = &rule.labels[w.label];
        match transform::apply_text(&label.transforms, text) {
            Ok(Some(v)) => w.labels[w.label] = v,
            Ok(None) => return,
            Err(e) => {
                let name = &label.name;
                return self
                    .report
                    .issue(w.rule, Reason::BadLabel, || format!("label `{name}`: {e}"));
            }
        }
        let Some(Some(order)) = self.engine.label_order.get(w.rule) else {
            return;
        };
        self.series.start_key();
        for slot in order {
            let (name, v): (&str, &str) = match *slot {
                Slot::Label(i) => (&rule.labels[i].name, &w.labels[i]),
                Slot::Const(i) => (&rule.const_labels[i].0, &rule.const_labels[i].1),
                // Statesets are never deferred.
                Slot::State => continue,
            };
            self.series.key_label(name, v);
        }
        self.series.timestamp = w.timestamp;
        self.series.fold(self.engine, w.rule, w.value, self.report);
    }
}
