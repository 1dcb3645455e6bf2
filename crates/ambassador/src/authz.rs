//! Who may call: allow-lists of SPIFFE ID patterns and DNS names, checked against the peer's
//! certificate during the handshake.

use std::fmt;

use sidecar_kit::tls::{PeerAuthorizer, PeerIdentity};

/// A pattern that cannot be used; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("allow pattern `{pattern}`: {why}")]
pub struct PatternError {
    pattern: String,
    why: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one non-empty segment.
    One,
    /// `**` (last only): one or more segments.
    Rest,
}

/// A SPIFFE ID pattern: `spiffe://trust.domain/ns/*/sa/web`, `spiffe://trust.domain/ns/prod/**`.
/// The trust domain is a segment too, so `spiffe://*/ns/a/sa/b` is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffePattern {
    segments: Vec<Segment>,
    text: String,
}

impl SpiffePattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let err = |why| PatternError {
            pattern: text.to_owned(),
            why,
        };
        let rest = text
            .strip_prefix("spiffe://")
            .ok_or_else(|| err("a SPIFFE pattern starts with spiffe://"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = match *part {
                "" => return Err(err("empty path segment")),
                "*" => Segment::One,
                "**" if i + 1 == parts.len() => Segment::Rest,
                "**" => return Err(err("`**` may only be the last segment")),
                p if p.contains('*') => {
                    return Err(err("`*` must be a whole segment (`/*/`), not part of one"));
                }
                p => Segment::Literal(p.to_owned()),
            };
            segments.push(segment);
        }
        Ok(Self {
            segments,
            text: text.to_owned(),
        })
    }

    pub fn matches(&self, id: &str) -> bool {
        let Some(rest) = id.strip_prefix("spiffe://") else {
            return false;
        };
        let mut parts = rest.split('/');
        for segment in &self.segments {
            match segment {
                Segment::Rest => return parts.next().is_some_and(|p| !p.is_empty()),
                Segment::One => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(lit) => match parts.next() {
                    Some(p) if p == lit => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for SpiffePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A DNS name, or `*.suffix` for exactly one more label; compared without case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsPattern {
    /// Lowercase; for a wildcard, the suffix with its leading dot.
    name: String,
    wildcard: bool,
}

impl DnsPattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let lower = text.trim().to_ascii_lowercase();
        let err = |why| PatternError {
            pattern: text.to_owned(),
            why,
        };
        let (name, wildcard) = match lower.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 => {
                (suffix.to_owned(), true)
            }
            Some(_) => return Err(err("a DNS wildcard is `*.` followed by a name")),
            None => (lower, false),
        };
        if name.contains('*') || name.is_empty() || name.contains(char::is_whitespace) {
            return Err(err("not a DNS name"));
        }
        Ok(Self { name, wildcard })
    }

    pub fn matches(&self, dns: &str) -> bool {
        if self.wildcard {
            let n = dns.len();
            let s = self.name.len();
            // A peer's name may hold any UTF-8: the suffix is compared as bytes, never cut
            // inside a character.
            let (head, tail) = dns.as_bytes().split_at(n.saturating_sub(s));
            n > s && tail.eq_ignore_ascii_case(self.name.as_bytes()) && !head.contains(&b'.')
        } else {
            dns.eq_ignore_ascii_case(&self.name)
        }
    }
}

/// The peers allowed on one inbound listener.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    spiffe: Vec<SpiffePattern>,
    dns: Vec<DnsPattern>,
}

impl AllowList {
    pub fn new(spiffe: &[String], dns: &[String]) -> Result<Self, PatternError> {
        Ok(Self {
            spiffe: spiffe
                .iter()
                .map(|p| SpiffePattern::parse(p))
                .collect::<Result<_, _>>()?,
            dns: dns
                .iter()
                .map(|p| DnsPattern::parse(p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether a peer with these SANs may call.
    pub fn allows(&self, spiffe_ids: &[String], dns_names: &[String]) -> bool {
        spiffe_ids
            .iter()
            .any(|id| self.spiffe.iter().any(|p| p.matches(id)))
            || dns_names
                .iter()
                .any(|n| self.dns.iter().any(|p| p.matches(n)))
    }
}

/// The inbound TLS server asks it about each peer whose chain verified.
impl PeerAuthorizer for AllowList {
    fn allows(&self, peer: &PeerIdentity) -> bool {
        AllowList::allows(self, &peer.spiffe_ids, &peer.dns_names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> SpiffePattern {
        SpiffePattern::parse(s).unwrap()
    }

    #[test]
    fn star_is_one_segment_and_double_star_the_rest() {
        let one = p("spiffe://td/ns/*/sa/web");
        assert!(one.matches("spiffe://td/ns/prod/sa/web"));
        assert!(!one.matches("spiffe://td/ns/prod/x/sa/web"));
        assert!(!one.matches("spiffe://td/ns//sa/web"));
        assert!(!one.matches("spiffe://td/ns/prod/sa/web/extra"));
        assert!(!one.matches("spiffe://other/ns/prod/sa/web"));
        let rest = p("spiffe://td/ns/prod/**");
        assert!(rest.matches("spiffe://td/ns/prod/sa/web"));
        assert!(rest.matches("spiffe://td/ns/prod/x"));
        assert!(!rest.matches("spiffe://td/ns/prod"));
        assert!(!rest.matches("spiffe://td/ns/dev/sa/web"));
        let exact = p("spiffe://td/a");
        assert!(exact.matches("spiffe://td/a"));
        assert!(!exact.matches("spiffe://td/a/b"));
        assert!(p("spiffe://*/a").matches("spiffe://any.domain/a"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "td/a",
            "spiffe://td/**/a",
            "spiffe://td/a*",
            "spiffe://td//a",
        ] {
            assert!(SpiffePattern::parse(bad).is_err(), "{bad}");
        }
        assert!(DnsPattern::parse("a.*.b").is_err());
        assert!(DnsPattern::parse("*").is_err());
    }

    #[test]
    fn dns_wildcard_is_one_label() {
        let w = DnsPattern::parse("*.Prod.svc").unwrap();
        assert!(w.matches("web.prod.svc"));
        assert!(!w.matches("a.web.prod.svc"));
        assert!(!w.matches("prod.svc"));
        let exact = DnsPattern::parse("web.prod.svc").unwrap();
        assert!(exact.matches("WEB.prod.svc"));
        assert!(!exact.matches("web.prod.svc.evil"));
    }

    #[test]
    fn dns_wildcard_on_a_name_with_multibyte_characters() {
        // The suffix was sliced at a byte inside `é`: a panic (found writing the fuzz target).
        let w = DnsPattern::parse("*.a").unwrap();
        assert!(!w.matches("éa"));
        assert!(w.matches("é.a"));
        assert!(!w.matches("x.éa"));
    }

    #[test]
    fn allow_list_checks_both_kinds() {
        let list = AllowList::new(&["spiffe://td/a".into()], &["b.svc".into()]).unwrap();
        assert!(list.allows(&["spiffe://td/a".into()], &[]));
        assert!(list.allows(&[], &["b.svc".into()]));
        assert!(!list.allows(&["spiffe://td/b".into()], &["c.svc".into()]));
    }
}
