//! The configuration shipped in deploy/kubernetes works: rendered against a real OpenBao, its
//! certificate files are what sidecar-kit's reloader (the ambassador's) loads.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::Path;

use common::{AgentSetup, Bao, require_bao, root_token_args};
use sidecar_kit::reload::{CredentialReloader, TlsFiles};

#[test]
fn the_kubernetes_config_renders_what_the_kits_reloader_loads() {
    let bin = require_bao();
    let config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/kubernetes/config/secrets-agent/secrets-agent.yaml"),
    )
    .unwrap();
    let bao = Bao::dev(&bin);
    bao.enable_pki();
    bao.run(&[
        "write",
        "pki/roles/legacy-app",
        "allow_any_name=true",
        "allowed_uri_sans=spiffe://cluster.local/ns/default/sa/legacy-app",
        "key_type=ec",
        "key_bits=256",
        "max_ttl=72h",
    ]);
    bao.kv_put("legacy-app/config", &[("GREETING", "hello")]);
    let dir = tempfile::tempdir().unwrap();
    let mut args = root_token_args(&bao, dir.path());
    args.push("--one-time".into());
    let (status, log) = AgentSetup {
        bao: &bao,
        dir: dir.path(),
        config: &config,
        args,
    }
    .run_to_exit();
    assert_eq!(status.code(), Some(0), "{log}");
    let out = dir.path().join("out");
    assert_eq!(
        std::fs::read_to_string(out.join("app.env")).unwrap(),
        "GREETING='hello'\n"
    );
    let files = TlsFiles {
        cert: out.join("tls.crt"),
        key: out.join("tls.key"),
        ca: out.join("ca.crt"),
    };
    let reloader = CredentialReloader::load(files, &prometheus::Registry::new()).unwrap();
    assert_eq!(
        reloader.current().leaf.spiffe_ids,
        vec!["spiffe://cluster.local/ns/default/sa/legacy-app".to_owned()]
    );
}
