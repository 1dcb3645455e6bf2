//! The resilience layer in-process, against real TCP backends on loopback and a real DNS server
//! (dnsmasq): ejection of a killed endpoint under load, slow endpoints, total outage, retry rules, the
//! retry budget, load shedding and DNS changes.
//!
//! Each try is sent by a plain hyper client (the mTLS transport is the outbound path's business and is
//! covered by its own tests); the decisions under test are the route's.

mod dnsmasq;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ambassador::resilience::{
    BalancerKind, DiscoveryConfig, ERROR_HEADER, EndpointsConfig, Metrics, ReplayBody, Route,
    RouteError, RouteResilienceConfig, TryError,
};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use dnsmasq::{Dnsmasq, free_dns_port};
use test_support::metrics::Metrics as Page;
use test_support::wait::Wait;

// ---------- backends ----------

/// How a backend answers.
#[derive(Debug, Clone)]
struct Behaviour {
    status: u16,
    delay: Duration,
}

/// An HTTP backend on a loopback port that can be killed (listener closed, every connection dropped,
/// as when its process dies) and started again on the same address.
struct Backend {
    addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    hits: Arc<AtomicU64>,
    stop: Mutex<CancellationToken>,
}

impl Backend {
    async fn start(addr: SocketAddr) -> Arc<Backend> {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let backend = Arc::new(Backend {
            addr: listener.local_addr().expect("local addr"),
            behaviour: Arc::new(Mutex::new(Behaviour {
                status: 200,
                delay: Duration::ZERO,
            })),
            hits: Arc::new(AtomicU64::new(0)),
            stop: Mutex::new(CancellationToken::new()),
        });
        backend.serve(listener);
        backend
    }

    async fn loopback() -> Arc<Backend> {
        Self::start("127.0.0.1:0".parse().expect("addr")).await
    }

    fn serve(&self, listener: TcpListener) {
        let stop = CancellationToken::new();
        *self.stop.lock().expect("lock") = stop.clone();
        let behaviour = Arc::clone(&self.behaviour);
        let hits = Arc::clone(&self.hits);
        let name = self.addr.to_string();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
                };
                let behaviour = Arc::clone(&behaviour);
                let hits = Arc::clone(&hits);
                let name = name.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let behaviour = behaviour.lock().expect("lock").clone();
                        let hits = Arc::clone(&hits);
                        let name = name.clone();
                        async move {
                            let _ = req.into_body().collect().await;
                            hits.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(behaviour.delay).await;
                            let mut response = Response::new(Full::new(Bytes::from(name)));
                            *response.status_mut() =
                                StatusCode::from_u16(behaviour.status).expect("status");
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        // Dropping the connection closes the socket, as a dying process would.
                        () = stop.cancelled() => {}
                        _ = conn => {}
                    }
                });
            }
        });
    }

    fn kill(&self) {
        self.stop.lock().expect("lock").cancel();
    }

    async fn restart(&self) {
        // The old listener closes asynchronously: bind once its address is free.
        let listener = Wait::new(format_args!("backend {} free to bind again", self.addr))
            .timeout(Duration::from_secs(2))
            .value_async(async || TcpListener::bind(self.addr).await.ok())
            .await;
        self.serve(listener);
    }

    fn set(&self, status: u16, delay: Duration) {
        *self.behaviour.lock().expect("lock") = Behaviour { status, delay };
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A listener that accepts connections and never answers.
async fn black_hole() -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                accepted = listener.accept() => if let Ok((s, _)) = accepted { held.push(s) },
            }
        }
    });
    (addr, stop)
}

// ---------- the route under test ----------

struct Harness {
    route: Route,
    client: Client<HttpConnector, ReplayBody<Full<Bytes>>>,
    registry: prometheus::Registry,
    _stop: tokio_util::sync::DropGuard,
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: String,
    error_kind: Option<String>,
    elapsed: Duration,
}

impl Harness {
    fn new(
        name: &str,
        endpoints: EndpointsConfig,
        config: RouteResilienceConfig,
        discovery: DiscoveryConfig,
    ) -> Self {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry).expect("register metrics");
        let stop = CancellationToken::new();
        let route = Route::start(
            name,
            &endpoints,
            &config,
            &discovery,
            &metrics,
            stop.clone(),
        )
        .expect("route starts");
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeouts.connect));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.timeouts.idle)
            .build(connector);
        Harness {
            route,
            client,
            registry,
            _stop: stop.drop_guard(),
        }
    }

    fn fixed(name: &str, addrs: &[SocketAddr], config: RouteResilienceConfig) -> Self {
        Self::new(
            name,
            EndpointsConfig::Static(addrs.to_vec()),
            config,
            DiscoveryConfig::default(),
        )
    }

    async fn send(&self, method: &str, headers: &[(&str, &str)], body: &'static [u8]) -> Answer {
        let mut builder = Request::builder().method(method).uri("/work");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let req = builder
            .body(Full::new(Bytes::from_static(body)))
            .expect("request");
        let started = Instant::now();
        let client = &self.client;
        let result = self
            .route
            .call(
                req,
                |endpoint, req: Request<ReplayBody<Full<Bytes>>>| async move {
                    let (mut parts, body) = req.into_parts();
                    parts.uri = format!("http://{}{}", endpoint.addr, parts.uri.path())
                        .parse()
                        .expect("uri");
                    client
                        .request(Request::from_parts(parts, body))
                        .await
                        .map_err(|e| {
                            if e.is_connect() {
                                TryError::Connect(Box::new(e))
                            } else {
                                TryError::Other(Box::new(e))
                            }
                        })
                },
            )
            .await;
        let response = match result {
            Ok(response) => response.map(http_body_util::Either::Left),
            Err(e) => e.into_response(),
        };
        let status = response.status();
        let error_kind = response
            .headers()
            .get(ERROR_HEADER)
            .map(|v| v.to_str().expect("ascii").to_owned());
        let body = match response.into_body().collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(e) => format!("body error: {e}"),
        };
        Answer {
            status,
            body,
            error_kind,
            elapsed: started.elapsed(),
        }
    }

    async fn get(&self) -> Answer {
        self.send("GET", &[], b"").await
    }

    fn health_of(&self, addr: SocketAddr) -> Option<&'static str> {
        self.route
            .endpoints()
            .into_iter()
            .find(|e| e.addr == addr)
            .map(|e| e.health)
    }

    fn metrics(&self) -> Page {
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &self.registry.gather(),
            &mut out,
        )
        .expect("encode");
        Page::parse(&String::from_utf8(out).expect("utf8")).expect("a metrics page")
    }
}

/// Runs `workers` loops of GETs until `stop` is set; returns (ok, failed) counts and the failures seen.
fn load(
    harness: Arc<Harness>,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64, Vec<String>)> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let harness = Arc::clone(&harness);
            let stop = Arc::clone(&stop);
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut failed, mut errors) = (0u64, 0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let answer = harness.get().await;
                    if answer.status == StatusCode::OK {
                        ok += 1;
                    } else {
                        failed += 1;
                        if errors.len() < 5 {
                            errors.push(format!("{} {}", answer.status, answer.body.trim()));
                        }
                    }
                }
                (ok, failed, errors)
            }));
        }
        let mut total = (0, 0, Vec::new());
        for task in tasks {
            let (ok, failed, errors) = task.await.expect("worker");
            total.0 += ok;
            total.1 += failed;
            total.2.extend(errors);
        }
        total
    })
}

/// A wait of at most `limit` for `what`, checked every 5 ms (the tests time how long it took).
fn within(limit: Duration, what: &str) -> Wait<'static> {
    Wait::new(what.to_owned())
        .timeout(limit)
        .every(Duration::from_millis(5))
}

fn quick_breaker(mut config: RouteResilienceConfig) -> RouteResilienceConfig {
    config.circuit_breaker.base_ejection = Duration::from_millis(300);
    config.circuit_breaker.max_ejection = Duration::from_secs(1);
    config
}

// ---------- tests ----------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_endpoint_is_ejected_within_a_second_and_traffic_returns_when_it_is_back() {
    let backends = [
        Backend::loopback().await,
        Backend::loopback().await,
        Backend::loopback().await,
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let harness = Arc::new(Harness::fixed(
        "orders",
        &addrs,
        quick_breaker(RouteResilienceConfig::default()),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(Arc::clone(&harness), 8, Arc::clone(&stop));

    tokio::time::sleep(Duration::from_millis(700)).await;
    let victim = &backends[1];
    assert!(victim.hits() > 0, "the victim took traffic before it died");
    victim.kill();
    let ejected_after = within(Duration::from_secs(3), "the killed endpoint ejected")
        .elapsed_async(async || harness.health_of(victim.addr) == Some("ejected"))
        .await;
    let ejected_after = ejected_after.expect("the killed endpoint was never ejected");
    assert!(
        ejected_after < Duration::from_secs(1),
        "ejected only after {ejected_after:?}"
    );
    let metrics = harness.metrics();
    let endpoint = victim.addr.to_string();
    assert_eq!(
        metrics.get(
            "ambassador_upstream_endpoint_state",
            &[
                ("endpoint", &endpoint),
                ("route", "orders"),
                ("state", "ejected")
            ]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        harness
            .route
            .metrics()
            .ejections_total(&victim.addr.to_string())
            >= 1
    );

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hits_while_dead = victim.hits();
    victim.restart().await;
    let returned = within(
        Duration::from_secs(5),
        "traffic back on the restarted endpoint",
    )
    .elapsed_async(async || victim.hits() > hits_while_dead + 20)
    .await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, errors) = running.await.expect("load");
    assert!(
        returned.is_some(),
        "traffic never returned to the restarted endpoint"
    );
    assert_eq!(harness.health_of(victim.addr), Some("healthy"));
    let ratio = ok as f64 / (ok + failed) as f64;
    eprintln!(
        "ok={ok} failed={failed} ratio={ratio:.5} ejected_after={ejected_after:?} returned_after={returned:?}"
    );
    assert!(ok > 500, "too little load to judge: {ok}");
    assert!(
        ratio >= 0.999,
        "success ratio {ratio:.5} ({failed} failed of {}): {errors:?}",
        ok + failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_loses_most_of_the_traffic() {
    let backends = [
        Backend::loopback().await,
        Backend::loopback().await,
        Backend::loopback().await,
    ];
    backends[0].set(200, Duration::from_millis(80));
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let harness = Arc::new(Harness::fixed(
        "search",
        &addrs,
        RouteResilienceConfig::default(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(Arc::clone(&harness), 4, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, _) = running.await.expect("load");
    assert_eq!(failed, 0);
    let slow = backends[0].hits();
    let total: u64 = backends.iter().map(|b| b.hits()).sum();
    eprintln!("slow={slow} total={total} ok={ok}");
    assert!(total > 300, "too little load: {total}");
    assert!(
        (slow as f64) < 0.05 * total as f64,
        "the slow endpoint still got {slow} of {total}"
    );

    // Round robin, by contrast, keeps sending it a third.
    let config = RouteResilienceConfig {
        balancer: BalancerKind::RoundRobin,
        ..Default::default()
    };
    let rr = Harness::fixed("search-rr", &addrs, config);
    let before = backends[0].hits();
    for _ in 0..30 {
        assert_eq!(rr.get().await.status, StatusCode::OK);
    }
    assert_eq!(backends[0].hits() - before, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_endpoints_down_fail_fast_with_a_503_naming_the_route() {
    let backends = [
        Backend::loopback().await,
        Backend::loopback().await,
        Backend::loopback().await,
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let mut config = RouteResilienceConfig::default();
    config.timeouts.per_try = Duration::from_secs(2);
    config.timeouts.request = Duration::from_secs(3);
    let harness = Harness::fixed("payments", &addrs, config);
    assert_eq!(harness.get().await.status, StatusCode::OK);
    for b in &backends {
        b.kill();
    }
    let mut answers = Vec::new();
    for _ in 0..40 {
        answers.push(harness.get().await);
    }
    for a in &answers {
        assert!(
            a.status == StatusCode::BAD_GATEWAY || a.status == StatusCode::SERVICE_UNAVAILABLE,
            "{a:?}"
        );
        assert!(a.elapsed < Duration::from_millis(500), "not fast: {a:?}");
        assert!(
            a.body.contains("payments"),
            "the body must name the route: {a:?}"
        );
    }
    let last = answers.last().expect("answers");
    assert_eq!(last.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(last.error_kind.as_deref(), Some("all-ejected"));
    assert!(
        last.body.contains("all 3 endpoints are ejected"),
        "{last:?}"
    );
    let fast_503s = answers
        .iter()
        .filter(|a| a.error_kind.as_deref() == Some("all-ejected"))
        .count();
    assert!(
        fast_503s >= 30,
        "only {fast_503s} of 40 were the fast all-ejected 503"
    );
    for a in answers
        .iter()
        .filter(|a| a.error_kind.as_deref() == Some("all-ejected"))
    {
        assert!(
            a.elapsed < Duration::from_millis(20),
            "an all-ejected 503 took {:?}",
            a.elapsed
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_that_never_answer_cannot_hang_a_request_past_its_timeout() {
    let (a, stop_a) = black_hole().await;
    let (b, stop_b) = black_hole().await;
    let mut config = RouteResilienceConfig::default();
    config.timeouts.per_try = Duration::from_millis(150);
    config.timeouts.request = Duration::from_millis(400);
    let harness = Arc::new(Harness::fixed("slowpoke", &[a, b], config));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let harness = Arc::clone(&harness);
        tasks.push(tokio::spawn(async move { harness.get().await }));
    }
    for task in tasks {
        let answer = task.await.expect("request");
        assert!(
            answer.elapsed < Duration::from_millis(600),
            "hung: {answer:?}"
        );
        assert!(
            answer.status == StatusCode::GATEWAY_TIMEOUT
                || answer.status == StatusCode::SERVICE_UNAVAILABLE,
            "{answer:?}"
        );
        assert!(answer.body.contains("slowpoke"), "{answer:?}");
    }
    stop_a.cancel();
    stop_b.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_retried_after_a_response_error_but_a_get_is() {
    let failing = Backend::loopback().await;
    failing.set(503, Duration::ZERO);
    let healthy = Backend::loopback().await;
    let mut config = RouteResilienceConfig {
        balancer: BalancerKind::RoundRobin,
        ..Default::default()
    };
    config.circuit_breaker.enabled = false;
    let harness = Harness::fixed("ledger", &[failing.addr, healthy.addr], config);

    let mut post_503s = 0;
    for _ in 0..20 {
        let answer = harness.send("POST", &[], b"debit 10").await;
        if answer.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(
                answer.error_kind, None,
                "the 503 is the endpoint's own, passed through"
            );
            post_503s += 1;
        }
    }
    assert_eq!(
        failing.hits() + healthy.hits(),
        20,
        "every POST was sent exactly once"
    );
    assert_eq!(
        post_503s, 10,
        "the POSTs that met the failing endpoint got its 503"
    );

    let (f0, h0) = (failing.hits(), healthy.hits());
    for _ in 0..20 {
        assert_eq!(
            harness.get().await.status,
            StatusCode::OK,
            "a GET is retried on the other endpoint"
        );
    }
    assert_eq!(healthy.hits() - h0, 20);
    assert!(
        failing.hits() - f0 >= 9,
        "GETs did meet the failing endpoint first"
    );

    for _ in 0..10 {
        let answer = harness
            .send("POST", &[("Idempotency-Key", "k-1")], b"debit 10")
            .await;
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "a POST with an Idempotency-Key is retried"
        );
    }
    assert!(harness.route.metrics().retries_total() >= 14);

    // A POST is retried when the connection failed: it never reached the endpoint.
    // A port with nothing listening (bound then released).
    let dead = test_support::ports::free_addr();
    let harness = Harness::fixed(
        "ledger-2",
        &[dead, healthy.addr],
        RouteResilienceConfig::default(),
    );
    for _ in 0..10 {
        assert_eq!(
            harness.send("POST", &[], b"credit 5").await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_stops_a_retry_storm() {
    let failing = Backend::loopback().await;
    failing.set(503, Duration::ZERO);
    let mut config = RouteResilienceConfig::default();
    config.circuit_breaker.enabled = false;
    config.retries.max_retries = 3;
    config.retries.budget_ratio = 0.1;
    config.retries.budget_min_per_second = 0.5;
    config.retries.backoff_base = Duration::from_millis(1);
    config.retries.backoff_max = Duration::from_millis(2);
    let harness = Arc::new(Harness::fixed("storm", &[failing.addr], config));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let harness = Arc::clone(&harness);
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                assert_eq!(harness.get().await.status, StatusCode::SERVICE_UNAVAILABLE);
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker");
    }
    let requests = 400u64;
    let hits = failing.hits();
    let retries = harness.route.metrics().retries_total();
    eprintln!(
        "hits={hits} retries={retries} exhausted={}",
        harness.route.metrics().budget_exhausted_total()
    );
    // Without a budget: 4 tries each = 1600. With it: 10% of 400 plus 0.5/s over 10s = 45 retries at most.
    assert!(retries <= 45, "{retries} retries");
    assert_eq!(hits, requests + retries);
    assert!(harness.route.metrics().budget_exhausted_total() > 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_concurrency_limit_requests_are_shed_at_once() {
    let backend = Backend::loopback().await;
    backend.set(200, Duration::from_millis(300));
    let config = RouteResilienceConfig {
        max_concurrent_requests: 2,
        ..Default::default()
    };
    let harness = Arc::new(Harness::fixed("reports", &[backend.addr], config));
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let harness = Arc::clone(&harness);
        tasks.push(tokio::spawn(async move { harness.get().await }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("request"));
    }
    let ok = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    let shed: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.error_kind.as_deref() == Some("overloaded"))
        .collect();
    assert_eq!((ok, shed.len()), (2, 3), "{answers:?}");
    for a in shed {
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            a.elapsed < Duration::from_millis(50),
            "shedding must be immediate: {a:?}"
        );
        assert!(a.body.contains("reports"));
    }
    assert_eq!(harness.route.metrics().shed_total(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_is_sent_once_and_a_small_one_is_replayed() {
    let failing = Backend::loopback().await;
    failing.set(503, Duration::ZERO);
    let healthy = Backend::loopback().await;
    let mut config = RouteResilienceConfig {
        balancer: BalancerKind::RoundRobin,
        ..Default::default()
    };
    config.circuit_breaker.enabled = false;
    config.retries.max_buffered_body_bytes = 1024;
    let harness = Harness::fixed("upload", &[failing.addr, healthy.addr], config);
    static LARGE: [u8; 4096] = [b'x'; 4096];
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(harness.send("PUT", &[], &LARGE).await.status);
    }
    assert_eq!(
        failing.hits() + healthy.hits(),
        4,
        "bodies above the cap get one try"
    );
    assert!(statuses.contains(&StatusCode::SERVICE_UNAVAILABLE));
    for _ in 0..4 {
        assert_eq!(
            harness.send("PUT", &[], b"small").await.status,
            StatusCode::OK
        );
    }
}

// ---------- DNS ----------

/// Two backends on the same port, one on 127.0.0.1 and one on ::1: the two loopback addresses a DNS
/// name can point at (A and AAAA).
async fn dual_stack_backends() -> (Arc<Backend>, Arc<Backend>) {
    for _ in 0..50 {
        let v4 = Backend::loopback().await;
        let v6_addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v4.addr.port()));
        if std::net::TcpListener::bind(v6_addr).is_ok() {
            return (Arc::clone(&v4), Backend::start(v6_addr).await);
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

fn dns_discovery(nameserver: SocketAddr) -> DiscoveryConfig {
    DiscoveryConfig {
        nameserver: Some(nameserver),
        ttl_floor: Duration::from_millis(200),
        ttl_ceiling: Duration::from_secs(10),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_changes_are_used_within_the_ttl_and_removed_endpoints_drain() {
    let (v4, v6) = dual_stack_backends().await;
    let port = v4.addr.port();
    let mut dns = Dnsmasq::start(None, &[("127.0.0.1", "api.mesh.test")]);
    // Round robin makes "the new endpoint gets traffic" deterministic; balancing is tested elsewhere.
    let harness = Harness::new(
        "api",
        EndpointsConfig::Dns(format!("api.mesh.test:{port}")),
        RouteResilienceConfig {
            balancer: BalancerKind::RoundRobin,
            ..Default::default()
        },
        dns_discovery(dns.nameserver()),
    );
    let addrs = |h: &Harness| {
        h.route
            .endpoints()
            .into_iter()
            .map(|e| e.addr)
            .collect::<Vec<_>>()
    };
    within(Duration::from_secs(3), "the first answer")
        .until_async(async || addrs(&harness) == vec![v4.addr])
        .await;
    assert_eq!(harness.get().await.body, v4.addr.to_string());

    // An endpoint is added (TTL 1s).
    dns.answer(&[("127.0.0.1", "api.mesh.test"), ("::1", "api.mesh.test")]);
    let added = within(Duration::from_secs(4), "the v6 endpoint added")
        .elapsed_async(async || addrs(&harness).len() == 2)
        .await
        .expect("v6 endpoint added");
    assert!(
        added < Duration::from_millis(1500),
        "the new endpoint took {added:?} (TTL 1s)"
    );
    let before = v6.hits();
    for _ in 0..20 {
        assert_eq!(harness.get().await.status, StatusCode::OK);
    }
    assert_eq!(v6.hits() - before, 10, "the added endpoint gets its share");

    // One is removed while a request to it is in flight: the request finishes, no new ones go there.
    v4.set(200, Duration::from_millis(1500));
    let harness = Arc::new(harness);
    // Round robin: of two requests at once, one lands on each endpoint.
    let hits_before = (v4.hits(), v6.hits());
    let in_flight: Vec<_> = (0..2)
        .map(|_| {
            let harness = Arc::clone(&harness);
            tokio::spawn(async move { harness.get().await })
        })
        .collect();
    within(Duration::from_secs(5), "one request at each endpoint")
        .until_async(async || (v4.hits(), v6.hits()) == (hits_before.0 + 1, hits_before.1 + 1))
        .await;
    dns.answer(&[("::1", "api.mesh.test")]);
    let removed = within(Duration::from_secs(4), "the v4 endpoint removed")
        .elapsed_async(async || addrs(&harness) == vec![v6.addr])
        .await
        .expect("v4 endpoint removed");
    assert!(
        removed < Duration::from_millis(1500),
        "the removal took {removed:?} (TTL 1s)"
    );
    let mut bodies = Vec::new();
    for request in in_flight {
        let answer = request.await.expect("in-flight request");
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "an in-flight request was cut: {answer:?}"
        );
        bodies.push(answer.body);
    }
    assert!(
        bodies.contains(&v4.addr.to_string()),
        "one request was in flight on the removed endpoint: {bodies:?}"
    );
    let v4_hits = v4.hits();
    for _ in 0..20 {
        assert_eq!(harness.get().await.body, v6.addr.to_string());
    }
    assert_eq!(
        v4.hits(),
        v4_hits,
        "no new request went to the removed endpoint"
    );

    // The DNS server dies: the last good answer stays, through several failed refreshes.
    dns.stop();
    let failed_refreshes = || {
        harness.metrics().get(
            "ambassador_upstream_dns_refresh_total",
            &[("result", "error"), ("route", "api")],
        )
    };
    within(Duration::from_secs(10), "three failed DNS refreshes")
        .until_async(async || failed_refreshes() >= Some(3.0))
        .await;
    assert_eq!(addrs(&harness), vec![v6.addr]);
    assert_eq!(harness.get().await.status, StatusCode::OK);
    assert!(failed_refreshes() >= Some(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_starts_before_dns_answers_and_fills_in_when_it_does() {
    let backend = Backend::loopback().await;
    let dns_port = free_dns_port();
    let harness = Harness::new(
        "late",
        EndpointsConfig::Dns(format!("late.mesh.test:{}", backend.addr.port())),
        RouteResilienceConfig::default(),
        dns_discovery(SocketAddr::from(([127, 0, 0, 1], dns_port))),
    );
    let answer = harness.get().await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.error_kind.as_deref(), Some("no-endpoints"));
    assert!(answer.body.contains("route late"), "{answer:?}");
    assert!(
        answer.elapsed < Duration::from_millis(50),
        "no endpoints must fail fast: {answer:?}"
    );

    let _dns = Dnsmasq::start(Some(dns_port), &[("127.0.0.1", "late.mesh.test")]);
    // Lookup failures back off from the floor (200ms) towards the ceiling; a few seconds is plenty.
    within(Duration::from_secs(8), "the endpoints to arrive")
        .until_async(async || !harness.route.endpoints().is_empty())
        .await;
    assert_eq!(harness.get().await.status, StatusCode::OK);
}

#[test]
fn route_errors_render_as_plain_text_naming_the_route() {
    let err: RouteError<TryError> = RouteError::Local {
        status: StatusCode::SERVICE_UNAVAILABLE,
        kind: "all-ejected",
        message: "route x: all 2 endpoints are ejected".into(),
    };
    let response = err.into_response::<Full<Bytes>>();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[ERROR_HEADER], "all-ejected");
}

/// An endpoint that turns tries away unprocessed because it is busy (HTTP/2 REFUSED_STREAM).
#[derive(Debug)]
struct Busy;

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused unprocessed: busy")
    }
}

impl ambassador::resilience::TryFailure for Busy {
    fn is_connect_failure(&self) -> bool {
        false
    }

    fn endpoint_busy(&self) -> bool {
        true
    }
}

/// Tries refused because the endpoint is busy are retried (a POST too: it was not processed)
/// and never eject it: the only endpoint, refusing every other try 40 times in a row, keeps
/// serving, where 5 connect failures in a row would have ejected it.
#[tokio::test(flavor = "current_thread")]
async fn busy_refusals_are_retried_and_never_eject_the_endpoint() {
    let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let harness = Harness::fixed("busy", &[addr], RouteResilienceConfig::default());
    let tries = AtomicU64::new(0);
    for i in 0..40 {
        let req = Request::post("/work")
            .body(Full::new(Bytes::from_static(b"order")))
            .expect("request");
        let result = harness
            .route
            .call(req, |_endpoint, _req: Request<ReplayBody<Full<Bytes>>>| {
                let n = tries.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n.is_multiple_of(2) {
                        Err(Busy)
                    } else {
                        Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                }
            })
            .await;
        assert!(result.is_ok(), "request {i} failed after a busy refusal");
    }
    assert_eq!(tries.load(Ordering::SeqCst), 80, "each request tried twice");
    assert_eq!(
        harness.route.metrics().ejections_total(&addr.to_string()),
        0
    );
}
