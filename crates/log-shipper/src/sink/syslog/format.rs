//! RFC 5424 messages with RFC 6587 octet-counting framing:
//! `LEN SP <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA SP MSG`.
//! Octet counting carries multi-line events (stack traces) as one message.

use time::OffsetDateTime;

use crate::event::Event;

/// The facilities of RFC 5424 section 6.2.1, by their usual names.
pub const FACILITIES: &[(&str, u8)] = &[
    ("kern", 0),
    ("user", 1),
    ("mail", 2),
    ("daemon", 3),
    ("auth", 4),
    ("syslog", 5),
    ("lpr", 6),
    ("news", 7),
    ("uucp", 8),
    ("cron", 9),
    ("authpriv", 10),
    ("ftp", 11),
    ("ntp", 12),
    ("security", 13),
    ("console", 14),
    ("solaris-cron", 15),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

/// A severity from its number (0-7) or a name as log levels are written (`error`, `WARN`...).
pub fn severity(name: &str) -> Option<u8> {
    if let Ok(n) = name.parse::<u8>() {
        return (n <= 7).then_some(n);
    }
    Some(match name.to_ascii_lowercase().as_str() {
        "emerg" | "emergency" | "panic" => 0,
        "alert" => 1,
        "crit" | "critical" | "fatal" => 2,
        "err" | "error" => 3,
        "warn" | "warning" => 4,
        "notice" => 5,
        "info" | "informational" | "information" => 6,
        "debug" | "trace" => 7,
        _ => return None,
    })
}

/// How events become messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatSpec {
    pub facility: u8,
    /// When the event has no (readable) severity field.
    pub severity: u8,
    /// A field holding the level (`level`), read with [`severity`].
    pub severity_field: Option<String>,
    /// APP-NAME: this field's value, else `app_name`.
    pub app_name_field: Option<String>,
    pub app_name: String,
    /// HOSTNAME: this field's value (the `host` enrichment), else `hostname`.
    pub hostname_field: Option<String>,
    pub hostname: String,
    pub msgid: String,
    /// An SD-ELEMENT `[id name="value" ...]` with these fields, when `sd_id` is set.
    pub sd_id: Option<String>,
    pub sd_fields: Vec<String>,
}

/// An SD-ID or SD-NAME: 1 to 32 printable US-ASCII characters but `=`, space, `]` and `"`.
pub fn check_sd_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 32
        || !name
            .bytes()
            .all(|b| (33..=126).contains(&b) && !matches!(b, b'=' | b']' | b'"'))
    {
        return Err(format!(
            "`{name}`: 1 to 32 printable ASCII characters, without space, = ] or \""
        ));
    }
    Ok(())
}

impl FormatSpec {
    /// Appends `event` as one framed message.
    pub fn write_framed(&self, event: &Event, out: &mut Vec<u8>) {
        let mut message = Vec::with_capacity(event.message.len() + 128);
        self.write_message(event, &mut message);
        out.extend_from_slice(message.len().to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(&message);
    }

    fn write_message(&self, event: &Event, out: &mut Vec<u8>) {
        let severity = self
            .severity_field
            .as_ref()
            .and_then(|f| event.field(f))
            .and_then(|v| match v {
                serde_json::Value::String(s) => severity(s),
                serde_json::Value::Number(n) => n.as_u64().and_then(|n| severity(&n.to_string())),
                _ => None,
            })
            .unwrap_or(self.severity);
        let pri = u16::from(self.facility) * 8 + u16::from(severity);
        out.extend_from_slice(format!("<{pri}>1 ").as_bytes());
        out.extend_from_slice(timestamp(event.timestamp).as_bytes());
        out.push(b' ');
        let field = |name: &Option<String>| {
            name.as_ref()
                .and_then(|f| event.field(f))
                .and_then(|v| v.as_str().map(str::to_owned))
        };
        let hostname = field(&self.hostname_field).unwrap_or_else(|| self.hostname.clone());
        header_field(&hostname, 255, out);
        out.push(b' ');
        let app = field(&self.app_name_field).unwrap_or_else(|| self.app_name.clone());
        header_field(&app, 48, out);
        out.extend_from_slice(b" - ");
        header_field(&self.msgid, 32, out);
        out.push(b' ');
        self.write_structured_data(event, out);
        if !event.message.is_empty() {
            out.push(b' ');
            out.extend_from_slice(event.message.as_bytes());
        }
    }

    fn write_structured_data(&self, event: &Event, out: &mut Vec<u8>) {
        let Some(id) = &self.sd_id else {
            out.push(b'-');
            return;
        };
        let start = out.len();
        out.push(b'[');
        out.extend_from_slice(id.as_bytes());
        let mut params = 0;
        for name in &self.sd_fields {
            let Some(value) = event.field(name) else {
                continue;
            };
            params += 1;
            out.push(b' ');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"=\"");
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            // PARAM-VALUE escapes `"`, `\` and `]` (RFC 5424 section 6.3.3).
            for c in text.chars() {
                if matches!(c, '"' | '\\' | ']') {
                    out.push(b'\\');
                }
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            out.push(b'"');
        }
        if params == 0 {
            out.truncate(start);
            out.push(b'-');
        } else {
            out.push(b']');
        }
    }
}

/// A header field: printable US-ASCII only (others become `_`), at most `max` characters,
/// `-` when empty (RFC 5424 section 6.2).
fn header_field(value: &str, max: usize, out: &mut Vec<u8>) {
    if value.is_empty() {
        out.push(b'-');
        return;
    }
    for b in value.bytes().take(max) {
        out.push(if (33..=126).contains(&b) { b } else { b'_' });
    }
}

/// RFC 5424 TIMESTAMP: UTC with microseconds (TIME-SECFRAC has at most 6 digits).
fn timestamp(nanos: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FormatSpec {
        FormatSpec {
            facility: 16,
            severity: 6,
            severity_field: Some("level".into()),
            app_name_field: None,
            app_name: "checkout".into(),
            hostname_field: Some("host".into()),
            hostname: "fallback".into(),
            msgid: String::new(),
            sd_id: Some("meta@32473".into()),
            sd_fields: vec!["pod".into(), "n".into(), "absent".into()],
        }
    }

    #[test]
    fn a_framed_message() {
        let mut e = Event::new("line one\nat Foo.bar(Foo.java:1)".into());
        e.timestamp = 1_700_000_000_123_456_789;
        e.fields.insert("level".into(), "ERROR".into());
        e.fields.insert("host".into(), "pod a".into());
        e.fields.insert("pod".into(), "a\"b]c\\".into());
        e.fields.insert("n".into(), 3.into());
        let mut out = Vec::new();
        spec().write_framed(&e, &mut out);
        let text = String::from_utf8(out).unwrap();
        let (len, message) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), message.len());
        assert_eq!(
            message,
            "<131>1 2023-11-14T22:13:20.123456Z pod_a checkout - - [meta@32473 pod=\"a\\\"b\\]c\\\\\" n=\"3\"] line one\nat Foo.bar(Foo.java:1)"
        );
    }

    #[test]
    fn defaults_and_nil_values() {
        let mut s = spec();
        s.sd_id = None;
        let mut e = Event::new("hé".into());
        e.timestamp = 0;
        e.fields.insert("level".into(), "chatty".into());
        let mut out = Vec::new();
        s.write_framed(&e, &mut out);
        let text = String::from_utf8(out).unwrap();
        // Length in bytes, not characters.
        assert_eq!(
            text,
            "62 <134>1 1970-01-01T00:00:00.000000Z fallback checkout - - - hé"
        );
        assert_eq!(severity("warning"), Some(4));
        assert_eq!(severity("7"), Some(7));
        assert_eq!(severity("8"), None);
        assert!(check_sd_name("meta@32473").is_ok());
        assert!(check_sd_name("a b").is_err());
        assert!(check_sd_name("").is_err());
    }
}
