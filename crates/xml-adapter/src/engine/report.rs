//! What a translation reports: its result, why a document was refused, why a sample was dropped.

use crate::encode::{Family, Kind, Sample, Suffix};
use crate::mapping::{Mapping, Rule};

/// Why a document was refused. Nothing from a refused document is served.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("malformed {format} at byte {position}: {message}")]
    Malformed {
        /// `XML` or `JSON`.
        format: &'static str,
        position: u64,
        message: String,
    },
    #[error("reading the document failed after {position} bytes: {source}")]
    Read {
        position: u64,
        source: std::io::Error,
    },
}

pub(super) fn malformed(position: u64, message: impl Into<String>) -> DocumentError {
    DocumentError::Malformed {
        format: "XML",
        position,
        message: message.into(),
    }
}

pub(super) fn malformed_json(position: u64, message: impl Into<String>) -> DocumentError {
    DocumentError::Malformed {
        format: "JSON",
        position,
        message: message.into(),
    }
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
    /// An ancestor's child came after records that read it (they read nothing).
    LateChild,
    /// The timestamp was missing or unreadable: the sample is served without one.
    BadTimestamp,
}

const REASONS: [Reason; 8] = [
    Reason::Missing,
    Reason::BadValue,
    Reason::BadLabel,
    Reason::Duplicate,
    Reason::Zip,
    Reason::RecordTooLarge,
    Reason::LateChild,
    Reason::BadTimestamp,
];

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::BadValue => "bad_value",
            Reason::BadLabel => "bad_label",
            Reason::Duplicate => "duplicate",
            Reason::Zip => "zip_mismatch",
            Reason::RecordTooLarge => "record_too_large",
            Reason::LateChild => "late_child",
            Reason::BadTimestamp => "bad_timestamp",
        }
    }

    /// `missing` under the default `skip` policy is expected of optional data, not an error.
    pub fn is_error(self) -> bool {
        self != Reason::Missing
    }

    fn index(self) -> usize {
        self as usize
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

/// The translation being built, and the samples each rule dropped so far.
#[derive(Debug)]
pub(super) struct Report<'e> {
    rules: &'e [Rule],
    /// Per rule, per reason: dropped samples (turned into `Translation::rule_issues`).
    dropped: Vec<[u64; REASONS.len()]>,
    pub(super) translation: Translation,
}

impl<'e> Report<'e> {
    pub(super) fn new(rules: &'e [Rule]) -> Report<'e> {
        Report {
            rules,
            dropped: vec![[0; REASONS.len()]; rules.len()],
            translation: Translation::default(),
        }
    }

    /// Rule `rule` dropped a sample; the message is made only while messages are kept.
    pub(super) fn issue(&mut self, rule: usize, reason: Reason, message: impl FnOnce() -> String) {
        self.issues(rule, reason, 1, message);
    }

    /// [`Report::issue`] for `n` samples at once.
    pub(super) fn issues(
        &mut self,
        rule: usize,
        reason: Reason,
        n: u64,
        message: impl FnOnce() -> String,
    ) {
        self.dropped[rule][reason.index()] += n;
        if reason.is_error() && self.translation.messages.len() < MAX_MESSAGES {
            let m = message();
            let name = &self.rules[rule].name;
            self.translation
                .messages
                .push(format!("rule `{name}`: {m}"));
        }
    }

    /// A cap (`records`, `series`) cut the translation short.
    pub(super) fn truncated(&mut self, cap: &'static str) {
        if !self.translation.truncated.contains(&cap) {
            self.translation.truncated.push(cap);
        }
    }

    /// The translation, with the dropped samples counted per rule.
    pub(super) fn finish(&mut self) -> Translation {
        for (ri, counts) in self.dropped.iter().enumerate() {
            for (reason, &n) in REASONS.iter().zip(counts) {
                if n > 0 {
                    let name = self.rules[ri].name.clone();
                    *self
                        .translation
                        .rule_issues
                        .entry((name, *reason))
                        .or_default() += n;
                }
            }
        }
        std::mem::take(&mut self.translation)
    }
}

/// The `up` metric's family: 1 when the document was read, 0 when it was refused.
pub(super) fn up_family(name: &str, value: f64) -> Family {
    let mut f = Family::new(
        name,
        "Whether the last read of the upstream document succeeded.",
        Kind::Gauge,
    );
    f.samples.push(Sample {
        suffix: Suffix::None,
        labels: vec![],
        value,
        timestamp: None,
    });
    f
}

/// The result of one scrape, failed or not, with what `/metrics` and `/json` serve.
pub fn failure_families(mapping: &Mapping) -> Vec<Family> {
    match &mapping.up_metric {
        Some(up) => vec![up_family(up, 0.0)],
        None => Vec::new(),
    }
}
