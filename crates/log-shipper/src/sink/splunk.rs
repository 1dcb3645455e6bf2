//! Splunk's HTTP Event Collector (HEC), the event endpoint `/services/collector/event`.
//!
//! Per Splunk's "Format events for HTTP Event Collector" and its REST reference for
//! `services/collector`: the body is JSON event objects one after another (`time` in epoch
//! seconds with milliseconds, `host`, `source`, `sourcetype`, `index`, `event`, `fields` for
//! indexed fields), the token goes in `Authorization: Splunk <token>`, and the answer is JSON
//! `{"text":"Success","code":0}` or an error `{"text":..,"code":N}` where codes 6 (invalid data
//! format), 12 and 13 (event field missing or blank) and 15 (indexed fields) name the event at
//! fault in `invalid-event-number`.
//!
//! **Indexer acknowledgement** (`indexer_ack`): a 200 from HEC says the events were received,
//! not indexed. With acknowledgement enabled on the token, the answer carries an `ackId`; the
//! sink then asks `POST /services/collector/ack` (`{"acks":[id]}` -> `{"acks":{"id":true}}`) on
//! its channel (`X-Splunk-Request-Channel`, a UUID made at start) until the id is true, and
//! only then is the batch delivered. No answer within `ack_timeout`: the batch is sent again
//! (a duplicate if it was indexed late).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::Deserialize;

use crate::event::{Event, write_json_string};
use crate::sink::http::{HttpProtocol, HttpSink, HttpSinkSpec, SinkContext};
use crate::sink::isolate::{Attempt, send_isolating};
use crate::sink::retry::classify_status;
use crate::sink::{BoxFuture, Outcome, Sink};

/// What `event` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventFormat {
    /// `{"message": ..., <fields>}`: Splunk extracts the fields at search time.
    Json,
    /// The message as a string.
    Text,
}

/// A HEC sink's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SplunkSpec {
    /// Ends in `/services/collector/event`.
    pub http: HttpSinkSpec,
    pub index: Option<String>,
    pub source: Option<String>,
    pub sourcetype: Option<String>,
    pub event: EventFormat,
    /// Fields sent as indexed fields (`fields`), and left out of `event`.
    pub indexed_fields: Vec<String>,
    /// Wait for indexer acknowledgement when the token has it enabled.
    pub indexer_ack: bool,
    pub ack_timeout: Duration,
    /// The `X-Splunk-Request-Channel` (a UUID).
    pub channel: String,
}

/// A random (version 4) UUID: HEC channels are UUIDs.
pub fn new_channel() -> String {
    let b: [u8; 16] = rand::random();
    let hex: String = b
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let x = match i {
                6 => (x & 0x0f) | 0x40,
                8 => (x & 0x3f) | 0x80,
                _ => *x,
            };
            format!("{x:02x}")
        })
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[derive(Debug)]
pub struct Hec {
    index: Option<String>,
    source: Option<String>,
    sourcetype: Option<String>,
    event: EventFormat,
    indexed_fields: Vec<String>,
}

impl HttpProtocol for Hec {
    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn encode(&self, events: &[&Event], body: &mut Vec<u8>) {
        for event in events {
            self.encode_one(event, body);
            body.push(b'\n');
        }
    }

    fn authorization(&self, token: &str) -> String {
        format!("Splunk {token}")
    }
}

impl Hec {
    fn encode_one(&self, event: &Event, out: &mut Vec<u8>) {
        let millis = event.timestamp.div_euclid(1_000_000);
        out.extend_from_slice(
            format!(
                "{{\"time\":{}.{:03}",
                millis.div_euclid(1000),
                millis.rem_euclid(1000)
            )
            .as_bytes(),
        );
        if let Some(serde_json::Value::String(host)) = event.field("host") {
            out.extend_from_slice(b",\"host\":");
            write_json_string(host, out);
        }
        for (key, value) in [
            ("index", &self.index),
            ("source", &self.source),
            ("sourcetype", &self.sourcetype),
        ] {
            if let Some(v) = value {
                out.extend_from_slice(format!(",\"{key}\":").as_bytes());
                write_json_string(v, out);
            }
        }
        out.extend_from_slice(b",\"event\":");
        match self.event {
            EventFormat::Text => write_json_string(&event.message, out),
            EventFormat::Json => {
                out.extend_from_slice(b"{\"message\":");
                write_json_string(&event.message, out);
                for (key, value) in event.all_fields() {
                    if self.indexed_fields.contains(key) {
                        continue;
                    }
                    out.push(b',');
                    if key == "message" {
                        write_json_string("_message", out);
                    } else {
                        write_json_string(key, out);
                    }
                    out.push(b':');
                    // Writing a Value into a Vec cannot fail.
                    let _ = serde_json::to_writer(&mut *out, value);
                }
                out.push(b'}');
            }
        }
        let mut first = true;
        for name in &self.indexed_fields {
            let Some(value) = event.field(name) else {
                continue;
            };
            out.extend_from_slice(if first { b",\"fields\":{" } else { b"," });
            first = false;
            write_json_string(name, out);
            out.push(b':');
            // Indexed fields are strings (or arrays of strings).
            match value {
                serde_json::Value::String(s) => write_json_string(s, out),
                serde_json::Value::Array(items) => {
                    out.push(b'[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        write_json_string(&plain(item), out);
                    }
                    out.push(b']');
                }
                other => write_json_string(&plain(other), out),
            }
        }
        if !first {
            out.push(b'}');
        }
        out.push(b'}');
    }
}

fn plain(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// HEC's answer.
#[derive(Debug, Default, Deserialize)]
struct HecResponse {
    #[serde(default)]
    text: String,
    #[serde(default)]
    code: Option<i64>,
    #[serde(rename = "ackId", default)]
    ack_id: Option<u64>,
    #[serde(rename = "invalid-event-number", default)]
    invalid_event: Option<usize>,
}

/// Codes whose `invalid-event-number` names one event refused for what it is.
const EVENT_CODES: &[i64] = &[6, 12, 13, 15];

/// The HEC sink: the protocol on the shared HTTP client, and the acknowledgement polling.
#[derive(Debug)]
pub struct SplunkHec {
    http: HttpSink<Hec>,
    ack_url: reqwest::Url,
    indexer_ack: bool,
    ack_timeout: Duration,
    warned_no_ack: std::sync::atomic::AtomicBool,
}

impl SplunkHec {
    pub fn new(spec: &SplunkSpec, ctx: &SinkContext) -> Result<Self, String> {
        let protocol = Hec {
            index: spec.index.clone(),
            source: spec.source.clone(),
            sourcetype: spec.sourcetype.clone(),
            event: spec.event,
            indexed_fields: spec.indexed_fields.clone(),
        };
        let mut ack_url = spec.http.url.clone();
        ack_url.set_path(
            &spec
                .http
                .url
                .path()
                .replace("/services/collector/event", "/services/collector/ack"),
        );
        ack_url.set_query(Some(&format!("channel={}", spec.channel)));
        Ok(Self {
            http: HttpSink::new(protocol, spec.http.clone(), ctx)?,
            ack_url,
            indexer_ack: spec.indexer_ack,
            ack_timeout: spec.ack_timeout,
            warned_no_ack: std::sync::atomic::AtomicBool::new(false),
        })
    }

    async fn attempt(&self, events: Vec<&Event>) -> Attempt {
        let mut body = Vec::with_capacity(events.iter().map(|e| e.size_hint()).sum());
        self.http.protocol().encode(&events, &mut body);
        let bytes = body.len() as u64;
        let response = match self
            .http
            .post(self.http.url(), "application/json", body, self.gzip())
            .await
        {
            Ok(r) => r,
            Err(outcome) => return Attempt::Done(outcome),
        };
        let parsed: HecResponse = serde_json::from_slice(&response.body).unwrap_or_default();
        if response.status.is_success() {
            if let (true, Some(id)) = (self.indexer_ack, parsed.ack_id) {
                return Attempt::Done(self.wait_ack(id, bytes).await);
            }
            if self.indexer_ack
                && !self
                    .warned_no_ack
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                tracing::warn!(
                    "Splunk HEC answered without an ackId: indexer acknowledgement is off for this token, so a 200 means received, not indexed"
                );
            }
            return Attempt::Done(Outcome::Delivered { bytes });
        }
        classify(response.status, &response.headers, &response.body, &parsed)
    }

    fn gzip(&self) -> bool {
        self.http.gzip()
    }

    /// Polls the acknowledgement endpoint until `id` is indexed or the time is up.
    async fn wait_ack(&self, id: u64, bytes: u64) -> Outcome {
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        let body = format!("{{\"acks\":[{id}]}}");
        loop {
            tokio::time::sleep(delay).await;
            match self
                .http
                .post(
                    &self.ack_url,
                    "application/json",
                    body.clone().into_bytes(),
                    false,
                )
                .await
            {
                Ok(r) if r.status.is_success() => {
                    let acks: serde_json::Value =
                        serde_json::from_slice(&r.body).unwrap_or_default();
                    if acks["acks"][id.to_string()].as_bool() == Some(true) {
                        return Outcome::Delivered { bytes };
                    }
                }
                Ok(r) => {
                    tracing::warn!(status = %r.status, body = %String::from_utf8_lossy(&r.body), "Splunk HEC acknowledgement query failed");
                }
                Err(e) => tracing::warn!(outcome = ?e, "Splunk HEC acknowledgement query failed"),
            }
            if start.elapsed() >= self.ack_timeout {
                return Outcome::Retry {
                    status: "ack_timeout".into(),
                    reason: format!(
                        "ackId {id} not acknowledged within {:?}: sending the batch again",
                        self.ack_timeout
                    ),
                    after: None,
                };
            }
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }
}

fn classify(status: StatusCode, headers: &HeaderMap, body: &[u8], parsed: &HecResponse) -> Attempt {
    if status == StatusCode::BAD_REQUEST
        && let (Some(code), Some(index)) = (parsed.code, parsed.invalid_event)
        && EVENT_CODES.contains(&code)
    {
        return Attempt::RefuseOne {
            index,
            status: status.as_u16().to_string(),
            reason: format!("HEC code {code}: {}", parsed.text),
        };
    }
    Attempt::Done(classify_status(status, headers, body, 0))
}

impl Sink for SplunkHec {
    fn send<'a>(&'a self, events: &'a [&'a Event]) -> BoxFuture<'a, Outcome> {
        Box::pin(send_isolating(events, move |subset| self.attempt(subset)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_version_4_uuids() {
        let c = new_channel();
        assert_eq!(c.len(), 36);
        assert_eq!(&c[14..15], "4");
        assert!(matches!(&c[19..20], "8" | "9" | "a" | "b"), "{c}");
        assert_ne!(c, new_channel());
    }

    #[test]
    fn encodes_the_event_envelope() {
        let hec = Hec {
            index: Some("main".into()),
            source: None,
            sourcetype: Some("app".into()),
            event: EventFormat::Json,
            indexed_fields: vec!["pod".into(), "n".into()],
        };
        let mut e = Event::new("boom".into());
        e.timestamp = 1_700_000_000_123_456_789;
        e.fields.insert("host".into(), "node-1".into());
        e.fields.insert("pod".into(), "a-1".into());
        e.fields.insert("n".into(), 7.into());
        e.fields.insert("level".into(), "error".into());
        let mut out = Vec::new();
        hec.encode(&[&e, &e], &mut out);
        let text = String::from_utf8(out).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert_eq!(first["time"].as_f64(), Some(1_700_000_000.123));
        assert_eq!(first["host"], "node-1");
        assert_eq!(first["index"], "main");
        assert_eq!(first["sourcetype"], "app");
        assert!(first.get("source").is_none());
        assert_eq!(first["event"]["message"], "boom");
        assert_eq!(first["event"]["level"], "error");
        assert!(first["event"].get("pod").is_none());
        assert_eq!(first["fields"]["pod"], "a-1");
        assert_eq!(first["fields"]["n"], "7");
    }

    #[test]
    fn an_invalid_event_is_named() {
        let parsed: HecResponse = serde_json::from_str(
            r#"{"text":"Invalid data format","code":6,"invalid-event-number":2}"#,
        )
        .unwrap();
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, &HeaderMap::new(), b"", &parsed),
            Attempt::RefuseOne { index: 2, .. }
        ));
        let parsed: HecResponse =
            serde_json::from_str(r#"{"text":"Incorrect index","code":7,"invalid-event-number":0}"#)
                .unwrap();
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, &HeaderMap::new(), b"", &parsed),
            Attempt::Done(Outcome::Rejected { .. })
        ));
        let parsed: HecResponse =
            serde_json::from_str(r#"{"text":"Server is busy","code":9}"#).unwrap();
        assert!(matches!(
            classify(
                StatusCode::SERVICE_UNAVAILABLE,
                &HeaderMap::new(),
                b"",
                &parsed
            ),
            Attempt::Done(Outcome::Retry { .. })
        ));
    }
}
