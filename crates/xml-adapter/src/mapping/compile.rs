//! A parsed mapping checked and compiled for the engine. Each error names the field at fault
//! (see [`super::locate`]).

use std::collections::{BTreeMap, HashMap};

use super::locate::{Fault, Field};
use super::{
    FamilySpec, Histogram, Label, LabelSpec, Mapping, MappingSpec, Rule, RuleSpec, Timestamp,
    TimestampFormat, TimestampSpec, valid_label_name, valid_metric_name,
};
use crate::encode::Kind;
use crate::path::{self, Leaf, Predicate, RelPath};
use crate::transform::{Transform, TransformSpec, parse_number};

pub(super) fn compile(spec: MappingSpec, origin: &str, text: &str) -> Result<Mapping, Fault> {
    if spec.rules.is_empty() {
        return Err(Fault::new(Field::top("rules"), "no rules"));
    }
    if let Some(up) = &spec.up_metric
        && !valid_metric_name(up)
    {
        return Err(Fault::new(
            Field::top("up_metric"),
            format!("`{up}` is not a valid metric name"),
        ));
    }
    for (p, uri) in &spec.namespaces {
        if uri.is_empty() || !valid_label_name(p) {
            return Err(Fault::new(
                Field::top("namespaces").key(p),
                format!("namespace prefix `{p}` needs a name and a URI"),
            ));
        }
    }
    let mut families: Vec<FamilySpec> = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    let mut rules = Vec::new();
    let mut needs_ns = false;
    for (i, r) in spec.rules.iter().enumerate() {
        let at = Field::rule(i);
        let rule = compile_rule(r, &at, &spec)?;
        needs_ns |= rule.record.needs_namespaces()
            || rule.record_filter.iter().any(Predicate::needs_namespaces)
            || rule.paths().any(RelPath::needs_namespaces);
        let family = family_index(&mut families, &mut by_name, r)
            .map_err(|m| Fault::new(at.key("type"), m))?;
        rules.push(Rule { family, ..rule });
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

/// One rule (its `family` is set by the caller).
fn compile_rule(r: &RuleSpec, at: &Field, spec: &MappingSpec) -> Result<Rule, Fault> {
    let ns = &spec.namespaces;
    let fault = |key: &str, message: String| Fault::new(at.key(key), message);
    if !valid_metric_name(&r.name) {
        return Err(fault("name", "not a valid metric name".into()));
    }
    if r.name.starts_with("xml_adapter_") {
        return Err(fault(
            "name",
            "names starting with `xml_adapter_` are reserved for the adapter's own metrics".into(),
        ));
    }
    if spec.up_metric.as_deref() == Some(r.name.as_str()) {
        return Err(fault("name", "the same name as `up_metric`".into()));
    }
    if let Some(unit) = &r.unit {
        let stem = r.name.strip_suffix("_total").unwrap_or(&r.name);
        // OpenMetrics parsers (Prometheus included) refuse a UNIT that is not the suffix.
        if !valid_label_name(unit) || !stem.ends_with(&format!("_{unit}")) {
            return Err(fault(
                "unit",
                format!("unit `{unit}` must be the last part of the name (before `_total`)"),
            ));
        }
    }
    let mut record =
        path::parse_record_path(&r.path, ns).map_err(|e| fault("path", e.to_string()))?;
    let last = record.steps.len() - 1;
    let (content, start): (Vec<_>, Vec<_>) = record.steps[last]
        .predicates
        .drain(..)
        .partition(Predicate::needs_content);
    record.steps[last].predicates = start;
    // `[not(*)]` is decided as the record's children start, not from its capture.
    let (leaf, content): (Vec<_>, Vec<_>) = content.into_iter().partition(Predicate::is_leaf_test);
    let rel = |field: Field, p: &str| rel_path(p, ns).map_err(|m| Fault::new(field, m));
    let chain = |field: Field, specs: &[TransformSpec]| {
        compile_chain(specs).map_err(|m| Fault::new(field, m))
    };
    let mut labels = Vec::new();
    for (name, l) in &r.labels {
        let field = at.key("labels").key(name);
        if !valid_label_name(name) {
            return Err(Fault::new(
                field,
                format!("`{name}` is not a valid label name"),
            ));
        }
        let (p, t, split) = match l {
            LabelSpec::Path(p) => (p.as_str(), &[][..], false),
            LabelSpec::Full(f) => (f.path.as_str(), &f.transforms[..], f.split),
        };
        if split && !r.split {
            return Err(Fault::new(
                field,
                format!("label `{name}` is split but the value is not (`split: true` on the rule)"),
            ));
        }
        labels.push(Label {
            name: name.clone(),
            path: rel(field.clone(), p)?,
            transforms: chain(field, t)?,
            split,
        });
    }
    let mut const_labels = Vec::new();
    for (k, v) in &r.const_labels {
        let field = at.key("const_labels").key(k);
        if !valid_label_name(k) {
            return Err(Fault::new(
                field,
                format!("`{k}` is not a valid label name"),
            ));
        }
        if r.labels.contains_key(k) {
            return Err(Fault::new(
                field,
                format!("label `{k}` is both a label and a const label"),
            ));
        }
        const_labels.push((k.clone(), v.clone()));
    }
    let reserved: &[&str] = match r.kind {
        Kind::Histogram => &["le"],
        Kind::Summary => &["quantile"],
        _ => &[],
    };
    for res in reserved {
        for (key, map) in [
            ("labels", r.labels.contains_key(*res)),
            ("const_labels", r.const_labels.contains_key(*res)),
        ] {
            if map {
                return Err(Fault::new(
                    at.key(key).key(res),
                    format!("label `{res}` is reserved for this type"),
                ));
            }
        }
    }
    let histogram = histogram(r, at, ns)?;
    if r.kind == Kind::Stateset {
        if r.states.is_empty() {
            return Err(fault("type", "a stateset needs `states`".into()));
        }
        if r.labels.contains_key(&r.name) {
            return Err(Fault::new(
                at.key("labels").key(&r.name),
                "a stateset's own name is its state label",
            ));
        }
    } else if !r.states.is_empty() {
        return Err(fault("states", "`states` is for `type: stateset`".into()));
    }
    if r.split
        && matches!(
            r.kind,
            Kind::Histogram | Kind::Summary | Kind::Stateset | Kind::Info
        )
    {
        return Err(fault(
            "split",
            "`split` works with counter, gauge and untyped".into(),
        ));
    }
    let value = rel(at.key("value"), r.value.as_deref().unwrap_or("."))?;
    let timestamp = match &r.timestamp {
        None => None,
        Some(t) => {
            let field = at.key("timestamp");
            if matches!(r.kind, Kind::Histogram | Kind::Summary) {
                return Err(Fault::new(
                    field,
                    "a timestamp works with counter, gauge, untyped, info and stateset",
                ));
            }
            let (p, specs, format) = match t {
                TimestampSpec::Path(p) => (p.as_str(), &[][..], TimestampFormat::Seconds),
                TimestampSpec::Full(f) => (f.path.as_str(), &f.transforms[..], f.format),
            };
            let mut transforms = chain(field.clone(), specs)?;
            let last = match format {
                TimestampFormat::Seconds => None,
                TimestampFormat::Milliseconds => Some(TransformSpec::Scale(0.001)),
                TimestampFormat::Rfc3339 => Some(TransformSpec::Date("rfc3339".into())),
            };
            if let Some(spec) = last {
                transforms.extend(chain(field.clone(), &[spec])?);
            }
            Some(Timestamp {
                path: rel(field, p)?,
                transforms,
            })
        }
    };
    let rule = Rule {
        name: r.name.clone(),
        kind: r.kind,
        family: 0,
        record,
        record_filter: content,
        labels,
        const_labels,
        value,
        transforms: chain(at.key("transforms"), &r.transforms)?,
        present: r.present,
        split: r.split,
        on_missing: r.on_missing,
        on_duplicate: r.on_duplicate,
        histogram,
        states: r.states.clone(),
        leaf_only: !leaf.is_empty(),
        timestamp,
    };
    Ok(rule)
}

/// A histogram's or summary's own settings; `None` for other types (which must not have them).
fn histogram(
    r: &RuleSpec,
    at: &Field,
    ns: &BTreeMap<String, String>,
) -> Result<Option<Histogram>, Fault> {
    let rel = |field: Field, p: &str| rel_path(p, ns).map_err(|m| Fault::new(field, m));
    let chain = |field: Field, specs: &[TransformSpec]| {
        compile_chain(specs).map_err(|m| Fault::new(field, m))
    };
    let fault = |key: &str, message: &str| Fault::new(at.key(key), message);
    let path =
        |key: &str, p: &Option<String>| p.as_deref().map(|p| rel(at.key(key), p)).transpose();
    match r.kind {
        Kind::Histogram => {
            let Some(bucket) = r.bucket.as_deref() else {
                return Err(fault(
                    "type",
                    "a histogram needs `bucket` (the bucket key path)",
                ));
            };
            let mut bounds = HashMap::new();
            for (k, v) in &r.buckets {
                let b = parse_number(&v.to_text())
                    .map_err(|e| Fault::new(at.key("buckets").key(k), e))?;
                bounds.insert(k.clone(), b);
            }
            if !bounds.values().any(|b| *b == f64::INFINITY) {
                return Err(fault("buckets", "a histogram needs a `+Inf` bucket"));
            }
            for (key, set) in [
                ("quantile", r.quantile.is_some()),
                ("count", r.count.is_some()),
            ] {
                if set {
                    return Err(fault(
                        key,
                        "`quantile`/`count` are for `type: summary` (a histogram's count is \
                         its `+Inf` bucket)",
                    ));
                }
            }
            Ok(Some(Histogram {
                bucket: rel(at.key("bucket"), bucket)?,
                bounds,
                cumulative: r.cumulative,
                sum: path("sum", &r.sum)?,
                sum_transforms: chain(at.key("sum_transforms"), &r.sum_transforms)?,
                count: None,
                summary: false,
            }))
        }
        Kind::Summary => {
            if r.bucket.is_some() || !r.buckets.is_empty() {
                let key = if r.bucket.is_some() {
                    "bucket"
                } else {
                    "buckets"
                };
                return Err(fault(key, "`bucket`/`buckets` are for `type: histogram`"));
            }
            let need = |key: &str, p: &Option<String>| match path(key, p)? {
                Some(p) => Ok(p),
                None => Err(Fault::new(
                    at.key("type"),
                    format!("a summary needs `{key}`"),
                )),
            };
            Ok(Some(Histogram {
                bucket: need("quantile", &r.quantile)?,
                bounds: HashMap::new(),
                cumulative: false,
                sum: Some(need("sum", &r.sum)?),
                sum_transforms: chain(at.key("sum_transforms"), &r.sum_transforms)?,
                count: Some(need("count", &r.count)?),
                summary: true,
            }))
        }
        _ => {
            for (key, set) in [
                ("quantile", r.quantile.is_some()),
                ("sum", r.sum.is_some()),
                ("count", r.count.is_some()),
                ("sum_transforms", !r.sum_transforms.is_empty()),
            ] {
                if set {
                    return Err(fault(
                        key,
                        "`quantile`/`sum`/`count` are for `type: summary` and `histogram`",
                    ));
                }
            }
            for (key, set) in [
                ("bucket", r.bucket.is_some()),
                ("buckets", !r.buckets.is_empty()),
            ] {
                if set {
                    return Err(fault(key, "`bucket`/`buckets` are for `type: histogram`"));
                }
            }
            Ok(None)
        }
    }
}

/// A relative path of a rule, with the checks the engine needs of it.
fn rel_path(p: &str, ns: &BTreeMap<String, String>) -> Result<RelPath, String> {
    let parsed = path::parse_rel_path(p, ns).map_err(|e| e.to_string())?;
    for one in parsed.paths() {
        if let RelPath::Up {
            child: None,
            leaf: Leaf::Text,
            ..
        } = one
        {
            // An ancestor is still open when the record closes: its text is incomplete.
            return Err(format!(
                "`{p}`: the text of an open ancestor cannot be read; read one of its leaf \
                 children (`../name`, `ancestor::x/name`) or an attribute"
            ));
        }
        if matches!(one, RelPath::Up { .. }) && one.needs_namespaces() {
            // Ancestors keep only their raw start tag, whose prefixes are not resolved.
            return Err(format!(
                "`{p}`: prefixed names above the record are not supported"
            ));
        }
    }
    Ok(parsed)
}

fn compile_chain(specs: &[TransformSpec]) -> Result<Vec<Transform>, String> {
    specs.iter().map(TransformSpec::compile).collect()
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
