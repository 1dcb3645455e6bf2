//! Prometheus metrics as a test reads them: scrape `/metrics`, parse the text exposition
//! format (or OpenMetrics), and look a series up by its name and its **full** label set.
//!
//! A series that is not on the page is `None`, never 0: "reset to 0" and "gone" are different
//! answers, and a test says which one it expects.
//!
//! ```
//! use test_support::metrics::Metrics;
//!
//! let page = Metrics::parse(
//!     "# TYPE syncs_total counter\n\
//!      syncs_total{result=\"published\"} 3\n\
//!      syncs_total{result=\"error\",remote=\"origin\"} 1\n",
//! )
//! .unwrap();
//! assert_eq!(page.get("syncs_total", &[("result", "published")]), Some(3.0));
//! // The full label set: a subset matches nothing.
//! assert_eq!(page.get("syncs_total", &[("result", "error")]), None);
//! assert_eq!(page.value("syncs_total{remote=\"origin\",result=\"error\"}"), Some(1.0));
//! assert_eq!(page.series("syncs_total").count(), 2);
//! ```

use std::fmt;
use std::net::SocketAddr;

/// One sample line: a series (name and labels, sorted by label name) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    /// The value of one label of this series.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed metrics page. `Display` prints the page as it was served (for failure messages).
#[derive(Debug, Clone)]
pub struct Metrics {
    text: String,
    samples: Vec<Sample>,
}

/// A line of the page that is not a valid sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

impl Metrics {
    /// Parses a page in the Prometheus text format or OpenMetrics. Two samples of the same
    /// series are an error, as they are for Prometheus.
    pub fn parse(text: &str) -> Result<Metrics, ParseError> {
        let mut samples: Vec<Sample> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |message: String| ParseError {
                line: i + 1,
                message: format!("{message} in {line:?}"),
            };
            let (name, labels, rest) = parse_series(line).map_err(error)?;
            // After the value: an optional timestamp, and in OpenMetrics an exemplar.
            let value_text = rest
                .split_whitespace()
                .next()
                .ok_or_else(|| error("no value".to_owned()))?;
            let value = parse_value(value_text)
                .ok_or_else(|| error(format!("bad value {value_text:?}")))?;
            if samples.iter().any(|s| s.name == name && s.labels == labels) {
                return Err(error("a second sample of the same series".to_owned()));
            }
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        Ok(Metrics {
            text: text.to_owned(),
            samples,
        })
    }

    /// The value of the series named `name` whose labels are exactly `labels` (in any order);
    /// `None` when there is no such series.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut want: Vec<(&str, &str)> = labels.to_vec();
        want.sort_unstable();
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == want.len()
                    && s.labels
                        .iter()
                        .zip(&want)
                        .all(|((k, v), (wk, wv))| k == wk && v == wv)
            })
            .map(|s| s.value)
    }

    /// [`Metrics::get`] with the series written as on the page: `name` or
    /// `name{label="value",...}` (labels in any order, values escaped as on the page).
    ///
    /// # Panics
    /// If `series` is not a valid series.
    pub fn value(&self, series: &str) -> Option<f64> {
        let (name, labels, rest) =
            parse_series(series).unwrap_or_else(|e| panic!("series {series:?}: {e}"));
        assert!(
            rest.trim().is_empty(),
            "series {series:?}: unexpected {rest:?}"
        );
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        self.get(&name, &labels)
    }

    /// Every series named `name` (any labels).
    pub fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// Every sample on the page.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The page as served.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// GETs `http://addr/metrics` and parses it; panics saying what went wrong.
pub fn scrape(addr: SocketAddr) -> Metrics {
    try_scrape(addr).unwrap_or_else(|e| panic!("{e}"))
}

/// GETs `http://addr/metrics` and parses it.
pub fn try_scrape(addr: SocketAddr) -> Result<Metrics, String> {
    let response =
        crate::http::get(addr, "/metrics").map_err(|e| format!("GET {addr}/metrics: {e}"))?;
    if response.status != 200 {
        return Err(format!(
            "GET {addr}/metrics answered {}: {}",
            response.status, response.body
        ));
    }
    Metrics::parse(&response.body).map_err(|e| {
        format!(
            "{addr}/metrics is not a metrics page: {e}\n{}",
            response.body
        )
    })
}

/// Runs `promtool check metrics` (Debian package `prometheus`) on a page: `Err` with
/// promtool's complaints if it refuses it. A missing promtool fails the test.
pub fn promtool_check(text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    crate::skip::require_program("promtool", "prometheus");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run promtool: {e}"))?;
    // A failed write means promtool stopped reading: its output says why.
    let _ = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(text.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("promtool: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool check metrics refused the page: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A series' labels, sorted by name.
type Labels = Vec<(String, String)>;

/// `name{labels}` at the start of `text`; returns the series (labels sorted) and the rest.
fn parse_series(text: &str) -> Result<(String, Labels, &str), String> {
    let name_end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    let name = &text[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("no metric name".to_owned());
    }
    let mut rest = &text[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after)?;
        labels = parsed;
        rest = after;
    }
    labels.sort();
    if labels.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err("a label given twice".to_owned());
    }
    Ok((name.to_owned(), labels, rest))
}

/// `a="x",b="y"}` (the opening brace already taken); returns the labels and what follows.
fn parse_labels(mut text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start();
        if let Some(after) = text.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = text.find('=').ok_or("a label without `=`")?;
        let key = text[..eq].trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {key:?}"));
        }
        text = text[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or("a label value without quotes")?;
        let mut value = String::new();
        let mut chars = text.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("an unterminated label value".to_owned()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    other => return Err(format!("bad escape {other:?} in a label value")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        text = text[end + 1..].trim_start();
        if let Some(after) = text.strip_prefix(',') {
            text = after;
        } else if !text.starts_with('}') {
            return Err("labels not separated by `,`".to_owned());
        }
    }
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        v => v.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP a_total Things.\n# TYPE a_total counter\n\
        a_total{kind=\"x\",route=\"r\"} 2\n\
        a_total{kind=\"x\"} 1\n\
        a_total 7 1700000000000\n\
        b_bucket{le=\"+Inf\"} 5\n\
        c{v=\"we\\\"ird\\\\ \\nline\"} 3\n\
        d NaN\n\
        e{a=\"1\",} -Inf\n\
        # EOF\n";

    #[test]
    fn series_are_matched_by_name_and_the_full_label_set() {
        let m = Metrics::parse(PAGE).expect("parse");
        assert_eq!(m.get("a_total", &[("kind", "x")]), Some(1.0));
        assert_eq!(
            m.get("a_total", &[("route", "r"), ("kind", "x")]),
            Some(2.0)
        );
        assert_eq!(m.get("a_total", &[]), Some(7.0));
        assert_eq!(m.get("a_total", &[("route", "r")]), None);
        assert_eq!(m.get("a", &[]), None, "a prefix is not a name");
        assert_eq!(m.value("b_bucket{le=\"+Inf\"}"), Some(5.0));
        assert_eq!(m.value("c{v=\"we\\\"ird\\\\ \\nline\"}"), Some(3.0));
        assert_eq!(
            m.series("c").next().and_then(|s| s.label("v")),
            Some("we\"ird\\ \nline")
        );
        assert!(m.value("d").is_some_and(f64::is_nan));
        assert_eq!(m.value("e{a=\"1\"}"), Some(f64::NEG_INFINITY));
        assert_eq!(m.series("a_total").count(), 3);
        assert_eq!(m.to_string(), PAGE);
    }

    #[test]
    fn broken_lines_and_duplicates_are_errors() {
        for bad in [
            "x{a=\"1\" 1",
            "x{a=1} 1",
            "x 1 2\nx 3",
            "x{a=\"1\",a=\"2\"} 1",
            "x",
            "x abc",
            "{a=\"1\"} 1",
        ] {
            assert!(Metrics::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
