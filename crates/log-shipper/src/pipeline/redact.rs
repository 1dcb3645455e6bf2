//! Redaction: patterns replaced in the message and in every string field, before an event goes
//! to any sink, disk buffer or dead-letter file.

use std::borrow::Cow;

use regex::{Captures, Regex};
use serde_json::Value;

use crate::event::{Event, Fields};

/// Named rules for common secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedactPreset {
    /// Payment card numbers (13 to 19 digits, spaces or dashes allowed, Luhn-checked).
    Card,
    /// `Bearer <token>` (HTTP Authorization values).
    Bearer,
    /// `password=...`, `secret: ...`, `token=...`, `api_key=...` and the like.
    Secrets,
}

#[derive(Debug, Clone)]
struct Rule {
    re: Regex,
    replacement: String,
    /// Only replace digit runs that pass the Luhn check.
    luhn: bool,
}

/// The redaction rules of a pipeline.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    rules: Vec<Rule>,
}

impl Redactor {
    /// Adds a pattern; `$name` / `$1` in the replacement refer to its captures.
    pub fn add_pattern(&mut self, re: Regex, replacement: String) {
        self.rules.push(Rule {
            re,
            replacement,
            luhn: false,
        });
    }

    /// Adds a preset. Its patterns are constants and known to compile.
    pub fn add_preset(&mut self, preset: RedactPreset) {
        let re = |p: &str| Regex::new(p).unwrap_or_else(|e| panic!("preset pattern {p}: {e}"));
        let (re, replacement, luhn) = match preset {
            RedactPreset::Card => (re(r"\b(?:\d[ -]?){12,18}\d\b"), "[REDACTED]", true),
            RedactPreset::Bearer => (
                re(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*"),
                "$1 [REDACTED]",
                false,
            ),
            RedactPreset::Secrets => (
                re(
                    r#"(?i)\b((?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|client[_-]?secret)"?\s*[=:]\s*)("[^"]*"|'[^']*'|[^\s,;&"']+)"#,
                ),
                "${1}[REDACTED]",
                false,
            ),
        };
        self.rules.push(Rule {
            re,
            replacement: replacement.to_owned(),
            luhn,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Redacts the message and every string field (nested ones too).
    pub fn apply(&self, event: &mut Event) {
        if self.rules.is_empty() {
            return;
        }
        if let Cow::Owned(s) = self.redact(&event.message) {
            event.message = s;
        }
        self.apply_fields(&mut event.fields);
    }

    /// Redacts every string field (nested ones too).
    pub fn apply_fields(&self, fields: &mut Fields) {
        for value in fields.values_mut() {
            self.redact_value(value);
        }
    }

    fn redact_value(&self, value: &mut Value) {
        match value {
            Value::String(s) => {
                if let Cow::Owned(r) = self.redact(s) {
                    *s = r;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_value(v)),
            Value::Object(map) => map.values_mut().for_each(|v| self.redact_value(v)),
            _ => {}
        }
    }

    fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for rule in &self.rules {
            let replaced = if rule.luhn {
                rule.re.replace_all(&out, |caps: &Captures<'_>| {
                    let m = &caps[0];
                    if luhn_valid(m) {
                        rule.replacement.clone()
                    } else {
                        m.to_owned()
                    }
                })
            } else {
                rule.re.replace_all(&out, rule.replacement.as_str())
            };
            if let Cow::Owned(s) = replaced {
                out = Cow::Owned(s);
            }
        }
        out
    }
}

fn luhn_valid(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_patterns_in_message_and_fields() {
        let mut r = Redactor::default();
        r.add_preset(RedactPreset::Card);
        r.add_preset(RedactPreset::Bearer);
        r.add_preset(RedactPreset::Secrets);
        r.add_pattern(Regex::new(r"user=(\w+)").unwrap(), "user=<$1>".into());
        let mut e = Event::new(
            "paid with 4111 1111 1111 1111 order 1234567890123 Authorization: Bearer abc.def-ghi password=hunter2 user=bob".into(),
        );
        e.fields.insert(
            "nested".into(),
            serde_json::json!({"auth": ["token: s3cr3t"], "n": 4111111111111111u64}),
        );
        r.apply(&mut e);
        assert_eq!(
            e.message,
            "paid with [REDACTED] order 1234567890123 Authorization: Bearer [REDACTED] password=[REDACTED] user=<bob>"
        );
        assert_eq!(e.fields["nested"]["auth"][0], "token: [REDACTED]");
        assert_eq!(
            e.fields["nested"]["n"], 4111111111111111u64,
            "numbers are not strings"
        );
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid("4111-1111-1111-1111"));
        assert!(!luhn_valid("4111-1111-1111-1112"));
        assert!(!luhn_valid("1234"));
    }
}
