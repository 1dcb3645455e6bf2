//! A receiver that speaks the documented ingest APIs the sinks target, since those stores are
//! not installable here: Elasticsearch's `_bulk` (NDJSON action/document pairs; a 200 with
//! `errors` and one item per action with its own `status`, per the Bulk API reference), Splunk
//! HEC's `/services/collector/event` and `/services/collector/ack` (JSON event objects,
//! `Authorization: Splunk <token>`, a channel, `{"text":"Success","code":0,"ackId":N}`, and
//! `{"acks":{"N":true}}` once "indexed"; errors `{"text","code","invalid-event-number"}`), and
//! Loki's `/loki/api/v1/push` (JSON streams of labels and `[ns, line, metadata?]` values; 204).
//!
//! Each request is checked against the documented shape; a violation is recorded (the test
//! asserts there is none) and answered 400. What each store would keep is kept for the test.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// One Loki entry: timestamp (ns), line, structured metadata.
pub type LokiEntry = (String, String, Option<Value>);
/// One push: its streams, labels and entries.
pub type LokiPush = Vec<(Value, Vec<LokiEntry>)>;

/// What the receiver saw and kept.
#[derive(Debug, Default)]
pub struct Seen {
    /// Shape violations: each one a failed test.
    pub violations: Mutex<Vec<String>>,
    /// Elasticsearch: documents stored (with their index), and how often each message was sent.
    pub es_docs: Mutex<Vec<(String, Value)>>,
    pub es_sent: Mutex<HashMap<String, u32>>,
    es_busied: Mutex<std::collections::HashSet<String>>,
    pub authorization: Mutex<Vec<String>>,
    pub gzip_requests: AtomicU64,
    /// Splunk: events indexed (acknowledged), and those waiting for their ack.
    pub hec_events: Mutex<Vec<Value>>,
    hec_pending: Mutex<HashMap<u64, (u32, Vec<Value>)>>,
    hec_next_ack: AtomicU64,
    pub hec_ack_queries: AtomicU64,
    pub hec_channels: Mutex<Vec<String>>,
    pub hec_token: Mutex<String>,
    /// Loki: every request's streams, `(labels, [(ns, line, metadata)])`.
    pub loki_requests: Mutex<Vec<LokiPush>>,
    /// Loki answers 503 while set.
    pub loki_down: AtomicBool,
}

impl Seen {
    fn violation(&self, what: String) -> Response {
        self.violations.lock().unwrap().push(what.clone());
        (StatusCode::BAD_REQUEST, what).into_response()
    }
}

pub struct ApiReceiver {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiReceiver {
    pub fn start(hec_token: &str) -> ApiReceiver {
        let seen = Arc::new(Seen::default());
        *seen.hec_token.lock().unwrap() = hec_token.to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/_bulk", post(bulk))
            .route("/services/collector/event", post(hec_event))
            .route("/services/collector/ack", post(hec_ack))
            .route("/loki/api/v1/push", post(loki_push))
            .with_state(seen.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let stopped = async move {
                    while !stop2.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                };
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await;
            });
        });
        ApiReceiver {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    #[track_caller]
    pub fn assert_no_violation(&self) {
        let v = self.seen.violations.lock().unwrap();
        assert!(
            v.is_empty(),
            "requests that break the documented API: {v:#?}"
        );
    }
}

impl Drop for ApiReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn body_of(seen: &Seen, headers: &HeaderMap, body: &Bytes) -> Result<Vec<u8>, String> {
    if headers
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip")
    {
        seen.gzip_requests.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .map_err(|e| format!("bad gzip: {e}"))?;
        return Ok(out);
    }
    Ok(body.to_vec())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn bulk(
    State(seen): State<Arc<Seen>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let auth = header(&headers, "authorization").to_owned();
    seen.authorization.lock().unwrap().push(auth);
    let ct = header(&headers, "content-type");
    if ct != "application/x-ndjson" && ct != "application/json" {
        return seen.violation(format!("_bulk: Content-Type {ct:?}"));
    }
    if !query.unwrap_or_default().contains("filter_path=") {
        return seen.violation("_bulk: no filter_path".into());
    }
    let body = match body_of(&seen, &headers, &body) {
        Ok(b) => b,
        Err(e) => return seen.violation(e),
    };
    // "The final line of data must end with a newline character \n."
    if body.last() != Some(&b'\n') {
        return seen.violation("_bulk: the body does not end with a newline".into());
    }
    let text = String::from_utf8_lossy(&body);
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    if !lines.len().is_multiple_of(2) {
        return seen.violation(format!(
            "_bulk: {} lines, not action/document pairs",
            lines.len()
        ));
    }
    let mut items = Vec::new();
    let mut errors = false;
    for pair in lines.chunks(2) {
        let action: Value = match serde_json::from_str(pair[0]) {
            Ok(v) => v,
            Err(e) => return seen.violation(format!("_bulk: action line {:?}: {e}", pair[0])),
        };
        let Some((op, meta)) = action
            .as_object()
            .filter(|o| o.len() == 1)
            .and_then(|o| o.iter().next())
        else {
            return seen.violation(format!("_bulk: action line {:?}", pair[0]));
        };
        if op != "create" && op != "index" {
            return seen.violation(format!("_bulk: action {op}"));
        }
        let Some(index) = meta["_index"].as_str().filter(|i| !i.is_empty()) else {
            return seen.violation(format!("_bulk: no _index in {:?}", pair[0]));
        };
        let doc: Value = match serde_json::from_str::<Value>(pair[1]) {
            Ok(v) if v.is_object() => v,
            _ => return seen.violation(format!("_bulk: document line {:?}", pair[1])),
        };
        if doc["@timestamp"].as_str().is_none() {
            return seen.violation(format!(
                "_bulk: a data stream document needs @timestamp: {doc}"
            ));
        }
        let message = doc["message"].as_str().unwrap_or_default().to_owned();
        *seen
            .es_sent
            .lock()
            .unwrap()
            .entry(message.clone())
            .or_default() += 1;
        let (status, error) = if message.contains("POISON") {
            (
                400,
                Some(
                    json!({"type": "mapper_parsing_exception", "reason": "failed to parse field [n] of type [long]"}),
                ),
            )
        } else if message.contains("BUSY") && seen.es_busied.lock().unwrap().insert(message.clone())
        {
            (
                429,
                Some(
                    json!({"type": "es_rejected_execution_exception", "reason": "rejected execution: write queue full"}),
                ),
            )
        } else {
            seen.es_docs
                .lock()
                .unwrap()
                .push((index.to_owned(), doc.clone()));
            (201, None)
        };
        let mut item =
            json!({"_index": index, "_id": format!("id-{}", items.len()), "status": status});
        match error {
            Some(e) => {
                errors = true;
                item["error"] = e;
            }
            None => {
                item["result"] = json!("created");
                item["_version"] = json!(1);
            }
        }
        items.push(json!({ op.as_str(): item }));
    }
    axum::Json(json!({"took": 3, "errors": errors, "items": items})).into_response()
}

fn check_channel(seen: &Seen, headers: &HeaderMap) -> Result<String, String> {
    let channel = header(headers, "x-splunk-request-channel").to_owned();
    let uuid = channel.len() == 36
        && channel.chars().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    if !uuid {
        return Err(format!("HEC: channel {channel:?} is not a GUID"));
    }
    let want = format!("Splunk {}", seen.hec_token.lock().unwrap());
    let auth = header(headers, "authorization").to_owned();
    seen.authorization.lock().unwrap().push(auth.clone());
    if auth != want {
        return Err(format!("HEC: Authorization {auth:?}"));
    }
    Ok(channel)
}

async fn hec_event(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> Response {
    let channel = match check_channel(&seen, &headers) {
        Ok(c) => c,
        Err(e) => {
            seen.violations.lock().unwrap().push(e.clone());
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"text": "Invalid authorization", "code": 3})),
            )
                .into_response();
        }
    };
    seen.hec_channels.lock().unwrap().push(channel);
    let body = match body_of(&seen, &headers, &body) {
        Ok(b) => b,
        Err(e) => return seen.violation(e),
    };
    let mut events = Vec::new();
    for (i, item) in serde_json::Deserializer::from_slice(&body)
        .into_iter::<Value>()
        .enumerate()
    {
        let Ok(event) = item else {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(
                    json!({"text": "Invalid data format", "code": 6, "invalid-event-number": i}),
                ),
            )
                .into_response();
        };
        if !event["time"].is_number() {
            return seen.violation(format!("HEC: time is epoch seconds: {event}"));
        }
        if event.get("event").is_none_or(Value::is_null) {
            return (StatusCode::BAD_REQUEST, axum::Json(json!({"text": "Event field is required", "code": 12, "invalid-event-number": i}))).into_response();
        }
        if let Some(fields) = event.get("fields") {
            let ok = fields.as_object().is_some_and(|o| {
                o.values().all(|v| {
                    v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
                })
            });
            if !ok {
                return seen.violation(format!("HEC: indexed fields are strings: {fields}"));
            }
        }
        // A test's stand-in for an event HEC cannot take.
        if event["event"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("POISON"))
        {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(
                    json!({"text": "Invalid data format", "code": 6, "invalid-event-number": i}),
                ),
            )
                .into_response();
        }
        events.push(event);
    }
    if events.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"text": "No data", "code": 5})),
        )
            .into_response();
    }
    let id = seen.hec_next_ack.fetch_add(1, Ordering::Relaxed);
    // "Indexed" at the second query about it.
    seen.hec_pending.lock().unwrap().insert(id, (1, events));
    axum::Json(json!({"text": "Success", "code": 0, "ackId": id})).into_response()
}

async fn hec_ack(
    State(seen): State<Arc<Seen>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    seen.hec_ack_queries.fetch_add(1, Ordering::Relaxed);
    let channel = match check_channel(&seen, &headers) {
        Ok(c) => c,
        Err(e) => return seen.violation(e),
    };
    if query.as_deref() != Some(&format!("channel={channel}")) {
        return seen.violation(format!("HEC ack: query {query:?} for channel {channel}"));
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return seen.violation("HEC ack: body is not JSON".into());
    };
    let Some(ids) = request["acks"].as_array() else {
        return seen.violation(format!("HEC ack: {request}"));
    };
    let mut acks = serde_json::Map::new();
    let mut pending = seen.hec_pending.lock().unwrap();
    for id in ids {
        let Some(id) = id.as_u64() else {
            return seen.violation(format!("HEC ack: id {id}"));
        };
        let done = match pending.get_mut(&id) {
            Some((0, _)) => {
                let (_, events) = pending.remove(&id).unwrap_or_default();
                seen.hec_events.lock().unwrap().extend(events);
                true
            }
            Some((left, _)) => {
                *left -= 1;
                false
            }
            None => false,
        };
        acks.insert(id.to_string(), Value::Bool(done));
    }
    axum::Json(json!({"acks": acks})).into_response()
}

fn label_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

async fn loki_push(State(seen): State<Arc<Seen>>, headers: HeaderMap, body: Bytes) -> Response {
    if seen.loki_down.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "ingester unavailable").into_response();
    }
    if header(&headers, "content-type") != "application/json" {
        return seen.violation(format!(
            "Loki: Content-Type {:?}",
            header(&headers, "content-type")
        ));
    }
    let body = match body_of(&seen, &headers, &body) {
        Ok(b) => b,
        Err(e) => return seen.violation(e),
    };
    let Ok(push) = serde_json::from_slice::<Value>(&body) else {
        return seen.violation("Loki: body is not JSON".into());
    };
    let Some(streams) = push["streams"].as_array().filter(|s| !s.is_empty()) else {
        return seen.violation(format!("Loki: no streams: {push}"));
    };
    let mut request = Vec::new();
    for stream in streams {
        let Some(labels) = stream["stream"].as_object().filter(|l| !l.is_empty()) else {
            return seen.violation(format!("Loki: a stream needs labels: {stream}"));
        };
        if !labels
            .iter()
            .all(|(k, v)| label_name_ok(k) && v.is_string())
        {
            return seen.violation(format!("Loki: labels {labels:?}"));
        }
        let Some(values) = stream["values"].as_array() else {
            return seen.violation(format!("Loki: no values: {stream}"));
        };
        let mut entries = Vec::new();
        for v in values {
            let entry = v.as_array();
            let ok = entry.is_some_and(|e| {
                (e.len() == 2 || e.len() == 3)
                    && e[0]
                        .as_str()
                        .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                    && e[1].is_string()
                    && e.get(2).is_none_or(|m| {
                        m.as_object()
                            .is_some_and(|o| o.values().all(Value::is_string))
                    })
            });
            let (true, Some(e)) = (ok, entry) else {
                return seen.violation(format!("Loki: entry {v}"));
            };
            entries.push((
                e[0].as_str().unwrap_or_default().to_owned(),
                e[1].as_str().unwrap_or_default().to_owned(),
                e.get(2).cloned(),
            ));
        }
        request.push((Value::Object(labels.clone()), entries));
    }
    seen.loki_requests.lock().unwrap().push(request);
    StatusCode::NO_CONTENT.into_response()
}
