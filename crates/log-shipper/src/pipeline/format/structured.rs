//! Lines that arrive structured, at the local receivers.
//!
//! - **JSON**: a JSON value per line (the HTTP receiver turns a JSON array into one line per
//!   element). An object's keys become fields and the string under `message_key` the message
//!   (without that key the message is empty); a string is the message; any other value is the
//!   message as JSON text. A line that is not JSON is shipped as raw text and counted.
//! - **Syslog**: one RFC 5424 or RFC 3164 message per line, framing removed, read with
//!   `syslog_loose` (Vector's parser: lenient about what real senders write). The message's
//!   time becomes the event's (an RFC 3164 time, which has no year and no zone, is taken in UTC
//!   in the year that puts it closest to now); facility, severity, hostname, app name, process
//!   id, message id and structured data become fields. A message neither RFC reads is shipped
//!   as raw text and counted.

use chrono::{Datelike, Utc};
use serde_json::{Map, Value};
use syslog_loose::{IncompleteDate, ProcId, Variant};

use crate::event::{Event, Fields};
use crate::pipeline::format::{Decoded, LineFormat, text};

/// JSON values.
#[derive(Debug)]
pub struct Json {
    message_key: String,
    errors: u64,
}

impl Json {
    pub fn new(message_key: &str) -> Self {
        Self {
            message_key: message_key.to_owned(),
            errors: 0,
        }
    }
}

impl LineFormat for Json {
    fn decode(&mut self, line: &[u8], start: u64, now: i64) -> Option<Decoded> {
        let (message, fields) = match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(map)) => {
                let mut fields = Fields::new();
                let mut message = String::new();
                for (k, v) in map {
                    match v {
                        Value::String(s) if k == self.message_key => message = s,
                        v => {
                            fields.insert(k, v);
                        }
                    }
                }
                (message, fields)
            }
            Ok(Value::String(s)) => (s, Fields::new()),
            Ok(other) => (other.to_string(), Fields::new()),
            Err(_) => {
                self.errors += 1;
                (text(line), Fields::new())
            }
        };
        Some(Decoded {
            event: Event {
                timestamp: now,
                message,
                fields,
                shared: None,
            },
            start,
            cut: false,
        })
    }

    fn take_errors(&mut self) -> u64 {
        std::mem::take(&mut self.errors)
    }
}

/// Syslog messages.
#[derive(Debug, Default)]
pub struct Syslog {
    errors: u64,
}

/// The year that puts a date without one closest to now: December's messages read in January
/// are last year's.
fn year_of(date: IncompleteDate) -> i32 {
    let now = Utc::now();
    let (month, _, _, _, _) = date;
    let this = now.year();
    match (now.month(), month) {
        (1, 12) => this - 1,
        (12, 1) => this + 1,
        _ => this,
    }
}

impl LineFormat for Syslog {
    fn decode(&mut self, line: &[u8], start: u64, now: i64) -> Option<Decoded> {
        let input = String::from_utf8_lossy(line);
        let parsed = syslog_loose::parse_message_with_year_exact_tz(
            &input,
            year_of,
            Some(Utc),
            Variant::Either,
        );
        let event = match parsed {
            Ok(m) => {
                let mut fields = Fields::new();
                let mut put = |k: &str, v: Option<&str>| {
                    if let Some(v) = v.filter(|v| !v.is_empty() && *v != "-") {
                        fields.insert(k.to_owned(), Value::String(v.to_owned()));
                    }
                };
                put("facility", m.facility.map(|f| f.as_str()));
                put("severity", m.severity.map(|s| s.as_str()));
                put("hostname", m.hostname);
                put("appname", m.appname);
                put("msgid", m.msgid);
                match &m.procid {
                    Some(ProcId::PID(pid)) => {
                        fields.insert("procid".into(), Value::from(*pid));
                    }
                    Some(ProcId::Name(name)) => {
                        fields.insert("procid".into(), Value::String((*name).to_owned()));
                    }
                    None => {}
                }
                if !m.structured_data.is_empty() {
                    let mut sd = Map::new();
                    for element in &m.structured_data {
                        let params: Map<String, Value> = element
                            .params()
                            .map(|(k, v)| (k.to_string(), Value::String(v)))
                            .collect();
                        sd.insert(element.id.to_owned(), Value::Object(params));
                    }
                    fields.insert("structured_data".into(), Value::Object(sd));
                }
                let timestamp = m
                    .timestamp
                    .and_then(|t| t.timestamp_nanos_opt())
                    .unwrap_or(now);
                Event {
                    timestamp,
                    message: m.msg.to_owned(),
                    fields,
                    shared: None,
                }
            }
            Err(_) => {
                self.errors += 1;
                Event {
                    timestamp: now,
                    message: input.into_owned(),
                    fields: Fields::new(),
                    shared: None,
                }
            }
        };
        Some(Decoded {
            event,
            start,
            cut: false,
        })
    }

    fn take_errors(&mut self) -> u64 {
        std::mem::take(&mut self.errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(f: &mut dyn LineFormat, line: &str) -> Event {
        f.decode(line.as_bytes(), 0, 7).unwrap().event
    }

    #[test]
    fn json_objects_strings_and_junk() {
        let mut f = Json::new("msg");
        let e = one(&mut f, r#"{"msg":"hello","level":"info","n":3}"#);
        assert_eq!(e.message, "hello");
        assert_eq!(e.fields["level"], "info");
        assert_eq!(e.fields["n"], 3);
        assert!(!e.fields.contains_key("msg"));
        assert_eq!(one(&mut f, r#""just text""#).message, "just text");
        assert_eq!(one(&mut f, r#"{"level":"warn"}"#).message, "");
        assert_eq!(one(&mut f, "[1,2]").message, "[1,2]");
        assert_eq!(f.take_errors(), 0);
        assert_eq!(one(&mut f, "not json {").message, "not json {");
        assert_eq!(f.take_errors(), 1);
    }

    #[test]
    fn syslog_rfc5424_with_structured_data() {
        let mut f = Syslog::default();
        let e = one(
            &mut f,
            r#"<165>1 2024-05-01T10:00:00.123Z web-1 billing 4242 ID47 [exampleSDID@32473 iut="3" eventSource="Application"] payment refused"#,
        );
        assert_eq!(e.message, "payment refused");
        assert_eq!(e.timestamp, 1_714_557_600_123_000_000);
        assert_eq!(e.fields["facility"], "local4");
        assert_eq!(e.fields["severity"], "notice");
        assert_eq!(e.fields["hostname"], "web-1");
        assert_eq!(e.fields["appname"], "billing");
        assert_eq!(e.fields["procid"], 4242);
        assert_eq!(e.fields["msgid"], "ID47");
        assert_eq!(
            e.fields["structured_data"]["exampleSDID@32473"]["eventSource"],
            "Application"
        );
        assert_eq!(f.take_errors(), 0);
    }

    #[test]
    fn syslog_rfc3164_and_junk() {
        let mut f = Syslog::default();
        let e = one(
            &mut f,
            "<34>Oct 11 22:14:15 mymachine su[77]: 'su root' failed",
        );
        assert_eq!(e.message, "'su root' failed");
        assert_eq!(e.fields["facility"], "auth");
        assert_eq!(e.fields["severity"], "crit");
        assert_eq!(e.fields["hostname"], "mymachine");
        assert_eq!(e.fields["appname"], "su");
        assert_eq!(e.fields["procid"], 77);
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.timestamp)).unwrap();
        assert_eq!(
            (t.month(), t.day(), t.hour(), t.minute()),
            (time::Month::October, 11, 22, 14)
        );
        assert_eq!(f.take_errors(), 0);
        let junk = one(&mut f, "\u{1}\u{2} nothing syslog about it");
        assert_eq!(junk.message, "\u{1}\u{2} nothing syslog about it");
        assert_eq!(junk.timestamp, 7);
        assert_eq!(f.take_errors(), 1);
    }
}
