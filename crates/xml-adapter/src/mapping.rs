//! The YAML mapping: what users write, and its validated, compiled form.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use sidecar_kit::config::ConfigError;

use crate::encode::Kind;
use crate::path::{self, Predicate, RecordPath, RelPath};
use crate::transform::{Scalar, Transform, TransformSpec, parse_number};

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
    /// Reads and compiles the mapping file (the adapter's `--config`). The error names the
    /// file, and the line and field or the rule at fault.
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
        Mapping::compile(spec, origin, text)
    }

    fn compile(spec: MappingSpec, origin: &str, text: &str) -> Result<Mapping, ConfigError> {
        let invalid = |message: String| ConfigError::field(format!("mapping {origin}"), message);
        if spec.rules.is_empty() {
            return Err(invalid("no rules".into()));
        }
        if let Some(up) = &spec.up_metric
            && !valid_metric_name(up)
        {
            return Err(invalid(format!(
                "up_metric `{up}` is not a valid metric name"
            )));
        }
        for (p, uri) in &spec.namespaces {
            if uri.is_empty() || !valid_label_name(p) {
                return Err(invalid(format!(
                    "namespace prefix `{p}` needs a name and a URI"
                )));
            }
        }
        let ns = &spec.namespaces;
        let mut families: Vec<FamilySpec> = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut rules = Vec::new();
        let mut needs_ns = false;
        for (i, r) in spec.rules.iter().enumerate() {
            let rule_err = |message: String| {
                ConfigError::field(
                    format!("mapping {origin}: rule {} (`{}`)", i + 1, r.name),
                    message,
                )
            };
            if !valid_metric_name(&r.name) {
                return Err(rule_err("not a valid metric name".into()));
            }
            if r.name.starts_with("xml_adapter_") {
                return Err(rule_err(
                    "names starting with `xml_adapter_` are reserved for the adapter's own metrics"
                        .into(),
                ));
            }
            if spec.up_metric.as_deref() == Some(r.name.as_str()) {
                return Err(rule_err("the same name as `up_metric`".into()));
            }
            if let Some(unit) = &r.unit {
                let stem = r.name.strip_suffix("_total").unwrap_or(&r.name);
                // OpenMetrics parsers (Prometheus included) refuse a UNIT that is not the suffix.
                if !valid_label_name(unit) || !stem.ends_with(&format!("_{unit}")) {
                    return Err(rule_err(format!(
                        "unit `{unit}` must be the last part of the name (before `_total`)"
                    )));
                }
            }
            let record =
                path::parse_record_path(&r.path, ns).map_err(|e| rule_err(e.to_string()))?;
            let mut record = record;
            let last = record.steps.len() - 1;
            let (content, start): (Vec<_>, Vec<_>) = record.steps[last]
                .predicates
                .drain(..)
                .partition(Predicate::needs_content);
            record.steps[last].predicates = start;
            let rel = |p: &str| {
                let parsed = path::parse_rel_path(p, ns).map_err(|e| rule_err(e.to_string()))?;
                if let RelPath::Up {
                    child: None,
                    leaf: path::Leaf::Text,
                    ..
                } = parsed
                {
                    // An ancestor is still open when the record closes: its text is incomplete.
                    return Err(rule_err(format!(
                        "`{p}`: the text of an open ancestor cannot be read; read one of its \
                         leaf children (`../name`, `ancestor::x/name`) or an attribute"
                    )));
                }
                Ok(parsed)
            };
            let compile_chain = |specs: &[TransformSpec]| {
                specs
                    .iter()
                    .map(TransformSpec::compile)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(&rule_err)
            };
            let mut labels = Vec::new();
            for (name, l) in &r.labels {
                if !valid_label_name(name) {
                    return Err(rule_err(format!("`{name}` is not a valid label name")));
                }
                let (p, t, split) = match l {
                    LabelSpec::Path(p) => (p.as_str(), &[][..], false),
                    LabelSpec::Full(f) => (f.path.as_str(), &f.transforms[..], f.split),
                };
                if split && !r.split {
                    return Err(rule_err(format!(
                        "label `{name}` is split but the value is not (`split: true` on the rule)"
                    )));
                }
                labels.push(Label {
                    name: name.clone(),
                    path: rel(p)?,
                    transforms: compile_chain(t)?,
                    split,
                });
            }
            let mut const_labels = Vec::new();
            for (k, v) in &r.const_labels {
                if !valid_label_name(k) {
                    return Err(rule_err(format!("`{k}` is not a valid label name")));
                }
                if r.labels.contains_key(k) {
                    return Err(rule_err(format!(
                        "label `{k}` is both a label and a const label"
                    )));
                }
                const_labels.push((k.clone(), v.clone()));
            }
            let reserved: &[&str] = match r.kind {
                Kind::Histogram => &["le"],
                Kind::Summary => &["quantile"],
                _ => &[],
            };
            for res in reserved {
                if r.labels.contains_key(*res) || r.const_labels.contains_key(*res) {
                    return Err(rule_err(format!("label `{res}` is reserved for this type")));
                }
            }
            let histogram = if r.kind == Kind::Histogram {
                let bucket = r.bucket.as_deref().ok_or_else(|| {
                    rule_err("a histogram needs `bucket` (the bucket key path)".into())
                })?;
                let mut bounds = HashMap::new();
                for (k, v) in &r.buckets {
                    let b = parse_number(&v.to_text())
                        .map_err(|e| rule_err(format!("bucket `{k}`: {e}")))?;
                    bounds.insert(k.clone(), b);
                }
                if !bounds.values().any(|b| *b == f64::INFINITY) {
                    return Err(rule_err("a histogram needs a `+Inf` bucket".into()));
                }
                if r.quantile.is_some() || r.count.is_some() {
                    return Err(rule_err(
                        "`quantile`/`count` are for `type: summary` (a histogram's count is \
                         its `+Inf` bucket)"
                            .into(),
                    ));
                }
                Some(Histogram {
                    bucket: rel(bucket)?,
                    bounds,
                    cumulative: r.cumulative,
                    sum: r.sum.as_deref().map(rel).transpose()?,
                    sum_transforms: compile_chain(&r.sum_transforms)?,
                    count: None,
                    summary: false,
                })
            } else if r.kind == Kind::Summary {
                if r.bucket.is_some() || !r.buckets.is_empty() {
                    return Err(rule_err(
                        "`bucket`/`buckets` are for `type: histogram`".into(),
                    ));
                }
                let need = |f: &Option<String>, what: &str| {
                    f.as_deref()
                        .ok_or_else(|| rule_err(format!("a summary needs `{what}`")))
                        .and_then(rel)
                };
                Some(Histogram {
                    bucket: need(&r.quantile, "quantile")?,
                    bounds: HashMap::new(),
                    cumulative: false,
                    sum: Some(need(&r.sum, "sum")?),
                    sum_transforms: compile_chain(&r.sum_transforms)?,
                    count: Some(need(&r.count, "count")?),
                    summary: true,
                })
            } else {
                if r.quantile.is_some()
                    || r.sum.is_some()
                    || r.count.is_some()
                    || !r.sum_transforms.is_empty()
                {
                    return Err(rule_err(
                        "`quantile`/`sum`/`count` are for `type: summary` and `histogram`".into(),
                    ));
                }
                if r.bucket.is_some() || !r.buckets.is_empty() {
                    return Err(rule_err(
                        "`bucket`/`buckets` are for `type: histogram`".into(),
                    ));
                }
                None
            };
            if r.kind == Kind::Stateset {
                if r.states.is_empty() {
                    return Err(rule_err("a stateset needs `states`".into()));
                }
                if r.labels.contains_key(&r.name) {
                    return Err(rule_err("a stateset's own name is its state label".into()));
                }
            } else if !r.states.is_empty() {
                return Err(rule_err("`states` is for `type: stateset`".into()));
            }
            if r.split
                && matches!(
                    r.kind,
                    Kind::Histogram | Kind::Summary | Kind::Stateset | Kind::Info
                )
            {
                return Err(rule_err(
                    "`split` works with counter, gauge and untyped".into(),
                ));
            }
            let value = rel(r.value.as_deref().unwrap_or("."))?;
            needs_ns |= record.needs_namespaces()
                || value.needs_namespaces()
                || labels.iter().any(|l| l.path.needs_namespaces())
                || content.iter().any(Predicate::needs_namespaces)
                || histogram.as_ref().is_some_and(|h| {
                    [Some(&h.bucket), h.sum.as_ref(), h.count.as_ref()]
                        .into_iter()
                        .flatten()
                        .any(RelPath::needs_namespaces)
                });
            if prefixed_above_record(&value)
                || labels.iter().any(|l| prefixed_above_record(&l.path))
                || histogram.as_ref().is_some_and(|h| {
                    [Some(&h.bucket), h.sum.as_ref(), h.count.as_ref()]
                        .into_iter()
                        .flatten()
                        .any(prefixed_above_record)
                })
            {
                // Ancestors keep only their raw start tag, whose prefixes are not resolved.
                return Err(rule_err(
                    "prefixed names above the record are not supported".into(),
                ));
            }
            let family = family_index(&mut families, &mut by_name, r).map_err(&rule_err)?;
            rules.push(Rule {
                name: r.name.clone(),
                kind: r.kind,
                family,
                record,
                record_filter: content,
                labels,
                const_labels,
                value,
                transforms: compile_chain(&r.transforms)?,
                present: r.present,
                split: r.split,
                on_missing: r.on_missing,
                on_duplicate: r.on_duplicate,
                histogram,
                states: r.states.clone(),
            });
        }
        Ok(Mapping {
            origin: origin.to_string(),
            rules,
            families,
            namespaces: spec.namespaces,
            up_metric: spec.up_metric,
            lenient: spec.lenient,
            format: spec.format,
            limits: spec.limits,
            needs_namespaces: needs_ns,
            source: text.to_string(),
        })
    }
}

fn prefixed_above_record(p: &RelPath) -> bool {
    match p {
        RelPath::Down { .. } => false,
        RelPath::Up { .. } => p.needs_namespaces(),
    }
}

/// Rules with the same metric name share one family (so it is written contiguously); they must
/// agree on its type.
fn family_index(
    families: &mut Vec<FamilySpec>,
    by_name: &mut HashMap<String, usize>,
    r: &RuleSpec,
) -> Result<usize, String> {
    if let Some(&i) = by_name.get(&r.name) {
        let f = &mut families[i];
        if f.kind != r.kind {
            return Err(format!(
                "another rule defines `{}` as {:?}; rules sharing a name must share a type",
                r.name, f.kind
            ));
        }
        if f.help.is_empty() {
            f.help = r.help.clone();
        }
        return Ok(i);
    }
    families.push(FamilySpec {
        name: r.name.clone(),
        help: r.help.clone(),
        kind: r.kind,
        unit: r.unit.clone(),
    });
    by_name.insert(r.name.clone(), families.len() - 1);
    Ok(families.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_rule() {
        let m = Mapping::parse(
            r#"
namespaces: {q: "urn:q"}
up_metric: app_up
rules:
  - name: app_state
    help: State.
    type: gauge
    path: //q:service[@type="3"]
    labels:
      name: name
      kind: {path: "@kind", transforms: [trim, lower]}
    const_labels: {source: legacy}
    value: status
    transforms: [trim, {map: {UP: 1, DOWN: 0}}, {scale: 2}]
    on_missing: zero
    on_duplicate: sum
"#,
            "test.yaml",
        )
        .unwrap();
        assert_eq!(m.rules.len(), 1);
        assert!(m.needs_namespaces);
        assert_eq!(m.rules[0].transforms.len(), 3);
        assert_eq!(m.rules[0].on_duplicate, DuplicatePolicy::Sum);
        assert_eq!(m.up_metric.as_deref(), Some("app_up"));
    }

    #[test]
    fn unknown_fields_are_refused_with_origin() {
        let e = Mapping::parse(
            "rules:\n  - name: a\n    type: gauge\n    path: /a\n    vaule: b\n",
            "m.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("m.yaml") && e.contains("vaule"), "{e}");
    }

    #[test]
    fn bad_rules_name_the_rule() {
        for (yaml, want) in [
            (
                "rules:\n  - {name: 'bad name', type: gauge, path: /a}\n",
                "valid metric name",
            ),
            (
                "rules:\n  - {name: a, type: gauge, path: 'a/b'}\n",
                "must start with",
            ),
            (
                "rules:\n  - {name: a, type: histogram, path: /a, bucket: '@n', buckets: {x: 1}}\n",
                "+Inf",
            ),
            (
                "rules:\n  - {name: a, type: stateset, path: /a}\n",
                "states",
            ),
            (
                "rules:\n  - {name: a, type: summary, path: /a, quantile: '@q', sum: ../s}\n",
                "a summary needs `count`",
            ),
            (
                "rules:\n  - {name: a, type: gauge, path: /a, sum: ../s}\n",
                "for `type: summary`",
            ),
            (
                "rules:\n  - {name: xml_adapter_up, type: gauge, path: /a}\n",
                "reserved",
            ),
            (
                "rules:\n  - {name: a, type: gauge, path: /a, labels: {__x: '@y'}}\n",
                "label name",
            ),
            (
                "rules:\n  - {name: a, type: gauge, path: /a, transforms: [{regex: '('}]}\n",
                "bad regex",
            ),
            (
                "rules:\n  - {name: a_bytes, type: gauge, unit: seconds, path: /a}\n",
                "unit `seconds`",
            ),
            (
                "rules:\n  - {name: a, type: gauge, path: /a}\n  - {name: a, type: counter, path: /b}\n",
                "share a type",
            ),
        ] {
            let e = Mapping::parse(yaml, "m.yaml").unwrap_err().to_string();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }

    #[test]
    fn metric_and_label_names() {
        assert!(valid_metric_name("bind_up"));
        assert!(valid_metric_name("a:b_c1"));
        assert!(!valid_metric_name("1abc"));
        assert!(!valid_metric_name(""));
        assert!(valid_label_name("view"));
        assert!(!valid_label_name("__name__"));
        assert!(!valid_label_name("a-b"));
    }
}
