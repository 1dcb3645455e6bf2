//! What a translation reports: its result, why a document was refused, why a sample was dropped.

use crate::encode::{Family, Kind, Sample, Suffix};
use crate::mapping::Mapping;

/// Why a document was refused. Nothing from a refused document is served.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("malformed XML at byte {position}: {message}")]
    Malformed { position: u64, message: String },
    #[error("reading the document failed after {position} bytes: {source}")]
    Read {
        position: u64,
        source: std::io::Error,
    },
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
}

pub(super) const REASONS: [Reason; 6] = [
    Reason::Missing,
    Reason::BadValue,
    Reason::BadLabel,
    Reason::Duplicate,
    Reason::Zip,
    Reason::RecordTooLarge,
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
        }
    }

    /// `missing` under the default `skip` policy is expected of optional data, not an error.
    pub fn is_error(self) -> bool {
        self != Reason::Missing
    }

    pub(super) fn index(self) -> usize {
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

pub(super) const MAX_MESSAGES: usize = 20;

pub(super) fn malformed(position: u64, message: impl Into<String>) -> DocumentError {
    DocumentError::Malformed {
        position,
        message: message.into(),
    }
}

/// The result of one scrape, failed or not, with what `/metrics` and `/json` serve.
pub fn failure_families(mapping: &Mapping) -> Vec<Family> {
    match &mapping.up_metric {
        Some(up) => {
            let mut f = Family::new(
                up,
                "Whether the last read of the upstream document succeeded.",
                Kind::Gauge,
            );
            f.samples.push(Sample {
                suffix: Suffix::None,
                labels: vec![],
                value: 0.0,
            });
            vec![f]
        }
        None => Vec::new(),
    }
}
