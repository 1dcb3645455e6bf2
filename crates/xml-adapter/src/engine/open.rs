//! The records open at the moment, and the rules each is for.

use super::reuse::Reuse;

#[derive(Debug)]
pub(super) struct OpenRecord {
    depth: usize,
    /// Its captured node; `NO_NODE` when the record outgrew `max_record_bytes`, so that its
    /// rules still count the drop.
    pub(super) node: usize,
    /// The rules it is for: a range of `OpenRecords::rules`.
    rules: (usize, usize),
}

/// The records open at the moment (nested when record paths nest), and the rules of each.
#[derive(Debug, Default)]
pub(super) struct OpenRecords {
    records: Vec<OpenRecord>,
    /// Rules of the open records, a stack (ranges in `OpenRecord::rules`); the rules of the
    /// element being opened are appended while it is matched.
    pub(super) rules: Vec<usize>,
}

impl OpenRecords {
    pub(super) fn reuse(&mut self) {
        self.records.reuse();
        self.rules.reuse();
    }

    #[inline]
    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Opens a record of the element at `depth` for the rules appended to `rules` from
    /// `rules_start` on, each once (a rule reached through two trie states runs once).
    #[inline]
    pub(super) fn open(&mut self, depth: usize, node: usize, rules_start: usize) {
        let rules = &mut self.rules[rules_start..];
        rules.sort_unstable();
        // Dedup the tail in place.
        let mut w = rules_start;
        for r in rules_start..self.rules.len() {
            if w == rules_start || self.rules[w - 1] != self.rules[r] {
                self.rules[w] = self.rules[r];
                w += 1;
            }
        }
        self.rules.truncate(w);
        self.records.push(OpenRecord {
            depth,
            node,
            rules: (rules_start, w),
        });
    }

    /// The element at `depth` has a child element: its record, if it is one, is not one for
    /// the rules that want leaves (`[not(*)]`). `true` when that leaves it no rule (it is no
    /// record any more).
    pub(super) fn drop_leaf_only(&mut self, depth: usize, rules: &[crate::mapping::Rule]) -> bool {
        let Some(record) = self.records.last_mut() else {
            return false;
        };
        if record.depth != depth {
            return false;
        }
        // The innermost record's rules are the tail of `self.rules`.
        let (start, end) = record.rules;
        let mut w = start;
        for r in start..end {
            if !rules[self.rules[r]].leaf_only {
                self.rules[w] = self.rules[r];
                w += 1;
            }
        }
        self.rules.truncate(w);
        record.rules.1 = w;
        if w == start {
            self.records.pop();
            return true;
        }
        false
    }

    /// The record of the element at `depth`, which is closing, if it is one.
    #[inline]
    pub(super) fn close(&mut self, depth: usize) -> Option<OpenRecord> {
        if self.records.last().is_some_and(|r| r.depth == depth) {
            return self.records.pop();
        }
        None
    }

    #[inline]
    pub(super) fn rules_of(&self, record: &OpenRecord) -> &[usize] {
        &self.rules[record.rules.0..record.rules.1]
    }

    /// The rules of a closed record are done with.
    #[inline]
    pub(super) fn release(&mut self, record: OpenRecord) {
        self.rules.truncate(record.rules.0);
    }
}
