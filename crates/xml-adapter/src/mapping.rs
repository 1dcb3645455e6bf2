//! The YAML mapping: what users write, and its validated, compiled form.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use sidecar_kit::config::ConfigError;

use crate::encode::Kind;
use crate::path::{Predicate, RecordPath, RelPath};
use crate::transform::{Scalar, Transform, TransformSpec};

mod compile;
mod locate;
#[cfg(test)]
mod tests;

/// What to do when a record has no value at the value path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingPolicy {
    /// Drop the sample; counted as `reason="missing"`, not an error of the document.
    #[default]
    Skip,
    /// Serve 0.
    Zero,
    /// Serve NaN.
    Nan,
    /// Drop the sample and count it as an error of the rule.
    Error,
}

/// What to do when two records of a rule produce the same series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicatePolicy {
    /// Serve none of the copies (which one would be right?) and count an error.
    #[default]
    Error,
    First,
    Last,
    /// Add the values (e.g. counting records per label value).
    Sum,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum LabelSpec {
    Path(String),
    Full(LabelFull),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelFull {
    /// Where the label's value comes from (relative to the record).
    pub path: String,
    #[serde(default)]
    pub transforms: Vec<TransformSpec>,
    /// Split the text on whitespace and zip it, by position, with the (split) value.
    #[serde(default)]
    pub split: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default)]
    pub help: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub path: String,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, LabelSpec>,
    #[serde(default)]
    pub const_labels: BTreeMap<String, String>,
    /// Relative path of the value; `.` (the record's text) when absent.
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub transforms: Vec<TransformSpec>,
    /// Serve 1 when the value path exists in the record and 0 when it does not.
    #[serde(default)]
    pub present: bool,
    /// Split the value text on whitespace: one sample per item, zipped with split labels.
    #[serde(default)]
    pub split: bool,
    #[serde(default)]
    pub on_missing: MissingPolicy,
    #[serde(default)]
    pub on_duplicate: DuplicatePolicy,
    /// Histogram: relative path of the bucket key (e.g. `@name`).
    #[serde(default)]
    pub bucket: Option<String>,
    /// Histogram: bucket key -> upper bound (`+Inf` required).
    #[serde(default)]
    pub buckets: BTreeMap<String, Scalar>,
    /// Histogram: whether each bucket already counts everything below it.
    #[serde(default)]
    pub cumulative: bool,
    /// Stateset: the possible states; the value text says which one is set.
    #[serde(default)]
    pub states: Vec<String>,
    /// Summary: relative path of the record's quantile (e.g. `@quantile`), in [0, 1].
    #[serde(default)]
    pub quantile: Option<String>,
    /// Histogram or summary: relative path of the sum of the observations (served as `_sum`).
    #[serde(default)]
    pub sum: Option<String>,
    /// Transforms of the sum (the rule's own `transforms` apply to the bucket or quantile).
    #[serde(default)]
    pub sum_transforms: Vec<TransformSpec>,
    /// Summary: relative path of the number of observations (served as `_count`).
    #[serde(default)]
    pub count: Option<String>,
    /// The samples' timestamp, read from the record (off by default).
    #[serde(default)]
    pub timestamp: Option<TimestampSpec>,
}

/// Where a rule's samples take their timestamp: a relative path (epoch seconds), or a path
/// with transforms and a format.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TimestampSpec {
    Path(String),
    Full(TimestampFull),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimestampFull {
    pub path: String,
    #[serde(default)]
    pub format: TimestampFormat,
    /// Applied before the format is read (`trim`, `regex`...).
    #[serde(default)]
    pub transforms: Vec<TransformSpec>,
}

/// How a timestamp is written in the document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    /// Epoch seconds (a fraction allowed).
    #[default]
    Seconds,
    /// Epoch milliseconds.
    Milliseconds,
    /// `2021-07-15T05:11:08.926Z`.
    Rfc3339,
}

/// A rule's timestamp as compiled: its path, and the transforms that make it epoch seconds.
#[derive(Debug)]
pub struct Timestamp {
    pub path: RelPath,
    pub transforms: Vec<Transform>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    #[serde(default = "default_max_records")]
    pub max_records: u64,
    #[serde(default = "default_max_series")]
    pub max_series: u64,
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: u64,
    #[serde(default = "default_max_depth")]
    pub max_depth: usize,
}

fn default_max_records() -> u64 {
    1_000_000
}
fn default_max_series() -> u64 {
    50_000
}
fn default_max_record_bytes() -> u64 {
    1 << 20
}
fn default_max_depth() -> usize {
    256
}

impl Default for LimitsSpec {
    fn default() -> Self {
        LimitsSpec {
            max_records: default_max_records(),
            max_series: default_max_series(),
            max_record_bytes: default_max_record_bytes(),
            max_depth: default_max_depth(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    /// Prefix -> namespace URI, for `p:name` in paths. The document's own prefixes don't matter.
    #[serde(default)]
    pub namespaces: BTreeMap<String, String>,
    /// An extra `NAME 1|0` sample saying whether the document was read (e.g. `bind_up`).
    #[serde(default)]
    pub up_metric: Option<String>,
    /// Recover a missing end tag when an ancestor's end tag arrives (counted), instead of
    /// refusing the document. Truncated documents are refused either way.
    #[serde(default)]
    pub lenient: bool,
    /// The documents' format: `auto` (the default) from the `Content-Type`, else their first
    /// byte; or always `xml` or `json`.
    #[serde(default)]
    pub format: InputFormat,
    #[serde(default)]
    pub limits: LimitsSpec,
    pub rules: Vec<RuleSpec>,
}

/// The format of the documents a mapping reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    /// From the response's `Content-Type` (JSON for `application/json` and `+json` types, XML
    /// for XML types); otherwise from the document's first byte other than white space
    /// (`{` or `[`: JSON).
    #[default]
    Auto,
    Xml,
    Json,
}

/// A label as compiled.
#[derive(Debug)]
pub struct Label {
    pub name: String,
    pub path: RelPath,
    pub transforms: Vec<Transform>,
    pub split: bool,
}

#[derive(Debug)]
pub struct Histogram {
    /// The bucket key, or a summary's quantile.
    pub bucket: RelPath,
    /// Bucket key -> upper bound; empty for a summary.
    pub bounds: HashMap<String, f64>,
    pub cumulative: bool,
    pub sum: Option<RelPath>,
    pub sum_transforms: Vec<Transform>,
    pub count: Option<RelPath>,
    pub summary: bool,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub kind: Kind,
    pub family: usize,
    pub record: RecordPath,
    /// Content predicates of the last step, decided when the record closes.
    pub record_filter: Vec<Predicate>,
    pub labels: Vec<Label>,
    pub const_labels: Vec<(String, String)>,
    pub value: RelPath,
    pub transforms: Vec<Transform>,
    pub present: bool,
    pub split: bool,
    pub on_missing: MissingPolicy,
    pub on_duplicate: DuplicatePolicy,
    pub histogram: Option<Histogram>,
    pub states: Vec<String>,
    /// `[not(*)]` on the record step: only elements without element children are records.
    pub leaf_only: bool,
    pub timestamp: Option<Timestamp>,
}

impl Rule {
    /// Every relative path the rule reads (a `concat`'s paths one by one).
    pub fn paths(&self) -> impl Iterator<Item = &RelPath> {
        let h = self.histogram.as_ref();
        std::iter::once(&self.value)
            .chain(self.labels.iter().map(|l| &l.path))
            .chain(h.map(|h| &h.bucket))
            .chain(h.and_then(|h| h.sum.as_ref()))
            .chain(h.and_then(|h| h.count.as_ref()))
            .chain(self.timestamp.as_ref().map(|t| &t.path))
            .flat_map(RelPath::paths)
    }
}

#[derive(Debug)]
pub struct FamilySpec {
    pub name: String,
    pub help: String,
    pub kind: Kind,
    pub unit: Option<String>,
}

/// A validated mapping, ready for the engine.
#[derive(Debug)]
pub struct Mapping {
    pub origin: String,
    pub rules: Vec<Rule>,
    pub families: Vec<FamilySpec>,
    pub namespaces: BTreeMap<String, String>,
    pub up_metric: Option<String>,
    pub lenient: bool,
    pub format: InputFormat,
    pub limits: LimitsSpec,
    pub needs_namespaces: bool,
    /// The source text, for `check` and for telling reloads apart.
    pub source: String,
}

pub fn valid_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

pub fn valid_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !n.starts_with("__")
}

impl Mapping {
    /// Reads and compiles the mapping file (the adapter's `--config`). Every error names the
    /// file, the line and column, and the field (`rules[0].path`, indexes 0-based).
    pub fn load(path: &Path) -> Result<Mapping, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Mapping::parse(&text, &path.display().to_string())
    }

    /// Compiles mapping text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Mapping, ConfigError> {
        let spec: MappingSpec =
            sidecar_kit::config::parse_yaml(text, &format!("mapping {origin}"))?;
        compile::compile(spec, origin, text).map_err(|f| f.into_config_error(origin, text))
    }
}
