//! Multiline: lines that continue an event (a stack trace's frames) are joined to it. An event
//! ends at the next line that does not continue it, when no line came for the flush timeout,
//! or at the line or byte cap (what is past the byte cap is cut and the event marked).

use std::time::{Duration, Instant};

use regex::Regex;

use crate::event::Event;

/// How to tell a continuation line.
#[derive(Debug, Clone)]
pub enum Rule {
    /// A line matching this starts a new event; any other line continues the current one.
    Start(Regex),
    /// A line matching this continues the current event.
    Continue(Regex),
    /// Python tracebacks: indented lines, the traceback headers, and the exception line that
    /// ends a traceback.
    Python { cont: Regex, exception: Regex },
}

/// A named rule for common runtimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Java and JVM stack traces: `\tat ...`, `... 3 more`, `Caused by:`, `Suppressed:`.
    Java,
    /// Python tracebacks, chained ones included.
    Python,
    /// Go panics: `panic:`, goroutine dumps, `exit status`.
    Go,
}

impl Preset {
    /// The preset's rule. The patterns are constants and known to compile.
    pub fn rule(self) -> Rule {
        let re = |p: &str| Regex::new(p).unwrap_or_else(|e| panic!("preset pattern {p}: {e}"));
        match self {
            Self::Java => Rule::Continue(re(
                r"^(\s+at\s|\s+\.\.\.\s+\d+\s+(more|common frames omitted)|\s*Caused by:|\s*Suppressed:|\s+\S)",
            )),
            Self::Python => Rule::Python {
                cont: re(
                    r"^(\s+\S|Traceback \(most recent call last\):|During handling of the above exception|The above exception was the direct cause|\s*$)",
                ),
                exception: re(r"^[A-Za-z_][\w.]*(:\s.*|:)?$"),
            },
            Self::Go => Rule::Continue(re(
                r"^(\s|$|goroutine \d+ \[|created by |\[signal |exit status \d+|[\w./*()\[\]-]+\(.*\)$)",
            )),
        }
    }
}

/// The multiline settings of a pipeline.
#[derive(Debug, Clone)]
pub struct MultilineSpec {
    pub rule: Rule,
    pub timeout: Duration,
    pub max_lines: usize,
}

#[derive(Debug)]
struct Pending {
    event: Event,
    start: u64,
    lines: usize,
    updated: Instant,
    /// The last line joined was indented (Python: the exception line may follow).
    last_indented: bool,
    /// Python: the exception line came; the traceback is complete.
    closed: bool,
}

/// One stream's multiline state.
#[derive(Debug)]
pub struct Multiline {
    pending: Option<Pending>,
}

/// An event and the stream position just past its last line.
pub type Ready = (Event, u64);

impl Multiline {
    pub fn new() -> Self {
        Self { pending: None }
    }

    /// Takes one line (already an event); events that are complete go to `out`. Returns
    /// whether the line was cut (the byte cap).
    pub fn push(
        &mut self,
        spec: &MultilineSpec,
        event: Event,
        start: u64,
        max_bytes: usize,
        now: Instant,
        out: &mut Vec<Event>,
    ) -> bool {
        let continues = self
            .pending
            .as_ref()
            .is_some_and(|p| p.lines < spec.max_lines && continues(&spec.rule, p, &event.message));
        if !continues {
            if let Some(p) = self.pending.take() {
                out.push(p.event);
            }
            let last_indented = event.message.starts_with([' ', '\t']);
            self.pending = Some(Pending {
                event,
                start,
                lines: 1,
                updated: now,
                last_indented,
                closed: false,
            });
            return false;
        }
        let Some(p) = self.pending.as_mut() else {
            return false;
        };
        p.lines += 1;
        p.updated = now;
        let indented = event.message.starts_with([' ', '\t']);
        if let Rule::Python { exception, .. } = &spec.rule
            && !indented
            && p.last_indented
            && exception.is_match(&event.message)
        {
            p.closed = true;
        }
        p.last_indented = indented;
        let room = max_bytes.saturating_sub(p.event.message.len() + 1);
        let mut cut = false;
        if p.event.fields.contains_key("truncated") {
            // Already at the cap: the rest of the event is dropped, the mark is there.
            return false;
        }
        p.event.message.push('\n');
        if event.message.len() > room {
            let mut end = room;
            while !event.message.is_char_boundary(end) {
                end -= 1;
            }
            p.event.message.push_str(&event.message[..end]);
            p.event.fields.insert("truncated".into(), true.into());
            cut = true;
        } else {
            p.event.message.push_str(&event.message);
        }
        cut
    }

    /// The pending event, if any.
    pub fn flush(&mut self) -> Option<Event> {
        self.pending.take().map(|p| p.event)
    }

    /// The position of the pending event's first line: nothing from there on is shipped yet.
    pub fn pending_start(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.start)
    }

    /// When the pending event must be flushed.
    pub fn deadline(&self, spec: &MultilineSpec) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.updated + spec.timeout)
    }
}

impl Default for Multiline {
    fn default() -> Self {
        Self::new()
    }
}

fn continues(rule: &Rule, pending: &Pending, line: &str) -> bool {
    match rule {
        Rule::Start(start) => !start.is_match(line),
        Rule::Continue(cont) => cont.is_match(line),
        Rule::Python { cont, exception } => {
            if pending.closed {
                // After the exception line only a chained traceback's header continues.
                return line.starts_with("During handling of the above exception")
                    || line.starts_with("The above exception was the direct cause")
                    || line.trim().is_empty();
            }
            cont.is_match(line)
                || (pending.last_indented
                    && pending
                        .event
                        .message
                        .contains("Traceback (most recent call last):")
                    && exception.is_match(line))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(spec: &MultilineSpec, text: &str) -> Vec<String> {
        let mut m = Multiline::new();
        let mut out = Vec::new();
        let now = Instant::now();
        for (i, line) in text.lines().enumerate() {
            m.push(
                spec,
                Event::new(line.to_owned()),
                i as u64,
                1 << 20,
                now,
                &mut out,
            );
        }
        out.extend(m.flush());
        out.into_iter().map(|e| e.message).collect()
    }

    fn preset(p: Preset) -> MultilineSpec {
        MultilineSpec {
            rule: p.rule(),
            timeout: Duration::from_secs(1),
            max_lines: 500,
        }
    }

    #[test]
    fn java_stack_trace_with_causes() {
        let text = "2024-01-01 ERROR boom\njava.lang.IllegalStateException: bad\n\tat a.B.c(B.java:1)\n\tat a.B.d(B.java:2)\nCaused by: java.io.IOException: disk\n\tat x.Y.z(Y.java:3)\n\t... 2 more\n2024-01-01 INFO next";
        assert_eq!(
            run(&preset(Preset::Java), text),
            vec![
                "2024-01-01 ERROR boom",
                "java.lang.IllegalStateException: bad\n\tat a.B.c(B.java:1)\n\tat a.B.d(B.java:2)\nCaused by: java.io.IOException: disk\n\tat x.Y.z(Y.java:3)\n\t... 2 more",
                "2024-01-01 INFO next",
            ]
        );
    }

    #[test]
    fn python_traceback_ends_at_the_exception_line() {
        let text = "ERROR:root:failed\nTraceback (most recent call last):\n  File \"a.py\", line 3, in <module>\n    f()\nValueError: bad value\nINFO:root:next\nINFO:root:after";
        assert_eq!(
            run(&preset(Preset::Python), text),
            vec![
                "ERROR:root:failed\nTraceback (most recent call last):\n  File \"a.py\", line 3, in <module>\n    f()\nValueError: bad value",
                "INFO:root:next",
                "INFO:root:after",
            ]
        );
    }

    #[test]
    fn go_panic() {
        let text = "panic: runtime error: index out of range\n\ngoroutine 1 [running]:\nmain.main()\n\t/app/main.go:8 +0x1d\nexit status 2\nlevel=info msg=restarted";
        assert_eq!(
            run(&preset(Preset::Go), text),
            vec![
                "panic: runtime error: index out of range\n\ngoroutine 1 [running]:\nmain.main()\n\t/app/main.go:8 +0x1d\nexit status 2",
                "level=info msg=restarted",
            ]
        );
    }

    #[test]
    fn start_pattern_line_cap_and_byte_cap() {
        let spec = MultilineSpec {
            rule: Rule::Start(Regex::new(r"^\d{4}-").unwrap()),
            timeout: Duration::from_secs(1),
            max_lines: 3,
        };
        assert_eq!(
            run(&spec, "2024- a\nb\nc\nd\n2024- e"),
            vec!["2024- a\nb\nc", "d", "2024- e"]
        );
        let mut m = Multiline::new();
        let mut out = Vec::new();
        let now = Instant::now();
        m.push(&spec, Event::new("2024- head".into()), 0, 16, now, &mut out);
        assert!(m.push(
            &spec,
            Event::new("continuation that is long".into()),
            11,
            16,
            now,
            &mut out
        ));
        let e = m.flush().unwrap();
        assert_eq!(e.message, "2024- head\nconti", "16 bytes at most");
        assert_eq!(e.fields["truncated"], true);
        assert_eq!(m.pending_start(), None);
    }
}
