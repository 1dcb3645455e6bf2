//! git-sync's sync trigger: a secret (NUL) a credential header value (NUL) a body; the value is
//! tried as `X-Hub-Signature-256`, as `Authorization` and as `X-Sync-Token`.
use http::{HeaderMap, HeaderValue};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let (secret, value, body) = sidecars_fuzz::split3(data);
        let Ok(value) = HeaderValue::from_bytes(value) else {
            return;
        };
        for name in ["x-hub-signature-256", "authorization", "x-sync-token"] {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.clone());
            let _ = git_sync::trigger::authorize(secret, &headers, body);
        }
    });
}
