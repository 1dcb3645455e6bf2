//! The log-shipper's container runtime formats (CRI, Docker's json-file), partial lines joined
//! and cut at a small maximum: the lines of the input, then the end of the stream.
use log_shipper::pipeline::format::build;
use log_shipper::source::Format;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        for format in [Format::Cri, Format::Docker] {
            let mut decoder = build(&format, 64);
            let mut pos = 0u64;
            for line in data.split(|&b| b == b'\n') {
                let _ = decoder.decode(line, pos, 1);
                pos += line.len() as u64 + 1;
                decoder.pending_start();
            }
            let _ = decoder.flush();
            decoder.take_errors();
        }
    });
}
