//! Records: which are open, and reading one when its element closes. Each rule the record is
//! for reads its labels and value through the rule's relative paths (below the record from the
//! capture, above it from the open elements), applies its transforms and policies, and folds
//! the samples into the series.

use super::capture::{Capture, NO_NODE};
use super::defer::{Deferred, Waiting};
use super::input::Format;
use super::plan::{Engine, Slot};
use super::report::{Reason, Report};
use super::reuse::Reuse;
use super::series::Series;
use super::stack::Stack;
use crate::encode::Kind;
use crate::mapping::{MissingPolicy, Timestamp};
use crate::path::{NameTest, Part, RelPath};
use crate::transform::{self, Outcome};

/// One record's label values and value, read as slices of one buffer.
#[derive(Debug, Default)]
pub(super) struct Values {
    text: String,
    /// The labels' values: ranges of `text`, in the rule's label order.
    ranges: Vec<(usize, usize)>,
}

impl Values {
    pub(super) fn reuse(&mut self) {
        self.text.reuse();
        self.ranges.reuse();
    }
}

/// What a record's relative paths read: its captured subtree and its open ancestors.
pub(super) struct View<'r, F> {
    pub(super) capture: &'r Capture,
    pub(super) stack: &'r Stack,
    pub(super) format: &'r F,
    /// The leaf children kept for paths above a record (`Engine::kept_children`).
    pub(super) kept: &'r [NameTest],
}

impl<F: Format> View<'_, F> {
    /// Appends the value of rule `ri`'s relative path from the record's `node` to `out`.
    /// `false` when the path selects nothing (then nothing is appended).
    #[inline]
    fn read_into(&self, ri: usize, node: usize, path: &RelPath, out: &mut String) -> bool {
        match path {
            RelPath::Down { steps, leaf } => self.capture.read_down(node, steps, leaf, out),
            RelPath::Up { sel, child, leaf } => {
                self.stack
                    .read_up(self.format, sel, child.as_ref(), leaf, out, ri, self.kept)
            }
            RelPath::Concat(parts) => self.read_concat(ri, node, parts, out),
        }
    }

    /// `concat(...)`: out of line, so that the common paths inline.
    #[inline(never)]
    fn read_concat(&self, ri: usize, node: usize, parts: &[Part], out: &mut String) -> bool {
        let mut found = false;
        for part in parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Path(p) => found |= self.read_into(ri, node, p, out),
            }
        }
        found
    }

    /// The value of rule `ri`'s relative path from the record's `node`, if it selects
    /// anything.
    fn read(&self, ri: usize, node: usize, path: &RelPath) -> Option<String> {
        let mut s = String::new();
        self.read_into(ri, node, path, &mut s).then_some(s)
    }
}

/// Reads closed records for their rules.
pub(super) struct Recorder<'r, 'e, F> {
    pub(super) engine: &'e Engine,
    pub(super) view: View<'r, F>,
    pub(super) values: &'r mut Values,
    pub(super) series: &'r mut Series,
    pub(super) report: &'r mut Report<'e>,
    pub(super) deferred: &'r mut Deferred,
}

/// A label of the record being read that waits for an ancestor's child printed after it.
#[derive(Debug, Clone, Copy)]
struct Pending {
    label: usize,
    parent_depth: usize,
    child: usize,
}

impl<F: Format> Recorder<'_, '_, F> {
    /// Rule `ri` reads the record whose captured node is `node` (`NO_NODE`: it was too large).
    pub(super) fn record(&mut self, ri: usize, node: usize) {
        let engine = self.engine;
        let rule = &engine.mapping.rules[ri];
        if node == NO_NODE {
            let max = engine.mapping.limits.max_record_bytes;
            self.report.issue(ri, Reason::RecordTooLarge, || {
                format!("a record is larger than max_record_bytes ({max})")
            });
            return;
        }
        if !rule
            .record_filter
            .iter()
            .all(|p| self.view.capture.predicate(node, p))
        {
            return;
        }
        let records = &mut self.report.translation.records;
        *records += 1;
        if *records > engine.mapping.limits.max_records {
            self.report.truncated("records");
            return;
        }
        self.series.timestamp = rule
            .timestamp
            .as_ref()
            .and_then(|t| self.timestamp(ri, node, t));
        match &engine.label_order[ri] {
            Some(order) if !rule.split && rule.histogram.is_none() => {
                self.values.text.clear();
                self.values.ranges.clear();
                self.simple(ri, node, order);
            }
            _ => self.general(ri, node),
        }
    }

    /// The record's timestamp (epoch seconds). One that is missing or unreadable drops only
    /// itself: the samples are served without it, and it is counted.
    fn timestamp(&mut self, ri: usize, node: usize, t: &Timestamp) -> Option<f64> {
        let parsed = match self.view.read(ri, node, &t.path) {
            None => Err("the timestamp path selects nothing".to_string()),
            Some(text) => match transform::apply_numeric(&t.transforms, &text) {
                Ok(Some(v)) if v.is_finite() && v >= 0.0 => Ok(v),
                Ok(Some(v)) => Err(format!("timestamp `{text}` gives {v}, not a time")),
                Ok(None) => Err(format!("timestamp `{text}` gives no value")),
                Err(e) => Err(format!("timestamp `{text}`: {e}")),
            },
        };
        parsed
            .map_err(|e| self.report.issue(ri, Reason::BadTimestamp, || e))
            .ok()
    }

    /// One sample per record (or one per state): the common case, read without allocating.
    /// Label values go to `self.values`, in the rule's label order.
    fn simple(&mut self, ri: usize, node: usize, order: &[Slot]) {
        let engine = self.engine;
        let rule = &engine.mapping.rules[ri];
        let values = &mut *self.values;
        let mut pending = None;
        for (li, l) in rule.labels.iter().enumerate() {
            let start = values.text.len();
            // A label path that selects nothing gives an empty value.
            let found = self.view.read_into(ri, node, &l.path, &mut values.text);
            if !found
                && pending.is_none()
                && rule.kind != Kind::Stateset
                && matches!(l.path, RelPath::Up { child: Some(_), .. })
                && let Some((parent_depth, child)) = self.view.stack.take_miss()
            {
                // An ancestor's child not seen yet: the sample may wait for it.
                pending = Some(Pending {
                    label: li,
                    parent_depth,
                    child,
                });
                values.ranges.push((start, start));
                continue;
            }
            // Leading `trim`s only narrow the range; the rest of a chain makes a new text.
            let trims = transform::leading_trims(&l.transforms);
            let (mut a, mut b) = (start, values.text.len());
            if trims > 0 {
                let raw = &values.text[a..b];
                a += raw.len() - raw.trim_start().len();
                b = a + raw.trim().len();
            }
            if trims == l.transforms.len() {
                values.ranges.push((a, b));
                continue;
            }
            match transform::apply_text(&l.transforms[trims..], &values.text[a..b]) {
                Ok(Some(s)) => {
                    values.text.truncate(start);
                    values.text.push_str(&s);
                    values.ranges.push((start, values.text.len()));
                }
                Ok(None) => return,
                Err(e) => {
                    let name = &l.name;
                    self.report
                        .issue(ri, Reason::BadLabel, || format!("label `{name}`: {e}"));
                    return;
                }
            }
        }
        let vstart = values.text.len();
        let found = match rule.kind {
            Kind::Info => {
                values.text.push('1');
                true
            }
            _ => self.view.read_into(ri, node, &rule.value, &mut values.text),
        };
        let raw: &str = if rule.present {
            if found { "1" } else { "0" }
        } else if found {
            &values.text[vstart..]
        } else {
            let value = match rule.on_missing {
                MissingPolicy::Skip => {
                    return self.report.issue(ri, Reason::Missing, || {
                        "the value path selects nothing".into()
                    });
                }
                MissingPolicy::Error => {
                    return self.report.issue(ri, Reason::BadValue, || {
                        "the value path selects nothing".into()
                    });
                }
                MissingPolicy::Zero => 0.0,
                MissingPolicy::Nan => f64::NAN,
            };
            return self.push_or_wait(ri, order, pending, value);
        };
        if rule.kind == Kind::Stateset {
            let state = match transform::apply_text(&rule.transforms, raw) {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) => return self.report.issue(ri, Reason::BadValue, || e),
            };
            if !rule.states.contains(&state) {
                let known = rule.states.join(", ");
                return self.report.issue(ri, Reason::BadValue, || {
                    format!("state `{state}` is not one of: {known}")
                });
            }
            for s in &rule.states {
                let v = if *s == state { 1.0 } else { 0.0 };
                self.push_simple(ri, order, Some(s), v);
            }
            return;
        }
        let value = match transform::apply_numeric_fast(&rule.transforms, raw) {
            Ok(Some(v)) => v,
            // A sentinel (`skip_if`): no sample, quietly.
            Ok(None) => return,
            Err(e) => return self.report.issue(ri, Reason::BadValue, || e),
        };
        self.push_or_wait(ri, order, pending, value);
    }

    /// [`Recorder::push_simple`], or, when a label waits for an ancestor's child
    /// (`pending`), the sample waits too, if `max_record_bytes` allows.
    fn push_or_wait(&mut self, ri: usize, order: &[Slot], pending: Option<Pending>, value: f64) {
        let Some(p) = pending else {
            return self.push_simple(ri, order, None, value);
        };
        let engine = self.engine;
        let rule = &engine.mapping.rules[ri];
        if rule.kind == Kind::Counter && (value.is_nan() || value < 0.0) {
            return self.push_simple(ri, order, None, value);
        }
        let values = &*self.values;
        let waiting = Waiting {
            parent_depth: p.parent_depth,
            child: p.child,
            rule: ri,
            label: p.label,
            labels: values
                .ranges
                .iter()
                .map(|&(a, b)| values.text[a..b].to_string())
                .collect(),
            value,
            timestamp: self.series.timestamp,
        };
        match self
            .deferred
            .wait(waiting, engine.mapping.limits.max_record_bytes)
        {
            Ok(()) => self.view.stack.unnote_miss(p.parent_depth, p.child, ri),
            Err(w) => {
                // No room to wait: served now with the label as a path selecting nothing.
                let mut fold = super::defer::Fold {
                    engine,
                    series: self.series,
                    report: self.report,
                };
                fold.serve(w, "");
            }
        }
    }

    /// A sample of the simple path: its labels are in `self.values`, keyed in `order`.
    fn push_simple(&mut self, ri: usize, order: &[Slot], state: Option<&str>, value: f64) {
        let engine = self.engine;
        let rule = &engine.mapping.rules[ri];
        if rule.kind == Kind::Counter && (value.is_nan() || value < 0.0) {
            return self.report.issue(ri, Reason::BadValue, || {
                format!("a counter cannot be {}", crate::encode::format_value(value))
            });
        }
        let values = &*self.values;
        self.series.start_key();
        for slot in order {
            let (name, v): (&str, &str) = match *slot {
                Slot::Label(i) => {
                    let (a, b) = values.ranges[i];
                    (&rule.labels[i].name, &values.text[a..b])
                }
                Slot::Const(i) => (&rule.const_labels[i].0, &rule.const_labels[i].1),
                // A stateset sample without a state (`on_missing: zero|nan`) has no such label.
                Slot::State => match state {
                    Some(s) => (&rule.name, s),
                    None => continue,
                },
            };
            self.series.key_label(name, v);
        }
        self.series.fold(engine, ri, value, self.report);
    }

    /// Split values, histograms, or labels that share a name: the general (allocating) path.
    fn general(&mut self, ri: usize, node: usize) {
        let engine = self.engine;
        let rule = &engine.mapping.rules[ri];
        // Labels (split labels give one value per item).
        let mut labels: Vec<(String, Vec<String>)> = Vec::with_capacity(rule.labels.len());
        for l in &rule.labels {
            let raw = self.view.read(ri, node, &l.path).unwrap_or_default();
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
                        let name = &l.name;
                        self.report
                            .issue(ri, Reason::BadLabel, || format!("label `{name}`: {e}"));
                        return;
                    }
                }
            }
            labels.push((l.name.clone(), vals));
        }
        let raw_value = match rule.kind {
            Kind::Info => Some("1".to_string()),
            _ => self.view.read(ri, node, &rule.value),
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
                    self.report
                        .issue(ri, reason, || "the value path selects nothing".into());
                    return;
                }
                MissingPolicy::Zero => return self.emit_values(ri, &labels, vec![0.0]),
                MissingPolicy::Nan => return self.emit_values(ri, &labels, vec![f64::NAN]),
            }
        };
        if rule.kind == Kind::Stateset {
            let state = match transform::apply_text(&rule.transforms, &raw_value) {
                Ok(Some(s)) => s,
                Ok(None) => return,
                Err(e) => return self.report.issue(ri, Reason::BadValue, || e),
            };
            if !rule.states.contains(&state) {
                let known = rule.states.join(", ");
                return self.report.issue(ri, Reason::BadValue, || {
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
                        Err(e) => return self.report.issue(ri, Reason::BadValue, || e),
                    }
                }
                Err(e) => return self.report.issue(ri, Reason::BadValue, || e),
            }
        }
        if rule.split {
            for (name, vals) in &labels {
                if rule.labels.iter().any(|l| l.split && &l.name == name)
                    && vals.len() != values.len()
                {
                    let (a, b) = (vals.len(), values.len());
                    return self.report.issue(ri, Reason::Zip, || {
                        format!("label `{name}` has {a} items but the value has {b}: not zipped")
                    });
                }
            }
        }
        if let Some(h) = &rule.histogram {
            let Some(key) = self.view.read(ri, node, &h.bucket) else {
                return self
                    .report
                    .issue(ri, Reason::Missing, || "no bucket key".into());
            };
            let bound = if h.summary {
                match transform::parse_number(&key) {
                    Ok(q) if (0.0..=1.0).contains(&q) => q,
                    _ => {
                        return self.report.issue(ri, Reason::BadValue, || {
                            format!("quantile `{}` is not a number in [0, 1]", key.trim())
                        });
                    }
                }
            } else {
                // Records whose key is not a bucket are not part of this histogram.
                let Some(&bound) = h.bounds.get(key.trim()) else {
                    return;
                };
                bound
            };
            let Some(Some(value)) = values.first().copied() else {
                return;
            };
            let read = |path: Option<&crate::path::RelPath>, chain, what: &str| {
                let Some(path) = path else {
                    return Ok(None);
                };
                let Some(raw) = self.view.read(ri, node, path) else {
                    return Ok(None);
                };
                transform::apply_numeric(chain, &raw).map_err(|e| format!("{what}: {e}"))
            };
            let sum = read(h.sum.as_ref(), &h.sum_transforms[..], "sum");
            let count = read(h.count.as_ref(), &[][..], "count");
            let (sum, count) = match (sum, count) {
                (Ok(s), Ok(c)) => (s, c),
                (Err(e), _) | (_, Err(e)) => {
                    return self.report.issue(ri, Reason::BadValue, || e);
                }
            };
            let point = super::series::Point {
                bound,
                value,
                sum,
                count,
            };
            self.series
                .add_bucket(rule.family, flatten(&labels, 0), ri, point);
            return;
        }
        let out: Vec<f64> = values.into_iter().flatten().collect();
        if rule.split {
            for (i, v) in out.into_iter().enumerate() {
                let l = flatten(&labels, i);
                self.push_checked(ri, l, v);
            }
        } else {
            self.emit_values(ri, &labels, out);
        }
    }

    fn emit_values(&mut self, ri: usize, labels: &[(String, Vec<String>)], values: Vec<f64>) {
        for v in values {
            let l = flatten(labels, 0);
            self.push_checked(ri, l, v);
        }
    }

    fn push_checked(&mut self, ri: usize, labels: Vec<(String, String)>, v: f64) {
        let rule = &self.engine.mapping.rules[ri];
        if rule.kind == Kind::Counter && (v.is_nan() || v < 0.0) {
            return self.report.issue(ri, Reason::BadValue, || {
                format!("a counter cannot be {}", crate::encode::format_value(v))
            });
        }
        self.push(ri, labels, v);
    }

    fn push(&mut self, ri: usize, mut labels: Vec<(String, String)>, value: f64) {
        let engine = self.engine;
        let rule = &engine.mapping.rules[ri];
        labels.extend(rule.const_labels.iter().cloned());
        labels.sort();
        self.series.start_key();
        for (k, v) in &labels {
            self.series.key_label(k, v);
        }
        self.series.fold(engine, ri, value, self.report);
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
