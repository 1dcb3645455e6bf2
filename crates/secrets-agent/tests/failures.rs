//! OpenBao failing under the agent (a configured server: TLS, storage on disk): sealed,
//! stopped, restarted. The last good files stay; the agent recovers by itself; readiness fails
//! only when a certificate in the files would expire before a renewal can succeed.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{Agent, AgentSetup, Bao, KV_CONFIG, require_bao};
use test_support::wait::{self, Wait};

fn fetch_failures(agent: &Agent, result: &str) -> f64 {
    agent.count(
        "secrets_agent_fetches_total",
        &[("secret", "app"), ("kind", "kv"), ("result", result)],
    )
}

/// The agent on [`KV_CONFIG`], polling every second and retrying within 2s.
fn start_kv_agent(bao: &Bao, dir: &std::path::Path) -> Agent {
    AgentSetup::with_root_token(
        bao,
        dir,
        KV_CONFIG,
        &["--poll-interval=1s", "--backoff-max=2s"],
    )
    .start()
}

/// Waits until `secret/app/config` takes `api_key=value`: the server is active again.
#[track_caller]
fn wait_kv_put(bao: &Bao, what: &str, value: &str) {
    let pair = format!("api_key={value}");
    Wait::new(what).timeout(Duration::from_secs(30)).until(|| {
        bao.try_run(&["kv", "put", "secret/app/config", &pair])
            .status
            .success()
    });
}

/// Waits until the agent counts no consecutive failures.
#[track_caller]
fn wait_no_failures(agent: &Agent) {
    wait::until(Duration::from_secs(10), "no failures counted", || {
        agent
            .metrics()
            .get("secrets_agent_consecutive_failures", &[])
            == Some(0.0)
    });
}

#[test]
fn sealed_stopped_and_restarted_openbao_keep_the_last_good_files() {
    let bin = require_bao();
    let mut bao = Bao::configured(&bin);
    bao.run(&["secrets", "enable", "-path=secret", "kv-v2"]);
    bao.kv_put("app/config", &[("api_key", "v1")]);
    let dir = tempfile::tempdir().unwrap();
    let agent = start_kv_agent(&bao, dir.path());
    let published = agent.published_set();

    // Sealed: every read fails with 503; the file and the set stay, and so does readiness (a
    // KV secret does not expire).
    bao.seal();
    agent.wait_until("a read refused as sealed", Duration::from_secs(15), || {
        fetch_failures(&agent, "sealed") >= 2.0
    });
    assert_eq!(agent.read("key").as_deref(), Some("v1"));
    assert_eq!(agent.published_set(), published);
    assert_eq!(agent.readyz().0, 200, "{}", agent.readyz().1);

    bao.unseal();
    // Raft elects its leader after the unseal; writes wait for it.
    wait_kv_put(&bao, "the server active again", "v2");
    agent.wait_content("key", "v2", Duration::from_secs(15));

    // Stopped: unreachable.
    bao.kill();
    agent.wait_until(
        "a read failing as unreachable",
        Duration::from_secs(15),
        || fetch_failures(&agent, "unreachable") >= 2.0,
    );
    assert_eq!(agent.read("key").as_deref(), Some("v2"));
    assert_eq!(agent.readyz().0, 200);
    let log = agent.process.log();
    assert!(log.contains("the files keep the last good data"), "{log}");

    // Back, on the same storage: the agent picks up where it was.
    bao.restart();
    wait_kv_put(&bao, "the restarted server active", "v3");
    agent.wait_content("key", "v3", Duration::from_secs(20));
    wait_no_failures(&agent);
}

#[test]
fn readiness_fails_only_when_a_certificate_would_expire_before_renewal() {
    let bin = require_bao();
    let bao = Bao::configured(&bin);
    bao.enable_pki();
    bao.short_lived_pki_role("pki/roles/short");
    let dir = tempfile::tempdir().unwrap();
    let config = "secrets:\n  id: {pki: {role: short, common_name: app.test, ttl: 15s}}\nfiles:\n  - {path: tls.crt, secret: id, field: certificate}\n  - {path: tls.key, secret: id, field: private_key}\n";
    let agent = AgentSetup::with_root_token(
        &bao,
        dir.path(),
        config,
        &["--backoff-max=30s", "--jitter=0"],
    )
    .start();
    let cert = agent.read("tls.crt").unwrap();
    let issued = std::time::Instant::now();
    bao.seal();

    // Sealed, the certificate still has most of its life: ready.
    wait::holds_for(
        Duration::from_secs(3),
        "ready while the certificate is young",
        || agent.readyz().0 == 200,
    );
    // Renewal is due at 2/3 (about 10s) and fails; retries back off (1s, 2s, 4s...) until the
    // next one would come after the end (16s): not ready then, with the reason, and before the
    // certificate actually expires.
    let body = agent.wait_value("readiness to fail", Duration::from_secs(25), || {
        let (status, body) = agent.readyz();
        (status == 503).then_some(body)
    });
    let at = issued.elapsed();
    assert!(body.contains("secret `id` expires in"), "{body}");
    assert!(
        at > Duration::from_secs(9) && at < Duration::from_secs(17),
        "not ready after {at:?}"
    );
    // The files are still the last good ones.
    assert_eq!(agent.read("tls.crt").unwrap(), cert);

    // Unsealed: a new certificate, ready again.
    bao.unseal();
    agent.wait_until(
        "a new certificate and readiness",
        Duration::from_secs(60),
        || agent.read("tls.crt").is_some_and(|c| c != cert) && agent.readyz().0 == 200,
    );
}

#[test]
fn rate_limited_by_openbao_429_keeps_the_last_good_files_and_recovers() {
    let bin = require_bao();
    let bao = Bao::dev_with_api_key(&bin, "v1");
    let dir = tempfile::tempdir().unwrap();
    let agent = start_kv_agent(&bao, dir.path());
    let published = agent.published_set();

    // OpenBao's rate-limit quota on the KV mount: one request an hour, then 429 for every read.
    // Scoped to `secret/`, so the test can still remove it.
    bao.run(&[
        "write",
        "sys/quotas/rate-limit/agent",
        "path=secret/",
        "rate=1",
        "interval=1h",
    ]);
    agent.wait_until(
        "reads refused with 429, counted as server errors",
        Duration::from_secs(20),
        || fetch_failures(&agent, "server_error") >= 2.0,
    );
    let log = agent.process.log();
    assert!(log.contains("429"), "{log}");
    assert!(log.contains("the files keep the last good data"), "{log}");
    assert_eq!(agent.read("key").as_deref(), Some("v1"));
    assert_eq!(agent.published_set(), published);
    assert!(
        agent
            .metrics()
            .get("secrets_agent_consecutive_failures", &[])
            .is_some_and(|n| n >= 1.0),
        "{}",
        agent.metrics()
    );
    // Retried, not given up on: a KV secret does not expire, so the pod stays ready.
    assert_eq!(agent.readyz().0, 200, "{}", agent.readyz().1);

    bao.run(&["delete", "sys/quotas/rate-limit/agent"]);
    bao.kv_put("app/config", &[("api_key", "v2")]);
    agent.wait_content("key", "v2", Duration::from_secs(20));
    wait_no_failures(&agent);
}
