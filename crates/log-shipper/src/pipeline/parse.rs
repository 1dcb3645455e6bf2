//! Parsers: the line's text into fields. A line a parser cannot read is shipped as it is, and
//! counted.

use regex::Regex;
use serde_json::Value;

use crate::event::Event;

/// How a pipeline reads its lines.
#[derive(Debug, Clone)]
pub enum Parser {
    /// The line is the message.
    Raw,
    /// A JSON object per line: its keys become fields, `message_key` the message.
    Json { message_key: String },
    /// `key=value key2="quoted value"`: keys become fields, `message_key` the message.
    Logfmt { message_key: String },
    /// Named captures become fields; a capture named `message` is the message.
    Regex(Regex),
}

impl Parser {
    /// Parses `event.message` into its fields; false when the line did not fit.
    pub fn apply(&self, event: &mut Event) -> bool {
        match self {
            Self::Raw => true,
            Self::Json { message_key } => {
                let Ok(Value::Object(map)) = serde_json::from_str::<Value>(&event.message) else {
                    return false;
                };
                let mut message = None;
                for (k, v) in map {
                    match v {
                        Value::String(s) if k == *message_key && message.is_none() => {
                            message = Some(s);
                        }
                        v => {
                            event.fields.insert(k, v);
                        }
                    }
                }
                if let Some(m) = message {
                    event.message = m;
                }
                true
            }
            Self::Logfmt { message_key } => {
                let pairs = logfmt(&event.message);
                if pairs.is_empty() {
                    return false;
                }
                let mut message = None;
                for (k, v) in pairs {
                    if k == *message_key && message.is_none() {
                        message = v;
                    } else {
                        event
                            .fields
                            .insert(k, v.map_or(Value::Bool(true), Value::String));
                    }
                }
                if let Some(m) = message {
                    event.message = m;
                }
                true
            }
            Self::Regex(re) => {
                let Some(caps) = re.captures(&event.message) else {
                    return false;
                };
                let mut message = None;
                for name in re.capture_names().flatten() {
                    let Some(m) = caps.name(name) else { continue };
                    if name == "message" {
                        message = Some(m.as_str().to_owned());
                    } else {
                        event
                            .fields
                            .insert(name.to_owned(), Value::String(m.as_str().to_owned()));
                    }
                }
                if let Some(m) = message {
                    event.message = m;
                }
                true
            }
        }
    }
}

/// Splits a logfmt line into pairs; a bare key has no value. Text that is not logfmt (no `=`
/// anywhere) gives no pairs.
pub fn logfmt(line: &str) -> Vec<(String, Option<String>)> {
    let mut pairs = Vec::new();
    let mut chars = line.char_indices().peekable();
    let mut any_value = false;
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut end = start;
        while let Some(&(i, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            end = i + c.len_utf8();
            chars.next();
        }
        let key = line[start..end].to_owned();
        if chars.peek().map(|&(_, c)| c) != Some('=') {
            if !key.is_empty() {
                pairs.push((key, None));
            }
            continue;
        }
        chars.next();
        any_value = true;
        let mut value = String::new();
        if chars.peek().map(|&(_, c)| c) == Some('"') {
            chars.next();
            while let Some((_, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            value.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                other => other,
                            });
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        if !key.is_empty() {
            pairs.push((key, Some(value)));
        }
    }
    if any_value { pairs } else { Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(p: &Parser, line: &str) -> (bool, Event) {
        let mut e = Event::new(line.to_owned());
        let ok = p.apply(&mut e);
        (ok, e)
    }

    #[test]
    fn json_object_fields_and_message() {
        let p = Parser::Json {
            message_key: "msg".into(),
        };
        let (ok, e) = parse(
            &p,
            r#"{"msg":"hello","level":"info","n":3,"nested":{"a":[1]}}"#,
        );
        assert!(ok);
        assert_eq!(e.message, "hello");
        assert_eq!(e.fields["level"], "info");
        assert_eq!(e.fields["n"], 3);
        assert_eq!(e.fields["nested"]["a"][0], 1);
        let (ok, e) = parse(&p, "not json {");
        assert!(!ok);
        assert_eq!(e.message, "not json {");
        assert!(!parse(&p, "[1,2]").0, "an array is not an event");
    }

    #[test]
    fn logfmt_pairs_quotes_and_flags() {
        assert_eq!(
            logfmt(r#"level=warn msg="disk \"full\"" retry dur=1.5s empty="#),
            vec![
                ("level".into(), Some("warn".into())),
                ("msg".into(), Some("disk \"full\"".into())),
                ("retry".into(), None),
                ("dur".into(), Some("1.5s".into())),
                ("empty".into(), Some(String::new())),
            ]
        );
        assert!(logfmt("just words here").is_empty());
        let p = Parser::Logfmt {
            message_key: "msg".into(),
        };
        let (ok, e) = parse(&p, "level=error msg=failed code=7 fatal");
        assert!(ok);
        assert_eq!(e.message, "failed");
        assert_eq!(e.fields["code"], "7");
        assert_eq!(e.fields["fatal"], true);
    }

    #[test]
    fn regex_named_captures() {
        let p = Parser::Regex(
            Regex::new(r"^(?P<ip>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] (?P<message>.*)$").unwrap(),
        );
        let (ok, e) = parse(
            &p,
            r#"10.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200"#,
        );
        assert!(ok);
        assert_eq!(e.fields["ip"], "10.0.0.1");
        assert_eq!(e.fields["time"], "10/Oct/2000:13:55:36 -0700");
        assert_eq!(e.message, r#""GET / HTTP/1.0" 200"#);
        assert!(!parse(&p, "garbage").0);
    }
}
