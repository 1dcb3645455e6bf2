#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The mesh's certificates come from OpenBao through secrets-agent, and rotate under load.
//!
//! A real `bao server -dev` issues both pods' SPIFFE certificates from its PKI engine: one
//! role and one AppRole per pod, each pod's token allowed to issue its own identity only, a
//! short TTL. A secrets-agent per pod publishes the certificate, key and CA in the `..data`
//! layout; each pod's ambassador reads them and reloads them when they change. Both pods call
//! each other through two outbound routes: HTTP (upstream connections pooled, as an app's calls
//! use them) and TCP (a new mTLS handshake for every connection, so the certificates in use are
//! presented and checked all the time). The load runs until each ambassador has loaded three
//! new certificates and presented the last of them to its peer, well past the expiry of the
//! first ones.

mod load;
mod openbao;
mod pod;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use load::Load;
use openbao::{OpenBao, require_bao};
use pod::{History, Pod};
use test_support::wait::Wait;

/// The certificates' TTL. OpenBao backdates each one by the role's `not_before_duration`
/// (5 s here), so a certificate lives 45 s and is renewed at 2/3 of that: every 25 s or so.
const TTL: &str = "40s";
const BACKDATE: &str = "5s";
const ROTATIONS: usize = 3;
const TRUST_DOMAIN: &str = "spiffe://mesh.test/ns/e2e/sa";
const ROOT_TOKEN: &str = "root";
const START: Duration = Duration::from_secs(30);
/// Load: this many clients, each pausing this long between its requests.
const CLIENTS: usize = 4;
const PAUSE: Duration = Duration::from_millis(10);

#[test]
fn mesh_certificates_from_openbao_rotate_three_times_under_load_without_a_failed_request() {
    let bao_bin = require_bao();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let bao = OpenBao::start(&bao_bin);
    bao.set_up_pki();

    let mut pods: Vec<Pod> = PODS.iter().map(|name| Pod::new(name)).collect();
    for pod in &mut pods {
        pod.start_agent(&bao, dir.path());
    }
    for pod in &mut pods {
        pod.start_app();
    }
    let peers = [pods[1].inbound, pods[0].inbound];
    for (pod, peer_inbound) in pods.iter_mut().zip(peers) {
        pod.start_ambassador(dir.path(), peer_inbound);
    }
    let setup = started.elapsed();

    let load = Load::start(&pods);
    let deadline = {
        // Three renewals at 2/3 of 45 s, the last certificate's whole life, and slack for a
        // loaded machine.
        Instant::now() + Duration::from_secs(3 * 30 + 45 + 60)
    };
    let mut history: Vec<History> = pods.iter().map(|_| History::default()).collect();
    let done = Wait::new(format_args!(
        "each ambassador to load {ROTATIONS} new certificates from its secrets-agent and present the last one to its peer"
    ))
    .timeout(deadline.saturating_duration_since(Instant::now()))
    .every(Duration::from_millis(200))
    .context(|| {
        let logs: Vec<String> = pods.iter().map(Pod::logs).collect();
        format!("{}\n{}", load.summary(), logs.join("\n"))
    })
    .elapsed(|| {
        for (pod, h) in pods.iter().zip(history.iter_mut()) {
            h.sample(pod);
        }
        pods.iter().zip(&history).all(|(pod, h)| {
            h.ambassador.len() > ROTATIONS
                && h.issued.get(ROTATIONS).is_some_and(|last| {
                    load.hashes_presented_by(pod.name)
                        .contains(&last.sha256_hex)
                })
        })
    });
    let stats = load.stop();
    let elapsed = started.elapsed();
    assert!(done.is_some(), "timed out: {}", stats.summary());

    // Not one request failed, through any route, in either direction.
    assert!(
        stats.failures.is_empty(),
        "{} failed requests, the first ones:\n{}\n{}",
        stats.failures.len(),
        stats
            .failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        stats.summary()
    );

    for (pod, h) in pods.iter().zip(&history) {
        let issued: Vec<&str> = h.issued.iter().map(|c| c.serial_hex.as_str()).collect();
        let loaded: Vec<&str> = h.ambassador.iter().map(String::as_str).collect();
        // The ambassador loaded every certificate the agent published, in order (the sampling
        // may have caught the agent one certificate ahead of it at the end).
        assert!(
            loaded.len() > ROTATIONS
                && issued.starts_with(&loaded)
                && issued.len() <= loaded.len() + 1,
            "{}: the agent published {issued:?}, the ambassador loaded {loaded:?}",
            pod.name
        );
        // Each swap reloaded cleanly: never a certificate with another issue's key, never a
        // half-written file.
        let reloads = pod.ambassador_metrics();
        let ok = reloads
            .get("sidecar_tls_reloads_total", &[("result", "ok")])
            .unwrap_or(0.0);
        assert!(
            ok >= ROTATIONS as f64,
            "{}: {ok} reloads\n{reloads}",
            pod.name
        );
        let refused: Vec<String> = reloads
            .series("sidecar_tls_reloads_total")
            .filter(|s| s.label("result") != Some("ok") && s.value > 0.0)
            .map(|s| format!("{:?} {}", s.labels, s.value))
            .collect();
        assert!(
            refused.is_empty(),
            "{}: refused reloads {refused:?}",
            pod.name
        );
        // The peer saw each certificate: the peer's app is told the hash of the client
        // certificate of every connection (X-Forwarded-Client-Cert).
        let presented = stats.hashes_presented_by(pod.name);
        for cert in &h.issued[..=ROTATIONS] {
            assert!(
                presented.contains(&cert.sha256_hex),
                "{}: certificate {} was never presented to the peer (it saw {presented:?})",
                pod.name,
                cert.serial_hex
            );
        }
        // New handshakes kept working after the first certificate had expired: only the
        // reloaded certificates could have made them.
        let first_expiry = h.issued[0].not_after;
        let last_fresh = stats
            .last_fresh_handshake(pod.name)
            .expect("fresh handshakes were made");
        assert!(
            last_fresh > first_expiry,
            "{}: the last new handshake was before the first certificate expired",
            pod.name
        );
    }

    println!(
        "mesh certificates: setup {:.1}s, whole test {:.1}s; {}; rotations seen: {}",
        setup.as_secs_f64(),
        elapsed.as_secs_f64(),
        stats.summary(),
        pods.iter()
            .zip(&history)
            .map(|(p, h)| format!(
                "{} {} ({})",
                p.name,
                h.ambassador.len() - 1,
                h.ambassador.join(" -> ")
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

const PODS: [&str; 2] = ["pod-a", "pod-b"];

fn spiffe(pod: &str) -> String {
    format!("{TRUST_DOMAIN}/{pod}")
}

fn peer_of(pod: &str) -> &'static str {
    if pod == PODS[0] { PODS[1] } else { PODS[0] }
}

/// The workspace's binaries, built by `scripts/test.sh` before the tests run.
fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join(name);
    assert!(
        path.exists(),
        "{} missing: build the workspace's binaries first (scripts/test.sh does)",
        path.display()
    );
    path
}
