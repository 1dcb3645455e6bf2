//! The generic HTTP sink: one JSON object per line (`application/x-ndjson`), `timestamp` and
//! `message` first, then the event's fields. Any 2xx stores the whole batch.

use crate::event::Event;
use crate::sink::http::HttpProtocol;

#[derive(Debug, Default)]
pub struct Ndjson;

impl HttpProtocol for Ndjson {
    fn content_type(&self) -> &'static str {
        "application/x-ndjson"
    }

    fn encode(&self, events: &[&Event], body: &mut Vec<u8>) {
        for event in events {
            event.write_json(body);
            body.push(b'\n');
        }
    }
}
