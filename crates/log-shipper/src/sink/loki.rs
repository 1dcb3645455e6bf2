//! Grafana Loki: `POST /loki/api/v1/push` with a JSON body (Loki's HTTP API reference, "Ingest
//! logs"): `{"streams":[{"stream":{labels},"values":[["<unix ns>","<line>"],...]}]}`, gzip
//! allowed, 204 on success. Entries are grouped into streams by their label values; within a
//! stream they keep the order they were read in.
//!
//! Labels come from the configuration: `{field}` in a value takes the event's field. A label
//! whose fields are all missing is left out; an event left with no label at all gets
//! `job="log-shipper"` (Loki refuses a stream without labels).
//!
//! Loki stores the valid entries of a request it answers 400 for (too old, too long...): the
//! whole batch then goes to the dead-letter file, those entries included.

use std::collections::HashMap;

use crate::event::{Event, write_json_string};
use crate::sink::auth::Auth;
use crate::sink::http::{HttpProtocol, HttpSinkSpec};

/// A text with `{field}` references: `{namespace}/{pod}`. `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(String),
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let name: String = chars.by_ref().take_while(|c| *c != '}').collect();
                    if name.is_empty() {
                        return Err(format!("`{text}`: an empty {{}}, or one not closed"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field(name));
                }
                '}' => {
                    return Err(format!(
                        "`{text}`: a }} without its {{ (write }}}} for one)"
                    ));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Self { parts })
    }

    /// The text for `event`; `None` when it names fields and the event has none of them.
    pub fn render(&self, event: &Event) -> Option<String> {
        let mut out = String::new();
        let mut fields = 0;
        let mut found = 0;
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(name) => {
                    fields += 1;
                    match event.field(name) {
                        Some(serde_json::Value::String(s)) => {
                            found += 1;
                            out.push_str(s);
                        }
                        Some(serde_json::Value::Null) | None => {}
                        Some(other) => {
                            found += 1;
                            out.push_str(&other.to_string());
                        }
                    }
                }
            }
        }
        (fields == 0 || found > 0)
            .then_some(out)
            .filter(|s| !s.is_empty())
    }
}

/// What a Loki entry's line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineFormat {
    /// The event as JSON (`timestamp`, `message`, the fields), as the HTTP sink sends it.
    Json,
    /// The message alone.
    Message,
}

/// A Loki sink's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LokiSpec {
    /// Ends in `/loki/api/v1/push`.
    pub http: HttpSinkSpec,
    pub labels: Vec<(String, Template)>,
    /// Structured metadata (Loki 2.9+): a third element of an entry.
    pub structured_metadata: Vec<(String, Template)>,
    pub line: LineFormat,
    pub auth: Auth,
}

/// A Loki label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved).
pub fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "`{name}` is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)"
        ));
    }
    if name.starts_with("__") {
        return Err(format!("`{name}`: names starting with __ are Loki's own"));
    }
    Ok(())
}

#[derive(Debug)]
pub struct Loki {
    labels: Vec<(String, Template)>,
    structured_metadata: Vec<(String, Template)>,
    line: LineFormat,
    auth: Auth,
}

impl Loki {
    pub fn new(spec: &LokiSpec) -> Self {
        Self {
            labels: spec.labels.clone(),
            structured_metadata: spec.structured_metadata.clone(),
            line: spec.line,
            auth: spec.auth.clone(),
        }
    }

    /// The stream's labels as the JSON object text (also its grouping key).
    fn labels_json(&self, event: &Event) -> Vec<u8> {
        let mut out = vec![b'{'];
        for (name, template) in &self.labels {
            if let Some(value) = template.render(event) {
                if out.len() > 1 {
                    out.push(b',');
                }
                write_json_string(name, &mut out);
                out.push(b':');
                write_json_string(&value, &mut out);
            }
        }
        if out.len() == 1 {
            out.extend_from_slice(b"\"job\":\"log-shipper\"");
        }
        out.push(b'}');
        out
    }

    fn write_entry(&self, event: &Event, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("[\"{}\",", event.timestamp).as_bytes());
        match self.line {
            LineFormat::Message => write_json_string(&event.message, out),
            LineFormat::Json => {
                let mut line = Vec::with_capacity(event.size_hint());
                event.write_json(&mut line);
                write_json_string(&String::from_utf8_lossy(&line), out);
            }
        }
        let mut first = true;
        for (name, template) in &self.structured_metadata {
            if let Some(value) = template.render(event) {
                out.extend_from_slice(if first { b",{" } else { b"," });
                first = false;
                write_json_string(name, out);
                out.push(b':');
                write_json_string(&value, out);
            }
        }
        if !first {
            out.push(b'}');
        }
        out.push(b']');
    }
}

impl HttpProtocol for Loki {
    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn encode(&self, events: &[&Event], body: &mut Vec<u8>) {
        // Streams in the order they first appear, entries in the order read.
        let mut streams: Vec<(Vec<u8>, Vec<usize>)> = Vec::new();
        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        for (i, event) in events.iter().enumerate() {
            let key = self.labels_json(event);
            match index.get(&key) {
                Some(&s) => streams[s].1.push(i),
                None => {
                    index.insert(key.clone(), streams.len());
                    streams.push((key, vec![i]));
                }
            }
        }
        body.extend_from_slice(b"{\"streams\":[");
        for (s, (labels, entries)) in streams.iter().enumerate() {
            if s > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"stream\":");
            body.extend_from_slice(labels);
            body.extend_from_slice(b",\"values\":[");
            for (n, &i) in entries.iter().enumerate() {
                if n > 0 {
                    body.push(b',');
                }
                self.write_entry(events[i], body);
            }
            body.extend_from_slice(b"]}");
        }
        body.extend_from_slice(b"]}");
    }

    fn authorization(&self, token: &str) -> String {
        self.auth.header(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(message: &str, fields: &[(&str, &str)]) -> Event {
        let mut e = Event::new(message.into());
        e.timestamp = 1_700_000_000_000_000_001;
        for (k, v) in fields {
            e.fields.insert((*k).into(), (*v).into());
        }
        e
    }

    #[test]
    fn templates() {
        let t = Template::parse("{namespace}/{pod}").unwrap();
        assert_eq!(
            t.render(&event("m", &[("namespace", "ns"), ("pod", "p")])),
            Some("ns/p".into())
        );
        assert_eq!(t.render(&event("m", &[])), None);
        assert_eq!(
            Template::parse("app").unwrap().render(&event("m", &[])),
            Some("app".into())
        );
        assert_eq!(
            Template::parse("{{x}}").unwrap().render(&event("m", &[])),
            Some("{x}".into())
        );
        assert!(Template::parse("{}").is_err());
        assert!(Template::parse("a}").is_err());
        assert!(check_label_name("app_1").is_ok());
        assert!(check_label_name("1app").is_err());
        assert!(check_label_name("a-b").is_err());
        assert!(check_label_name("__name__").is_err());
    }

    #[test]
    fn entries_are_grouped_into_streams_in_order() {
        let loki = Loki {
            labels: vec![
                ("job".into(), Template::parse("app").unwrap()),
                ("level".into(), Template::parse("{level}").unwrap()),
            ],
            structured_metadata: vec![("pod".into(), Template::parse("{pod}").unwrap())],
            line: LineFormat::Message,
            auth: Auth::Bearer,
        };
        let events = [
            event("a", &[("level", "info"), ("pod", "p1")]),
            event("b", &[("level", "error")]),
            event("c", &[("level", "info")]),
            event("d", &[]),
        ];
        let refs: Vec<&Event> = events.iter().collect();
        let mut body = Vec::new();
        loki.encode(&refs, &mut body);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let streams = v["streams"].as_array().unwrap();
        assert_eq!(streams.len(), 3);
        assert_eq!(
            streams[0]["stream"],
            serde_json::json!({"job": "app", "level": "info"})
        );
        assert_eq!(
            streams[0]["values"],
            serde_json::json!([["1700000000000000001", "a", {"pod": "p1"}], ["1700000000000000001", "c"]])
        );
        assert_eq!(streams[1]["stream"]["level"], "error");
        assert_eq!(streams[2]["stream"], serde_json::json!({"job": "app"}));
    }

    #[test]
    fn json_lines_and_the_fallback_label() {
        let loki = Loki {
            labels: vec![("pod".into(), Template::parse("{pod}").unwrap())],
            structured_metadata: vec![],
            line: LineFormat::Json,
            auth: Auth::Bearer,
        };
        let e = event("hi", &[("level", "warn")]);
        let mut body = Vec::new();
        loki.encode(&[&e], &mut body);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["streams"][0]["stream"],
            serde_json::json!({"job": "log-shipper"})
        );
        let line: serde_json::Value =
            serde_json::from_str(v["streams"][0]["values"][0][1].as_str().unwrap()).unwrap();
        assert_eq!(line["message"], "hi");
        assert_eq!(line["level"], "warn");
    }
}
