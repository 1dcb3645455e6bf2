//! An https upstream that wants a client certificate (certificates generated here with rcgen):
//! the adapter verifies it with --ca-file and presents --client-cert/--client-key; a probe
//! module does the same from its own `tls` settings, also through a proxy's CONNECT tunnel.

// Test helpers panic on purpose: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;

use common::*;
use test_support::certs::{Ca, Leaf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serves `body` over TLS, requiring a client certificate from `client_ca`.
async fn tls_upstream(
    server: &Leaf,
    client_ca: &str,
    body: Vec<u8>,
) -> (u16, tokio::task::JoinHandle<()>) {
    let identity = sidecar_kit::tls::Identity::from_pem(
        server.cert_pem.as_bytes(),
        server.key_pem.as_bytes(),
        Path::new("server.crt"),
        Path::new("server.key"),
    )
    .unwrap();
    let clients =
        sidecar_kit::tls::TrustBundle::from_pem(client_ca.as_bytes(), Path::new("clients.crt"))
            .unwrap();
    let config = sidecar_kit::tls::server_config(&identity, &clients, &[b"http/1.1"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = Arc::new(body);
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    if tls.write_all(head.as_bytes()).await.is_err()
                        || tls.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (port, task)
}

#[tokio::test]
async fn https_upstream_with_ca_file_and_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (Ca::new("server ca"), Ca::new("client ca"));
    let server = server_ca.leaf().ip(IpAddr::V4(Ipv4Addr::LOCALHOST)).sign();
    let client = client_ca.leaf().dns("xml-adapter.test").sign();
    let ca_file = server_ca.write(&dir.path().join("ca.crt"));
    let ca_file = ca_file.to_str().unwrap();
    let client_files = client.write(dir.path(), "client");
    let (cert_file, key_file) = (
        client_files.cert.to_str().unwrap(),
        client_files.key.to_str().unwrap(),
    );
    let (port, _server) = tls_upstream(&server, client_ca.pem(), fixture("bind9/zones.xml")).await;
    let url = format!("https://127.0.0.1:{port}/xml/v3/zones");
    let mapping = manifest_path("examples/mappings/bind9.yaml");

    let a = start_adapter(
        &mapping,
        &url,
        &[
            "--ca-file",
            ca_file,
            "--client-cert",
            cert_file,
            "--client-key",
            key_file,
        ],
    )
    .await;
    let page = scrape(&a.url("/metrics")).await;
    assert_eq!(page.value("bind_up"), Some(1.0), "{}", a.proc.log());
    assert_eq!(
        page.value("bind_zone_serial{view=\"_default\",zone_name=\"TEST_ZONE\"}"),
        Some(123.0)
    );
    drop(a);

    // Without the CA the server is not trusted; without a client certificate the server refuses.
    for extra in [
        vec!["--client-cert", cert_file, "--client-key", key_file],
        vec!["--ca-file", ca_file],
    ] {
        let a = start_adapter(&mapping, &url, &extra).await;
        let page = scrape(&a.url("/metrics")).await;
        assert_eq!(page.value("bind_up"), Some(0.0), "{extra:?}");
        assert_eq!(
            page.value("xml_adapter_scrape_errors_total{kind=\"fetch\"}"),
            Some(1.0),
            "{extra:?}"
        );
    }
}

#[tokio::test]
async fn probe_module_with_its_own_tls_settings_and_through_a_connect_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (Ca::new("server ca"), Ca::new("client ca"));
    let server = server_ca.leaf().ip(IpAddr::V4(Ipv4Addr::LOCALHOST)).sign();
    let client = client_ca.leaf().dns("xml-adapter.test").sign();
    server_ca.write(&dir.path().join("ca.crt"));
    client.write(dir.path(), "client");
    let (port, _server) = tls_upstream(&server, client_ca.pem(), fixture("bind9/zones.xml")).await;
    let target = format!("https://127.0.0.1:{port}/xml/v3/zones");
    let mapping = manifest_path("examples/mappings/bind9.yaml");
    let tls = "tls: {ca_file: ca.crt, client_cert: client.crt, client_key: client.key}";
    let proxy = common::tinyproxy::available("tinyproxy", "tinyproxy")
        .then(common::tinyproxy::Tinyproxy::start);
    let proxied = proxy.as_ref().map_or(String::new(), |p| {
        format!(
            "  proxied: {{mapping: {}, http: {{{tls}, proxy: '{}'}}}}\n",
            mapping.display(),
            p.url()
        )
    });
    // Relative files are relative to the probe file.
    let probe_file = dir.path().join("probe.yaml");
    std::fs::write(
        &probe_file,
        format!(
            "allowed_targets: ['https://127.0.0.1:{port}/xml/']\nmodules:\n  bind:\n    mapping: {}\n    http: {{{tls}}}\n  untrusted: {{mapping: {}}}\n{proxied}",
            mapping.display(),
            mapping.display()
        ),
    )
    .unwrap();
    let a = start_adapter(
        &mapping,
        &target,
        &["--probe-config", probe_file.to_str().unwrap()],
    )
    .await;
    let probe = |module: &str| a.url(&format!("/probe?module={module}&target={target}"));
    let page = scrape(&probe("bind")).await;
    assert_eq!(page.value("probe_success"), Some(1.0), "{}", a.proc.log());
    assert_eq!(
        page.value("bind_zone_serial{view=\"_default\",zone_name=\"TEST_ZONE\"}"),
        Some(123.0)
    );
    // The module without the CA does not trust the server.
    let page = scrape(&probe("untrusted")).await;
    assert_eq!(page.value("probe_success"), Some(0.0));
    assert_eq!(page.value("probe_error{kind=\"fetch\"}"), Some(1.0));
    if let Some(proxy) = proxy {
        let page = scrape(&probe("proxied")).await;
        assert_eq!(page.value("probe_success"), Some(1.0), "{}", a.proc.log());
        assert!(
            proxy.tunnelled(&format!("127.0.0.1:{port}")),
            "{:?}",
            proxy.requests()
        );
    }
}
