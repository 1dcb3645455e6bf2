//! The project's own exposition encoder: Prometheus text 0.0.4 and OpenMetrics 1.0 text, plus a
//! JSON view for people debugging a mapping.
//!
//! Written here rather than taken from the `prometheus` crate because that crate has no
//! OpenMetrics encoder and formats infinities as `inf`.

use std::borrow::Cow;
use std::fmt::Write as _;

/// The metric type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Counter,
    Gauge,
    Untyped,
    Info,
    Stateset,
    Histogram,
    /// Quantiles read from the document (a `quantile` label), with `_sum` and `_count`.
    Summary,
}

/// The part of a sample name after the family name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suffix {
    None,
    Bucket,
    Count,
    Sum,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub suffix: Suffix,
    /// Label pairs in output order; names are validated when the mapping loads.
    pub labels: Vec<(String, String)>,
    pub value: f64,
    /// Epoch seconds, when the mapping reads the sample's time from the document.
    pub timestamp: Option<f64>,
}

/// One metric family: every sample of a family is written contiguously under one HELP/TYPE.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// The OpenMetrics family name: no `_total` for counters, no `_info` for info metrics.
    pub name: String,
    /// The name a counter's samples carry in the 0.0.4 text format (what the user wrote).
    pub text_counter_name: String,
    pub help: String,
    pub kind: Kind,
    pub unit: Option<String>,
    pub samples: Vec<Sample>,
}

impl Family {
    /// Builds a family from the name the user wrote (`foo_total`, `foo_info`, `foo_seconds`).
    pub fn new(user_name: &str, help: &str, kind: Kind) -> Family {
        let name = match kind {
            Kind::Counter => user_name.strip_suffix("_total").unwrap_or(user_name),
            Kind::Info => user_name.strip_suffix("_info").unwrap_or(user_name),
            _ => user_name,
        };
        Family {
            name: name.to_string(),
            text_counter_name: user_name.to_string(),
            help: help.to_string(),
            kind,
            unit: None,
            samples: Vec::new(),
        }
    }

    fn text_type(&self) -> &'static str {
        match self.kind {
            Kind::Counter => "counter",
            Kind::Gauge | Kind::Info | Kind::Stateset => "gauge",
            Kind::Untyped => "untyped",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
        }
    }

    /// The type `/json` and `check --format json` give a sample: the mapping's own word.
    fn json_type(&self) -> &'static str {
        match self.kind {
            Kind::Info => "info",
            Kind::Stateset => "stateset",
            _ => self.text_type(),
        }
    }

    fn om_type(&self) -> &'static str {
        match self.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Untyped => "unknown",
            Kind::Info => "info",
            Kind::Stateset => "stateset",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
        }
    }

    /// The 0.0.4 name used on HELP/TYPE lines.
    pub fn text_name(&self) -> String {
        self.text_header_name().into_owned()
    }

    fn text_header_name(&self) -> Cow<'_, str> {
        match self.kind {
            Kind::Counter => Cow::Borrowed(&self.text_counter_name),
            Kind::Info => Cow::Owned(format!("{}_info", self.name)),
            _ => Cow::Borrowed(&self.name),
        }
    }

    fn sample_name(&self, s: &Sample, openmetrics: bool) -> String {
        let mut out = String::new();
        self.write_sample_name(&mut out, s, openmetrics);
        out
    }

    fn write_sample_name(&self, out: &mut String, s: &Sample, openmetrics: bool) {
        let suffix = match s.suffix {
            Suffix::None => "",
            Suffix::Bucket => "_bucket",
            Suffix::Count => "_count",
            Suffix::Sum => "_sum",
        };
        match self.kind {
            Kind::Counter if openmetrics => {
                out.push_str(&self.name);
                out.push_str("_total");
            }
            Kind::Counter => out.push_str(&self.text_counter_name),
            Kind::Info => {
                out.push_str(&self.name);
                out.push_str("_info");
            }
            _ => {
                out.push_str(&self.name);
                out.push_str(suffix);
            }
        }
    }
}

/// The exposition formats `/metrics` can speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text004,
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text004 => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// Picks a format from an `Accept` header: the supported media range with the highest
    /// q-value wins (earlier wins ties); text 0.0.4 when nothing supported is asked for.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text004;
        };
        let mut best: Option<(f32, Format)> = None;
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0f32;
            let mut version = None;
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    match k.trim() {
                        "q" => q = v.trim().parse().unwrap_or(0.0),
                        "version" => version = Some(v.trim().to_string()),
                        _ => {}
                    }
                }
            }
            let fmt = match media.as_str() {
                "application/openmetrics-text"
                    if version
                        .as_deref()
                        .is_none_or(|v| v == "1.0.0" || v == "0.0.1") =>
                {
                    Format::OpenMetrics
                }
                "text/plain" | "*/*" | "text/*" => Format::Text004,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, fmt));
            }
        }
        best.map_or(Format::Text004, |(_, f)| f)
    }
}

/// Formats a float the way Go's `strconv.FormatFloat(v, 'g', -1, 64)` does, as the Prometheus
/// ecosystem expects: shortest round-trip digits, exponent form below 1e-4 and from 1e+06 up;
/// `+Inf`, `-Inf`, `NaN` spelled as both formats require.
pub fn format_value(v: f64) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

/// [`format_value`], appended to `out` without allocating.
pub fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        return out.push_str("NaN");
    }
    if v.is_infinite() {
        return out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    }
    if v == 0.0 {
        return out.push_str(if v.is_sign_negative() { "-0" } else { "0" });
    }
    // Most samples are integers below 1e6: their shortest form is their digits.
    if v.fract() == 0.0 && v.abs() < 1e6 {
        let _ = write!(out, "{}", v as i64);
        return;
    }
    let start = out.len();
    let _ = write!(out, "{v:e}");
    let Some(e) = out[start..].find('e') else {
        return;
    };
    let exp: i32 = out[start + e + 1..].parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        out.truncate(start + e);
        let sign = if exp < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{:02}", exp.abs());
    } else {
        out.truncate(start);
        let _ = write!(out, "{v}");
    }
}

fn escape_label_value(out: &mut String, v: &str) {
    // Plain runs are copied whole; only `\\`, `"` and newlines are escaped.
    let mut rest = v;
    while let Some(i) = rest.find(['\\', '"', '\n']) {
        out.push_str(&rest[..i]);
        out.push_str(match rest.as_bytes()[i] {
            b'\\' => "\\\\",
            b'"' => "\\\"",
            _ => "\\n",
        });
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

fn escape_help(out: &mut String, v: &str, openmetrics: bool) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if openmetrics => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

fn write_labels(out: &mut String, labels: &[(String, String)]) {
    if labels.is_empty() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_label_value(out, v);
        out.push('"');
    }
    out.push('}');
}

/// A sample's timestamp, to the millisecond: integer milliseconds in the 0.0.4 text format,
/// seconds with a decimal fraction in OpenMetrics (never an exponent).
fn write_timestamp(out: &mut String, seconds: f64, openmetrics: bool) {
    let ms = (seconds * 1000.0).round();
    if !ms.is_finite() || ms.abs() >= 9e15 {
        return;
    }
    let ms = ms as i64;
    if !openmetrics {
        let _ = write!(out, " {ms}");
        return;
    }
    let sign = if ms < 0 { "-" } else { "" };
    let (whole, frac) = (ms.unsigned_abs() / 1000, ms.unsigned_abs() % 1000);
    let _ = write!(out, " {sign}{whole}");
    if frac != 0 {
        let digits = format!("{frac:03}");
        let _ = write!(out, ".{}", digits.trim_end_matches('0'));
    }
}

/// Writes families in the given format. OpenMetrics output ends with `# EOF`.
pub fn encode(families: &[&Family], format: Format) -> String {
    let om = format == Format::OpenMetrics;
    let mut out = String::with_capacity(families.iter().map(|f| f.samples.len() * 64 + 128).sum());
    // A family without samples says nothing (and the 0.0.4 format has no way to say "empty").
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let header_name = if om {
            Cow::Borrowed(f.name.as_str())
        } else {
            f.text_header_name()
        };
        if !f.help.is_empty() {
            out.push_str("# HELP ");
            out.push_str(&header_name);
            out.push(' ');
            escape_help(&mut out, &f.help, om);
            out.push('\n');
        }
        out.push_str("# TYPE ");
        out.push_str(&header_name);
        out.push(' ');
        out.push_str(if om { f.om_type() } else { f.text_type() });
        out.push('\n');
        if om && let Some(unit) = &f.unit {
            let _ = writeln!(out, "# UNIT {header_name} {unit}");
        }
        // OpenMetrics wants a histogram's or summary's `_count` and `_sum` both or neither; a
        // document that gives no sum leaves the count to the `+Inf` bucket (text 0.0.4 keeps it).
        let with_sum: Vec<&[(String, String)]> =
            if om && matches!(f.kind, Kind::Histogram | Kind::Summary) {
                f.samples
                    .iter()
                    .filter(|s| s.suffix == Suffix::Sum)
                    .map(|s| s.labels.as_slice())
                    .collect()
            } else {
                Vec::new()
            };
        let mut order: Vec<&Sample> = f.samples.iter().collect();
        if om && f.kind == Kind::Stateset {
            // A stateset's states are one point: contiguous, whatever labels sort after the
            // state label (a stable sort keeps the states' order).
            let point = |s: &Sample| {
                s.labels
                    .iter()
                    .filter(|(k, _)| *k != f.name)
                    .cloned()
                    .collect::<Vec<_>>()
            };
            order.sort_by_cached_key(|s| point(s));
        }
        for s in order {
            if om
                && s.suffix == Suffix::Count
                && matches!(f.kind, Kind::Histogram | Kind::Summary)
                && !with_sum.contains(&s.labels.as_slice())
            {
                continue;
            }
            f.write_sample_name(&mut out, s, om);
            write_labels(&mut out, &s.labels);
            out.push(' ');
            write_value(&mut out, s.value);
            if let Some(ts) = s.timestamp {
                write_timestamp(&mut out, ts, om);
            }
            out.push('\n');
        }
    }
    if om {
        out.push_str("# EOF\n");
    }
    out
}

/// The same samples as JSON: one object per sample, named as in the text format.
pub fn encode_json(families: &[&Family]) -> serde_json::Value {
    let mut samples = Vec::new();
    for f in families {
        for s in &f.samples {
            let labels: serde_json::Map<String, serde_json::Value> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            // JSON has no NaN/Inf: those go out as the strings the text format would print.
            let value = if s.value.is_finite() {
                serde_json::json!(s.value)
            } else {
                serde_json::Value::String(format_value(s.value))
            };
            let mut sample = serde_json::json!({
                "name": f.sample_name(s, false),
                "type": f.json_type(),
                "help": f.help,
                "labels": labels,
                "value": value,
            });
            if let (Some(ts), Some(obj)) = (s.timestamp, sample.as_object_mut()) {
                obj.insert("timestamp".into(), serde_json::json!(ts));
            }
            samples.push(sample);
        }
    }
    serde_json::Value::Array(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_match_go_formatting() {
        assert_eq!(format_value(128417.0), "128417");
        assert_eq!(format_value(1626325868.0), "1.626325868e+09");
        assert_eq!(format_value(1e6), "1e+06");
        assert_eq!(format_value(0.01), "0.01");
        assert_eq!(format_value(0.00001), "1e-05");
        assert_eq!(format_value(-2.5), "-2.5");
        assert_eq!(
            format_value(18446744073709551603u64 as f64),
            "1.8446744073709552e+19"
        );
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(0.0), "0");
    }

    fn counter() -> Family {
        let mut f = Family::new(
            "app_requests_total",
            "Requests \"served\"\\ by\nthe app.",
            Kind::Counter,
        );
        f.samples.push(Sample {
            suffix: Suffix::None,
            labels: vec![("path".into(), "a\"b\\c\nd é".into())],
            value: 3.0,
            timestamp: None,
        });
        f
    }

    #[test]
    fn text_format_escapes_labels_and_help() {
        let out = encode(&[&counter()], Format::Text004);
        assert_eq!(
            out,
            "# HELP app_requests_total Requests \"served\"\\\\ by\\nthe app.\n\
             # TYPE app_requests_total counter\n\
             app_requests_total{path=\"a\\\"b\\\\c\\nd é\"} 3\n"
        );
    }

    #[test]
    fn openmetrics_uses_family_names_and_eof() {
        let mut info = Family::new("app_build_info", "Build.", Kind::Info);
        info.samples.push(Sample {
            suffix: Suffix::None,
            labels: vec![("version".into(), "1.2".into())],
            value: 1.0,
            timestamp: None,
        });
        let out = encode(&[&counter(), &info], Format::OpenMetrics);
        assert_eq!(
            out,
            "# HELP app_requests Requests \\\"served\\\"\\\\ by\\nthe app.\n\
             # TYPE app_requests counter\n\
             app_requests_total{path=\"a\\\"b\\\\c\\nd é\"} 3\n\
             # HELP app_build Build.\n\
             # TYPE app_build info\n\
             app_build_info{version=\"1.2\"} 1\n\
             # EOF\n"
        );
        let text = encode(&[&info], Format::Text004);
        assert!(text.contains("# TYPE app_build_info gauge\napp_build_info{version=\"1.2\"} 1\n"));
    }

    #[test]
    fn negotiation_follows_q_values() {
        let prom = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(Format::negotiate(Some(prom)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Text004
        );
        assert_eq!(Format::negotiate(None), Format::Text004);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0,text/plain")),
            Format::Text004
        );
        assert_eq!(Format::negotiate(Some("application/json")), Format::Text004);
    }

    #[test]
    fn openmetrics_count_only_with_sum() {
        let mut h = Family::new("rtt_seconds", "RTT.", Kind::Histogram);
        let s = |suffix, labels: &[(&str, &str)], value| Sample {
            suffix,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
            timestamp: None,
        };
        h.samples
            .push(s(Suffix::Bucket, &[("v", "a"), ("le", "+Inf")], 3.0));
        h.samples.push(s(Suffix::Count, &[("v", "a")], 3.0));
        h.samples
            .push(s(Suffix::Bucket, &[("v", "b"), ("le", "+Inf")], 2.0));
        h.samples.push(s(Suffix::Count, &[("v", "b")], 2.0));
        h.samples.push(s(Suffix::Sum, &[("v", "b")], 0.5));
        let om = encode(&[&h], Format::OpenMetrics);
        assert!(!om.contains("rtt_seconds_count{v=\"a\"}"), "{om}");
        assert!(om.contains("rtt_seconds_count{v=\"b\"} 2\n"), "{om}");
        assert!(om.contains("rtt_seconds_sum{v=\"b\"} 0.5\n"), "{om}");
        let text = encode(&[&h], Format::Text004);
        assert!(text.contains("rtt_seconds_count{v=\"a\"} 3\n"), "{text}");
    }

    #[test]
    fn json_types_are_the_mappings() {
        let mut info = Family::new("app_build_info", "", Kind::Info);
        info.samples.push(Sample {
            suffix: Suffix::None,
            labels: vec![],
            value: 1.0,
            timestamp: None,
        });
        let mut set = Family::new("app_state", "", Kind::Stateset);
        set.samples.push(Sample {
            suffix: Suffix::None,
            labels: vec![("app_state".into(), "up".into())],
            value: 1.0,
            timestamp: None,
        });
        let j = encode_json(&[&info, &set]);
        assert_eq!(j[0]["type"], "info");
        assert_eq!(j[1]["type"], "stateset");
    }

    #[test]
    fn timestamps_in_both_formats() {
        let mut g = Family::new("job_last_run", "", Kind::Gauge);
        for (ts, v) in [
            (Some(1626325868.926), 1.0),
            (Some(1626325868.0), 2.0),
            (None, 3.0),
        ] {
            g.samples.push(Sample {
                suffix: Suffix::None,
                labels: vec![("v".into(), format!("{v}"))],
                value: v,
                timestamp: ts,
            });
        }
        let text = encode(&[&g], Format::Text004);
        assert!(
            text.contains("job_last_run{v=\"1\"} 1 1626325868926\n"),
            "{text}"
        );
        assert!(
            text.contains("job_last_run{v=\"2\"} 2 1626325868000\n"),
            "{text}"
        );
        assert!(text.contains("job_last_run{v=\"3\"} 3\n"), "{text}");
        let om = encode(&[&g], Format::OpenMetrics);
        assert!(
            om.contains("job_last_run{v=\"1\"} 1 1626325868.926\n"),
            "{om}"
        );
        assert!(om.contains("job_last_run{v=\"2\"} 2 1626325868\n"), "{om}");
        assert_eq!(encode_json(&[&g])[0]["timestamp"], 1626325868.926);
        assert!(encode_json(&[&g])[2].get("timestamp").is_none());
    }

    #[test]
    fn json_keeps_nan_as_text() {
        let mut g = Family::new("temp", "", Kind::Gauge);
        g.samples.push(Sample {
            suffix: Suffix::None,
            labels: vec![],
            value: f64::NAN,
            timestamp: None,
        });
        let j = encode_json(&[&g]);
        assert_eq!(j[0]["value"], "NaN");
        assert_eq!(j[0]["name"], "temp");
    }
}
