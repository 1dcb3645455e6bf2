//! Enrichment: fields every event of a pipeline gets: static values, values read from the
//! environment at start (the Downward API's pod name, namespace, node), the host name, and the
//! file the line came from.

use serde_json::Value;

use crate::event::Event;
use crate::source::StreamInfo;

#[derive(Debug, Clone, Default)]
pub struct Enrich {
    /// Static and environment fields, resolved at start.
    pub fields: Vec<(String, Value)>,
    /// Field for the source file's path, if any.
    pub file_field: Option<String>,
}

impl Enrich {
    pub fn apply(&self, event: &mut Event, stream: &StreamInfo) {
        for (k, v) in &self.fields {
            if !event.fields.contains_key(k) {
                event.fields.insert(k.clone(), v.clone());
            }
        }
        if let (Some(field), Some(path)) = (&self.file_field, &stream.path) {
            event
                .fields
                .insert(field.clone(), Value::String(path.to_string()));
        }
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
