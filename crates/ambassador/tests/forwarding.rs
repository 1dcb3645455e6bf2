//! End-to-end tests of what an inbound route tells the app: the request's own authority
//! (`Host` for an HTTP/1.1 app, `:authority` for an h2c one) whichever protocol the peer
//! speaks, the peer's address and the scheme in `X-Forwarded-*` or `Forwarded` with the peer's
//! copies replaced, an `X-Request-Id`, and the trace context (W3C kept or started, B3 passed).
//! The real binary, certificates made at test time, an app that answers with what it saw.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use test_support::certs::Leaf;
use tokio::net::TcpListener;

const SERVER_ID: &str = "spiffe://test.example/ns/prod/sa/server";
const CLIENT_ID: &str = "spiffe://test.example/ns/prod/sa/client";

/// An app (HTTP/1.1 and h2c) that answers with the request it saw: its version, its
/// authority, then each header, one `name: value` line each.
async fn start_mirror() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let mut text = format!(
                        ":version: {:?}\n:authority: {}\n",
                        req.version(),
                        req.uri().authority().map_or("", |a| a.as_str())
                    );
                    for (name, value) in req.headers() {
                        text.push_str(&format!("{name}: {}\n", value.to_str().unwrap()));
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// What the mirror saw.
struct Seen(Vec<(String, String)>);

impl Seen {
    fn parse(body: &str) -> Self {
        Self(
            body.lines()
                .filter_map(|l| {
                    let (name, value) = l.split_once(": ")?;
                    Some((name.to_owned(), value.to_owned()))
                })
                .collect(),
        )
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} more than once: {all:?}");
        all.first().copied()
    }

    /// The authority the app was given: `Host` over HTTP/1.1, `:authority` over HTTP/2.
    fn authority(&self) -> &str {
        if self.one(":version") == Some("HTTP/2.0") {
            self.one(":authority").unwrap()
        } else {
            self.one("host").unwrap()
        }
    }
}

/// An inbound ambassador with a route to `app` for each app protocol (http1 first, then h2c),
/// the second with RFC 7239 `Forwarded` as well; their listen addresses.
fn start_inbound(
    pki: &Pki,
    name: &str,
    app: SocketAddr,
    extra: &[&str],
) -> (Ambassador, [SocketAddr; 2]) {
    let server = pki.secret(name, SERVER_ID);
    let listens = [addr(free_port()), addr(free_port())];
    let config = pki.path().join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "inbound:\n\
             - name: h1app\n  listen: {}\n  app: {app}\n  app_protocol: http1\n  allow: {{spiffe: ['{CLIENT_ID}']}}\n\
             - name: h2app\n  listen: {}\n  app: {app}\n  app_protocol: h2c\n  forwarded: both\n  allow: {{spiffe: ['{CLIENT_ID}']}}\n",
            listens[0], listens[1]
        ),
    )
    .unwrap();
    let mut args = cert_args(&server);
    args.extend(strings(&["--config", config.to_str().unwrap()]));
    args.extend(strings(extra));
    (Ambassador::start(&args), listens)
}

/// A request with `headers` over mTLS to `listen`, in HTTP/2 or HTTP/1.1, naming
/// `server.local:<port>` as its authority; what the app saw.
async fn send(
    listen: SocketAddr,
    me: &Leaf,
    pki: &Pki,
    h2: bool,
    headers: &[(&str, &str)],
) -> Seen {
    let authority = format!("server.local:{}", listen.port());
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let tls = mtls_connect(listen, client_tls(Some(me), pki.ca.pem(), alpn))
        .await
        .unwrap();
    let mut builder = if h2 {
        Request::get(format!("https://{authority}/mirror"))
    } else {
        Request::get("/mirror").header("host", &authority)
    };
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let req = builder.body(Full::new(Bytes::new())).unwrap();
    let response = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Seen::parse(std::str::from_utf8(&body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_gets_the_requests_authority_whatever_the_protocols() {
    let pki = Pki::new("forwarding-authority");
    let app = start_mirror().await;
    let (_inbound, listens) = start_inbound(&pki, "server", app, &[]);
    let me = pki.ca.good(CLIENT_ID);
    for (listen, app_version) in [(listens[0], "HTTP/1.1"), (listens[1], "HTTP/2.0")] {
        for h2 in [false, true] {
            let seen = send(listen, &me, &pki, h2, &[]).await;
            let case = format!("client h2 {h2}, app {app_version}: {:?}", seen.0);
            assert_eq!(seen.one(":version"), Some(app_version), "{case}");
            assert_eq!(
                seen.authority(),
                format!("server.local:{}", listen.port()),
                "{case}"
            );
            if app_version == "HTTP/2.0" {
                // HTTP/2 carries the authority in `:authority` only (RFC 9113 8.3.1).
                assert_eq!(seen.one("host"), None, "{case}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_replace_the_peers_copies() {
    let pki = Pki::new("forwarding-headers");
    let app = start_mirror().await;
    let (_inbound, listens) = start_inbound(&pki, "server", app, &[]);
    let me = pki.ca.good(CLIENT_ID);
    let spoofed = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "evil.example"),
        ("forwarded", "for=6.6.6.6;proto=http"),
    ];
    for h2 in [false, true] {
        let seen = send(listens[0], &me, &pki, h2, &spoofed).await;
        assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"], "{:?}", seen.0);
        assert_eq!(seen.all("x-forwarded-proto"), ["https"]);
        assert!(seen.all("x-forwarded-host").is_empty());
        assert!(
            seen.all("forwarded").is_empty(),
            "x-forwarded only on this route"
        );

        let seen = send(listens[1], &me, &pki, h2, &spoofed).await;
        assert_eq!(seen.all("forwarded"), ["for=127.0.0.1;proto=https"]);
        assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_and_trace_context() {
    let pki = Pki::new("forwarding-ids");
    let app = start_mirror().await;
    let (_inbound, listens) = start_inbound(&pki, "server", app, &[]);
    let me = pki.ca.good(CLIENT_ID);

    // Without either: an X-Request-Id (a UUID) and an unsampled traceparent are added, each
    // request its own.
    let a = send(listens[0], &me, &pki, false, &[]).await;
    let b = send(listens[0], &me, &pki, true, &[]).await;
    for seen in [&a, &b] {
        let id = seen.one("x-request-id").unwrap();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(id.matches('-').count(), 4, "{id}");
        let tp = seen.one("traceparent").unwrap();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(parts.len(), 4, "{tp}");
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "00")
        );
        assert!(seen.one("tracestate").is_none());
    }
    assert_ne!(a.one("x-request-id"), b.one("x-request-id"));
    assert_ne!(a.one("traceparent"), b.one("traceparent"));

    // With them: kept as they are, B3 passed through.
    let given = [
        ("x-request-id", "req-from-the-caller"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tracestate", "congo=t61rcWkgMzE"),
        ("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "1"),
    ];
    for h2 in [false, true] {
        for listen in listens {
            let seen = send(listen, &me, &pki, h2, &given).await;
            for (name, value) in given {
                assert_eq!(seen.all(name), [value], "{name}: {:?}", seen.0);
            }
        }
    }

    // A traceparent that does not parse starts a new trace, and its tracestate goes.
    let seen = send(
        listens[0],
        &me,
        &pki,
        false,
        &[("traceparent", "00-not-a-trace-01"), ("tracestate", "a=b")],
    )
    .await;
    assert!(seen.one("traceparent").unwrap().ends_with("-00"));
    assert!(seen.one("tracestate").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_traces_can_be_sampled_or_left_out() {
    let pki = Pki::new("forwarding-traces");
    let app = start_mirror().await;
    let me = pki.ca.good(CLIENT_ID);
    let (inbound, listens) = start_inbound(&pki, "sampled", app, &["--new-traces", "sampled"]);
    let seen = send(listens[0], &me, &pki, false, &[]).await;
    assert!(seen.one("traceparent").unwrap().ends_with("-01"));
    drop(inbound);

    let (_inbound, listens) = start_inbound(&pki, "off", app, &["--new-traces", "off"]);
    let seen = send(listens[0], &me, &pki, true, &[]).await;
    assert!(seen.one("traceparent").is_none(), "{:?}", seen.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_name_the_app_called_reaches_the_remote_app_across_the_mesh() {
    let pki = Pki::new("forwarding-mesh");
    let app = start_mirror().await;
    let (_inbound, listens) = start_inbound(&pki, "server", app, &[]);
    for (listen, app_version) in [(listens[0], "HTTP/1.1"), (listens[1], "HTTP/2.0")] {
        for http2 in ["true", "false"] {
            let client = pki.secret(&format!("client-{}-{http2}", listen.port()), CLIENT_ID);
            let out = addr(free_port());
            let mut args = cert_args(&client);
            args.extend(strings(&[
                "--outbound-listen",
                &out.to_string(),
                "--outbound-endpoints",
                &listen.to_string(),
                "--outbound-identity",
                SERVER_ID,
                "--outbound-http2",
                http2,
            ]));
            let _outbound = Ambassador::start(&args);
            let req = Request::get("/mirror")
                .header("host", "billing.test:8080")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let reply = plain_request(out, req).await.unwrap();
            assert_eq!(reply.status, 200);
            let seen = Seen::parse(std::str::from_utf8(&reply.body).unwrap());
            let case = format!(
                "app {app_version}, h2 between the ambassadors {http2}: {:?}",
                seen.0
            );
            assert_eq!(seen.one(":version"), Some(app_version), "{case}");
            assert_eq!(seen.authority(), "billing.test:8080", "{case}");
        }
    }
}
