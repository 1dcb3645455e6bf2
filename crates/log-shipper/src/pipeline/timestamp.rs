//! Timestamp extraction: a field's value, read with the first format that fits, becomes the
//! event's time (the field is removed). Without it, or when no format fits (counted), the
//! event keeps the time it was read.

use serde_json::Value;
use time::format_description::OwnedFormatItem;
use time::format_description::well_known::{Iso8601, Rfc2822, Rfc3339};
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::event::Event;

/// A format a timestamp may be in.
#[derive(Debug, Clone)]
pub enum Format {
    Rfc3339,
    Rfc2822,
    Iso8601,
    /// Seconds since the epoch (a number or a string; fractions allowed).
    Unix,
    UnixMs,
    UnixUs,
    UnixNs,
    /// A strftime pattern (`%d/%b/%Y:%H:%M:%S %z`) or a `time` format description
    /// (`[year]-[month]-[day]`); without an offset the time is taken as UTC.
    Pattern(OwnedFormatItem),
}

impl Format {
    /// Parses a format name: `rfc3339`, `rfc2822`, `iso8601`, `unix`, `unix_ms`, `unix_us`,
    /// `unix_ns`, a strftime pattern (with `%`) or a `time` format description (with `[`).
    pub fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "rfc3339" => Self::Rfc3339,
            "rfc2822" => Self::Rfc2822,
            "iso8601" => Self::Iso8601,
            "unix" => Self::Unix,
            "unix_ms" => Self::UnixMs,
            "unix_us" => Self::UnixUs,
            "unix_ns" => Self::UnixNs,
            t if t.contains('%') => Self::Pattern(
                time::format_description::parse_strftime_owned(t)
                    .map_err(|e| format!("`{t}`: {e}"))?,
            ),
            t if t.contains('[') => Self::Pattern(
                time::format_description::parse_owned::<2>(t).map_err(|e| format!("`{t}`: {e}"))?,
            ),
            t => {
                return Err(format!(
                    "`{t}` is not a format (rfc3339, rfc2822, iso8601, unix, unix_ms, unix_us, unix_ns, a strftime pattern with %, or a [time] description)"
                ));
            }
        })
    }

    fn read(&self, value: &Value) -> Option<i128> {
        let text = match value {
            Value::String(s) => s.as_str(),
            Value::Number(n) => return self.read_number(n.as_f64()?),
            _ => return None,
        };
        let t = text.trim();
        let parsed = match self {
            Self::Rfc3339 => OffsetDateTime::parse(t, &Rfc3339).ok()?,
            Self::Rfc2822 => OffsetDateTime::parse(t, &Rfc2822).ok()?,
            Self::Iso8601 => OffsetDateTime::parse(t, &Iso8601::DEFAULT).ok()?,
            Self::Unix | Self::UnixMs | Self::UnixUs | Self::UnixNs => {
                return self.read_number(t.parse().ok()?);
            }
            Self::Pattern(items) => match OffsetDateTime::parse(t, items) {
                Ok(dt) => dt,
                Err(_) => PrimitiveDateTime::parse(t, items).ok()?.assume_utc(),
            },
        };
        Some(parsed.unix_timestamp_nanos())
    }

    fn read_number(&self, n: f64) -> Option<i128> {
        let scale = match self {
            Self::Unix => 1e9,
            Self::UnixMs => 1e6,
            Self::UnixUs => 1e3,
            Self::UnixNs => 1.0,
            _ => return None,
        };
        let nanos = n * scale;
        nanos.is_finite().then_some(nanos as i128)
    }
}

/// Where the timestamp is and how to read it.
#[derive(Debug, Clone)]
pub struct TimestampSpec {
    pub field: String,
    pub formats: Vec<Format>,
}

impl TimestampSpec {
    /// Sets the event's time from its field; false when the field is there but unreadable.
    pub fn apply(&self, event: &mut Event) -> bool {
        let Some(value) = event.fields.get(&self.field) else {
            return true;
        };
        let Some(nanos) = self.formats.iter().find_map(|f| f.read(value)) else {
            return false;
        };
        let Ok(nanos) = i64::try_from(nanos) else {
            return false;
        };
        event.timestamp = nanos;
        event.fields.remove(&self.field);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(formats: &[&str], value: Value) -> Option<i64> {
        let spec = TimestampSpec {
            field: "time".into(),
            formats: formats.iter().map(|f| Format::parse(f).unwrap()).collect(),
        };
        let mut e = Event::new("x".into());
        e.fields.insert("time".into(), value);
        spec.apply(&mut e).then_some(e.timestamp)
    }

    #[test]
    fn formats() {
        let t = 1_700_000_000_000_000_000i64;
        assert_eq!(ts(&["rfc3339"], "2023-11-14T22:13:20Z".into()), Some(t));
        assert_eq!(
            ts(&["rfc3339"], "2023-11-14T23:13:20.5+01:00".into()),
            Some(t + 500_000_000)
        );
        assert_eq!(ts(&["unix"], 1_700_000_000.into()), Some(t));
        assert_eq!(ts(&["unix_ms"], "1700000000000".into()), Some(t));
        assert_eq!(
            ts(
                &["%d/%b/%Y:%H:%M:%S %z"],
                "14/Nov/2023:23:13:20 +0100".into()
            ),
            Some(t)
        );
        assert_eq!(
            ts(&["%Y-%m-%d %H:%M:%S"], "2023-11-14 22:13:20".into()),
            Some(t),
            "no offset: UTC"
        );
        assert_eq!(
            ts(
                &["[year]-[month]-[day] [hour]:[minute]:[second]"],
                "2023-11-14 22:13:20".into()
            ),
            Some(t)
        );
        assert_eq!(
            ts(&["rfc2822", "rfc3339"], "2023-11-14T22:13:20Z".into()),
            Some(t),
            "second format"
        );
        assert_eq!(ts(&["rfc3339"], "yesterday".into()), None);
        assert!(Format::parse("whenever").is_err());
    }

    #[test]
    fn a_missing_field_is_not_an_error() {
        let spec = TimestampSpec {
            field: "time".into(),
            formats: vec![Format::Rfc3339],
        };
        let mut e = Event::new("x".into());
        let before = e.timestamp;
        assert!(spec.apply(&mut e));
        assert_eq!(e.timestamp, before);
    }
}
