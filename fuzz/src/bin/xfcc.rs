//! The `X-Forwarded-Client-Cert` value the ambassador builds from a peer's DER certificate:
//! the certificate parsed, its names quoted; a value that is sent must be a valid header value.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Some(value) = ambassador::fuzzing::xfcc(data, Some("spiffe://td/ns/a/sa/b"))
            && let Ok(header) = http::HeaderValue::try_from(value.as_str())
        {
            assert!(!header.as_bytes().contains(&b'\n'));
        }
    });
}
