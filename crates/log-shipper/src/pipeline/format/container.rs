//! The container runtimes' log files, as a node agent or a pod with `/var/log/pods` mounted
//! reads them.
//!
//! - **CRI** (containerd, CRI-O; the kubelet's `/var/log/pods/<pod>/<container>/N.log`):
//!   `2024-05-01T10:00:00.123456789Z stdout F the text`. The runtime splits long lines into
//!   parts tagged `P` (partial) and ends them with an `F` (full) part; the parts are joined.
//! - **Docker** json-file (`/var/lib/docker/containers/<id>/<id>-json.log`):
//!   `{"log":"the text\n","stream":"stderr","time":"2024-05-01T10:00:00.123456789Z"}`. Docker
//!   splits lines at 16 KiB; a part whose `log` does not end with a newline continues in the
//!   next one of the same stream.
//!
//! The event's time is the runtime's, its `stream` field `stdout` or `stderr`. Parts are joined
//! per stream (stdout and stderr interleave in one file). A line not in the format is shipped
//! as raw text and counted.

use std::borrow::Cow;

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::event::{Event, Fields};
use crate::pipeline::format::{Decoded, LineFormat, text};

/// A line being joined from its parts.
#[derive(Debug)]
struct Partial {
    stream: String,
    start: u64,
    event: Event,
    cut: bool,
}

/// Parts of split lines, per stream, joined up to a size.
#[derive(Debug)]
struct Joiner {
    max_bytes: usize,
    pending: Vec<Partial>,
}

impl Joiner {
    fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            pending: Vec::new(),
        }
    }

    /// One part of `stream`'s line; `last`: the line ends with it. Returns the whole line when
    /// it is complete.
    fn part(
        &mut self,
        stream: &str,
        timestamp: i64,
        text: &str,
        start: u64,
        last: bool,
    ) -> Option<Decoded> {
        let held = self.pending.iter().position(|p| p.stream == stream);
        let mut partial = match held {
            Some(i) => self.pending.swap_remove(i),
            None => {
                let mut fields = Fields::new();
                fields.insert("stream".into(), stream.into());
                Partial {
                    stream: stream.to_owned(),
                    start,
                    event: Event {
                        timestamp,
                        message: String::new(),
                        fields,
                        shared: None,
                    },
                    cut: false,
                }
            }
        };
        let room = self.max_bytes.saturating_sub(partial.event.message.len());
        if text.len() > room {
            let mut end = room;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            partial.event.message.push_str(&text[..end]);
            partial.cut = true;
        } else {
            partial.event.message.push_str(text);
        }
        if last {
            return Some(Decoded {
                event: partial.event,
                start: partial.start,
                cut: partial.cut,
            });
        }
        self.pending.push(partial);
        None
    }

    fn pending_start(&self) -> Option<u64> {
        self.pending.iter().map(|p| p.start).min()
    }

    fn flush(&mut self) -> Vec<Decoded> {
        let mut held: Vec<Partial> = std::mem::take(&mut self.pending);
        held.sort_by_key(|p| p.start);
        held.into_iter()
            .map(|p| Decoded {
                event: p.event,
                start: p.start,
                cut: p.cut,
            })
            .collect()
    }
}

fn rfc3339_nanos(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

fn raw(line: &[u8], start: u64, now: i64) -> Decoded {
    Decoded {
        event: Event {
            timestamp: now,
            message: text(line),
            fields: Fields::new(),
            shared: None,
        },
        start,
        cut: false,
    }
}

/// The CRI log format.
#[derive(Debug)]
pub struct Cri {
    joiner: Joiner,
    errors: u64,
}

impl Cri {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            joiner: Joiner::new(max_bytes),
            errors: 0,
        }
    }
}

/// `<time> <stream> <tags> <text>`: the time, the stream, whether the line is complete
/// (the first tag is `F`; `P` a part), the text.
fn split_cri(line: &str) -> Option<(i64, &str, bool, &str)> {
    let (time, rest) = line.split_once(' ')?;
    let (stream, rest) = rest.split_once(' ')?;
    // A full line with empty text may end right after its tag.
    let (tags, message) = rest.split_once(' ').unwrap_or((rest, ""));
    let last = match tags.split(':').next()? {
        "F" => true,
        "P" => false,
        _ => return None,
    };
    if stream.is_empty() {
        return None;
    }
    Some((rfc3339_nanos(time)?, stream, last, message))
}

impl LineFormat for Cri {
    fn decode(&mut self, line: &[u8], start: u64, now: i64) -> Option<Decoded> {
        let text = String::from_utf8_lossy(line);
        match split_cri(&text) {
            Some((time, stream, last, message)) => {
                self.joiner.part(stream, time, message, start, last)
            }
            None => {
                self.errors += 1;
                Some(raw(line, start, now))
            }
        }
    }

    fn pending_start(&self) -> Option<u64> {
        self.joiner.pending_start()
    }

    fn flush(&mut self) -> Vec<Decoded> {
        self.joiner.flush()
    }

    fn take_errors(&mut self) -> u64 {
        std::mem::take(&mut self.errors)
    }
}

/// Docker's json-file format.
#[derive(Debug)]
pub struct Docker {
    joiner: Joiner,
    errors: u64,
}

impl Docker {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            joiner: Joiner::new(max_bytes),
            errors: 0,
        }
    }
}

#[derive(Deserialize)]
struct DockerLine<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow, default)]
    stream: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
    /// Labels and environment variables chosen with `--log-opt labels=`/`env=`.
    #[serde(default)]
    attrs: Option<Fields>,
}

impl LineFormat for Docker {
    fn decode(&mut self, line: &[u8], start: u64, now: i64) -> Option<Decoded> {
        let Ok(parsed) = serde_json::from_slice::<DockerLine>(line) else {
            self.errors += 1;
            return Some(raw(line, start, now));
        };
        let time = parsed
            .time
            .as_deref()
            .and_then(rfc3339_nanos)
            .unwrap_or(now);
        let stream = parsed.stream.as_deref().unwrap_or("stdout");
        let (message, last) = match parsed.log.strip_suffix('\n') {
            Some(m) => (m.strip_suffix('\r').unwrap_or(m), true),
            None => (parsed.log.as_ref(), false),
        };
        let mut decoded = self.joiner.part(stream, time, message, start, last)?;
        if let Some(attrs) = parsed.attrs {
            for (k, v) in attrs {
                decoded.event.fields.entry(k).or_insert(v);
            }
        }
        Some(decoded)
    }

    fn pending_start(&self) -> Option<u64> {
        self.joiner.pending_start()
    }

    fn flush(&mut self) -> Vec<Decoded> {
        self.joiner.flush()
    }

    fn take_errors(&mut self) -> u64 {
        std::mem::take(&mut self.errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(f: &mut dyn LineFormat, lines: &[&str]) -> Vec<(String, String, u64, bool)> {
        let mut out = Vec::new();
        let mut pos = 0u64;
        for line in lines {
            if let Some(d) = f.decode(line.as_bytes(), pos, 7) {
                out.push((
                    d.event.message,
                    d.event.fields["stream"].as_str().unwrap_or("-").to_owned(),
                    d.start,
                    d.cut,
                ));
            }
            pos += line.len() as u64 + 1;
        }
        out
    }

    #[test]
    fn cri_full_lines_carry_the_runtime_time_and_stream() {
        let mut f = Cri::new(1 << 20);
        let d = f
            .decode(
                b"2024-05-01T10:00:00.123456789Z stderr F boom: it broke",
                0,
                7,
            )
            .unwrap();
        assert_eq!(d.event.message, "boom: it broke");
        assert_eq!(d.event.fields["stream"], "stderr");
        assert_eq!(d.event.timestamp, 1_714_557_600_123_456_789);
        let empty = f.decode(b"2024-05-01T10:00:00Z stdout F", 60, 7).unwrap();
        assert_eq!(empty.event.message, "");
        assert_eq!(f.take_errors(), 0);
    }

    #[test]
    fn cri_partial_lines_are_joined_per_stream() {
        let mut f = Cri::new(1 << 20);
        let lines = [
            "2024-05-01T10:00:00Z stdout P first ",
            "2024-05-01T10:00:00Z stderr F an error meanwhile",
            "2024-05-01T10:00:00Z stdout P second ",
            "2024-05-01T10:00:01Z stdout F third",
            "2024-05-01T10:00:01Z stdout F next",
        ];
        let out = feed(&mut f, &lines);
        assert_eq!(
            out,
            vec![
                ("an error meanwhile".into(), "stderr".into(), 37, false),
                ("first second third".into(), "stdout".into(), 0, false),
                ("next".into(), "stdout".into(), 160, false),
            ]
        );
        assert_eq!(f.pending_start(), None);
    }

    #[test]
    fn cri_holds_its_partial_position_cuts_and_flushes() {
        let mut f = Cri::new(8);
        assert!(
            f.decode(b"2024-05-01T10:00:00Z stdout P 12345", 100, 7)
                .is_none()
        );
        assert_eq!(f.pending_start(), Some(100));
        assert!(
            f.decode(b"2024-05-01T10:00:00Z stdout P 6789", 140, 7)
                .is_none()
        );
        let held = f.flush();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].event.message, "12345678", "cut at 8 bytes");
        assert!(held[0].cut);
        assert_eq!(held[0].start, 100);
        assert_eq!(f.pending_start(), None);
    }

    #[test]
    fn a_line_not_in_the_format_is_shipped_raw_and_counted() {
        let mut f = Cri::new(1 << 20);
        let d = f.decode(b"not a cri line", 0, 7).unwrap();
        assert_eq!(d.event.message, "not a cri line");
        assert_eq!(d.event.timestamp, 7);
        let mut g = Docker::new(1 << 20);
        assert_eq!(
            g.decode(b"{\"nolog\":1}", 0, 7).unwrap().event.message,
            "{\"nolog\":1}"
        );
        assert_eq!((f.take_errors(), g.take_errors()), (1, 1));
        assert_eq!(f.take_errors(), 0);
    }

    #[test]
    fn docker_json_lines_split_parts_and_attrs() {
        let mut f = Docker::new(1 << 20);
        let lines = [
            r#"{"log":"part one, ","stream":"stdout","time":"2024-05-01T10:00:00.5Z"}"#,
            r#"{"log":"err \"quoted\"\n","stream":"stderr","time":"2024-05-01T10:00:00.6Z"}"#,
            r#"{"log":"part two\n","stream":"stdout","time":"2024-05-01T10:00:00.7Z","attrs":{"app":"web"}}"#,
        ];
        let out = feed(&mut f, &lines);
        assert_eq!(
            out[0],
            ("err \"quoted\"".into(), "stderr".into(), 71, false)
        );
        assert_eq!(
            out[1],
            ("part one, part two".into(), "stdout".into(), 0, false)
        );
        let d = f
            .decode(
                br#"{"log":"x\r\n","stream":"stdout","time":"2024-05-01T10:00:00Z","attrs":{"app":"web"}}"#,
                300,
                7,
            )
            .unwrap();
        assert_eq!(d.event.message, "x");
        assert_eq!(d.event.fields["app"], "web");
        assert_eq!(d.event.timestamp, 1_714_557_600_000_000_000);
    }
}
