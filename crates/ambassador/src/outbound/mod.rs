//! Outbound: the app calls a plain listener on localhost (one per remote, or one routing by
//! `Host`); the ambassador originates mTLS to the remote and checks who it is.

mod resilient;
mod transport;
mod upstream;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use sidecar_kit::Sidecar;
use sidecar_kit::reload::CredentialReloader;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::resilient::Runtime;
use self::transport::Transport;
use self::upstream::{Tries, Upstream, UpstreamError};
use crate::config::{Config, Limits, Mode, OutboundRoute};
use crate::metrics::{Direction, Limit, Metrics, RouteMetrics};
use crate::proxy::access_log::Logged;
use crate::proxy::body::{Counted, Pace};
use crate::proxy::conn::{
    self, Activity, ConnectionLimit, Guarded, LogLimiter, PendingBudget, PendingGuard, Prefixed,
    RequestGuard, Tracked, TunnelEnd,
};
use crate::proxy::error::TransportError;
use crate::proxy::forward::{self, ResponseBody};
use crate::proxy::policy::RequestPolicy;
use crate::proxy::serve::{HttpServer, ServedResponse};
use crate::shard::Shards;

/// The single place that chooses how a route picks endpoints (the resilience layer hooks in
/// here).
fn build_upstream(
    route: &OutboundRoute,
    transport: Transport,
    resilience: &Runtime,
) -> Result<Arc<dyn Upstream>, crate::resilience::ConfigError> {
    resilience.upstream(&route.name, &route.discovery, &route.resilience, transport)
}

/// One outbound route at run time.
#[derive(Debug)]
struct Route {
    name: String,
    upstream: Arc<dyn Upstream>,
    metrics: RouteMetrics,
}

/// What an outbound listener serves: one route, or several chosen by `Host`.
#[derive(Debug)]
enum Routes {
    One(Arc<Route>),
    ByHost(HashMap<String, Arc<Route>>),
}

struct Listener {
    name: String,
    addr: SocketAddr,
    mode: Mode,
    routes: Routes,
    /// Counts connections and limits for the listener itself.
    metrics: RouteMetrics,
    limits: Limits,
    policy: RequestPolicy,
    stop: CancellationToken,
    tracker: TaskTracker,
    /// The worker threads its connections are spread over.
    shards: Arc<Shards>,
    /// HTTP/1.1, and HTTP/2 for apps that speak it with prior knowledge (h2c, gRPC).
    server: HttpServer,
    /// Refusals are logged at most once a second.
    refusal_log: LogLimiter,
}

/// Binds every outbound listener of the configuration; returns their accept loops.
pub async fn bind_all(
    config: &Config,
    reloader: &Arc<CredentialReloader>,
    metrics: &Metrics,
    resilience: &Runtime,
    shards: &Arc<Shards>,
    sidecar: &Sidecar,
) -> anyhow::Result<Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>> {
    let (limits, access_log) = (config.limits, config.telemetry());
    let stop = sidecar.shutdown().token();
    let mut by_host = HashMap::new();
    let mut loops: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = Vec::new();
    for cfg in &config.outbound {
        let route_metrics = metrics.route(Direction::Outbound, &cfg.name);
        let transport = Transport::new(
            cfg.identity.clone(),
            cfg.http2,
            &cfg.resilience.timeouts,
            reloader,
            route_metrics.clone(),
            stop.clone(),
        )?;
        let route = Arc::new(Route {
            name: cfg.name.clone(),
            upstream: build_upstream(cfg, transport, resilience)
                .map_err(|e| anyhow::anyhow!("outbound route {}: {e}", cfg.name))?,
            metrics: route_metrics.clone(),
        });
        for host in &cfg.hosts {
            by_host.insert(host.clone(), route.clone());
        }
        if let Some(addr) = cfg.listen {
            let listener = listener(
                &cfg.name,
                addr,
                cfg.mode,
                Routes::One(route),
                route_metrics,
                limits,
                access_log,
                shards,
                sidecar,
            );
            loops.push(Box::pin(bind_one(listener).await?));
        }
    }
    if let Some(addr) = config.host_router {
        let listener = listener(
            "host-router",
            addr,
            Mode::Http,
            Routes::ByHost(by_host),
            metrics.route(Direction::Outbound, "host-router"),
            limits,
            access_log,
            shards,
            sidecar,
        );
        loops.push(Box::pin(bind_one(listener).await?));
    }
    Ok(loops)
}

#[allow(clippy::too_many_arguments)]
fn listener(
    name: &str,
    addr: SocketAddr,
    mode: Mode,
    routes: Routes,
    metrics: RouteMetrics,
    limits: Limits,
    access_log: crate::config::Telemetry,
    shards: &Arc<Shards>,
    sidecar: &Sidecar,
) -> Listener {
    Listener {
        name: name.to_owned(),
        addr,
        mode,
        routes,
        metrics,
        limits,
        policy: RequestPolicy::new(&limits, access_log, sidecar.shutdown().requested()),
        stop: sidecar.shutdown().token(),
        tracker: sidecar.shutdown().tracker(),
        shards: shards.clone(),
        server: HttpServer::new(limits),
        refusal_log: LogLimiter::new(),
    }
}

async fn bind_one(listener: Listener) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let tcp = TcpListener::bind(listener.addr).await.map_err(|e| {
        anyhow::anyhow!(
            "outbound `{}`: cannot listen on {}: {e}",
            listener.name,
            listener.addr
        )
    })?;
    tracing::info!(listener = %listener.name, listen = %listener.addr, mode = ?listener.mode, "outbound listening");
    Ok(accept_loop(Arc::new(listener), tcp))
}

async fn accept_loop(listener: Arc<Listener>, tcp: TcpListener) {
    let budget = ConnectionLimit::new(listener.limits.max_connections);
    let pending = PendingBudget::new(listener.limits.max_pending_connections);
    loop {
        let accepted = tokio::select! {
            () = listener.stop.cancelled() => break,
            accepted = tcp.accept() => accepted,
        };
        let (mut stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(listener = %listener.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(permit) = budget.try_acquire() else {
            listener.metrics.limit_exceeded(Limit::MaxConnections);
            if let Some(held) = listener.refusal_log.allow("max_connections") {
                tracing::warn!(listener = %listener.name, %peer, similar_lines_held_back = held, "connection refused: max_connections reached");
            }
            if listener.mode == Mode::Http {
                // Plain HTTP: the app gets a real answer, not a reset.
                tokio::spawn(async move {
                    let _ = stream
                        .write_all(b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-type: text/plain\r\ncontent-length: 54\r\n\r\nambassador: too many connections (max_connections)\r\n\r\n")
                        .await;
                    let _ = stream.shutdown().await;
                });
            }
            continue;
        };
        // A tunnel has no first request to wait for: only HTTP connections are pending.
        let place = (listener.mode == Mode::Http).then(|| {
            let (place, evicted) = pending.admit();
            if evicted {
                listener.metrics.limit_exceeded(Limit::PendingConnections);
                if let Some(held) = listener.refusal_log.allow("max_pending_connections") {
                    tracing::warn!(listener = %listener.name, similar_lines_held_back = held, "max_pending_connections reached: the oldest connection without a request was closed");
                }
            }
            place
        });
        let on = listener.clone();
        listener
            .shards
            .spawn(&listener.tracker, stream, move |stream| async move {
                let _permit = permit;
                let _open = on.metrics.connection_opened();
                match (on.mode, place) {
                    (Mode::Http, Some(place)) => serve_http(&on, stream, peer, place).await,
                    _ => serve_tcp(&on, stream, peer).await,
                }
            });
    }
    tracing::info!(listener = %listener.name, "outbound listener closed");
}

async fn serve_http(
    listener: &Arc<Listener>,
    stream: TcpStream,
    peer: SocketAddr,
    place: PendingGuard,
) {
    // Whether the client opens with the HTTP/2 connection preface (`PRI * HTTP/2.0…`, prior
    // knowledge, as gRPC over plain TCP does). Three bytes decide: no HTTP/1 method starts with
    // `PRI`. They are read (waiting for each to arrive), then read again by hyper.
    let mut stream = Prefixed::new(Vec::new(), stream);
    let h2 = tokio::select! {
        () = listener.stop.cancelled() => return,
        () = place.evicted.cancelled() => return,
        h2 = conn::within(listener.limits.header_read_timeout, stream.starts_with(b"PRI")) => match h2 {
            Some(Ok(h2)) => h2,
            Some(Err(_)) => return,
            None => {
                // Nothing, or not three bytes, within the header read limit: not a client.
                listener.metrics.limit_exceeded(Limit::HeaderReadTimeout);
                return;
            }
        },
    };
    let handler = listener.clone();
    listener
        .server
        .serve(
            stream,
            h2,
            peer,
            Some(place),
            &listener.stop,
            &listener.metrics,
            move |guard, req| handle(handler.clone(), guard, req),
        )
        .await;
}

async fn serve_tcp(listener: &Listener, stream: TcpStream, peer: SocketAddr) {
    let Routes::One(route) = &listener.routes else {
        return;
    };
    let Some(endpoint) = route.upstream.pick() else {
        route.metrics.upstream_error("no_endpoint");
        return;
    };
    let remote = match route.upstream.transport().connect_raw(&endpoint).await {
        Ok(remote) => remote,
        Err(e) => {
            route.metrics.upstream_error(e.kind());
            tracing::warn!(route = %route.name, %peer, error = %e, "cannot open the mTLS connection");
            return;
        }
    };
    let activity = Activity::new(false);
    let local = Tracked::new(stream, activity.clone());
    match conn::tunnel(
        local,
        remote,
        &activity,
        listener.limits.idle_timeout,
        &listener.stop,
    )
    .await
    {
        Ok(TunnelEnd::Idle) => listener.metrics.limit_exceeded(Limit::IdleTimeout),
        Ok(_) => {}
        Err(e) => tracing::debug!(route = %route.name, %peer, error = %e, "tcp tunnel error"),
    }
}

fn select_route<'a>(routes: &'a Routes, req: &Request<Incoming>) -> Result<&'a Arc<Route>, String> {
    match routes {
        Routes::One(route) => Ok(route),
        Routes::ByHost(map) => {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().host())
                .unwrap_or_default();
            let name = host
                .rsplit_once(':')
                .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
                .map_or(host, |(name, _)| name);
            let lower = name.to_ascii_lowercase();
            map.get(&lower)
                .ok_or_else(|| format!("ambassador: no outbound route for host `{name}`\n"))
        }
    }
}

async fn handle(
    listener: Arc<Listener>,
    guard: RequestGuard,
    req: Request<Incoming>,
) -> Result<ServedResponse, Infallible> {
    let response = respond(listener, req).await;
    Ok(response.map(|body| Guarded::new(body, guard)))
}

async fn respond(
    listener: Arc<Listener>,
    mut req: Request<Incoming>,
) -> Response<Logged<ResponseBody>> {
    let policy = &listener.policy;
    let http1 = req.version() != Version::HTTP_2;
    let mut exchange = policy.begin(&req, http1);
    if let Some(refused) = policy.check(&mut req, &mut exchange, &listener.metrics) {
        return policy.finish(exchange, &listener.metrics, "app", refused);
    }
    let route = match select_route(&listener.routes, &req) {
        Ok(route) => route.clone(),
        Err(message) => {
            let response = forward::answer(StatusCode::NOT_FOUND, message);
            return policy.finish(exchange, &listener.metrics, "app", response);
        }
    };
    if exchange.method() == Method::CONNECT {
        let response = forward::answer(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "ambassador: outbound route `{}` does not tunnel CONNECT; use a route with mode tcp\n",
                route.name
            ),
        );
        return policy.finish(exchange, &route.metrics, "app", response);
    }

    let upgrade = forward::wants_upgrade(&req);
    forward::strip_hop_by_hop(req.headers_mut(), upgrade);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    *req.version_mut() = Version::HTTP_11;
    let tries = Tries::default();
    let pace = Pace::for_request(&req, &listener.limits);
    let body = |body| Either::Left(Counted::new(body, exchange.request_bytes(), pace.as_ref()));
    let called = route.upstream.call(req.map(body), &tries).await;
    if let Some(pace) = &pace {
        pace.answered();
    }
    let (endpoint, retries) = tries.get();
    exchange.set_upstream(endpoint, retries);
    let response = match called {
        Ok(mut response) => {
            let status = response.status();
            match client_upgrade {
                Some(client) if forward::upgrade_accepted(exchange.method(), status) => {
                    let remote = hyper::upgrade::on(&mut response);
                    forward::strip_hop_by_hop(response.headers_mut(), true);
                    forward::spawn_tunnel(
                        &listener.tracker,
                        client,
                        remote,
                        listener.limits.idle_timeout,
                        listener.stop.clone(),
                        route.name.clone(),
                    );
                }
                _ => forward::strip_hop_by_hop(response.headers_mut(), false),
            }
            response.map(Either::Left)
        }
        Err(_) if pace.as_ref().is_some_and(Pace::was_cut) => {
            route.metrics.limit_exceeded(Limit::MinBodyRate);
            forward::body_too_slow(&format!("outbound route `{}`", route.name), http1)
        }
        Err(e) => {
            route.metrics.upstream_error(e.kind());
            tracing::warn!(route = %route.name, error = %e, "outbound request failed");
            let mut response = forward::answer(
                e.status(),
                format!("ambassador: outbound route `{}`: {e}\n", route.name),
            );
            if let UpstreamError::Transport(TransportError::IdentityMismatch { .. }) = e {
                response.headers_mut().insert(
                    "x-ambassador-error",
                    HeaderValue::from_static("identity-mismatch"),
                );
            }
            response
        }
    };
    policy.finish(exchange, &route.metrics, "app", response)
}
