//! Elasticsearch and OpenSearch: the `_bulk` API.
//!
//! The request is NDJSON, an action line and a document line per event, ending with a newline;
//! the answer is `200` with `errors` and one item per action, in order, each with its own
//! `status` (and `error.type`/`error.reason` when it failed). Reference: Elasticsearch's "Bulk
//! API" (docs-bulk, request body and response body) and OpenSearch's "Bulk" API, which have the
//! same shape. So one request stores some events and not others: per item, 2xx (and 409 for a
//! `create` of a document that exists) is stored, 429, 408 and 5xx are sent again (only those),
//! any other 4xx (a mapping error: the document will never fit) goes to the dead-letter file.
//! A status for the request as a whole (401, 413, 503...) means the shared rules.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::event::{Event, write_json_string};
use crate::sink::Outcome;
use crate::sink::auth::Auth;
use crate::sink::http::{HttpProtocol, HttpSinkSpec};
use crate::sink::retry::{classify_status, retry_after};

/// What the bulk action is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkAction {
    /// `create`: what data streams need; never overwrites.
    Create,
    /// `index`.
    Index,
}

/// An index name with the event's UTC date in it: `%Y`, `%m`, `%d`, `%H`, `%%`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexName {
    parts: Vec<IndexPart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum IndexPart {
    Text(String),
    Year,
    Month,
    Day,
    Hour,
}

impl IndexName {
    /// Parses `logs-app-%Y.%m.%d`; an unknown `%` code or a name Elasticsearch refuses (upper
    /// case, `/ \ * ? " < > | , #` or a space, a leading `-_+`) is an error.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an empty index name".into());
        }
        if text.starts_with(['-', '_', '+']) {
            return Err(format!(
                "`{text}`: an index name cannot start with - _ or +"
            ));
        }
        let mut parts = Vec::new();
        let mut text_part = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '%' {
                let part = match chars.next() {
                    Some('Y') => IndexPart::Year,
                    Some('m') => IndexPart::Month,
                    Some('d') => IndexPart::Day,
                    Some('H') => IndexPart::Hour,
                    Some('%') => {
                        text_part.push('%');
                        continue;
                    }
                    other => {
                        return Err(format!(
                            "`{text}`: %{} is not one of %Y %m %d %H",
                            other.map(String::from).unwrap_or_default()
                        ));
                    }
                };
                if !text_part.is_empty() {
                    parts.push(IndexPart::Text(std::mem::take(&mut text_part)));
                }
                parts.push(part);
            } else if c.is_uppercase() || "/\\*?\"<>|, #:".contains(c) {
                return Err(format!(
                    "`{text}`: an index name is lower case, without spaces or / \\ * ? \" < > | , # :"
                ));
            } else {
                text_part.push(c);
            }
        }
        if !text_part.is_empty() {
            parts.push(IndexPart::Text(text_part));
        }
        Ok(Self { parts })
    }

    fn write(&self, timestamp: i64, out: &mut Vec<u8>) {
        let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(timestamp))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        for part in &self.parts {
            match part {
                IndexPart::Text(t) => out.extend_from_slice(t.as_bytes()),
                IndexPart::Year => out.extend_from_slice(format!("{:04}", time.year()).as_bytes()),
                IndexPart::Month => {
                    out.extend_from_slice(format!("{:02}", u8::from(time.month())).as_bytes());
                }
                IndexPart::Day => out.extend_from_slice(format!("{:02}", time.day()).as_bytes()),
                IndexPart::Hour => out.extend_from_slice(format!("{:02}", time.hour()).as_bytes()),
            }
        }
    }

    /// The name, for an event at `timestamp`.
    pub fn render(&self, timestamp: i64) -> String {
        let mut out = Vec::new();
        self.write(timestamp, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// An Elasticsearch sink's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ElasticsearchSpec {
    /// The URL ends in `/_bulk`.
    pub http: HttpSinkSpec,
    pub index: IndexName,
    pub action: BulkAction,
    pub auth: Auth,
}

#[derive(Debug)]
pub struct Elasticsearch {
    index: IndexName,
    action: BulkAction,
    auth: Auth,
}

impl Elasticsearch {
    pub fn new(spec: &ElasticsearchSpec) -> Self {
        Self {
            index: spec.index.clone(),
            action: spec.action,
            auth: spec.auth.clone(),
        }
    }
}

/// Writes the event as a document: `@timestamp` (what data streams require) and `message`
/// first, then the fields; a parsed field of one of those names is written with a `_` before it.
fn write_document(event: &Event, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"@timestamp\":\"");
    out.extend_from_slice(event.timestamp_rfc3339().as_bytes());
    out.extend_from_slice(b"\",\"message\":");
    write_json_string(&event.message, out);
    for (key, value) in event.all_fields() {
        out.push(b',');
        match key.as_str() {
            "@timestamp" | "message" => write_json_string(&format!("_{key}"), out),
            _ => write_json_string(key, out),
        }
        out.push(b':');
        // Writing a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
    }
    out.push(b'}');
}

#[derive(Debug, Deserialize)]
struct BulkResponse {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, BulkItem>>,
}

#[derive(Debug, Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

impl HttpProtocol for Elasticsearch {
    fn content_type(&self) -> &'static str {
        "application/x-ndjson"
    }

    fn encode(&self, events: &[&Event], body: &mut Vec<u8>) {
        let action: &[u8] = match self.action {
            BulkAction::Create => b"{\"create\":{\"_index\":\"",
            BulkAction::Index => b"{\"index\":{\"_index\":\"",
        };
        for event in events {
            body.extend_from_slice(action);
            // The name's characters were checked: nothing to escape.
            self.index.write(event.timestamp, body);
            body.extend_from_slice(b"\"}}\n");
            write_document(event, body);
            body.push(b'\n');
        }
    }

    fn authorization(&self, token: &str) -> String {
        self.auth.header(token)
    }

    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        events: &[&Event],
        bytes: u64,
    ) -> Outcome {
        if !status.is_success() {
            return classify_status(status, headers, body, bytes);
        }
        let response: BulkResponse = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                // A 2xx that is not a bulk answer (a proxy's page?): nothing is known to be stored.
                return Outcome::Retry {
                    status: "bad_response".into(),
                    reason: format!("{status} with a body that is not a _bulk response: {e}"),
                    after: None,
                };
            }
        };
        if !response.errors {
            return Outcome::Delivered { bytes };
        }
        if response.items.len() != events.len() {
            return Outcome::Retry {
                status: "bad_response".into(),
                reason: format!(
                    "_bulk answered {} items for {} actions",
                    response.items.len(),
                    events.len()
                ),
                after: None,
            };
        }
        let mut retry = Vec::new();
        let mut rejected = Vec::new();
        // The status reported: a refused item's (it goes with it to the dead-letter file),
        // else the highest among those sent again.
        let (mut refused_status, mut retry_status): (Option<u16>, Option<u16>) = (None, None);
        for (i, item) in response.items.iter().enumerate() {
            let Some(item) = item.values().next() else {
                retry.push(i);
                continue;
            };
            let code = item.status;
            let stored =
                (200..300).contains(&code) || (code == 409 && self.action == BulkAction::Create);
            if stored {
                continue;
            }
            if code == 408 || code == 429 || code >= 500 {
                retry_status = Some(retry_status.map_or(code, |w| w.max(code)));
                retry.push(i);
            } else {
                refused_status.get_or_insert(code);
                rejected.push((i, item_reason(code, item.error.as_ref())));
            }
        }
        if retry.is_empty() && rejected.is_empty() {
            return Outcome::Delivered { bytes };
        }
        Outcome::Partial {
            bytes,
            status: refused_status
                .or(retry_status)
                .map_or_else(|| "bad_response".into(), |c| c.to_string()),
            retry,
            rejected,
            after: retry_after(headers),
        }
    }
}

fn item_reason(status: u16, error: Option<&serde_json::Value>) -> String {
    match error {
        Some(e) => format!(
            "{status} {}: {}",
            e["type"].as_str().unwrap_or("error"),
            e["reason"].as_str().unwrap_or_default()
        ),
        None => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn es(action: BulkAction) -> Elasticsearch {
        Elasticsearch {
            index: IndexName::parse("logs-app-%Y.%m.%d").unwrap(),
            action,
            auth: Auth::ApiKey,
        }
    }

    #[test]
    fn index_names() {
        let name = IndexName::parse("logs-%Y.%m.%d-%H%%").unwrap();
        // 2023-11-14T22:13:20Z
        assert_eq!(
            name.render(1_700_000_000_000_000_000),
            "logs-2023.11.14-22%"
        );
        assert!(IndexName::parse("Logs").is_err());
        assert!(IndexName::parse("_logs").is_err());
        assert!(IndexName::parse("logs-%j").is_err());
        assert!(IndexName::parse("a b").is_err());
    }

    #[test]
    fn encodes_action_and_document_lines() {
        let mut e = Event::new("hello \"x\"".into());
        e.timestamp = 1_700_000_000_000_000_000;
        e.fields.insert("level".into(), "warn".into());
        e.fields.insert("@timestamp".into(), "shadowed".into());
        let mut body = Vec::new();
        es(BulkAction::Create).encode(&[&e], &mut body);
        let text = String::from_utf8(body).unwrap();
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert!(text.ends_with('\n'));
        assert_eq!(lines[0], r#"{"create":{"_index":"logs-app-2023.11.14"}}"#);
        let doc: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(doc["@timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(doc["message"], "hello \"x\"");
        assert_eq!(doc["level"], "warn");
        assert_eq!(doc["_@timestamp"], "shadowed");
    }

    #[test]
    fn per_item_statuses() {
        let events: Vec<Event> = (0..5).map(|i| Event::new(format!("e{i}"))).collect();
        let refs: Vec<&Event> = events.iter().collect();
        let body = br#"{"took":3,"errors":true,"items":[
            {"create":{"_index":"a","status":201}},
            {"create":{"_index":"a","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [n]"}}},
            {"create":{"_index":"a","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"create":{"_index":"a","status":409,"error":{"type":"version_conflict_engine_exception","reason":"exists"}}},
            {"create":{"_index":"a","status":503,"error":{"type":"unavailable_shards_exception","reason":"primary"}}}]}"#;
        let outcome =
            es(BulkAction::Create).classify(StatusCode::OK, &HeaderMap::new(), body, &refs, 10);
        assert_eq!(
            outcome,
            Outcome::Partial {
                bytes: 10,
                status: "400".into(),
                retry: vec![2, 4],
                rejected: vec![(
                    1,
                    "400 mapper_parsing_exception: failed to parse field [n]".into()
                )],
                after: None,
            }
        );
        let ok = br#"{"took":3,"errors":false,"items":[{"create":{"status":201}}]}"#;
        assert_eq!(
            es(BulkAction::Create).classify(StatusCode::OK, &HeaderMap::new(), ok, &refs[..1], 4),
            Outcome::Delivered { bytes: 4 }
        );
        assert!(matches!(
            es(BulkAction::Create).classify(StatusCode::OK, &HeaderMap::new(), b"<html>", &refs, 4),
            Outcome::Retry { status, .. } if status == "bad_response"
        ));
        assert!(matches!(
            es(BulkAction::Create).classify(StatusCode::UNAUTHORIZED, &HeaderMap::new(), b"{}", &refs, 4),
            Outcome::Rejected { status, .. } if status == "401"
        ));
    }
}
