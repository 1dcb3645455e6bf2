//! W3C Trace Context (`traceparent`, `tracestate`): a valid context goes on untouched (the
//! ambassador reports no spans of its own, so it is not a new parent); a request without one,
//! or with one that does not parse, starts a new trace. B3 headers (`b3`, `x-b3-*`) are not
//! touched: they pass through as any other header.

use std::fmt;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// What to do with a request that carries no (valid) `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NewTraces {
    /// Start a trace with the sampled flag off: the ids tie the hops' logs together, and
    /// tracers downstream that follow the flag record nothing.
    #[default]
    Unsampled,
    /// Start a trace with the sampled flag on.
    Sampled,
    /// Leave the request without one.
    Off,
}

/// A trace id: 32 lowercase hex digits, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceId([u8; 32]);

impl TraceId {
    pub fn as_str(&self) -> &str {
        // Only ever built from lowercase hex digits.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Keeps the request's trace context or starts one, as `new` says; the trace id it goes on
/// with, if any.
pub fn propagate(headers: &mut HeaderMap, new: NewTraces) -> Option<TraceId> {
    if let Some(value) = headers.get(&TRACEPARENT) {
        if let Some(id) = parse(value.as_bytes()) {
            return Some(id);
        }
        // An unparsable parent: its tracestate cannot be trusted either (W3C 3.3.1).
        headers.remove(&TRACEPARENT);
        headers.remove(&TRACESTATE);
    }
    let sampled = match new {
        NewTraces::Off => return None,
        NewTraces::Unsampled => false,
        NewTraces::Sampled => true,
    };
    let (value, id) = generate(sampled);
    headers.insert(TRACEPARENT.clone(), value);
    // A tracestate without its traceparent describes nothing.
    headers.remove(&TRACESTATE);
    Some(id)
}

/// The trace id of a `traceparent` value, if it is valid: `version-traceid-parentid-flags`,
/// lowercase hex, ids not all zeros, version not `ff`. A future version may carry more fields
/// after the flags (W3C 3.2.4).
fn parse(value: &[u8]) -> Option<TraceId> {
    if value.len() < 55 || (value.len() > 55 && value[55] != b'-') {
        return None;
    }
    let hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let (version, trace, parent, flags) =
        (&value[0..2], &value[3..35], &value[36..52], &value[53..55]);
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    if !(hex(version) && hex(trace) && hex(parent) && hex(flags)) || version == b"ff" {
        return None;
    }
    if version == b"00" && value.len() != 55 {
        return None;
    }
    if trace.iter().all(|&c| c == b'0') || parent.iter().all(|&c| c == b'0') {
        return None;
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(trace);
    Some(TraceId(id))
}

fn generate(sampled: bool) -> (HeaderValue, TraceId) {
    // Random ids are never all zeros in practice; `| 1` makes it certain.
    let trace: u128 = rand::random::<u128>() | 1;
    let parent: u64 = rand::random::<u64>() | 1;
    let mut buf = [0u8; 55];
    buf[..3].copy_from_slice(b"00-");
    hex_into(&mut buf[3..35], &trace.to_be_bytes());
    buf[35] = b'-';
    hex_into(&mut buf[36..52], &parent.to_be_bytes());
    buf[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
    let mut id = [0u8; 32];
    id.copy_from_slice(&buf[3..35]);
    // Hex digits and dashes only: always a valid header value.
    let value = HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static(""));
    (value, TraceId(id))
}

/// Lowercase hex of `bytes` into `out` (twice as long).
pub fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_context_goes_on_untouched() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static(VALID));
        h.insert("tracestate", HeaderValue::from_static("congo=t61rcWkgMzE"));
        h.insert(
            "b3",
            HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        );
        let id = propagate(&mut h, NewTraces::Off).unwrap();
        assert_eq!(id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(h.get("traceparent").unwrap(), VALID);
        assert_eq!(h.get("tracestate").unwrap(), "congo=t61rcWkgMzE");
        assert!(h.contains_key("b3"));
    }

    #[test]
    fn a_missing_or_bad_context_starts_a_new_unsampled_trace() {
        for bad in [
            None,
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"),
            Some("garbage"),
        ] {
            let mut h = HeaderMap::new();
            if let Some(v) = bad {
                h.insert("traceparent", HeaderValue::from_static(v));
                h.insert("tracestate", HeaderValue::from_static("a=b"));
            }
            let id = propagate(&mut h, NewTraces::Unsampled).unwrap();
            let value = h.get("traceparent").unwrap().to_str().unwrap().to_owned();
            assert_eq!(parse(value.as_bytes()), Some(id), "{value}");
            assert!(
                value.starts_with("00-") && value.ends_with("-00"),
                "{value}"
            );
            assert!(!h.contains_key("tracestate"), "{bad:?}");
        }
        let mut h = HeaderMap::new();
        propagate(&mut h, NewTraces::Sampled).unwrap();
        assert!(
            h.get("traceparent")
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with("-01")
        );
        let mut h = HeaderMap::new();
        assert!(propagate(&mut h, NewTraces::Off).is_none());
        assert!(h.is_empty());
    }

    #[test]
    fn a_later_version_may_carry_more_fields() {
        let v = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert!(parse(v).is_some());
    }
}
