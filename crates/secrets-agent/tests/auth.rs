//! Logging in with each method against a real OpenBao, keeping the token alive, and reading the
//! credential files again when they change.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Agent, AgentSetup, Bao, KV_CONFIG, replace_file, require_bao};
use test_support::certs::{Ca, SecretVolume};
use test_support::wait;

/// Successful `operation`s (login, renew) with `method`.
fn auth_count(agent: &Agent, method: &str, operation: &str) -> f64 {
    agent.count(
        "secrets_agent_auth_total",
        &[
            ("method", method),
            ("operation", operation),
            ("result", "ok"),
        ],
    )
}

/// A dev server with the all-policy and `api_key=value` at `secret/app/config`.
fn dev_server(bin: &Path, value: &str) -> Bao {
    let bao = Bao::dev_with_api_key(bin, value);
    bao.allow_all_policy();
    bao
}

/// A configured server (TLS, storage on disk) with the all-policy, KV v2 at `secret/` and
/// `api_key=value` at `secret/app/config`.
fn tls_server(bin: &Path, value: &str) -> Bao {
    let bao = Bao::configured(bin);
    bao.allow_all_policy();
    bao.run(&["secrets", "enable", "-path=secret", "kv-v2"]);
    bao.kv_put("app/config", &[("api_key", value)]);
    bao
}

/// An agent on [`KV_CONFIG`] logging in with `auth` flags, polling every second.
fn start_agent(bao: &Bao, dir: &Path, auth: Vec<String>) -> Agent {
    let mut args = auth;
    args.push("--poll-interval=1s".into());
    AgentSetup {
        bao,
        dir,
        config: KV_CONFIG,
        args,
    }
    .start()
}

/// Token auth from `file`, the token in use written to `sink`.
fn token_file_auth(file: &Path, sink: &Path) -> Vec<String> {
    vec![
        "--auth-method=token".into(),
        format!("--token-file={}", file.display()),
        format!("--token-sink-file={}", sink.display()),
    ]
}

/// An agent logging in with AppRole `agent` (tokens of `ttl`, renewed up to `max_ttl`): the
/// agent, its secret_id file and its token sink.
fn start_approle_agent(
    bao: &Bao,
    dir: &Path,
    ttl: &str,
    max_ttl: &str,
) -> (Agent, PathBuf, PathBuf) {
    let (role_id, secret_id) = bao.approle(dir, ttl, max_ttl);
    let sink = dir.join("token");
    let auth = vec![
        "--auth-method=approle".into(),
        format!("--role-id-file={}", role_id.display()),
        format!("--secret-id-file={}", secret_id.display()),
        format!("--token-sink-file={}", sink.display()),
    ];
    (start_agent(bao, dir, auth), secret_id, sink)
}

/// Cert auth (role `agent`) with these files.
fn cert_auth(cert: &Path, key: &Path) -> Vec<String> {
    vec![
        "--auth-method=cert".into(),
        "--auth-role=agent".into(),
        format!("--client-cert={}", cert.display()),
        format!("--client-key={}", key.display()),
    ]
}

/// A CA for client certificates, written to `dir/client-ca.crt`, and cert auth trusting it.
fn client_ca(bao: &Bao, dir: &Path) -> Ca {
    let clients = Ca::new("agent client CA");
    bao.enable_cert_auth(&clients.write(&dir.join("client-ca.crt")));
    clients
}

/// Puts a new `api_key` in OpenBao and waits until the agent's file holds it: the agent reads
/// with a token that works.
#[track_caller]
fn assert_new_value_read(bao: &Bao, agent: &Agent, value: &str) {
    bao.kv_put("app/config", &[("api_key", value)]);
    agent.wait_content("key", value, Duration::from_secs(10));
}

/// Waits until the agent writes `want` to its token sink.
#[track_caller]
fn wait_sink_holds(agent: &Agent, sink: &Path, want: &str) {
    agent.wait_until(
        "the agent to use the new token",
        Duration::from_secs(20),
        || std::fs::read_to_string(sink).is_ok_and(|t| t == want),
    );
}

#[test]
fn approle_renews_its_token_and_logs_in_again_at_the_max_ttl() {
    let bin = require_bao();
    let bao = Bao::dev_with_api_key(&bin, "k1");
    let dir = tempfile::tempdir().unwrap();
    // Renewed at 2/3 of 6s; the max TTL of 12s caps a renewal, and then it logs in again.
    let (agent, _, sink) = start_approle_agent(&bao, dir.path(), "6s", "12s");
    let first = std::fs::read_to_string(&sink).unwrap();
    assert_eq!(std::fs::metadata(&sink).unwrap().mode() & 0o777, 0o400);
    agent.wait_until(
        "a renewal, then a second login",
        Duration::from_secs(30),
        || {
            auth_count(&agent, "approle", "renew") >= 1.0
                && auth_count(&agent, "approle", "login") >= 2.0
        },
    );
    let second = std::fs::read_to_string(&sink).unwrap();
    assert_ne!(first, second, "the sink holds the new token");
    // The old token is past its max TTL soon; the agent keeps reading with the new one.
    assert_new_value_read(&bao, &agent, "k2");
    assert_eq!(agent.readyz().0, 200);
}

#[test]
fn a_token_file_is_renewed_and_read_again_when_it_changes() {
    let bin = require_bao();
    let bao = dev_server(&bin, "k1");
    let token = |ttl: &str| bao.create_token(&["-policy=all", &format!("-ttl={ttl}")]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, token("6s")).unwrap();
    let sink = dir.path().join("sink");
    let agent = start_agent(&bao, dir.path(), token_file_auth(&file, &sink));
    agent.wait_until("the token renewed", Duration::from_secs(30), || {
        auth_count(&agent, "token", "renew") >= 2.0
    });

    // Someone puts a new token in the file (a rotated Secret): the agent switches to it, and
    // keeps working when the old one is revoked.
    let old = std::fs::read_to_string(&file).unwrap();
    let new = token("1h");
    replace_file(&file, &new);
    wait_sink_holds(&agent, &sink, &new);
    bao.run(&["token", "revoke", &old]);
    assert_new_value_read(&bao, &agent, "k2");
}

#[test]
fn jwt_login_with_a_service_account_style_token() {
    let bin = require_bao();
    let bao = dev_server(&bin, "k1");
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
        config: KV_CONFIG,
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
    replace_file(&jwt_file, &common::jwt(&key, &claims("openbao")));
    agent.wait_content("key", "k1", Duration::from_secs(20));
    wait::until(Duration::from_secs(10), "ready", || agent.readyz().0 == 200);
}

#[test]
fn tls_certificate_login_against_a_tls_server() {
    let bin = require_bao();
    let bao = tls_server(&bin, "over-tls");
    let dir = tempfile::tempdir().unwrap();
    let client = client_ca(&bao, dir.path())
        .leaf()
        .common_name("secrets-agent")
        .dns("agent.test")
        .sign()
        .write(dir.path(), "client");
    let agent = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config: KV_CONFIG,
        args: cert_auth(&client.cert, &client.key),
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

#[test]
fn a_token_that_cannot_be_renewed_is_read_again_from_its_file_before_it_ends() {
    let bin = require_bao();
    let bao = dev_server(&bin, "k1");
    let token =
        |ttl: &str| bao.create_token(&["-policy=all", "-renewable=false", &format!("-ttl={ttl}")]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, token("9s")).unwrap();
    let sink = dir.path().join("sink");
    let agent = start_agent(&bao, dir.path(), token_file_auth(&file, &sink));
    // Not renewable: at 2/3 of its TTL the agent logs in again, which for a token file means
    // reading the file again, untouched so far.
    agent.wait_until(
        "the token file read again on schedule",
        Duration::from_secs(20),
        || auth_count(&agent, "token", "login") >= 2.0,
    );
    assert_eq!(
        auth_count(&agent, "token", "renew"),
        0.0,
        "a token that is not renewable is never renewed"
    );

    // Whoever issues the tokens puts a fresh one in the file; the old one ends in seconds and
    // the agent goes on with the new one.
    let old = std::fs::read_to_string(&file).unwrap();
    let new = token("1h");
    replace_file(&file, &new);
    wait_sink_holds(&agent, &sink, &new);
    wait::until(Duration::from_secs(20), "the old token to end", || {
        !bao.try_run(&["token", "lookup", &old]).status.success()
    });
    assert_new_value_read(&bao, &agent, "k2");
    assert_eq!(agent.readyz().0, 200);
}

#[test]
fn a_rotated_approle_secret_id_is_read_again_and_logged_in_with() {
    let bin = require_bao();
    let bao = Bao::dev_with_api_key(&bin, "k1");
    let dir = tempfile::tempdir().unwrap();
    let (agent, secret_id, sink) = start_approle_agent(&bao, dir.path(), "1h", "24h");
    let first_token = std::fs::read_to_string(&sink).unwrap();
    assert_eq!(auth_count(&agent, "approle", "login"), 1.0);

    // Rotation: the old secret_id is destroyed, a new one is written to the file.
    let old = std::fs::read_to_string(&secret_id).unwrap();
    bao.run(&[
        "write",
        "auth/approle/role/agent/secret-id/destroy",
        &format!("secret_id={old}"),
    ]);
    replace_file(&secret_id, &bao.new_secret_id());
    agent.wait_until(
        "a login with the new secret_id",
        Duration::from_secs(20),
        || auth_count(&agent, "approle", "login") >= 2.0,
    );
    let second_token = std::fs::read_to_string(&sink).unwrap();
    assert_ne!(first_token, second_token);
    // The new token is the agent's: the old one can go.
    bao.run(&["token", "revoke", &first_token]);
    assert_new_value_read(&bao, &agent, "k2");
    // The destroyed secret_id was never tried: no failed login.
    let log = agent.process.log();
    assert!(!log.contains("cannot log in"), "{log}");
}

#[test]
fn rotated_client_certificate_files_are_used_for_the_next_tls_login() {
    let bin = require_bao();
    let bao = tls_server(&bin, "v1");
    let dir = tempfile::tempdir().unwrap();
    let clients = client_ca(&bao, dir.path());
    let leaf = |cn: &str| clients.leaf().common_name(cn).dns("agent.test").sign();
    // As the kubelet delivers a Secret: both files change in one swap of `..data`.
    let mut volume =
        SecretVolume::create(&dir.path().join("client"), &leaf("agent-1"), clients.pem());
    let sink = dir.path().join("token");
    let mut auth = cert_auth(&volume.cert(), &volume.key());
    auth.push(format!("--token-sink-file={}", sink.display()));
    let agent = start_agent(&bao, dir.path(), auth);
    let first_token = std::fs::read_to_string(&sink).unwrap();
    assert_eq!(
        token_meta(&bao, &first_token, "common_name").as_deref(),
        Some("agent-1")
    );

    volume.update_leaf(&leaf("agent-2"), clients.pem());
    let second_token = agent.wait_value(
        "a login with the new certificate",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&sink)
                .ok()
                .filter(|t| *t != first_token)
        },
    );
    assert_eq!(
        token_meta(&bao, &second_token, "common_name").as_deref(),
        Some("agent-2"),
        "the token comes from the new certificate"
    );
    bao.run(&["token", "revoke", &first_token]);
    assert_new_value_read(&bao, &agent, "v2");
    assert_eq!(auth_count(&agent, "cert", "login"), 2.0);
}
