//! `POST /sync` on the admin server: a push webhook (or a person) asks for a sync now.
//!
//! With `--sync-secret-file`, a caller proves it knows the secret either by sending it
//! (`Authorization: Bearer <secret>` or `X-Sync-Token: <secret>`) or, like GitHub's push
//! webhooks, by signing the body: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`.
//! Without a secret file the route answers loopback callers only. The secret file is read on
//! every request, so rotation needs no restart. Requests coalesce: many POSTs during a sync
//! cause one more sync, not many.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Notify;

#[derive(Debug, Clone)]
struct TriggerState {
    sync_now: Arc<Notify>,
    secret_file: Option<PathBuf>,
    counter: prometheus::IntCounterVec,
}

/// The routes to add to the admin server.
pub fn routes(
    sync_now: Arc<Notify>,
    secret_file: Option<PathBuf>,
    counter: prometheus::IntCounterVec,
) -> Router {
    let open = secret_file.is_none();
    // GitHub push payloads go up to 25 MB and the signature covers all of it.
    let route = post(sync_handler).layer(axum::extract::DefaultBodyLimit::max(25 * 1024 * 1024));
    let route = if open {
        route.layer(axum::middleware::from_fn(sidecar_kit::admin::loopback_only))
    } else {
        route
    };
    Router::new()
        .route("/sync", route)
        .with_state(TriggerState {
            sync_now,
            secret_file,
            counter,
        })
}

async fn sync_handler(
    State(state): State<TriggerState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(file) = &state.secret_file {
        let secret = match tokio::fs::read(file).await {
            Ok(s) => trim_newline(s),
            Err(e) => {
                tracing::error!(file = %file.display(), error = %e, "cannot read the sync secret file; refusing POST /sync");
                state.counter.with_label_values(&["error"]).inc();
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot read the sync secret\n",
                )
                    .into_response();
            }
        };
        if let Err(why) = authorize(&secret, &headers, &body) {
            tracing::warn!(reason = why, "refused POST /sync");
            state.counter.with_label_values(&["refused"]).inc();
            return (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
        }
    }
    state.counter.with_label_values(&["accepted"]).inc();
    state.sync_now.notify_one();
    (StatusCode::ACCEPTED, "sync queued\n").into_response()
}

fn trim_newline(mut secret: Vec<u8>) -> Vec<u8> {
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    secret
}

/// Checks a request against the secret; the error says why (never the secret).
pub fn authorize(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    if secret.is_empty() {
        return Err("the sync secret file is empty");
    }
    if let Some(sig) = headers.get("x-hub-signature-256") {
        let hex_sig = sig
            .to_str()
            .ok()
            .and_then(|s| s.strip_prefix("sha256="))
            .ok_or("malformed X-Hub-Signature-256")?;
        let expected = hex::decode(hex_sig).map_err(|_| "malformed X-Hub-Signature-256")?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| "bad secret")?;
        mac.update(body);
        // verify_slice compares in constant time.
        return mac
            .verify_slice(&expected)
            .map_err(|_| "signature mismatch");
    }
    let token = headers
        .get("x-sync-token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .ok_or("no credentials (X-Hub-Signature-256, Authorization: Bearer or X-Sync-Token)")?;
    if constant_time_eq(token.as_bytes(), secret) {
        Ok(())
    } else {
        Err("wrong token")
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn github_style_signature() {
        // The example from GitHub's "Validating webhook deliveries" documentation.
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        authorize(secret, &headers(&[("x-hub-signature-256", good)]), body).unwrap();
        assert_eq!(
            authorize(
                secret,
                &headers(&[("x-hub-signature-256", good)]),
                b"Hello, World?"
            ),
            Err("signature mismatch")
        );
        assert!(
            authorize(
                secret,
                &headers(&[("x-hub-signature-256", "sha1=00")]),
                body
            )
            .is_err()
        );
    }

    #[test]
    fn shared_token() {
        authorize(b"tok", &headers(&[("authorization", "Bearer tok")]), b"").unwrap();
        authorize(b"tok", &headers(&[("x-sync-token", "tok")]), b"").unwrap();
        assert!(authorize(b"tok", &headers(&[("x-sync-token", "tok2")]), b"").is_err());
        assert!(authorize(b"tok", &headers(&[]), b"").is_err());
        assert!(authorize(b"", &headers(&[("x-sync-token", "")]), b"").is_err());
    }
}
