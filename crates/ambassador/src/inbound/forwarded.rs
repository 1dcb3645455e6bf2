//! What an inbound route tells the app about the request: the peer's address and the scheme
//! (`X-Forwarded-For`/`X-Forwarded-Proto` or RFC 7239 `Forwarded`), replacing whatever the peer
//! sent in them, and an `X-Request-Id` for requests that come without one.
//!
//! The per-connection values are made once per connection; a request only clones them.

use std::net::SocketAddr;

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

use crate::config::ForwardedHeaders;
use crate::trace::hex_into;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The forwarding headers of one peer connection.
#[derive(Debug)]
pub struct ConnForwarded {
    x_forwarded_for: Option<HeaderValue>,
    forwarded: Option<HeaderValue>,
}

impl ConnForwarded {
    pub fn new(kind: ForwardedHeaders, peer: SocketAddr) -> Self {
        let ip = peer.ip();
        let x = matches!(kind, ForwardedHeaders::XForwarded | ForwardedHeaders::Both);
        let rfc = matches!(kind, ForwardedHeaders::Forwarded | ForwardedHeaders::Both);
        Self {
            x_forwarded_for: x
                .then(|| HeaderValue::from_str(&ip.to_string()).ok())
                .flatten(),
            forwarded: rfc
                .then(|| {
                    // RFC 7239 6: an IPv6 address is quoted and bracketed.
                    let node = if ip.is_ipv6() {
                        format!("\"[{ip}]\"")
                    } else {
                        ip.to_string()
                    };
                    HeaderValue::from_str(&format!("for={node};proto=https")).ok()
                })
                .flatten(),
        }
    }

    /// Replaces the peer's copies of the forwarding headers with ours.
    pub fn apply(&self, headers: &mut HeaderMap) {
        // Most requests carry none of these: look before removing.
        if headers.contains_key(&X_FORWARDED_FOR) {
            headers.remove(&X_FORWARDED_FOR);
        }
        if headers.contains_key(&X_FORWARDED_PROTO) {
            headers.remove(&X_FORWARDED_PROTO);
        }
        if headers.contains_key(&X_FORWARDED_HOST) {
            headers.remove(&X_FORWARDED_HOST);
        }
        if headers.contains_key(header::FORWARDED) {
            headers.remove(header::FORWARDED);
        }
        if let Some(value) = &self.x_forwarded_for {
            headers.insert(X_FORWARDED_FOR.clone(), value.clone());
            headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
        }
        if let Some(value) = &self.forwarded {
            headers.insert(header::FORWARDED, value.clone());
        }
    }
}

/// The request's `X-Request-Id`, added (a random UUID) when it has none.
pub fn ensure_request_id(headers: &mut HeaderMap) -> &HeaderValue {
    headers
        .entry(X_REQUEST_ID.clone())
        .or_insert_with(new_request_id)
}

/// A random (version 4) UUID.
fn new_request_id() -> HeaderValue {
    let mut bytes = rand::random::<u128>().to_be_bytes();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let mut hex = [0u8; 32];
    hex_into(&mut hex, &bytes);
    let mut out = [b'-'; 36];
    out[0..8].copy_from_slice(&hex[0..8]);
    out[9..13].copy_from_slice(&hex[8..12]);
    out[14..18].copy_from_slice(&hex[12..16]);
    out[19..23].copy_from_slice(&hex[16..20]);
    out[24..36].copy_from_slice(&hex[20..32]);
    // Hex digits and dashes only: always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofed_copies_are_replaced() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.append("x-forwarded-for", HeaderValue::from_static("7.7.7.7"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        let peer: SocketAddr = "10.1.2.3:5555".parse().unwrap();
        ConnForwarded::new(ForwardedHeaders::XForwarded, peer).apply(&mut h);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(!h.contains_key("forwarded") && !h.contains_key("x-forwarded-host"));

        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        ConnForwarded::new(ForwardedHeaders::Forwarded, v6).apply(&mut h);
        assert_eq!(h["forwarded"], "for=\"[2001:db8::1]\";proto=https");
        assert!(!h.contains_key("x-forwarded-for"));

        ConnForwarded::new(ForwardedHeaders::Off, peer).apply(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn a_request_id_is_added_only_when_missing() {
        let mut h = HeaderMap::new();
        let id = ensure_request_id(&mut h).to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(
            id,
            ensure_request_id(&mut HeaderMap::new()).to_str().unwrap()
        );
        assert_eq!(ensure_request_id(&mut h).to_str().unwrap(), id);
    }
}
