//! The resilience layer end to end: the real ambassador binary as the outbound proxy, originating mTLS to
//! three real inbound ambassadors (each in front of a small app), dnsmasq for DNS discovery. Endpoints die
//! by SIGKILL of their process.

mod common;
mod dnsmasq;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Ambassador, MeshCa, addr, cert_args, free_port};
use dnsmasq::Dnsmasq;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use test_support::certs::{Ca, SecretVolume};
use test_support::wait::{self, Wait};
use tokio::net::TcpListener;

const SERVER_ID: &str = "spiffe://mesh.test/ns/shop/sa/api";
const CLIENT_ID: &str = "spiffe://mesh.test/ns/shop/sa/web";

/// A tiny app that answers its own name and counts hits.
async fn app(name: &str) -> (SocketAddr, Arc<AtomicU64>) {
    app_with(name, StatusCode::OK, Duration::ZERO).await
}

/// An app that answers `status` after `delay`, with its name as the body, and counts hits.
async fn app_with(name: &str, status: StatusCode, delay: Duration) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&hits);
    let name = name.to_owned();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counter = Arc::clone(&counter);
            let name = name.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let name = name.clone();
                    async move {
                        let _ = req.into_body().collect().await;
                        tokio::time::sleep(delay).await;
                        let mut response = Response::new(Full::new(Bytes::from(name)));
                        *response.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, hits)
}

struct Mesh {
    /// Holds the secret volumes.
    _dir: tempfile::TempDir,
    server_secret: PathBuf,
    client_secret: PathBuf,
}

impl Mesh {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("mesh-test-ca");
        let server_secret = dir.path().join("server");
        let client_secret = dir.path().join("client");
        SecretVolume::create(&server_secret, &ca.good(SERVER_ID), ca.pem());
        SecretVolume::create(&client_secret, &ca.good(CLIENT_ID), ca.pem());
        Mesh {
            _dir: dir,
            server_secret,
            client_secret,
        }
    }

    /// An inbound ambassador on `listen` in front of `app`.
    fn inbound(&self, listen: SocketAddr, app: SocketAddr) -> Ambassador {
        let mut args = cert_args(&self.server_secret);
        args.extend([
            "--inbound-listen".into(),
            listen.to_string(),
            "--inbound-app".into(),
            app.to_string(),
            "--allow-spiffe".into(),
            CLIENT_ID.into(),
        ]);
        Ambassador::start(&args)
    }

    /// The outbound ambassador under test, with extra flags.
    fn outbound(&self, listen: SocketAddr, extra: &[String]) -> Ambassador {
        let mut args = cert_args(&self.client_secret);
        args.extend([
            "--outbound-listen".into(),
            listen.to_string(),
            "--outbound-identity".into(),
            SERVER_ID.into(),
        ]);
        args.extend(extra.iter().cloned());
        Ambassador::start(&args)
    }
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends `method` with a small body (Content-Length known, so it may be kept for a retry).
async fn send(method: &str, to: SocketAddr) -> StatusCode {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{to}/orders"))
        .body(Full::new(Bytes::from_static(b"{\"qty\": 1}")))
        .expect("request");
    match client.request(req).await {
        Ok(resp) => resp.status(),
        Err(e) => panic!("client error: {e}"),
    }
}

/// Three inbound ambassadors in front of `apps`, and the outbound one over them.
fn mesh_over(
    mesh: &Mesh,
    apps: &[SocketAddr],
    extra: &[String],
) -> (Vec<Ambassador>, Ambassador, SocketAddr) {
    let listens: Vec<SocketAddr> = apps.iter().map(|_| addr(free_port())).collect();
    let inbound = apps
        .iter()
        .zip(&listens)
        .map(|(app, listen)| mesh.inbound(*listen, *app))
        .collect();
    let out_addr = addr(free_port());
    let endpoints = listens
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec!["--outbound-endpoints".to_owned(), endpoints];
    args.extend(extra.iter().cloned());
    let outbound = mesh.outbound(out_addr, &args);
    (inbound, outbound, out_addr)
}

async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    to: SocketAddr,
) -> (StatusCode, String, Duration) {
    let started = Instant::now();
    let req = Request::get(format!("http://{to}/"))
        .body(Empty::new())
        .expect("request");
    match client.request(req).await {
        Ok(resp) => {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            (
                status,
                String::from_utf8_lossy(&body).into_owned(),
                started.elapsed(),
            )
        }
        Err(e) => (
            StatusCode::IM_A_TEAPOT,
            format!("client error: {e}"),
            started.elapsed(),
        ),
    }
}

/// Whether the outbound route (named `outbound`, from the flags) has `endpoint` in `state`.
fn endpoint_state(outbound: &Ambassador, endpoint: SocketAddr, state: &str) -> bool {
    outbound.metric(
        "ambassador_upstream_endpoint_state",
        &[
            ("route", "outbound"),
            ("endpoint", &endpoint.to_string()),
            ("state", state),
        ],
    ) == Some(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_endpoint_is_ejected_within_a_second_and_comes_back_through_the_binary() {
    let mesh = Mesh::new();
    let mut apps = Vec::new();
    let mut inbound = Vec::new();
    let mut listens = Vec::new();
    for i in 0..3 {
        let (app_addr, hits) = app(&format!("backend-{i}")).await;
        let listen = addr(free_port());
        inbound.push(Some(mesh.inbound(listen, app_addr)));
        apps.push((app_addr, hits));
        listens.push(listen);
    }
    let out_addr = addr(free_port());
    let endpoints = listens
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let outbound = mesh.outbound(out_addr, &["--outbound-endpoints".into(), endpoints]);

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failed, first_failures) = (
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
            Arc::clone(&first_failures),
        );
        workers.push(tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::Relaxed) {
                let (status, body, _) = get(&client, out_addr).await;
                if status == StatusCode::OK {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    let mut seen = first_failures.lock().expect("lock");
                    if seen.len() < 5 {
                        seen.push(format!("{status} {body}"));
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim = listens[1];
    // Peak-EWMA may favour the others for a while (a first response slowed by the handshake).
    wait::until_async(
        Duration::from_secs(10),
        "the victim to serve before it dies",
        async || apps[1].1.load(Ordering::Relaxed) > 0,
    )
    .await;
    drop(inbound[1].take()); // SIGKILL
    let ejected_after = Wait::new("the killed endpoint ejected")
        .timeout(Duration::from_secs(3))
        .elapsed_async(async || endpoint_state(&outbound, victim, "ejected"))
        .await
        .expect("the killed endpoint was never ejected");
    assert!(
        ejected_after < Duration::from_secs(1),
        "ejected after {ejected_after:?}"
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let hits_before = apps[1].1.load(Ordering::Relaxed);
    inbound[1] = Some(mesh.inbound(victim, apps[1].0));
    // Ejections back off (1s, 2s, ...) while it stays dead; the next probe brings it back.
    let _ = Wait::new("traffic back on the restarted endpoint")
        .timeout(Duration::from_secs(8))
        .elapsed_async(async || apps[1].1.load(Ordering::Relaxed) >= hits_before + 20)
        .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    assert!(
        apps[1].1.load(Ordering::Relaxed) >= hits_before + 20,
        "traffic never returned to the restarted endpoint"
    );
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let ratio = ok as f64 / (ok + failed) as f64;
    eprintln!("ok={ok} failed={failed} ratio={ratio:.5} ejected_after={ejected_after:?}");
    assert!(ok > 500, "too little load: {ok}");
    assert!(
        ratio >= 0.999,
        "success ratio {ratio:.5}: {:?}",
        first_failures.lock().expect("lock")
    );
    assert!(
        outbound.metric(
            "ambassador_upstream_ejections_total",
            &[("route", "outbound"), ("endpoint", &victim.to_string())]
        ) >= Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_endpoints_down_every_request_fails_fast_with_a_503_naming_the_route() {
    let mesh = Mesh::new();
    let mut inbound = Vec::new();
    let mut listens = Vec::new();
    for i in 0..3 {
        let (app_addr, _) = app(&format!("backend-{i}")).await;
        let listen = addr(free_port());
        inbound.push(mesh.inbound(listen, app_addr));
        listens.push(listen);
    }
    let out_addr = addr(free_port());
    let endpoints = listens
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let outbound = mesh.outbound(
        out_addr,
        &[
            "--outbound-endpoints".into(),
            endpoints,
            "--request-timeout".into(),
            "2s".into(),
        ],
    );
    let client = client();
    assert_eq!(get(&client, out_addr).await.0, StatusCode::OK);
    drop(inbound);
    let mut answers = Vec::new();
    for _ in 0..40 {
        answers.push(get(&client, out_addr).await);
    }
    for (status, body, elapsed) in &answers {
        assert!(
            *status == StatusCode::BAD_GATEWAY || *status == StatusCode::SERVICE_UNAVAILABLE,
            "{status} {body}"
        );
        assert!(
            *elapsed < Duration::from_millis(500),
            "slow failure: {elapsed:?} {body}"
        );
        assert!(
            body.contains("outbound"),
            "the body names the route: {body}"
        );
    }
    let (status, body, _) = answers.last().expect("answers");
    assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("endpoints are ejected"), "{body}");
    assert!(
        outbound.metric(
            "ambassador_upstream_unavailable_total",
            &[("route", "outbound"), ("reason", "all_ejected")]
        ) >= Some(20.0)
    );
}

// ---------- DNS ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_follows_dns_changes_within_the_ttl() {
    let mesh = Mesh::new();
    // One port free on both loopback addresses: the name points at 127.0.0.1 and/or ::1.
    let port = test_support::ports::free_dual_stack_port();
    let (v4, v6) = (
        addr(port),
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    );
    let (app4, hits4) = app("v4").await;
    let (app6, hits6) = app("v6").await;
    let _in4 = mesh.inbound(v4, app4);
    let _in6 = mesh.inbound(v6, app6);
    let dns = Dnsmasq::start(None, &[("127.0.0.1", "api.mesh.test")]);
    let out_addr = addr(free_port());
    let outbound = mesh.outbound(
        out_addr,
        &[
            "--outbound-dns".into(),
            format!("api.mesh.test:{port}"),
            "--dns-nameserver".into(),
            format!("127.0.0.1:{}", dns.port),
            "--balancer".into(),
            "round-robin".into(),
        ],
    );
    let client = client();
    Wait::new("the route's first DNS answer")
        .timeout(Duration::from_secs(5))
        .every(Duration::from_millis(50))
        .until_async(async || get(&client, out_addr).await.0 == StatusCode::OK)
        .await;

    dns.answer(&[("127.0.0.1", "api.mesh.test"), ("::1", "api.mesh.test")]);
    let added = Wait::new("the added endpoint")
        .timeout(Duration::from_secs(3))
        .elapsed_async(async || endpoint_state(&outbound, v6, "healthy"))
        .await
        .expect("the added endpoint never appeared");
    assert!(
        added < Duration::from_millis(1600),
        "added after {added:?} (TTL 1s)"
    );
    let before = hits6.load(Ordering::Relaxed);
    for _ in 0..10 {
        assert_eq!(get(&client, out_addr).await.0, StatusCode::OK);
    }
    assert!(
        hits6.load(Ordering::Relaxed) >= before + 4,
        "the added endpoint gets traffic"
    );

    dns.answer(&[("::1", "api.mesh.test")]);
    let removed = Wait::new("the removed endpoint to leave")
        .timeout(Duration::from_secs(3))
        .elapsed_async(async || {
            outbound.metric("ambassador_upstream_endpoints", &[("route", "outbound")]) == Some(1.0)
        })
        .await
        .expect("the removed endpoint never left");
    assert!(
        removed < Duration::from_millis(1600),
        "removed after {removed:?} (TTL 1s)"
    );
    let v4_hits = hits4.load(Ordering::Relaxed);
    for _ in 0..10 {
        let (status, body, _) = get(&client, out_addr).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "v6"));
    }
    assert_eq!(hits4.load(Ordering::Relaxed), v4_hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_binary_a_slow_endpoint_loses_most_traffic() {
    let mesh = Mesh::new();
    let (slow, slow_hits) = app_with("slow", StatusCode::OK, Duration::from_millis(250)).await;
    let (fast1, fast1_hits) = app("fast-1").await;
    let (fast2, fast2_hits) = app("fast-2").await;
    let (_inbound, _outbound, out_addr) = mesh_over(&mesh, &[slow, fast1, fast2], &[]);
    // Warm-up: first connections (mTLS handshakes) make every endpoint look slow at first.
    let warm = client();
    for _ in 0..30 {
        assert_eq!(get(&warm, out_addr).await.0, StatusCode::OK);
    }
    let counted = |h: &AtomicU64| h.load(Ordering::Relaxed);
    let (s0, f10, f20) = (
        counted(&slow_hits),
        counted(&fast1_hits),
        counted(&fast2_hits),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let stop = Arc::clone(&stop);
        workers.push(tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::Relaxed) {
                assert_eq!(get(&client, out_addr).await.0, StatusCode::OK);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let slow = counted(&slow_hits) - s0;
    let total = slow + counted(&fast1_hits) - f10 + counted(&fast2_hits) - f20;
    eprintln!("slow={slow} total={total}");
    assert!(total > 300, "too little load: {total}");
    assert!(
        (slow as f64) < 0.05 * total as f64,
        "the slow endpoint got {slow} of {total}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_binary_a_post_is_not_retried_after_a_503_but_a_get_is() {
    let mesh = Mesh::new();
    let (failing, failing_hits) =
        app_with("failing", StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO).await;
    let (healthy, healthy_hits) = app("healthy").await;
    // Round robin: every other POST meets the failing endpoint (until its breaker ejects it).
    let (_inbound, outbound, out_addr) = mesh_over(
        &mesh,
        &[failing, healthy],
        &["--balancer".into(), "round-robin".into()],
    );
    let mut post_statuses = Vec::new();
    for _ in 0..10 {
        post_statuses.push(send("POST", out_addr).await);
    }
    let sent = failing_hits.load(Ordering::Relaxed) + healthy_hits.load(Ordering::Relaxed);
    assert_eq!(sent, 10, "each POST reached an app exactly once");
    assert!(
        post_statuses.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "{post_statuses:?}"
    );
    // Five 503s in a row ejected the failing endpoint for ~1s; once that runs out, the next request is its
    // probe: a GET meeting the 503 there is retried on the healthy one.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let before = healthy_hits.load(Ordering::Relaxed);
    for _ in 0..10 {
        assert_eq!(
            send("GET", out_addr).await,
            StatusCode::OK,
            "a GET is retried on the other endpoint"
        );
    }
    assert_eq!(healthy_hits.load(Ordering::Relaxed) - before, 10);
    assert!(
        outbound.metric(
            "ambassador_upstream_retries_total",
            &[("route", "outbound"), ("reason", "status")]
        ) >= Some(1.0)
    );
}
