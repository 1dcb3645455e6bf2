//! The event: what a source's line becomes, what the pipeline's processors change and what a
//! sink encodes. A [`Chunk`] is the unit that moves from a pipeline to the sinks: events of one
//! stream, in order, with the acknowledgement that releases their position in the source.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ack::AckRef;

/// Structured fields of an event (parsed from the line, or added by enrichment).
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// One log event. Serialized as is into the disk buffer (`t`, `m`, `f`), so a replay after a
/// restart ships exactly what was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Nanoseconds since the Unix epoch: the time parsed from the line, or the time it was read.
    #[serde(rename = "t")]
    pub timestamp: i64,
    /// The line's text (several lines for a multiline event), UTF-8 (invalid bytes replaced).
    #[serde(rename = "m")]
    pub message: String,
    /// Everything else: parsed fields, enrichment, `truncated`.
    #[serde(
        rename = "f",
        default,
        skip_serializing_if = "serde_json::Map::is_empty"
    )]
    pub fields: Fields,
}

impl Event {
    /// An event read now.
    pub fn new(message: String) -> Self {
        Self {
            timestamp: now_nanos(),
            message,
            fields: Fields::new(),
        }
    }

    /// An estimate of the event's encoded size, for the batches' byte bounds.
    pub fn size_hint(&self) -> usize {
        let fields: usize = self
            .fields
            .iter()
            .map(|(k, v)| k.len() + value_size(v) + 4)
            .sum();
        self.message.len() + fields + 48
    }

    /// The timestamp as RFC 3339 in UTC with nanoseconds.
    pub fn timestamp_rfc3339(&self) -> String {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.timestamp))
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
    }

    /// Appends the event as one JSON object (no newline): `timestamp` and `message` first,
    /// then the fields at the top level. The common shape of the HTTP, Loki and ClickHouse sinks.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        out.extend_from_slice(self.timestamp_rfc3339().as_bytes());
        out.extend_from_slice(b"\",\"message\":");
        write_json_string(&self.message, out);
        for (key, value) in &self.fields {
            out.push(b',');
            // A parsed field of the same name as the event's own keeps its value, renamed.
            match key.as_str() {
                "timestamp" => out.extend_from_slice(b"\"_timestamp\""),
                "message" => out.extend_from_slice(b"\"_message\""),
                _ => write_json_string(key, out),
            }
            out.push(b':');
            // Writing a Value into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, value);
        }
        out.push(b'}');
    }
}

fn value_size(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::String(s) => s.len() + 2,
        serde_json::Value::Array(a) => a.iter().map(value_size).sum::<usize>() + 2,
        serde_json::Value::Object(o) => o.iter().map(|(k, v)| k.len() + value_size(v) + 4).sum(),
        _ => 8,
    }
}

/// Appends `s` as a JSON string literal.
pub fn write_json_string(s: &str, out: &mut Vec<u8>) {
    // Serializing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Events of one stream, in order, as a pipeline hands them to its sinks. Every sink that gets
/// the chunk acknowledges it once, when it is done with its last event (delivered, set aside,
/// dropped by policy, or written to its disk buffer).
#[derive(Debug)]
pub struct Chunk {
    /// The events.
    pub events: Vec<Event>,
    /// Releases the chunk's source position once every sink has acknowledged it; `None` for
    /// events with no source position to release (a disk buffer's replay).
    pub ack: Option<AckRef>,
}

impl Chunk {
    /// A chunk with nothing to acknowledge.
    pub fn unacknowledged(events: Vec<Event>) -> Arc<Self> {
        Arc::new(Self { events, ack: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_puts_timestamp_and_message_first_and_escapes() {
        let mut e = Event::new("a \"quoted\"\u{0} line".to_owned());
        e.timestamp = 1_700_000_000_123_456_789;
        e.fields.insert("level".into(), "warn".into());
        e.fields.insert("message".into(), "shadowed".into());
        let mut out = Vec::new();
        e.write_json(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            r#"{"timestamp":"2023-11-14T22:13:20.123456789Z","message":"a \"quoted\"\u0000 line","level":"warn","_message":"shadowed"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["level"], "warn");
    }

    #[test]
    fn disk_form_round_trips() {
        let mut e = Event::new("x".into());
        e.fields.insert("n".into(), 3.into());
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), e);
    }
}
