//! JWT keys fetched over HTTPS, against the real ambassador binary: OpenBao in `-dev-tls` mode
//! (its own CA) is the issuer, found by OIDC discovery. With `jwks.ca` naming OpenBao's CA the
//! keys load and its tokens pass; with another CA the keys never load, so the route is not
//! ready and refuses with `no_keys`.
#![allow(clippy::unwrap_used)]

mod common;
mod jwt_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use test_support::certs::Ca;
use test_support::process::Process;
use test_support::wait::Wait;

use jwt_support::{Issuer, bao_or_skip, kid_of, start_header_app};

const DEADLINE: Duration = Duration::from_secs(30);

struct Setup {
    /// Holds the certificates' directory.
    _pki: Pki,
    ambassador: Ambassador,
    listen: SocketAddr,
    client: std::sync::Arc<rustls::ClientConfig>,
}

/// An ambassador with one inbound route `web` in front of the header app, whose keys come
/// from `issuer` by discovery, trusting `ca` for the key server. Waits for readiness when
/// `ready`, else only for the admin server.
async fn start(issuer: &Issuer, ca: &Path, ready: bool) -> Setup {
    let pki = Pki::new("jwt https test CA");
    let server = pki.secret("server", "spiffe://td/ns/prod/sa/web");
    let client_leaf = pki.ca.good("spiffe://td/ns/prod/sa/frontend");
    let client = client_tls(Some(&client_leaf), pki.ca.pem(), &[b"http/1.1"]);
    let app = start_header_app().await;
    let listen = addr(free_port());
    let config = pki.path().join("ambassador.yaml");
    std::fs::write(
        &config,
        format!(
            "tls: {{cert: {s}/tls.crt, key: {s}/tls.key, ca: {s}/ca.crt}}\n\
             inbound:\n  - name: web\n    listen: {listen}\n    app: {app}\n    \
             allow: {{spiffe: ['spiffe://td/ns/prod/sa/frontend']}}\n    jwt:\n      \
             issuer: {iss}\n      audiences: [web-api]\n      \
             jwks: {{discovery: true, ca: '{ca}', refresh_interval: 1h, unknown_kid_interval: 1s}}\n",
            s = server.display(),
            iss = issuer.issuer(),
            ca = ca.display(),
        ),
    )
    .unwrap();
    let args = strings(&["--config", &config.display().to_string()]);
    let ambassador = if ready {
        Ambassador::start(&args)
    } else {
        let admin = addr(free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ambassador"));
        cmd.args(&args)
            .arg("--admin-addr")
            .arg(admin.to_string())
            .args(["--log-format", "text", "--log-level", "info"]);
        let process = Process::spawn("ambassador", cmd);
        Wait::new("the admin server")
            .timeout(DEADLINE)
            .until(|| std::net::TcpStream::connect(admin).is_ok());
        Ambassador { process, admin }
    };
    Setup {
        _pki: pki,
        ambassador,
        listen,
        client,
    }
}

impl Setup {
    async fn bearer(&self, token: &str) -> Reply {
        let req = Request::get("/")
            .header("host", "web.test")
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        mtls_request(self.listen, self.client.clone(), req)
            .await
            .unwrap()
    }

    fn metric(&self, name: &str, label: (&str, &str)) -> f64 {
        self.ambassador
            .metric(name, &[("route", "web"), label])
            .unwrap_or(0.0)
    }
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
    let trusted = start(&issuer, &issuer.ca(), true).await;
    assert!(trusted.metric("ambassador_jwt_jwks_refreshes_total", ("result", "ok")) >= 1.0);
    let reply = trusted.bearer(&token).await;
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
    let untrusted = start(&issuer, &other, false).await;
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
    let reply = untrusted.bearer(&token).await;
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
