//! HTTPS remotes against a real TLS git server (git http-backend behind nginx): a private CA
//! (`--ca-file`), client certificates, basic auth and bearer tokens from files, a moved
//! repository's redirect, and HTTP proxies (tinyproxy) from `HTTPS_PROXY`, `--proxy` and
//! `NO_PROXY`, one of them asking for a login (from the proxy URL in the environment).

// Test code: a failed unwrap is a failed test, with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::https::{NginxGit, NginxOptions, Tinyproxy};
use common::*;
use test_support::certs::Ca;
use test_support::ports::free_port;

const PASSWORD: &str = "tls-Pa55word-q9";
const TOKEN: &str = "bearer-t0ken-x7";
const PROXY_PASSWORD: &str = "pr0xy-Pa55-k3";

fn is_published(root: &Path, sha: &str) -> bool {
    published(root, "current").as_deref() == Some(sha)
}

#[test]
fn private_ca_client_certificate_and_basic_auth() {
    let fx = Fixture::new("cfg.git");
    let c1 = fx.commit("main", &[("a", "1")], "one");
    let dir = tempfile::tempdir().unwrap();
    let clients = Ca::new("clients CA");
    let clients_ca = clients.write(&dir.path().join("clients-ca.crt"));
    let client = clients
        .leaf()
        .dns("git-sync")
        .sign()
        .write(dir.path(), "client");
    let stranger = Ca::new("another CA")
        .leaf()
        .dns("git-sync")
        .sign()
        .write(dir.path(), "stranger");
    let server = NginxGit::start(
        &fx.base(),
        NginxOptions {
            client_ca: Some(&clients_ca),
            basic: Some(("alice", PASSWORD)),
            ..NginxOptions::default()
        },
    );
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let url = server.url("cfg.git");
    let ca = server.ca_file.to_str().unwrap();
    let login = [
        "--username",
        "alice",
        "--password-file",
        pw.to_str().unwrap(),
    ];
    let run = |name: &str, extra: &[&str]| {
        let mut args = vec!["--repo", url.as_str()];
        args.extend_from_slice(&login);
        args.extend_from_slice(extra);
        one_time(&dir.path().join(name), &args)
    };

    // The server's certificate is from a private CA: refused without --ca-file.
    let (status, logs) = run("no-ca", &[]);
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains(&format!("TLS handshake with 127.0.0.1:{}", server.port))
            && logs.contains("UnknownIssuer"),
        "the error names the TLS failure: {logs}"
    );
    // Trusted, but no client certificate, or one from a CA the server does not trust.
    let (status, logs) = run("no-cert", &["--ca-file", ca]);
    assert!(!status.success(), "{logs}");
    assert!(logs.contains("400"), "{logs}");
    assert!(
        server
            .logs()
            .contains("client sent no required SSL certificate"),
        "{}",
        server.logs()
    );
    let (status, logs) = run(
        "stranger",
        &[
            "--ca-file",
            ca,
            "--client-cert-file",
            stranger.cert.to_str().unwrap(),
            "--client-key-file",
            stranger.key.to_str().unwrap(),
        ],
    );
    assert!(!status.success(), "{logs}");
    // nginx takes the handshake, then refuses the request because the certificate does not
    // verify against its client CA (logged there); git-sync sees the 400 it answers with.
    assert!(logs.contains("400"), "{logs}");
    assert!(
        server
            .logs()
            .contains("client SSL certificate verify error"),
        "{}",
        server.logs()
    );

    // Everything right: published, and the next commit too (long-running).
    let root = dir.path().join("root");
    let mut args = vec![
        "--repo",
        url.as_str(),
        "--period",
        "200ms",
        "--ca-file",
        ca,
        "--client-cert-file",
        client.cert.to_str().unwrap(),
        "--client-key-file",
        client.key.to_str().unwrap(),
    ];
    args.extend_from_slice(&login);
    let gs = GitSync::start(&root, &args);
    wait::Wait::new("published over HTTPS")
        .timeout(Duration::from_secs(20))
        .context(|| format!("{}\n{}", gs.logs(), server.logs()))
        .until(|| is_published(&root, &c1));
    let c2 = fx.commit("main", &[("a", "2")], "two");
    wait::until(Duration::from_secs(10), "the next commit", || {
        is_published(&root, &c2)
    });
    assert_eq!(
        std::fs::read_to_string(root.join("current/a")).unwrap(),
        "2"
    );
    // A wrong password in the file: the server's 401 is an error, the tree stays.
    std::fs::write(&pw, "wrong\n").unwrap();
    let c3 = fx.commit("main", &[("a", "3")], "three");
    wait::until(Duration::from_secs(10), "a failed sync", || {
        gs.metric("gitsync_syncs_total{result=\"error\"}") >= Some(1.0)
    });
    assert!(is_published(&root, &c2));
    std::fs::write(&pw, PASSWORD).unwrap();
    wait::until(Duration::from_secs(10), "published after the fix", || {
        is_published(&root, &c3)
    });
    let logs = gs.logs();
    assert!(!logs.contains(PASSWORD) && !gs.metrics().text().contains(PASSWORD));
    // basic auth reached the server over TLS
    assert!(
        server.access_log().contains(" alice "),
        "{}",
        server.access_log()
    );
}

#[test]
fn bearer_token_file_is_read_on_every_sync() {
    let fx = Fixture::new("cfg.git");
    let c1 = fx.commit("main", &[("a", "1")], "one");
    let server = NginxGit::start(
        &fx.base(),
        NginxOptions {
            bearer: Some(TOKEN),
            ..NginxOptions::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "expired-token\n").unwrap();
    let root = dir.path().join("root");
    let gs = GitSync::start(
        &root,
        &[
            "--repo",
            &server.url("cfg.git"),
            "--period",
            "200ms",
            "--ca-file",
            server.ca_file.to_str().unwrap(),
            "--bearer-token-file",
            token.to_str().unwrap(),
        ],
    );
    wait::until(
        Duration::from_secs(10),
        "refused with the old token",
        || gs.metric("gitsync_syncs_total{result=\"error\"}") >= Some(1.0),
    );
    assert_eq!(published(&root, "current"), None);
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    wait::Wait::new("published with the new token")
        .timeout(Duration::from_secs(10))
        .context(|| gs.logs())
        .until(|| is_published(&root, &c1));
    assert!(!gs.logs().contains(TOKEN), "the token reached the log");
    assert!(
        !gs.logs().contains("expired-token"),
        "the token reached the log"
    );

    // Another process of the pod (same loopback) cannot use the bridge to reach the server
    // with git-sync's token: without the bridge's own random path prefix it is refused.
    let worker = children_of(gs.pid());
    let ports: Vec<u16> = worker
        .iter()
        .flat_map(|pid| listening_ports(*pid))
        .collect();
    assert!(!ports.is_empty(), "the network worker's bridge listens");
    let requests_before = server.access_log().lines().count();
    for port in ports {
        let (status, body) = http_get(port, "/cfg.git/info/refs?service=git-upload-pack");
        assert_eq!(status, 403, "{body}");
    }
    assert_eq!(server.access_log().lines().count(), requests_before);
}

#[test]
fn proxies_from_the_environment_and_the_flag_and_no_proxy() {
    let fx = Fixture::new("cfg.git");
    let c1 = fx.commit("main", &[("a", "1")], "one");
    let server = NginxGit::start(
        &fx.base(),
        NginxOptions {
            redirect_old: true,
            ..NginxOptions::default()
        },
    );
    let plain = GitHttp::start(&fx.base(), None);
    let proxy = Tinyproxy::start();
    let dir = tempfile::tempdir().unwrap();
    let ca = server.ca_file.to_str().unwrap();
    let dead_proxy = format!("http://127.0.0.1:{}", free_port());
    let https_url = server.url("cfg.git");

    // HTTPS_PROXY: a CONNECT tunnel through tinyproxy, TLS end to end.
    let root = dir.path().join("env");
    let (status, logs) = one_time_env(
        &root,
        &["--repo", &https_url, "--ca-file", ca],
        &[("HTTPS_PROXY", &proxy.url())],
    );
    assert!(status.success(), "{logs}");
    assert!(is_published(&root, &c1));
    let tunnel = format!("CONNECT 127.0.0.1:{} HTTP/1.1", server.port);
    assert!(
        proxy.requests().iter().any(|r| r.starts_with(&tunnel)),
        "{:?}",
        proxy.requests()
    );

    // --proxy alone (no variable): the same CONNECT tunnel, a new one in tinyproxy's log.
    let tunnels = |p: &Tinyproxy| {
        p.requests()
            .iter()
            .filter(|r| r.starts_with(&tunnel))
            .count()
    };
    let before = tunnels(&proxy);
    let root = dir.path().join("flag");
    let (status, logs) = one_time(
        &root,
        &[
            "--repo",
            &https_url,
            "--ca-file",
            ca,
            "--proxy",
            &proxy.url(),
        ],
    );
    assert!(status.success(), "{logs}\n{}", proxy.log());
    assert!(is_published(&root, &c1));
    assert!(tunnels(&proxy) > before, "{:?}", proxy.requests());

    // --proxy wins over the environment; a proxy that is down is named in the error.
    let (status, logs) = one_time_env(
        &dir.path().join("dead"),
        &[
            "--repo",
            &https_url,
            "--ca-file",
            ca,
            "--proxy",
            &dead_proxy,
        ],
        &[("HTTPS_PROXY", &proxy.url())],
    );
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains(&format!("connecting to the proxy {dead_proxy}")),
        "{logs}"
    );

    // NO_PROXY: straight to the server, the (dead) proxy is not used.
    let root = dir.path().join("no-proxy");
    let (status, logs) = one_time_env(
        &root,
        &["--repo", &https_url, "--ca-file", ca],
        &[
            ("HTTPS_PROXY", &dead_proxy),
            ("NO_PROXY", "localhost,127.0.0.0/8"),
        ],
    );
    assert!(status.success(), "{logs}");
    assert!(is_published(&root, &c1));
    // --no-proxy replaces NO_PROXY: 127.0.0.1 is no longer exempt, so the (dead) proxy is
    // used, and the error says so.
    let (status, logs) = one_time_env(
        &dir.path().join("no-proxy-flag"),
        &[
            "--repo",
            &https_url,
            "--ca-file",
            ca,
            "--no-proxy",
            "example.com",
        ],
        &[("HTTPS_PROXY", &dead_proxy), ("NO_PROXY", "127.0.0.1")],
    );
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains(&format!("connecting to the proxy {dead_proxy}")),
        "{logs}"
    );
    // --no-proxy naming the host: the direct path, even with a working --proxy. Against a
    // port nobody listens on, the error names the direct connection, and tinyproxy never
    // saw a request for it.
    let dead_port = free_port();
    let dead_server = format!("127.0.0.1:{dead_port}");
    let (status, logs) = one_time(
        &dir.path().join("no-proxy-direct"),
        &[
            "--repo",
            &format!("https://{dead_server}/cfg.git"),
            "--ca-file",
            ca,
            "--proxy",
            &proxy.url(),
            "--no-proxy",
            "127.0.0.1",
        ],
    );
    assert!(!status.success(), "{logs}");
    assert!(
        logs.contains(&format!("connecting to {dead_server}"))
            && !logs.contains("connecting to the proxy"),
        "{logs}"
    );
    assert!(
        !proxy.log().contains(&dead_server),
        "the proxy was asked: {}",
        proxy.log()
    );

    // Plain HTTP through the proxy (absolute-form requests), with --proxy.
    let before = proxy.requests().len();
    let root = dir.path().join("plain");
    let plain_url = plain.url("cfg.git");
    let (status, logs) = one_time(&root, &["--repo", &plain_url, "--proxy", &proxy.url()]);
    assert!(status.success(), "{logs}\n{}", proxy.log());
    assert!(is_published(&root, &c1));
    assert!(
        proxy.requests()[before..]
            .iter()
            .any(|r| r.starts_with(&format!("GET {plain_url}/info/refs"))),
        "{:?}",
        proxy.requests()
    );

    // A moved repository: the server's redirect is followed through the bridge and the proxy.
    let root = dir.path().join("moved");
    let (status, logs) = one_time_env(
        &root,
        &["--repo", &server.url("old.git"), "--ca-file", ca],
        &[("HTTPS_PROXY", &proxy.url())],
    );
    assert!(status.success(), "{logs}\n{}", server.access_log());
    assert!(is_published(&root, &c1));
    assert!(server.access_log().contains("GET /old.git/info/refs"));
}

#[test]
fn a_proxy_that_asks_for_a_login_gets_it_from_the_proxy_url() {
    let fx = Fixture::new("cfg.git");
    let c1 = fx.commit("main", &[("a", "1")], "one");
    let server = NginxGit::start(&fx.base(), NginxOptions::default());
    let plain = GitHttp::start(&fx.base(), None);
    let proxy = Tinyproxy::start_with_basic_auth("carol", PROXY_PASSWORD);
    let dir = tempfile::tempdir().unwrap();
    let ca = server.ca_file.to_str().unwrap();
    let https_url = server.url("cfg.git");
    let with_login = |password: &str| format!("http://carol:{password}@127.0.0.1:{}", proxy.port);
    let tunnel = format!("127.0.0.1:{}", server.port);

    // No login (tinyproxy asks for one: 407), or a wrong one (it answers 401): the proxy's
    // answer to CONNECT is the error.
    for (name, proxy_url, answer) in [
        (
            "anonymous",
            proxy.url(),
            "407 Proxy Authentication Required",
        ),
        ("wrong", with_login("wrong-password"), "401 Unauthorized"),
    ] {
        let root = dir.path().join(name);
        let (status, logs) = one_time_env(
            &root,
            &["--repo", &https_url, "--ca-file", ca],
            &[("HTTPS_PROXY", &proxy_url)],
        );
        assert!(!status.success(), "{name}: {logs}");
        assert!(
            logs.contains(&format!("refused CONNECT {tunnel}: HTTP/1.0 {answer}")),
            "{name}: {logs}"
        );
        assert_eq!(published(&root, "current"), None);
        assert!(
            !logs.contains("wrong-password"),
            "the password reached the log"
        );
    }
    assert!(
        !server.access_log().contains("info/refs"),
        "nothing reached the server: {}",
        server.access_log()
    );

    // The login in the proxy URL, from the environment (a Secret in a pod, never a flag):
    // sent as Proxy-Authorization on CONNECT; TLS end to end through the tunnel.
    let root = dir.path().join("https");
    let (status, logs) = one_time_env(
        &root,
        &["--repo", &https_url, "--ca-file", ca],
        &[("HTTPS_PROXY", &with_login(PROXY_PASSWORD))],
    );
    assert!(status.success(), "{logs}\n{}", proxy.log());
    assert!(is_published(&root, &c1));
    assert!(proxy.tunnelled(&tunnel), "{:?}", proxy.requests());
    assert!(server.access_log().contains("GET /cfg.git/info/refs"));
    assert!(
        !logs.contains(PROXY_PASSWORD),
        "the password reached the log"
    );

    // Plain HTTP through the same proxy (GIT_SYNC_PROXY, --proxy's variable): the login goes
    // with every absolute-form request.
    let root = dir.path().join("plain");
    let plain_url = plain.url("cfg.git");
    let (status, logs) = one_time_env(
        &root,
        &["--repo", &plain_url],
        &[("GIT_SYNC_PROXY", &with_login(PROXY_PASSWORD))],
    );
    assert!(status.success(), "{logs}\n{}", proxy.log());
    assert!(is_published(&root, &c1));
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.starts_with(&format!("GET {plain_url}/info/refs"))),
        "{:?}",
        proxy.requests()
    );
    assert!(
        !logs.contains(PROXY_PASSWORD),
        "the password reached the log"
    );
}

/// The TCP ports a process listens on (its sockets' inodes looked up in /proc/net/tcp).
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|target| {
                    let t = target.to_string_lossy().into_owned();
                    t.strip_prefix("socket:[")
                        .and_then(|r| r.strip_suffix(']'))
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local address, state 0A = LISTEN, inode
            (f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]))
                .then(|| u16::from_str_radix(f[1].split(':').nth(1)?, 16).ok())
                .flatten()
        })
        .collect()
}
