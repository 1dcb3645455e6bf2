//! OpenBao failing under the agent (a configured server: TLS, storage on disk): sealed,
//! stopped, restarted. The last good files stay; the agent recovers by itself; readiness fails
//! only when a certificate in the files would expire before a renewal can succeed.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::{AgentSetup, Bao, require_bao, root_token_args};
use test_support::wait::{self, Wait};

fn fetch_failures(agent: &common::Agent, result: &str) -> f64 {
    agent
        .metrics()
        .get(
            "secrets_agent_fetches_total",
            &[("secret", "app"), ("kind", "kv"), ("result", result)],
        )
        .unwrap_or(0.0)
}

#[test]
fn sealed_stopped_and_restarted_openbao_keep_the_last_good_files() {
    let bin = require_bao();
    let mut bao = Bao::configured(&bin);
    bao.run(&["secrets", "enable", "-path=secret", "kv-v2"]);
    bao.kv_put("app/config", &[("api_key", "v1")]);
    let dir = tempfile::tempdir().unwrap();
    let mut args = root_token_args(&bao, dir.path());
    args.extend(["--poll-interval=1s".into(), "--backoff-max=2s".into()]);
    let config = "secrets:\n  app: {kv: {mount: secret, path: app/config}}\nfiles:\n  - {path: key, secret: app, field: api_key}\n";
    let agent = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config,
        args,
    }
    .start();
    let data = || std::fs::read_link(agent.out.join("..data")).unwrap();
    let published = data();

    // Sealed: every read fails with 503; the file and the set stay, and so does readiness (a
    // KV secret does not expire).
    bao.seal();
    Wait::new("a read refused as sealed")
        .timeout(Duration::from_secs(15))
        .context(|| agent.process.log())
        .until(|| fetch_failures(&agent, "sealed") >= 2.0);
    assert_eq!(agent.read("key").as_deref(), Some("v1"));
    assert_eq!(data(), published);
    assert_eq!(agent.readyz().0, 200, "{}", agent.readyz().1);

    bao.unseal();
    // Raft elects its leader after the unseal; writes wait for it.
    Wait::new("the server active again")
        .timeout(Duration::from_secs(30))
        .until(|| {
            bao.try_run(&["kv", "put", "secret/app/config", "api_key=v2"])
                .status
                .success()
        });
    agent.wait_content("key", "v2", Duration::from_secs(15));

    // Stopped: unreachable.
    bao.kill();
    Wait::new("a read failing as unreachable")
        .timeout(Duration::from_secs(15))
        .context(|| agent.process.log())
        .until(|| fetch_failures(&agent, "unreachable") >= 2.0);
    assert_eq!(agent.read("key").as_deref(), Some("v2"));
    assert_eq!(agent.readyz().0, 200);
    let log = agent.process.log();
    assert!(log.contains("the files keep the last good data"), "{log}");

    // Back, on the same storage: the agent picks up where it was.
    bao.restart();
    Wait::new("the restarted server active")
        .timeout(Duration::from_secs(30))
        .until(|| {
            bao.try_run(&["kv", "put", "secret/app/config", "api_key=v3"])
                .status
                .success()
        });
    agent.wait_content("key", "v3", Duration::from_secs(20));
    wait::until(Duration::from_secs(10), "no failures counted", || {
        agent
            .metrics()
            .get("secrets_agent_consecutive_failures", &[])
            == Some(0.0)
    });
}

#[test]
fn readiness_fails_only_when_a_certificate_would_expire_before_renewal() {
    let bin = require_bao();
    let bao = Bao::configured(&bin);
    bao.enable_pki();
    bao.run(&[
        "write",
        "pki/roles/short",
        "allow_any_name=true",
        "key_type=ec",
        "key_bits=256",
        "not_before_duration=1s",
        "max_ttl=1h",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let mut args = root_token_args(&bao, dir.path());
    args.push("--backoff-max=30s".into());
    args.push("--jitter=0".into());
    let config = "secrets:\n  id: {pki: {role: short, common_name: app.test, ttl: 15s}}\nfiles:\n  - {path: tls.crt, secret: id, field: certificate}\n  - {path: tls.key, secret: id, field: private_key}\n";
    let agent = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config,
        args,
    }
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
    let (_, body) = Wait::new("readiness to fail")
        .timeout(Duration::from_secs(25))
        .context(|| agent.process.log())
        .value(|| {
            let (status, body) = agent.readyz();
            (status == 503).then_some((status, body))
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
    Wait::new("a new certificate and readiness")
        .timeout(Duration::from_secs(60))
        .context(|| agent.process.log())
        .until(|| agent.read("tls.crt").is_some_and(|c| c != cert) && agent.readyz().0 == 200);
}

#[test]
fn rate_limited_by_openbao_429_keeps_the_last_good_files_and_recovers() {
    let bin = require_bao();
    let bao = Bao::dev(&bin);
    bao.kv_put("app/config", &[("api_key", "v1")]);
    let dir = tempfile::tempdir().unwrap();
    let mut args = root_token_args(&bao, dir.path());
    args.extend(["--poll-interval=1s".into(), "--backoff-max=2s".into()]);
    let config = "secrets:\n  app: {kv: {mount: secret, path: app/config}}\nfiles:\n  - {path: key, secret: app, field: api_key}\n";
    let agent = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config,
        args,
    }
    .start();
    let data = || std::fs::read_link(agent.out.join("..data")).unwrap();
    let published = data();

    // OpenBao's rate-limit quota on the KV mount: one request an hour, then 429 for every read.
    // Scoped to `secret/`, so the test can still remove it.
    bao.run(&[
        "write",
        "sys/quotas/rate-limit/agent",
        "path=secret/",
        "rate=1",
        "interval=1h",
    ]);
    Wait::new("reads refused with 429, counted as server errors")
        .timeout(Duration::from_secs(20))
        .context(|| agent.process.log())
        .until(|| fetch_failures(&agent, "server_error") >= 2.0);
    let log = agent.process.log();
    assert!(log.contains("429"), "{log}");
    assert!(log.contains("the files keep the last good data"), "{log}");
    assert_eq!(agent.read("key").as_deref(), Some("v1"));
    assert_eq!(data(), published);
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
    wait::until(Duration::from_secs(10), "no failures counted", || {
        agent
            .metrics()
            .get("secrets_agent_consecutive_failures", &[])
            == Some(0.0)
    });
}
