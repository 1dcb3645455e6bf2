//! Logging in with each method against a real OpenBao, keeping the token alive, and reading the
//! credential files again when they change.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::{AgentSetup, Bao, require_bao};
use test_support::certs::{Ca, SecretVolume};
use test_support::wait;

const CONFIG: &str = "secrets:\n  app: {kv: {mount: secret, path: app/config}}\nfiles:\n  - {path: key, secret: app, field: api_key}\n";

fn auth_count(agent: &common::Agent, method: &str, operation: &str) -> f64 {
    agent
        .metrics()
        .get(
            "secrets_agent_auth_total",
            &[
                ("method", method),
                ("operation", operation),
                ("result", "ok"),
            ],
        )
        .unwrap_or(0.0)
}

#[test]
fn approle_renews_its_token_and_logs_in_again_at_the_max_ttl() {
    let bin = require_bao();
    let bao = Bao::dev(&bin);
    bao.kv_put("app/config", &[("api_key", "k1")]);
    let dir = tempfile::tempdir().unwrap();
    // Renewed at 2/3 of 6s; the max TTL of 12s caps a renewal, and then it logs in again.
    let (role_id, secret_id) = bao.approle(dir.path(), "6s", "12s");
    let sink = dir.path().join("token");
    let agent = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config: CONFIG,
        args: vec![
            "--auth-method=approle".into(),
            format!("--role-id-file={}", role_id.display()),
            format!("--secret-id-file={}", secret_id.display()),
            format!("--token-sink-file={}", sink.display()),
            "--poll-interval=1s".into(),
        ],
    }
    .start();
    let first = std::fs::read_to_string(&sink).unwrap();
    assert_eq!(std::fs::metadata(&sink).unwrap().mode() & 0o777, 0o400);
    wait::Wait::new("a renewal, then a second login")
        .timeout(Duration::from_secs(30))
        .context(|| agent.process.log())
        .until(|| {
            auth_count(&agent, "approle", "renew") >= 1.0
                && auth_count(&agent, "approle", "login") >= 2.0
        });
    let second = std::fs::read_to_string(&sink).unwrap();
    assert_ne!(first, second, "the sink holds the new token");
    // The old token is past its max TTL soon; the agent keeps reading with the new one.
    bao.kv_put("app/config", &[("api_key", "k2")]);
    agent.wait_content("key", "k2", Duration::from_secs(10));
    assert_eq!(agent.readyz().0, 200);
}

#[test]
fn a_token_file_is_renewed_and_read_again_when_it_changes() {
    let bin = require_bao();
    let bao = Bao::dev(&bin);
    bao.allow_all_policy();
    bao.kv_put("app/config", &[("api_key", "k1")]);
    let token = |ttl: &str| {
        bao.json(
            &["token", "create"],
            &["-policy=all", &format!("-ttl={ttl}")],
        )["auth"]["client_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, token("6s")).unwrap();
    let sink = dir.path().join("sink");
    let agent = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config: CONFIG,
        args: vec![
            "--auth-method=token".into(),
            format!("--token-file={}", file.display()),
            format!("--token-sink-file={}", sink.display()),
            "--poll-interval=1s".into(),
        ],
    }
    .start();
    wait::Wait::new("the token renewed")
        .timeout(Duration::from_secs(30))
        .context(|| agent.process.log())
        .until(|| auth_count(&agent, "token", "renew") >= 2.0);

    // Someone puts a new token in the file (a rotated Secret): the agent switches to it, and
    // keeps working when the old one is revoked.
    let old = std::fs::read_to_string(&file).unwrap();
    let new = token("1h");
    let tmp = dir.path().join("token.tmp");
    std::fs::write(&tmp, &new).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    wait::Wait::new("the agent to use the new token")
        .timeout(Duration::from_secs(20))
        .context(|| agent.process.log())
        .until(|| std::fs::read_to_string(&sink).is_ok_and(|t| t == new));
    bao.run(&["token", "revoke", &old]);
    bao.kv_put("app/config", &[("api_key", "k2")]);
    agent.wait_content("key", "k2", Duration::from_secs(10));
}

#[test]
fn jwt_login_with_a_service_account_style_token() {
    let bin = require_bao();
    let bao = Bao::dev(&bin);
    bao.allow_all_policy();
    bao.kv_put("app/config", &[("api_key", "k1")]);
    let key = common::ed25519_key();
    bao.run(&["auth", "enable", "jwt"]);
    bao.run(&[
        "write",
        "auth/jwt/config",
        &format!("jwt_validation_pubkeys={}", key.public_key_pem()),
        "bound_issuer=https://kubernetes.default.svc.cluster.local",
    ]);
    bao.run(&[
        "write",
        "auth/jwt/role/shop",
        "role_type=jwt",
        "user_claim=sub",
        "bound_audiences=openbao",
        "bound_subject=system:serviceaccount:shop:app",
        "token_policies=all",
        "token_ttl=1h",
    ]);
    let claims = |aud: &str| {
        serde_json::json!({
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": "system:serviceaccount:shop:app",
            "aud": [aud],
            "iat": common::unix_now(),
            "nbf": common::unix_now() - 5,
            "exp": common::unix_now() + 600,
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let jwt_file = dir.path().join("sa-token");
    // First a token for another audience: refused, nothing published, not ready.
    std::fs::write(&jwt_file, common::jwt(&key, &claims("somebody-else"))).unwrap();
    let agent = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config: CONFIG,
        args: vec![
            "--auth-method=jwt".into(),
            "--auth-role=shop".into(),
            format!("--jwt-file={}", jwt_file.display()),
            "--backoff-max=2s".into(),
        ],
    }
    .spawn();
    agent
        .process
        .wait_log("cannot log in", Duration::from_secs(20));
    let (status, body) = agent.readyz();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("login (jwt)"), "{body}");
    assert!(agent.read("key").is_none());

    // The kubelet rotates the projected token: the new one is read and used.
    let tmp = dir.path().join("sa-token.tmp");
    std::fs::write(&tmp, common::jwt(&key, &claims("openbao"))).unwrap();
    std::fs::rename(&tmp, &jwt_file).unwrap();
    agent.wait_content("key", "k1", Duration::from_secs(20));
    wait::until(Duration::from_secs(10), "ready", || agent.readyz().0 == 200);
}

#[test]
fn tls_certificate_login_against_a_tls_server() {
    let bin = require_bao();
    let bao = Bao::configured(&bin);
    bao.allow_all_policy();
    bao.run(&["secrets", "enable", "-path=secret", "kv-v2"]);
    bao.kv_put("app/config", &[("api_key", "over-tls")]);
    let dir = tempfile::tempdir().unwrap();
    let clients = Ca::new("agent client CA");
    let client_ca = clients.write(&dir.path().join("client-ca.crt"));
    let client = clients
        .leaf()
        .common_name("secrets-agent")
        .dns("agent.test")
        .sign()
        .write(dir.path(), "client");
    bao.run(&["auth", "enable", "cert"]);
    bao.run(&[
        "write",
        "auth/cert/certs/agent",
        &format!("certificate=@{}", client_ca.display()),
        "token_policies=all",
        "token_ttl=1h",
    ]);
    let agent = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config: CONFIG,
        args: vec![
            "--auth-method=cert".into(),
            "--auth-role=agent".into(),
            format!("--client-cert={}", client.cert.display()),
            format!("--client-key={}", client.key.display()),
        ],
    }
    .start();
    assert_eq!(agent.read("key").as_deref(), Some("over-tls"));
    assert_eq!(auth_count(&agent, "cert", "login"), 1.0);
}

/// The metadata OpenBao keeps on `token` (`meta`), looked up with the root token.
fn token_meta(bao: &Bao, token: &str, key: &str) -> Option<String> {
    bao.json(&["token", "lookup"], &[token])["data"]["meta"][key]
        .as_str()
        .map(str::to_owned)
}

/// Puts `text` in `file` in one rename, as a rotated Secret arrives.
fn replace(file: &std::path::Path, text: &str) {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

#[test]
fn a_token_that_cannot_be_renewed_is_read_again_from_its_file_before_it_ends() {
    let bin = require_bao();
    let bao = Bao::dev(&bin);
    bao.allow_all_policy();
    bao.kv_put("app/config", &[("api_key", "k1")]);
    let token = |ttl: &str| {
        bao.json(
            &["token", "create"],
            &["-policy=all", "-renewable=false", &format!("-ttl={ttl}")],
        )["auth"]["client_token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, token("9s")).unwrap();
    let sink = dir.path().join("sink");
    let agent = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config: CONFIG,
        args: vec![
            "--auth-method=token".into(),
            format!("--token-file={}", file.display()),
            format!("--token-sink-file={}", sink.display()),
            "--poll-interval=1s".into(),
        ],
    }
    .start();
    // Not renewable: at 2/3 of its TTL the agent logs in again, which for a token file means
    // reading the file again, untouched so far.
    wait::Wait::new("the token file read again on schedule")
        .timeout(Duration::from_secs(20))
        .context(|| agent.process.log())
        .until(|| auth_count(&agent, "token", "login") >= 2.0);
    assert_eq!(
        auth_count(&agent, "token", "renew"),
        0.0,
        "a token that is not renewable is never renewed"
    );

    // Whoever issues the tokens puts a fresh one in the file; the old one ends in seconds and
    // the agent goes on with the new one.
    let old = std::fs::read_to_string(&file).unwrap();
    let new = token("1h");
    replace(&file, &new);
    wait::Wait::new("the agent to use the new token")
        .timeout(Duration::from_secs(20))
        .context(|| agent.process.log())
        .until(|| std::fs::read_to_string(&sink).is_ok_and(|t| t == new));
    wait::until(Duration::from_secs(20), "the old token to end", || {
        !bao.try_run(&["token", "lookup", &old]).status.success()
    });
    bao.kv_put("app/config", &[("api_key", "k2")]);
    agent.wait_content("key", "k2", Duration::from_secs(10));
    assert_eq!(agent.readyz().0, 200);
}

#[test]
fn a_rotated_approle_secret_id_is_read_again_and_logged_in_with() {
    let bin = require_bao();
    let bao = Bao::dev(&bin);
    bao.kv_put("app/config", &[("api_key", "k1")]);
    let dir = tempfile::tempdir().unwrap();
    let (role_id, secret_id) = bao.approle(dir.path(), "1h", "24h");
    let sink = dir.path().join("token");
    let agent = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config: CONFIG,
        args: vec![
            "--auth-method=approle".into(),
            format!("--role-id-file={}", role_id.display()),
            format!("--secret-id-file={}", secret_id.display()),
            format!("--token-sink-file={}", sink.display()),
            "--poll-interval=1s".into(),
        ],
    }
    .start();
    let first_token = std::fs::read_to_string(&sink).unwrap();
    assert_eq!(auth_count(&agent, "approle", "login"), 1.0);

    // Rotation: the old secret_id is destroyed, a new one is written to the file.
    let old = std::fs::read_to_string(&secret_id).unwrap();
    bao.run(&[
        "write",
        "auth/approle/role/agent/secret-id/destroy",
        &format!("secret_id={old}"),
    ]);
    let new =
        bao.json(&["write"], &["-f", "auth/approle/role/agent/secret-id"])["data"]["secret_id"]
            .as_str()
            .unwrap()
            .to_owned();
    replace(&secret_id, &new);
    wait::Wait::new("a login with the new secret_id")
        .timeout(Duration::from_secs(20))
        .context(|| agent.process.log())
        .until(|| auth_count(&agent, "approle", "login") >= 2.0);
    let second_token = std::fs::read_to_string(&sink).unwrap();
    assert_ne!(first_token, second_token);
    // The new token is the agent's: the old one can go.
    bao.run(&["token", "revoke", &first_token]);
    bao.kv_put("app/config", &[("api_key", "k2")]);
    agent.wait_content("key", "k2", Duration::from_secs(10));
    // The destroyed secret_id was never tried: no failed login.
    let log = agent.process.log();
    assert!(!log.contains("cannot log in"), "{log}");
}

#[test]
fn rotated_client_certificate_files_are_used_for_the_next_tls_login() {
    let bin = require_bao();
    let bao = Bao::configured(&bin);
    bao.allow_all_policy();
    bao.run(&["secrets", "enable", "-path=secret", "kv-v2"]);
    bao.kv_put("app/config", &[("api_key", "v1")]);
    let dir = tempfile::tempdir().unwrap();
    let clients = Ca::new("agent client CA");
    let client_ca = clients.write(&dir.path().join("client-ca.crt"));
    let leaf = |cn: &str| clients.leaf().common_name(cn).dns("agent.test").sign();
    // As the kubelet delivers a Secret: both files change in one swap of `..data`.
    let mut volume =
        SecretVolume::create(&dir.path().join("client"), &leaf("agent-1"), clients.pem());
    bao.run(&["auth", "enable", "cert"]);
    bao.run(&[
        "write",
        "auth/cert/certs/agent",
        &format!("certificate=@{}", client_ca.display()),
        "token_policies=all",
        "token_ttl=1h",
    ]);
    let sink = dir.path().join("token");
    let agent = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config: CONFIG,
        args: vec![
            "--auth-method=cert".into(),
            "--auth-role=agent".into(),
            format!("--client-cert={}", volume.cert().display()),
            format!("--client-key={}", volume.key().display()),
            format!("--token-sink-file={}", sink.display()),
            "--poll-interval=1s".into(),
        ],
    }
    .start();
    let first_token = std::fs::read_to_string(&sink).unwrap();
    assert_eq!(
        token_meta(&bao, &first_token, "common_name").as_deref(),
        Some("agent-1")
    );

    volume.update_leaf(&leaf("agent-2"), clients.pem());
    let second_token = wait::Wait::new("a login with the new certificate")
        .timeout(Duration::from_secs(20))
        .context(|| agent.process.log())
        .value(|| {
            std::fs::read_to_string(&sink)
                .ok()
                .filter(|t| *t != first_token)
        });
    assert_eq!(
        token_meta(&bao, &second_token, "common_name").as_deref(),
        Some("agent-2"),
        "the token comes from the new certificate"
    );
    bao.run(&["token", "revoke", &first_token]);
    bao.kv_put("app/config", &[("api_key", "v2")]);
    agent.wait_content("key", "v2", Duration::from_secs(10));
    assert_eq!(auth_count(&agent, "cert", "login"), 2.0);
}
