//! The event: what a source's line becomes, what the pipeline's processors change and what a
//! sink encodes. A [`Chunk`] is the unit that moves from a pipeline to the sinks: events of one
//! stream, in order, with the acknowledgement that releases their position in the source.

use std::cmp::Ordering;
use std::iter::Peekable;
use std::sync::Arc;

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ack::AckRef;

/// Structured fields of an event (parsed from the line, or added by enrichment).
pub type Fields = serde_json::Map<String, serde_json::Value>;

/// Fields every event of a stream has (enrichment: static and environment values, the host,
/// the file), made once per stream and shared by its events, with their JSON written once.
#[derive(Debug, PartialEq)]
pub struct SharedFields {
    fields: Fields,
    /// The fields as [`Event::write_json`] writes them, each `,"key":value`.
    json: Vec<u8>,
}

impl SharedFields {
    /// `None` when there are no fields.
    pub fn new(fields: Fields) -> Option<Arc<Self>> {
        if fields.is_empty() {
            return None;
        }
        let mut json = Vec::new();
        for (key, value) in &fields {
            write_json_field(key, value, &mut json);
        }
        Some(Arc::new(Self { fields, json }))
    }

    pub fn fields(&self) -> &Fields {
        &self.fields
    }
}

/// One log event. Serialized into the disk buffer as `t`, `m` and `f` (its own and its shared
/// fields, merged), so a replay after a restart ships exactly what was read.
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "Stored")]
pub struct Event {
    /// Nanoseconds since the Unix epoch: the time parsed from the line, or the time it was read.
    pub timestamp: i64,
    /// The line's text (several lines for a multiline event), UTF-8 (invalid bytes replaced).
    pub message: String,
    /// The event's own fields: parsed, from the line format, `truncated`.
    pub fields: Fields,
    /// Its stream's enrichment; an own field of the same name wins.
    pub shared: Option<Arc<SharedFields>>,
}

/// The disk form.
#[derive(Deserialize)]
struct Stored {
    #[serde(rename = "t")]
    timestamp: i64,
    #[serde(rename = "m")]
    message: String,
    #[serde(rename = "f", default)]
    fields: Fields,
}

impl From<Stored> for Event {
    fn from(s: Stored) -> Self {
        Self {
            timestamp: s.timestamp,
            message: s.message,
            fields: s.fields,
            shared: None,
        }
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct All<'a>(&'a Event);
        impl Serialize for All<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.all_fields())
            }
        }
        let has_fields = self.all_fields().next().is_some();
        let mut s = serializer.serialize_struct("Event", 2 + usize::from(has_fields))?;
        s.serialize_field("t", &self.timestamp)?;
        s.serialize_field("m", &self.message)?;
        if has_fields {
            s.serialize_field("f", &All(self))?;
        }
        s.end()
    }
}

/// Equal when time, message and the merged fields are.
impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.timestamp == other.timestamp
            && self.message == other.message
            && self.all_fields().eq(other.all_fields())
    }
}

impl Event {
    /// An event read now.
    pub fn new(message: String) -> Self {
        Self::at(now_nanos(), message, Fields::new())
    }

    /// An event with its own fields and no shared ones.
    pub fn at(timestamp: i64, message: String, fields: Fields) -> Self {
        Self {
            timestamp,
            message,
            fields,
            shared: None,
        }
    }

    /// A field, its own or its stream's.
    pub fn field(&self, name: &str) -> Option<&serde_json::Value> {
        self.fields
            .get(name)
            .or_else(|| self.shared.as_ref()?.fields.get(name))
    }

    /// Every field, its own and its stream's, ordered by name.
    pub fn all_fields(&self) -> AllFields<'_> {
        AllFields {
            own: self.fields.iter().peekable(),
            shared: self.shared.as_ref().map(|s| s.fields.iter().peekable()),
        }
    }

    /// An estimate of the event's encoded size, for the batches' byte bounds.
    pub fn size_hint(&self) -> usize {
        let fields: usize = self
            .fields
            .iter()
            .map(|(k, v)| k.len() + value_size(v) + 4)
            .sum();
        let shared = self.shared.as_ref().map_or(0, |s| s.json.len());
        self.message.len() + fields + shared + 48
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
        match &self.shared {
            Some(shared) if self.fields.is_empty() => out.extend_from_slice(&shared.json),
            _ => {
                for (key, value) in self.all_fields() {
                    write_json_field(key, value, out);
                }
            }
        }
        out.push(b'}');
    }
}

/// Appends `,"key":value`; a field named like the event's own keys keeps its value, renamed.
fn write_json_field(key: &str, value: &serde_json::Value, out: &mut Vec<u8>) {
    out.push(b',');
    match key {
        "timestamp" => out.extend_from_slice(b"\"_timestamp\""),
        "message" => out.extend_from_slice(b"\"_message\""),
        _ => write_json_string(key, out),
    }
    out.push(b':');
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// An event's own and shared fields merged by name ([`Event::all_fields`]).
#[derive(Debug)]
pub struct AllFields<'a> {
    own: Peekable<serde_json::map::Iter<'a>>,
    shared: Option<Peekable<serde_json::map::Iter<'a>>>,
}

impl<'a> Iterator for AllFields<'a> {
    type Item = (&'a String, &'a serde_json::Value);

    fn next(&mut self) -> Option<Self::Item> {
        let Some(shared) = self.shared.as_mut() else {
            return self.own.next();
        };
        let order = match (self.own.peek(), shared.peek()) {
            (Some((a, _)), Some((b, _))) => a.cmp(b),
            (Some(_), None) => Ordering::Less,
            (None, _) => Ordering::Greater,
        };
        match order {
            Ordering::Less => self.own.next(),
            Ordering::Equal => {
                shared.next();
                self.own.next()
            }
            Ordering::Greater => shared.next(),
        }
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

    fn shared(pairs: &[(&str, &str)]) -> Option<Arc<SharedFields>> {
        SharedFields::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).into()))
                .collect(),
        )
    }

    #[test]
    fn shared_fields_merge_by_name_and_own_fields_win() {
        let mut e = Event::new("m".into());
        e.timestamp = 1_700_000_000_123_456_789;
        e.fields.insert("b".into(), "own".into());
        e.fields.insert("d".into(), 4.into());
        e.shared = shared(&[("a", "1"), ("b", "shared"), ("c", "3"), ("message", "m2")]);
        let names: Vec<&str> = e.all_fields().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["a", "b", "c", "d", "message"]);
        assert_eq!(e.field("b").unwrap(), "own");
        assert_eq!(e.field("c").unwrap(), "3");
        assert!(e.field("z").is_none());
        let mut out = Vec::new();
        e.write_json(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"timestamp":"2023-11-14T22:13:20.123456789Z","message":"m","a":"1","b":"own","c":"3","d":4,"_message":"m2"}"#
        );
    }

    #[test]
    fn shared_fields_alone_are_written_as_if_they_were_the_events_own() {
        let mut own = Event::new("x".into());
        own.fields.insert("file".into(), "/var/log/a.log".into());
        own.fields.insert("host".into(), "pod-a".into());
        let mut shared_only = Event::new("x".into());
        shared_only.timestamp = own.timestamp;
        shared_only.shared = shared(&[("host", "pod-a"), ("file", "/var/log/a.log")]);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        own.write_json(&mut a);
        shared_only.write_json(&mut b);
        assert_eq!(String::from_utf8(a).unwrap(), String::from_utf8(b).unwrap());
        assert_eq!(own, shared_only);
        assert_eq!(own.size_hint(), shared_only.size_hint());
    }

    #[test]
    fn disk_form_holds_the_shared_fields_too() {
        let mut e = Event::new("x".into());
        e.fields.insert("n".into(), 3.into());
        e.shared = shared(&[("host", "pod-a")]);
        let text = serde_json::to_string(&e).unwrap();
        let back: Event = serde_json::from_str(&text).unwrap();
        assert!(back.shared.is_none());
        assert_eq!(back.fields["host"], "pod-a");
        assert_eq!(back, e);
        let bare = serde_json::to_string(&Event::at(1, "y".into(), Fields::new())).unwrap();
        assert_eq!(bare, r#"{"t":1,"m":"y"}"#);
    }

    #[test]
    fn disk_form_round_trips() {
        let mut e = Event::new("x".into());
        e.fields.insert("n".into(), 3.into());
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&text).unwrap(), e);
    }
}
