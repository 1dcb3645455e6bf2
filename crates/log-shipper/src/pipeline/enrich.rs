//! Enrichment: fields every event of a pipeline gets: static values, values read from the
//! environment at start (the Downward API's pod name, namespace, node), the host name, and the
//! file the line came from. They are the same for every event of a stream: made once per
//! stream ([`Enrich::shared`]) and shared by its events.

use std::sync::Arc;

use serde_json::Value;

use crate::event::{Event, Fields, SharedFields};
use crate::pipeline::redact::Redactor;
use crate::source::StreamInfo;

#[derive(Debug, Clone, Default)]
pub struct Enrich {
    /// Static and environment fields, resolved at start.
    pub fields: Vec<(String, Value)>,
    /// Field for the source file's path, if any.
    pub file_field: Option<String>,
}

impl Enrich {
    /// The fields of `stream`'s events, redacted; `None` when there are none. A parsed field of
    /// the same name wins over a static one; the file's path wins over a parsed field.
    pub fn shared(&self, stream: &StreamInfo, redact: &Redactor) -> Option<Arc<SharedFields>> {
        let mut fields = Fields::new();
        for (k, v) in &self.fields {
            fields.entry(k.clone()).or_insert_with(|| v.clone());
        }
        if let (Some(field), Some(path)) = (&self.file_field, &stream.path) {
            fields.insert(field.clone(), Value::String(path.to_string()));
        }
        redact.apply_fields(&mut fields);
        SharedFields::new(fields)
    }

    /// Gives `event` its stream's fields (from [`Enrich::shared`]).
    pub fn apply(
        &self,
        event: &mut Event,
        stream: &StreamInfo,
        shared: Option<&Arc<SharedFields>>,
    ) {
        if let (Some(field), Some(_)) = (&self.file_field, &stream.path) {
            event.fields.remove(field);
        }
        event.shared = shared.cloned();
    }
}

/// The host name: `$HOSTNAME`, else the kernel's (a pod's name in Kubernetes).
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::AckStream;
    use crate::source::Format;

    fn stream(path: Option<&str>) -> StreamInfo {
        StreamInfo {
            id: 1,
            input: "in".into(),
            path: path.map(Into::into),
            ack: AckStream::new(0),
            format: Format::Raw,
        }
    }

    #[test]
    fn parsed_fields_win_over_static_ones_and_the_file_wins_over_parsed_ones() {
        let enrich = Enrich {
            fields: vec![
                ("team".into(), "a".into()),
                ("team".into(), "b".into()),
                ("level".into(), "static".into()),
            ],
            file_field: Some("file".into()),
        };
        let info = stream(Some("/var/log/app.log"));
        let mut redact = Redactor::default();
        redact.add_pattern(regex::Regex::new("app").unwrap(), "X".into());
        let shared = enrich.shared(&info, &redact);
        let mut e = Event::new("m".into());
        e.fields.insert("level".into(), "parsed".into());
        e.fields.insert("file".into(), "parsed".into());
        enrich.apply(&mut e, &info, shared.as_ref());
        assert_eq!(e.field("team").unwrap(), "a");
        assert_eq!(e.field("level").unwrap(), "parsed");
        assert_eq!(e.field("file").unwrap(), "/var/log/X.log");
        assert_eq!(e.all_fields().count(), 3);
    }

    #[test]
    fn no_fields_share_nothing() {
        let enrich = Enrich::default();
        assert!(
            enrich
                .shared(&stream(Some("/a")), &Redactor::default())
                .is_none()
        );
    }
}
