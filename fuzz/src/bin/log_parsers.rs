//! The log-shipper's pipeline parsers: logfmt, JSON and a regex with named captures, on one
//! line each.
use log_shipper::event::Event;
use log_shipper::pipeline::parse::{Parser, logfmt};

fn main() {
    let parsers = [
        Parser::Json {
            message_key: "message".to_owned(),
        },
        Parser::Logfmt {
            message_key: "msg".to_owned(),
        },
        Parser::Regex(
            regex::Regex::new(r"^(?P<level>\w+) (?P<module>[^:]+): (?P<message>.*)$")
                .expect("the fuzz regex compiles"),
        ),
    ];
    afl::fuzz!(|data: &[u8]| {
        let line = String::from_utf8_lossy(data);
        let _ = logfmt(&line);
        for p in &parsers {
            let mut event = Event::new(line.clone().into_owned());
            p.apply(&mut event);
        }
    });
}
