//! End-user JWT authentication on an inbound route, against the real ambassador binary: tokens
//! from a real issuer (OpenBao's identity OIDC provider: discovery, JWKS, ES256 and RS256,
//! rotation), and tokens no issuer would sign, from keys the test makes, for every way a token
//! must be refused. The app behind reports the headers it got.
#![allow(clippy::unwrap_used)]

mod common;
mod jwt_support;

use std::time::Duration;

use common::*;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use test_support::wait::Wait;

use jwt_support::setup::*;
use jwt_support::*;

const DEADLINE: Duration = Duration::from_secs(30);

/// The headers the app got, from its JSON answer.
fn seen(reply: &Reply) -> Value {
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    serde_json::from_slice(&reply.body).unwrap()
}

fn challenge(reply: &Reply) -> String {
    reply
        .headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Asserts `reply` is a refusal with `status` and `reason`, counted once more than `before`.
fn assert_refused(setup: &Setup, reply: &Reply, status: u16, reason: &str, before: f64) {
    assert_eq!(
        reply.status,
        status,
        "{reason}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(
        String::from_utf8_lossy(&reply.body).contains(reason),
        "{reason}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(setup.refusals(reason), before + 1.0, "{reason} counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_tokens_reach_the_app_as_user_headers() {
    let Some(bin) = bao_or_skip("openbao_tokens_reach_the_app_as_user_headers") else {
        return;
    };
    let mut issuer = Issuer::start(&bin);
    let setup = start(
        &block(&format!(
            "issuer: {iss}\n\
             audiences: [web-api]\n\
             jwks: {{discovery: true, refresh_interval: 1h, unknown_kid_interval: 1s}}\n\
             roles_claim: groups\n\
             claim_headers: {{email: X-User-Email}}\n\
             paths:\n\
             - {{prefix: /healthz, mode: off}}\n\
             - {{prefix: /opt, mode: optional}}\n\
             - prefix: /admin\n  rules: [{{claim: groups, contains: admin}}]\n\
             - prefix: /ops\n  rules: [{{claim: groups, contains: ops}}]\n",
            iss = issuer.issuer()
        )),
        true,
    )
    .await;

    // ES256 and RS256 tokens from the issuer: the app is told who the user is, not the token.
    for role in ["web", "web-rs"] {
        let token = issuer.token(role);
        let headers = seen(&setup.bearer("/admin/x", &token).await);
        assert_eq!(headers["x-user-id"], json!([issuer.entity_id]), "{role}");
        assert_eq!(headers["x-user-roles"], json!(["admin"]), "{role}");
        assert_eq!(headers["x-user-email"], json!(["alice@example.test"]));
        assert!(headers.get("authorization").is_none(), "{headers}");
    }
    let token = issuer.token("web");

    // A client's own copies of the user headers never reach the app, whatever the mode.
    let spoof = [
        ("x-user-id", "root"),
        ("x-user-roles", "admin"),
        ("x-user-email", "boss@example.test"),
    ];
    let headers = seen(&setup.get("/healthz", &spoof).await);
    for (name, _) in spoof {
        assert!(headers.get(name).is_none(), "{name} passed: {headers}");
    }
    let mut with_token = spoof.to_vec();
    let bearer = format!("Bearer {token}");
    with_token.push(("authorization", &bearer));
    let headers = seen(&setup.get("/", &with_token).await);
    assert_eq!(headers["x-user-id"], json!([issuer.entity_id]));
    assert_eq!(headers["x-user-roles"], json!(["admin"]));
    let headers = seen(&setup.get("/opt/a", &spoof).await);
    assert!(headers.get("x-user-id").is_none(), "{headers}");

    // Modes: required without a token is 401 with a bare challenge (RFC 6750 3.1); optional
    // passes without one but not with a bad one; a failed rule is 403.
    let reply = setup.get("/", &[]).await;
    assert_refused(&setup, &reply, 401, "missing", 0.0);
    assert_eq!(challenge(&reply), "Bearer");
    let reply = setup.bearer("/opt/a", "not-a-token").await;
    assert_refused(&setup, &reply, 401, "malformed", 0.0);
    assert!(challenge(&reply).contains("error=\"invalid_token\""));
    let reply = setup.bearer("/ops", &token).await;
    assert_refused(&setup, &reply, 403, "rule_failed", 0.0);
    assert!(challenge(&reply).contains("error=\"insufficient_scope\""));
    // A path the app could resolve to another prefix is not judged by prefix.
    let reply = setup.bearer("/healthz/../ops", &token).await;
    assert_refused(&setup, &reply, 400, "bad_request", 0.0);

    // Rotation: twice, so that the signing key is one the cached set has never seen. The
    // first request with it is refused and asks for a refresh; the refreshed set accepts it.
    issuer.rotate("es");
    issuer.rotate("es");
    let rotated = issuer.token("web");
    assert_ne!(kid_of(&rotated), kid_of(&token));
    let reply = setup.bearer("/", &rotated).await;
    assert_refused(&setup, &reply, 401, "unknown_key", 0.0);
    test_support::wait::until_async(DEADLINE, "the rotated key to be fetched", async || {
        setup.bearer("/", &rotated).await.status == 200
    })
    .await;
    assert_eq!(
        seen(&setup.bearer("/", &rotated).await)["x-user-id"],
        json!([issuer.entity_id])
    );

    // The issuer goes away: the last good keys are kept, readiness too.
    // A token naming a key nobody has asks for a refresh, which fails.
    let errors = setup.refreshes("error");
    issuer.kill();
    let stranger = TestKey::new("stranger").sign(&json!({
        "iss": issuer.issuer(), "aud": "web-api", "exp": unix_now() + 60}));
    test_support::wait::until_async(DEADLINE, "a failed JWKS refresh", async || {
        assert_eq!(setup.bearer("/", &stranger).await.status, 401);
        setup.refreshes("error") > errors
    })
    .await;
    assert_eq!(
        seen(&setup.bearer("/", &rotated).await)["x-user-id"],
        json!([issuer.entity_id])
    );
    let ready = test_support::http::get(setup.ambassador.admin, "/readyz");
    assert!(ready.is_ok_and(|r| r.status == 200));

    // The access log names the reason, never the token.
    let log = setup.ambassador.log_text();
    assert!(
        log.contains("refusal=\"rule_failed\"") || log.contains("refusal=rule_failed"),
        "{log}"
    );
    assert!(
        !log.contains(&token) && !log.contains(&rotated),
        "a token was logged"
    );
    drop(setup);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_broken_tokens_are_refused() {
    let Some(bin) = bao_or_skip("forged_and_broken_tokens_are_refused") else {
        return;
    };
    // The issuer's RSA key, for the HS256-with-the-public-key forgery.
    let issuer = Issuer::start(&bin);
    let rsa = issuer.token("web-rs");
    let rsa_kid = kid_of(&rsa);
    let rsa_jwk = issuer.jwks()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == json!(rsa_kid))
        .unwrap()
        .clone();
    drop(issuer);

    let k1 = TestKey::new("k1");
    let k2 = TestKey::new("k2");
    let dir = tempfile::tempdir().unwrap();
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks(&[&k1.jwk, &rsa_jwk])).unwrap();
    let setup = start(
        &block(&format!(
            "issuer: https://issuer.test\n\
             audiences: [web-api]\n\
             clock_skew: 5s\n\
             jwks: {{file: {f}, unknown_kid_interval: 1s}}\n\
             rules: [{{claim: groups, contains: admin}}]\n",
            f = jwks_file.display()
        )),
        true,
    )
    .await;

    let now = unix_now();
    let claims = |extra: Value| {
        let mut c = json!({"iss": "https://issuer.test", "aud": "web-api", "sub": "alice",
                           "groups": ["admin"], "iat": now, "exp": now + 600});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    // The good token passes: the refusals below are for what differs.
    let good = k1.sign(&claims(json!({})));
    assert_eq!(
        seen(&setup.bearer("/", &good).await)["x-user-id"],
        json!(["alice"])
    );

    let mut bad_signature = good.clone();
    let last = bad_signature.pop().unwrap();
    bad_signature.push(if last == 'A' { 'B' } else { 'A' });
    let forged_hs = jsonwebtoken::encode(
        &Header {
            kid: Some(rsa_kid.clone()),
            ..Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims(json!({})),
        &EncodingKey::from_secret(rsa_jwk.to_string().as_bytes()),
    )
    .unwrap();
    let none = raw_token(
        &json!({"alg": "none", "kid": "k1"}),
        &claims(json!({})),
        b"",
    );
    let big = k1.sign(&claims(json!({"pad": "x".repeat(64 * 1024)})));
    assert!(big.len() > 64 * 1024);
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "expired",
            k1.sign(&claims(json!({"iat": now - 7200, "exp": now - 3600}))),
            401,
        ),
        (
            "not_yet_valid",
            k1.sign(&claims(json!({"nbf": now + 3600}))),
            401,
        ),
        (
            "bad_issuer",
            k1.sign(&claims(json!({"iss": "https://evil.test"}))),
            401,
        ),
        (
            "bad_audience",
            k1.sign(&claims(json!({"aud": ["other"]}))),
            401,
        ),
        ("bad_algorithm", none, 401),
        ("bad_algorithm", forged_hs, 401),
        ("bad_signature", bad_signature, 401),
        ("too_large", big, 401),
        ("malformed", "%%%garbage%%%".to_owned(), 401),
        (
            "malformed",
            k1.sign(&claims(json!({"exp": "tomorrow"}))),
            401,
        ),
        (
            "rule_failed",
            k1.sign(&claims(json!({"groups": ["dev"]}))),
            403,
        ),
    ];
    for (reason, token, status) in &cases {
        let before = setup.refusals(reason);
        let reply = setup.bearer("/", token).await;
        assert_refused(&setup, &reply, *status, reason, before);
    }

    // A key the set lacks: refused, then the file gets the new key and the token passes.
    let from_k2 = k2.sign(&claims(json!({})));
    let reply = setup.bearer("/", &from_k2).await;
    assert_refused(&setup, &reply, 401, "unknown_key", 0.0);
    std::fs::write(&jwks_file, jwks(&[&k1.jwk, &k2.jwk])).unwrap();
    test_support::wait::until_async(DEADLINE, "the new JWKS file to be read", async || {
        setup.bearer("/", &from_k2).await.status == 200
    })
    .await;

    // A broken file keeps the last good set.
    let errors = setup.refreshes("error");
    std::fs::write(&jwks_file, "{ not json").unwrap();
    Wait::new("the broken file to be refused")
        .timeout(DEADLINE)
        .until(|| setup.refreshes("error") > errors);
    // A token not seen before, so that it is verified with the set, not found among the
    // verified ones.
    let fresh = k2.sign(&claims(json!({"jti": "fresh"})));
    assert_eq!(
        seen(&setup.bearer("/", &fresh).await)["x-user-id"],
        json!(["alice"])
    );

    let log = setup.ambassador.log_text();
    for (_, token, _) in &cases {
        if token.len() > 20 {
            assert!(!log.contains(token.as_str()), "a token was logged");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_never_had_keys_is_not_ready() {
    let k1 = TestKey::new("k1");
    let closed = free_port();
    let setup = start(
        &block(&format!(
            "issuer: https://issuer.test\njwks: {{url: 'http://127.0.0.1:{closed}/keys'}}\n"
        )),
        false,
    )
    .await;
    Wait::new("a failed JWKS fetch")
        .timeout(DEADLINE)
        .until(|| setup.refreshes("error") >= 1.0);
    let ready = test_support::http::get(setup.ambassador.admin, "/readyz").unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("jwt web (no JWKS yet"),
        "{}",
        ready.body
    );
    let token = k1.sign(&json!({"iss": "https://issuer.test", "exp": unix_now() + 60}));
    let reply = setup.bearer("/", &token).await;
    assert_refused(&setup, &reply, 503, "no_keys", 0.0);
}
