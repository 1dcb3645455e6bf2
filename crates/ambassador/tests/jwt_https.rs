//! JWT keys fetched over HTTPS, against the real ambassador binary: OpenBao in `-dev-tls` mode
//! (its own CA) is the issuer, found by OIDC discovery. With `jwks.ca` naming OpenBao's CA the
//! keys load and its tokens pass; with another CA the keys never load, so the route is not
//! ready and refuses with `no_keys`.
#![allow(clippy::unwrap_used)]

mod common;
mod jwt_support;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use test_support::certs::Ca;
use test_support::wait::Wait;

use jwt_support::setup::{Setup, block, start};
use jwt_support::{Issuer, bao_or_skip, kid_of};

const DEADLINE: Duration = Duration::from_secs(30);

/// An ambassador whose route `web` finds its keys at `issuer` by discovery, trusting `ca` for
/// the key server.
async fn start_with_ca(issuer: &Issuer, ca: &Path, ready: bool) -> Setup {
    let jwt = format!(
        "issuer: {iss}\naudiences: [web-api]\n\
         jwks: {{discovery: true, ca: '{ca}', refresh_interval: 1h, unknown_kid_interval: 1s}}\n",
        iss = issuer.issuer(),
        ca = ca.display(),
    );
    start(&block(&jwt), ready).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_over_https_trust_only_the_configured_ca() {
    let Some(bin) = bao_or_skip("keys_over_https_trust_only_the_configured_ca") else {
        return;
    };
    let issuer = Issuer::start_tls(&bin);
    assert!(issuer.issuer().starts_with("https://"));
    let token = issuer.token("web");
    assert!(!kid_of(&token).is_empty());

    // OpenBao's own CA: discovery and the JWKS are fetched over HTTPS, the route gets ready
    // and the issuer's token reaches the app as the user's id.
    let trusted = start_with_ca(&issuer, &issuer.ca(), true).await;
    assert!(trusted.metric("ambassador_jwt_jwks_refreshes_total", ("result", "ok")) >= 1.0);
    let reply = trusted.bearer("/", &token).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let headers: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(headers["x-user-id"], json!([issuer.entity_id]), "{headers}");
    assert!(headers.get("authorization").is_none(), "{headers}");
    drop(trusted);

    // Another CA: the same server's certificate does not chain to it, so the keys never load.
    let dir = tempfile::tempdir().unwrap();
    let other = Ca::new("not OpenBao's CA").write(&dir.path().join("other-ca.pem"));
    let untrusted = start_with_ca(&issuer, &other, false).await;
    Wait::new("a failed JWKS fetch over HTTPS")
        .timeout(DEADLINE)
        .until(|| {
            untrusted.metric("ambassador_jwt_jwks_refreshes_total", ("result", "error")) >= 1.0
        });
    assert_eq!(
        untrusted.metric("ambassador_jwt_jwks_refreshes_total", ("result", "ok")),
        0.0
    );
    let ready = test_support::http::get(untrusted.ambassador.admin, "/readyz").unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("jwt web (no JWKS yet"),
        "{}",
        ready.body
    );
    // The failure is the fetch from OpenBao over HTTPS, not the configuration.
    assert!(
        ready.body.contains(&format!(
            "{}/.well-known/openid-configuration",
            issuer.issuer()
        )),
        "{}",
        ready.body
    );
    let reply = untrusted.bearer("/", &token).await;
    assert_eq!(
        reply.status,
        503,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(
        String::from_utf8_lossy(&reply.body).contains("no_keys"),
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        untrusted.metric("ambassador_jwt_refusals_total", ("reason", "no_keys")),
        1.0
    );
}
