//! The HTTP receiver: apps that would rather send than write a file POST their lines to the
//! sidecar on localhost.
//!
//! - `Content-Type: application/json`: one JSON value, or an array of them; each is an event
//!   (an object's keys become fields, the string under `message_key` the message). A body that
//!   is not JSON is refused with 400, and nothing of it is taken.
//! - `application/x-ndjson` (or `application/jsonl`): one JSON value per line.
//! - anything else (`text/plain`): one event per line; empty lines are skipped.
//! - `Content-Encoding: gzip` is accepted.
//!
//! The answer waits for the lines to be safe: `200` once every sink of the pipeline has
//! acknowledged them (delivered, set aside in the dead-letter file, or written to a disk buffer),
//! so a client that got a 200 may forget them. Each request is a stream of its own (multiline
//! joins lines of one request only). The receiver holds at most `max_in_flight_bytes` of bodies
//! waiting for acknowledgement: past that, and when the lines are not acknowledged within
//! `ack_timeout`, it answers `503` with `Retry-After` instead of taking more memory. After a 503
//! at the timeout the lines may still be delivered: a client that sends them again may
//! duplicate them (at least once). A body over `max_body_bytes` (after decompression) is refused
//! with 413.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ack::AckStream;
use crate::metrics::Metrics;
use crate::source::{Format, LineSpan, RawChunk, Source, SourceItem, StreamInfo, next_stream_id};

/// The settings of one HTTP receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpInputSpec {
    pub name: String,
    pub address: SocketAddr,
    /// Largest body, after decompression (413 beyond).
    pub max_body_bytes: usize,
    /// Bodies waiting for acknowledgement at most (503 beyond).
    pub max_in_flight_bytes: usize,
    /// Longest wait for the acknowledgement before answering 503.
    pub ack_timeout: Duration,
    /// The key of a JSON object that holds the message.
    pub message_key: String,
    /// Longer lines are cut and marked `truncated`.
    pub max_line_bytes: usize,
}

/// An HTTP receiver, its socket bound.
#[derive(Debug)]
pub struct HttpSource {
    pub spec: HttpInputSpec,
    pub listener: std::net::TcpListener,
    pub metrics: Metrics,
    /// Cancelled when the shutdown's flush time is over: requests still waiting answer 503.
    pub deadline: CancellationToken,
}

impl HttpSource {
    /// Binds the address (so a taken port is an error at start, naming the input).
    pub fn bind(
        spec: HttpInputSpec,
        metrics: Metrics,
        deadline: CancellationToken,
    ) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(spec.address)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            spec,
            listener,
            metrics,
            deadline,
        })
    }
}

#[derive(Debug)]
struct Shared {
    spec: HttpInputSpec,
    out: mpsc::Sender<SourceItem>,
    in_flight: Semaphore,
    metrics: Metrics,
    stop: CancellationToken,
    deadline: CancellationToken,
}

impl Source for HttpSource {
    fn start(
        self: Box<Self>,
        out: mpsc::Sender<SourceItem>,
        stop: CancellationToken,
    ) -> JoinHandle<anyhow::Result<()>> {
        tokio::spawn(async move {
            let HttpSource {
                spec,
                listener,
                metrics,
                deadline,
            } = *self;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tracing::info!(input = %spec.name, address = %spec.address, "HTTP receiver listening");
            let max_body = spec.max_body_bytes;
            let shared = Arc::new(Shared {
                in_flight: Semaphore::new(spec.max_in_flight_bytes.min(Semaphore::MAX_PERMITS)),
                spec,
                out,
                metrics,
                stop: stop.clone(),
                deadline,
            });
            let app = Router::new()
                .fallback(receive)
                .with_state(shared)
                // The body as sent; a compressed one is checked again once decompressed.
                .layer(DefaultBodyLimit::max(max_body));
            // In-flight requests finish (they wait for their acknowledgement, or the deadline).
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await?;
            Ok(())
        })
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let response = shared.handle(method, &headers, body).await;
    shared
        .metrics
        .receiver_requests
        .with_label_values(&[shared.spec.name.as_str(), response.status().as_str()])
        .inc();
    response
}

/// How the body is cut into lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Json,
    Ndjson,
    Text,
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Response {
    let mut response = (status, format!("{}\n", why.into())).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

impl Shared {
    async fn handle(
        &self,
        method: Method,
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Response {
        if method != Method::POST {
            let mut r = refuse(StatusCode::METHOD_NOT_ALLOWED, "POST lines here");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return r;
        }
        let body = match body {
            Ok(b) => b,
            Err(rejection) => return refuse(rejection.status(), rejection.body_text()),
        };
        if self.stop.is_cancelled() {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        }
        let body = match decode(headers, body, self.spec.max_body_bytes) {
            Ok(b) => b,
            Err(r) => return r,
        };
        let chunk = match cut(
            body_kind(headers),
            &body,
            self.spec.max_line_bytes,
            &self.spec.message_key,
            &self.spec.name,
        ) {
            Ok(c) => c,
            Err(why) => return refuse(StatusCode::BAD_REQUEST, why),
        };
        let (data, lines, format) = chunk;
        let count = lines.len();
        let Some(end) = lines.last().map(|l| l.end) else {
            return ok(0);
        };
        let cost = u32::try_from(data.len().max(1)).unwrap_or(u32::MAX);
        let Ok(_permit) = self.in_flight.try_acquire_many(cost) else {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy: too many lines wait for their acknowledgement; retry later",
            );
        };
        let stream = Arc::new(StreamInfo {
            id: next_stream_id(),
            input: self.spec.name.as_str().into(),
            path: None,
            ack: AckStream::new(0),
            format,
        });
        let until = Instant::now() + self.spec.ack_timeout;
        let permits = tokio::select! {
            p = self.out.reserve_many(2) => p,
            () = tokio::time::sleep_until(until) => {
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "busy: the pipeline takes no more lines now; retry later");
            }
            () = self.deadline.cancelled() => return refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
        };
        let Ok(mut permits) = permits else {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        };
        let input = self.spec.name.as_str();
        self.metrics
            .lines_read
            .with_label_values(&[input])
            .inc_by(count as u64);
        self.metrics
            .bytes_read
            .with_label_values(&[input])
            .inc_by(body.len() as u64);
        let cut_lines = lines.iter().filter(|l| l.truncated).count() as u64;
        if cut_lines > 0 {
            self.metrics
                .events_truncated
                .with_label_values(&[input])
                .inc_by(cut_lines);
        }
        if let Some(p) = permits.next() {
            p.send(SourceItem::Lines(RawChunk {
                stream: stream.clone(),
                data,
                lines,
            }));
        }
        if let Some(p) = permits.next() {
            p.send(SourceItem::Closed(stream.clone()));
        }
        tokio::select! {
            () = stream.ack.wait_acked(end) => ok(count),
            () = tokio::time::sleep_until(until) => refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "not acknowledged in time (the lines may still be delivered; sending them again may duplicate them)",
            ),
            () = self.deadline.cancelled() => refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting down before the lines were acknowledged (they may still be delivered)",
            ),
        }
    }
}

fn ok(lines: usize) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"lines\":{lines}}}\n"),
    )
        .into_response()
}

fn body_kind(headers: &HeaderMap) -> BodyKind {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "application/json" => BodyKind::Json,
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines" => BodyKind::Ndjson,
        _ => BodyKind::Text,
    }
}

/// The body, decompressed, within `max` bytes.
#[allow(clippy::result_large_err)]
fn decode(headers: &HeaderMap, body: Bytes, max: usize) -> Result<Bytes, Response> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(body),
        "gzip" | "x-gzip" => {
            let mut out = Vec::new();
            let limit = u64::try_from(max).unwrap_or(u64::MAX) + 1;
            flate2::read::MultiGzDecoder::new(&body[..])
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("bad gzip body: {e}")))?;
            if out.len() > max {
                return Err(refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over {max} bytes once decompressed"),
                ));
            }
            Ok(out.into())
        }
        other => Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding {other} is not supported (gzip is)"),
        )),
    }
}

type Lines = (Vec<u8>, Vec<LineSpan>, Format);

/// Cuts the body into lines in one buffer; positions are offsets in it (past a virtual newline
/// after each line).
fn cut(
    kind: BodyKind,
    body: &[u8],
    max_line: usize,
    message_key: &str,
    input: &str,
) -> Result<Lines, String> {
    let mut data = Vec::with_capacity(body.len());
    let mut lines = Vec::new();
    let mut push = |data: &mut Vec<u8>, bytes: &[u8]| {
        let from = data.len();
        let truncated = bytes.len() > max_line;
        data.extend_from_slice(&bytes[..bytes.len().min(max_line)]);
        lines.push(LineSpan {
            range: (from, data.len()),
            start: from as u64,
            end: data.len() as u64 + 1,
            truncated,
        });
        // The virtual newline keeps the next line's start past this line's end.
        data.push(b'\n');
    };
    let json = Format::Json {
        message_key: message_key.to_owned(),
    };
    match kind {
        BodyKind::Json => {
            let value: serde_json::Value = serde_json::from_slice(body)
                .map_err(|e| format!("the body is not JSON ({e}); nothing was taken"))?;
            let values = match value {
                serde_json::Value::Array(items) => items,
                other => vec![other],
            };
            let mut one = Vec::new();
            for v in values {
                one.clear();
                // Writing a Value into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut one, &v);
                push(&mut data, &one);
            }
            tracing::trace!(input, lines = lines.len(), "JSON body");
            Ok((data, lines, json))
        }
        BodyKind::Ndjson | BodyKind::Text => {
            for line in body.split(|b| *b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                push(&mut data, line);
            }
            let format = if kind == BodyKind::Ndjson {
                json
            } else {
                Format::Raw
            };
            Ok((data, lines, format))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(l: &Lines) -> Vec<(String, bool)> {
        l.1.iter()
            .map(|s| {
                (
                    String::from_utf8_lossy(&l.0[s.range.0..s.range.1]).into_owned(),
                    s.truncated,
                )
            })
            .collect()
    }

    #[test]
    fn bodies_are_cut_into_lines_by_their_type() {
        let text = cut(BodyKind::Text, b"one\r\n\n  \ntwo\nthree-long", 5, "m", "t").unwrap();
        assert_eq!(
            texts(&text),
            vec![
                ("one".into(), false),
                ("two".into(), false),
                ("three".into(), true)
            ]
        );
        assert_eq!(text.2, Format::Raw);
        let positions: Vec<(u64, u64)> = text.1.iter().map(|l| (l.start, l.end)).collect();
        assert_eq!(positions, vec![(0, 4), (4, 8), (8, 14)]);
        let json = cut(
            BodyKind::Json,
            br#"[{"message":"a","n":1}, "b"]"#,
            100,
            "message",
            "t",
        )
        .unwrap();
        assert_eq!(
            texts(&json),
            vec![
                (r#"{"message":"a","n":1}"#.into(), false),
                (r#""b""#.into(), false)
            ]
        );
        assert_eq!(
            json.2,
            Format::Json {
                message_key: "message".into()
            }
        );
        assert!(
            cut(BodyKind::Json, b"{nope", 100, "m", "t")
                .unwrap_err()
                .contains("not JSON")
        );
        let nd = cut(BodyKind::Ndjson, b"{\"a\":1}\n{\"a\":2}\n", 100, "m", "t").unwrap();
        assert_eq!(nd.1.len(), 2);
    }

    #[test]
    fn content_types_and_gzip() {
        let mut h = HeaderMap::new();
        assert_eq!(body_kind(&h), BodyKind::Text);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert_eq!(body_kind(&h), BodyKind::Json);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-ndjson"),
        );
        assert_eq!(body_kind(&h), BodyKind::Ndjson);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &[b'x'; 1000]).unwrap();
        let body = Bytes::from(gz.finish().unwrap());
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(decode(&h, body.clone(), 1000).unwrap().len(), 1000);
        let over = decode(&h, body, 999).unwrap_err();
        assert_eq!(over.status(), StatusCode::PAYLOAD_TOO_LARGE);
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert_eq!(
            decode(&h, Bytes::new(), 10).unwrap_err().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}
