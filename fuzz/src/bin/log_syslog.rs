//! The log-shipper's syslog receiver: a TCP stream framed (octet counting or newlines) as it
//! arrives in pieces, each message parsed (RFC 5424, RFC 3164).
use std::sync::Arc;

use log_shipper::ack::AckStream;
use log_shipper::pipeline::format::LineFormat as _;
use log_shipper::pipeline::format::structured::Syslog;
use log_shipper::source::syslog::Framer;
use log_shipper::source::{Format, StreamInfo};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let stream = Arc::new(StreamInfo {
            id: 1,
            input: "fuzz".into(),
            path: None,
            ack: AckStream::new(0),
            format: Format::Syslog,
        });
        let mut framer = Framer::new(128);
        let mut syslog = Syslog::default();
        let mut chunks = Vec::new();
        for piece in data.chunks(sidecars_fuzz::chunk_size(data)) {
            chunks.push(framer.feed(piece, &stream));
        }
        chunks.push(framer.finish(&stream));
        for chunk in &chunks {
            for line in &chunk.lines {
                let _ = syslog.decode(chunk.bytes(line), line.start, 1);
            }
        }
    });
}
