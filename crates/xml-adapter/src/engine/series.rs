//! Samples folded into series as the records give them, then the families a translation
//! serves.
//!
//! A sample's label set is looked up by an encoded key built in a reused buffer, so a new
//! series allocates its key once and a known one nothing. Duplicates fold in as they come
//! (the rule's duplicate policy), so memory follows the number of series, not of records.

use std::collections::HashMap;

use super::plan::Engine;
use super::report::{Reason, Report, up_family};
use super::reuse::Reuse;
use crate::encode::{Family, Sample, Suffix};
use crate::mapping::DuplicatePolicy;

/// A sample before families are finalised: which rule made it (for its duplicate policy).
#[derive(Debug, Clone, Copy)]
struct Pending {
    rule: usize,
    value: f64,
    /// Records that gave this series (more than one: the duplicate policy applies).
    count: u64,
    /// The document that gave it: a table outlives a document (see [`super::Scratch`]), and
    /// a series last seen in an earlier one is new in this one.
    generation: u64,
    /// Epoch seconds, from the record (rules with a `timestamp`).
    timestamp: Option<f64>,
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

/// Per family: label set -> its buckets (or quantiles), sum and count.
type HistogramGroups = HashMap<Vec<(String, String)>, Group>;

/// One histogram's or summary's records so far.
#[derive(Debug)]
struct Group {
    rule: usize,
    /// (upper bound, count) per bucket record, or (quantile, value) per quantile record.
    points: Vec<(f64, f64)>,
    sum: Option<f64>,
    count: Option<f64>,
}

/// What one bucket or quantile record gives.
#[derive(Debug, Clone, Copy)]
pub(super) struct Point {
    pub(super) bound: f64,
    pub(super) value: f64,
    pub(super) sum: Option<f64>,
    pub(super) count: Option<f64>,
}

#[derive(Debug, Default)]
pub(super) struct Series {
    /// Counts the documents: which one an entry of a table is from.
    generation: u64,
    /// The key of the sample being folded in ([`Series::start_key`], [`Series::key_label`]).
    key: Vec<u8>,
    /// Per family.
    tables: Vec<SeriesTable>,
    /// Series of the current document so far, against `max_series`.
    count: u64,
    /// Histogram buckets per family, gathered until the document ends.
    histograms: Vec<HistogramGroups>,
    /// The timestamp of the record being read, for the samples it folds in.
    pub(super) timestamp: Option<f64>,
}

impl Series {
    /// Ready for the next document, of a mapping with `families` families.
    pub(super) fn begin(&mut self, families: usize) {
        self.generation += 1;
        self.tables.resize_with(families, SeriesTable::default);
        self.tables.truncate(families);
        for t in &mut self.tables {
            t.live = 0;
            t.last = None;
        }
        self.key.reuse();
        self.count = 0;
        self.histograms.clear();
        self.histograms.resize_with(families, HashMap::new);
    }

    /// After a document: series of earlier documents are kept while they are few.
    pub(super) fn end(&mut self) {
        for t in &mut self.tables {
            if t.index.len() > 2 * t.live + 64 {
                t.index.clear();
                t.entries.clear();
                t.last = None;
            }
        }
    }

    /// Starts the key of the next sample; its labels follow, sorted by name.
    pub(super) fn start_key(&mut self) {
        self.key.clear();
    }

    /// Appends one label to the key. Lengths make the encoding unambiguous.
    pub(super) fn key_label(&mut self, name: &str, value: &str) {
        let key = &mut self.key;
        key.extend_from_slice(&(name.len() as u64).to_le_bytes());
        key.extend_from_slice(name.as_bytes());
        key.extend_from_slice(&(value.len() as u64).to_le_bytes());
        key.extend_from_slice(value.as_bytes());
    }

    /// Folds a sample of rule `ri` (its key built) into its family's series.
    pub(super) fn fold(&mut self, engine: &Engine, ri: usize, value: f64, report: &mut Report<'_>) {
        let rule = &engine.mapping.rules[ri];
        let policy = rule.on_duplicate;
        let family = rule.family;
        let table = &mut self.tables[family];
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
                DuplicatePolicy::Last => {
                    p.value = value;
                    p.timestamp = self.timestamp;
                }
                // A sum is as recent as its latest part.
                DuplicatePolicy::Sum => {
                    p.value += value;
                    p.timestamp = match (p.timestamp, self.timestamp) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    };
                }
            }
            return;
        }
        if self.count >= engine.mapping.limits.max_series {
            report.truncated("series");
            return;
        }
        self.count += 1;
        table.live += 1;
        let fresh = Pending {
            rule: ri,
            value,
            count: 1,
            generation,
            timestamp: self.timestamp,
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

    /// A histogram rule's bucket record (or a summary's quantile record) of the label set.
    pub(super) fn add_bucket(
        &mut self,
        family: usize,
        labels: Vec<(String, String)>,
        ri: usize,
        point: Point,
    ) {
        let entry = self.histograms[family]
            .entry(labels)
            .or_insert_with(|| Group {
                rule: ri,
                points: Vec::new(),
                sum: None,
                count: None,
            });
        entry.points.push((point.bound, point.value));
        entry.sum = point.sum.or(entry.sum);
        entry.count = point.count.or(entry.count);
    }

    /// The families of the document (the `up` metric first, when the mapping has one), and
    /// how many series they hold.
    pub(super) fn finish(
        &mut self,
        engine: &Engine,
        report: &mut Report<'_>,
    ) -> (Vec<Family>, u64) {
        let max_series = engine.mapping.limits.max_series;
        let generation = self.generation;
        let mut series = 0u64;
        let mut families = Vec::new();
        let histograms = std::mem::take(&mut self.histograms);
        for (fi, hist) in histograms.into_iter().enumerate() {
            let spec = &engine.mapping.families[fi];
            let mut fam = Family::new(&spec.name, &spec.help, spec.kind);
            fam.unit = spec.unit.clone();
            let table = &self.tables[fi];
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
                    report.issue(p.rule, Reason::Duplicate, || {
                        format!("{n} records give the series {l}; none served")
                    });
                    continue;
                }
                if series >= max_series {
                    report.truncated("series");
                    continue;
                }
                series += 1;
                fam.samples.push(Sample {
                    suffix: Suffix::None,
                    labels,
                    value: p.value,
                    timestamp: p.timestamp,
                });
            }
            let mut groups: Vec<_> = hist.into_iter().collect();
            groups.sort_by(|a, b| a.0.cmp(&b.0));
            for (labels, group) in groups {
                let ri = group.rule;
                let rule = &engine.mapping.rules[ri];
                let Some(h) = &rule.histogram else { continue };
                let mut buckets = group.points;
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                let mut l = labels.clone();
                l.extend(rule.const_labels.iter().cloned());
                l.sort();
                let tail = |fam: &mut Family, l: &[(String, String)], count: f64| {
                    fam.samples.push(Sample {
                        suffix: Suffix::Count,
                        labels: l.to_vec(),
                        value: count,
                        timestamp: None,
                    });
                    if let Some(sum) = group.sum {
                        fam.samples.push(Sample {
                            suffix: Suffix::Sum,
                            labels: l.to_vec(),
                            value: sum,
                            timestamp: None,
                        });
                    }
                };
                if h.summary {
                    if buckets.windows(2).any(|w| w[0].0 == w[1].0) {
                        let l = format!("{labels:?}");
                        report.issue(ri, Reason::Duplicate, || {
                            format!("a quantile appears twice for {l}")
                        });
                        continue;
                    }
                    let (Some(count), Some(_)) = (group.count, group.sum) else {
                        let l = format!("{labels:?}");
                        report.issue(ri, Reason::Missing, || {
                            format!("no sum or no count for {l}")
                        });
                        continue;
                    };
                    if series + buckets.len() as u64 + 2 > max_series {
                        report.truncated("series");
                        continue;
                    }
                    series += buckets.len() as u64 + 2;
                    for (q, v) in &buckets {
                        let mut ql = l.clone();
                        ql.push(("quantile".into(), crate::encode::format_value(*q)));
                        fam.samples.push(Sample {
                            suffix: Suffix::None,
                            labels: ql,
                            value: *v,
                            timestamp: None,
                        });
                    }
                    tail(&mut fam, &l, count);
                    continue;
                }
                if buckets.windows(2).any(|w| w[0].0 == w[1].0) {
                    let l = format!("{labels:?}");
                    report.issue(ri, Reason::Duplicate, || {
                        format!("a bucket appears twice for {l}")
                    });
                    continue;
                }
                if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
                    let l = format!("{labels:?}");
                    report.issue(ri, Reason::Missing, || format!("no +Inf bucket for {l}"));
                    continue;
                }
                if series + buckets.len() as u64 + 1 + u64::from(group.sum.is_some()) > max_series {
                    report.truncated("series");
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
                        timestamp: None,
                    });
                }
                if full.windows(2).any(|w| w[1].value < w[0].value) {
                    let l = format!("{labels:?}");
                    report.issue(ri, Reason::BadValue, || {
                        format!("cumulative buckets decrease for {l}")
                    });
                    continue;
                }
                series += full.len() as u64 + 1 + u64::from(group.sum.is_some());
                fam.samples.extend(full);
                tail(&mut fam, &l, acc);
            }
            families.push(fam);
        }
        if let Some(up) = &engine.mapping.up_metric {
            families.insert(0, up_family(up, 1.0));
        }
        (families, series)
    }
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
