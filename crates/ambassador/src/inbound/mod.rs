//! Inbound: peers connect with mTLS; allowed ones are forwarded to the app on localhost, as HTTP
//! (per request, with `X-Forwarded-Client-Cert`) or as raw TCP.

mod app;
mod forwarded;
pub(crate) mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sidecar_kit::reload::{CredentialReloader, Credentials};
use sidecar_kit::tls::PeerIdentity;
use sidecar_kit::{Sidecar, error_chain};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::app::AppClient;
use crate::config::{AppProtocol, InboundRoute, Limits, Mode};
use crate::metrics::{Direction, Limit, Metrics, RouteMetrics};
use crate::proxy::body::{Counted, Pace};
use crate::proxy::conn::{
    self, Activity, ConnectionLimit, Guarded, LogLimiter, PendingBudget, PendingGuard, Reclaim,
    RequestGuard, Tracked, TunnelEnd,
};
use crate::proxy::forward::{self, ResponseBody};
use crate::proxy::policy::RequestPolicy;
use crate::proxy::serve::{HttpServer, ServedResponse};
use crate::proxy::tls::refusal_reason;
use crate::shard::Shards;

static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Connections beyond `max_connections` that still get their handshake and a `503` (so the
/// peer learns why, over mTLS); past these the TCP connection is closed unanswered.
pub const OVERFLOW_HANDSHAKES: usize = 16;

/// The TLS side of one listener, swapped whole when certificates reload.
struct ListenerTls {
    acceptor: TlsAcceptor,
    /// Our own URI SAN, for XFCC's `By`.
    by: Option<String>,
}

impl ListenerTls {
    fn build(route: &InboundRoute, credentials: &Credentials) -> anyhow::Result<Self> {
        let alpn: &[&[u8]] = match route.mode {
            Mode::Http => &[b"h2", b"http/1.1"],
            Mode::Tcp => &[],
        };
        let config = tls::server_config(credentials, &route.allow, alpn)?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            by: credentials.leaf.uris.first().cloned(),
        })
    }
}

/// Everything a connection task of one inbound listener needs.
struct Listener {
    route: InboundRoute,
    tls: ArcSwap<ListenerTls>,
    app: AppClient,
    metrics: RouteMetrics,
    limits: Limits,
    policy: RequestPolicy,
    stop: CancellationToken,
    tracker: TaskTracker,
    /// The worker threads its connections are spread over.
    shards: Arc<Shards>,
    server: HttpServer,
    /// Requests in flight to the app (`max_app_requests`), when limited.
    app_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Refusals an attacker can cause at will are logged at most once a second.
    refusal_log: LogLimiter,
}

/// Binds an inbound listener (so a busy port fails the start) and returns its accept loop.
pub async fn bind(
    route: InboundRoute,
    limits: Limits,
    telemetry: crate::config::Telemetry,
    reloader: &Arc<CredentialReloader>,
    metrics: &Metrics,
    shards: &Arc<Shards>,
    sidecar: &Sidecar,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let tcp = TcpListener::bind(route.listen).await.map_err(|e| {
        anyhow::anyhow!(
            "inbound `{}`: cannot listen on {}: {e}",
            route.name,
            route.listen
        )
    })?;
    let tls = ListenerTls::build(&route, &reloader.current())?;
    let app_authority = Authority::try_from(route.app.to_string())
        .map_err(|e| anyhow::anyhow!("inbound `{}`: app address: {e}", route.name))?;
    let mut policy = RequestPolicy::new(&limits, telemetry, sidecar.shutdown().requested());
    if let Some(rate_limit) = &route.rate_limit {
        policy = policy.with_rate_limit(crate::ratelimit::RateLimiter::new(rate_limit));
    }
    if let Some(jwt) = route.jwt.clone() {
        let ready = sidecar.readiness().register(format!("jwt {}", route.name));
        let auth = crate::jwt::Authenticator::start(
            &route.name,
            jwt,
            ready,
            &metrics.jwt,
            sidecar.shutdown().token(),
        )
        .map_err(|e| anyhow::anyhow!("inbound `{}`: {e}", route.name))?;
        policy = policy.with_jwt(auth);
    }
    let listener = Arc::new(Listener {
        app: AppClient::new(route.app, app_authority, route.app_protocol),
        tls: ArcSwap::from_pointee(tls),
        metrics: metrics.route(Direction::Inbound, &route.name),
        limits,
        policy,
        stop: sidecar.shutdown().token(),
        tracker: sidecar.shutdown().tracker(),
        shards: shards.clone(),
        server: HttpServer::new(limits),
        app_slots: (limits.max_app_requests > 0)
            .then(|| Arc::new(tokio::sync::Semaphore::new(limits.max_app_requests))),
        refusal_log: LogLimiter::new(),
        route,
    });
    spawn_reload(listener.clone(), reloader);
    tracing::info!(
        route = %listener.route.name,
        listen = %listener.route.listen,
        app = %listener.route.app,
        mode = ?listener.route.mode,
        "inbound listening"
    );
    Ok(accept_loop(listener, tcp))
}

fn spawn_reload(listener: Arc<Listener>, reloader: &Arc<CredentialReloader>) {
    let mut updates = reloader.subscribe();
    let stop = listener.stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = updates.changed() => if changed.is_err() { return },
            }
            let credentials = updates.borrow_and_update().clone();
            match ListenerTls::build(&listener.route, &credentials) {
                // New handshakes use the new config; established connections keep theirs.
                Ok(tls) => listener.tls.store(Arc::new(tls)),
                Err(e) => tracing::error!(
                    route = %listener.route.name,
                    error = %e,
                    "cannot use the reloaded certificates; keeping the old ones"
                ),
            }
        }
    });
}

async fn accept_loop(listener: Arc<Listener>, tcp: TcpListener) {
    let budget = ConnectionLimit::new(listener.limits.max_connections);
    let overflow = ConnectionLimit::new(OVERFLOW_HANDSHAKES);
    let pending = PendingBudget::new(listener.limits.max_pending_connections);
    loop {
        let accepted = tokio::select! {
            () = listener.stop.cancelled() => break,
            accepted = tcp.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(route = %listener.route.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = budget.try_acquire() else {
            listener.metrics.limit_exceeded(Limit::MaxConnections);
            let Some(permit) = overflow.try_acquire() else {
                if let Some(held) = listener.refusal_log.allow("max_connections") {
                    tracing::warn!(route = %listener.route.name, %peer, similar_lines_held_back = held, "connection closed: max_connections reached");
                }
                drop(stream);
                continue;
            };
            if let Some(held) = listener.refusal_log.allow("max_connections") {
                tracing::warn!(route = %listener.route.name, %peer, similar_lines_held_back = held, "connection refused with 503: max_connections reached");
            }
            let listener = listener.clone();
            listener.tracker.clone().spawn(async move {
                let _permit = permit;
                refuse_over_limit(&listener, stream, peer).await;
            });
            continue;
        };
        let (place, evicted) = pending.admit();
        if evicted {
            listener.metrics.limit_exceeded(Limit::PendingConnections);
            if let Some(held) = listener.refusal_log.allow("max_pending_connections") {
                tracing::warn!(route = %listener.route.name, similar_lines_held_back = held, "max_pending_connections reached: the oldest connection without a request was closed");
            }
        }
        let on = listener.clone();
        listener
            .shards
            .spawn(&listener.tracker, stream, move |stream| async move {
                let _permit = permit;
                let _open = on.metrics.connection_opened();
                serve_connection(&on, stream, peer, place).await;
            });
    }
    tracing::info!(route = %listener.route.name, "inbound listener closed");
}

async fn serve_connection(
    listener: &Arc<Listener>,
    stream: TcpStream,
    peer: SocketAddr,
    place: PendingGuard,
) {
    let _ = stream.set_nodelay(true);
    let tls = listener.tls.load_full();
    let handshake = tokio::select! {
        handshake = conn::within(
            listener.limits.header_read_timeout,
            tls.acceptor.accept(stream),
        ) => handshake,
        // Its place in the pending budget went to a newer connection (counted at eviction).
        () = place.evicted.cancelled() => return,
    };
    let stream = match handshake {
        Some(Ok(stream)) => stream,
        Some(Err(e)) => {
            let reason = refusal_reason(&e);
            listener.metrics.tls_failure(reason);
            if let Some(held) = listener.refusal_log.allow(reason) {
                tracing::warn!(route = %listener.route.name, %peer, reason, error = %e, similar_lines_held_back = held, "peer refused");
            }
            return;
        }
        None => {
            listener.metrics.tls_failure("handshake_error");
            if let Some(held) = listener.refusal_log.allow("handshake_error") {
                tracing::warn!(route = %listener.route.name, %peer, reason = "handshake_error", similar_lines_held_back = held, "TLS handshake timed out");
            }
            return;
        }
    };
    let (_, session) = stream.get_ref();
    let identity = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| PeerIdentity::from_der(leaf).ok());
    let h2 = session.alpn_protocol() == Some(b"h2");
    match listener.route.mode {
        Mode::Tcp => {
            // A tunnel has no requests: an authenticated peer leaves the pending budget now.
            drop(place);
            serve_tcp(listener, stream, peer, identity).await
        }
        Mode::Http => {
            let peer_conn = Arc::new(PeerConn {
                xfcc: if listener.route.forward_client_cert {
                    identity
                        .as_ref()
                        .and_then(|id| HeaderValue::try_from(tls::xfcc(id, tls.by.as_deref())).ok())
                } else {
                    None
                },
                peer: identity
                    .as_ref()
                    .and_then(|id| id.spiffe_ids.first().or(id.dns_names.first()).cloned())
                    .unwrap_or_else(|| peer.to_string()),
                http1: !h2,
                forwarded: forwarded::ConnForwarded::new(listener.route.forwarded, peer),
            });
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
                    move |guard, req| handle(handler.clone(), peer_conn.clone(), guard, req),
                )
                .await;
        }
    }
}

/// A connection over `max_connections`, within the overflow: the handshake (the peer must be
/// allowed, as always), then `503` with `Connection: close` to its first request (HTTP/1.1) or
/// a GOAWAY after it (HTTP/2). All of it within the header-read limit.
async fn refuse_over_limit(listener: &Listener, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let tls = listener.tls.load_full();
    let name = &listener.route.name;
    let work = async {
        let stream = match tls.acceptor.accept(stream).await {
            Ok(stream) => stream,
            Err(e) => {
                let reason = refusal_reason(&e);
                listener.metrics.tls_failure(reason);
                if let Some(held) = listener.refusal_log.allow(reason) {
                    tracing::warn!(route = %name, %peer, reason, error = %e, similar_lines_held_back = held, "peer refused");
                }
                return;
            }
        };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let (io, reclaimed) = Reclaim::new(stream);
        let answered = CancellationToken::new();
        let service = {
            let answered = answered.clone();
            let text = format!(
                "ambassador: inbound route `{name}`: too many connections (max_connections {})\n",
                listener.limits.max_connections
            );
            hyper::service::service_fn(move |_req: Request<Incoming>| {
                answered.cancel();
                let mut response: Response<ResponseBody> =
                    forward::answer(StatusCode::SERVICE_UNAVAILABLE, text.clone());
                // HTTP/2 has no `Connection` header; the GOAWAY says it there.
                if !h2 {
                    response
                        .headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                std::future::ready(Ok::<_, Infallible>(response))
            })
        };
        if h2 {
            let conn = listener
                .server
                .http2
                .serve_connection(TokioIo::new(io), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                () = answered.cancelled() => {}
            }
            // GOAWAY; the stream being answered finishes.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        } else {
            // `Connection: close` in the answer makes hyper close after it.
            let _ = listener
                .server
                .http1
                .serve_connection(TokioIo::new(io), service)
                .await;
            if let Some(stream) = reclaimed.take() {
                conn::lingering_close(stream).await;
            }
        }
    };
    if tokio::time::timeout(listener.limits.header_read_timeout, work)
        .await
        .is_err()
    {
        tracing::debug!(route = %name, %peer, "refused connection did not finish in time");
    }
}

async fn serve_tcp(
    listener: &Listener,
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    identity: Option<PeerIdentity>,
) {
    let app = match TcpStream::connect(listener.route.app).await {
        Ok(app) => app,
        Err(e) => {
            listener.metrics.upstream_error("app_unreachable");
            tracing::warn!(route = %listener.route.name, %peer, app = %listener.route.app, error = %e, "cannot reach the app");
            return;
        }
    };
    let _ = app.set_nodelay(true);
    let activity = Activity::new(false);
    let client = Tracked::new(stream, activity.clone());
    let who = identity
        .as_ref()
        .map(|i| i.names().join(", "))
        .unwrap_or_default();
    tracing::debug!(route = %listener.route.name, %peer, peer_identity = who, "tcp tunnel open");
    match conn::tunnel(
        client,
        app,
        &activity,
        listener.limits.idle_timeout,
        &listener.stop,
    )
    .await
    {
        Ok(TunnelEnd::Idle) => listener.metrics.limit_exceeded(Limit::IdleTimeout),
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(route = %listener.route.name, %peer, error = %e, "tcp tunnel error")
        }
    }
}

/// What the request handler knows of its connection.
struct PeerConn {
    xfcc: Option<HeaderValue>,
    /// The peer's identity for the access log.
    peer: String,
    http1: bool,
    forwarded: forwarded::ConnForwarded,
}

async fn handle(
    listener: Arc<Listener>,
    conn: Arc<PeerConn>,
    mut guard: RequestGuard,
    mut req: Request<Incoming>,
) -> Result<ServedResponse, Infallible> {
    let policy = &listener.policy;
    let mut exchange = policy.begin(&req, conn.http1);
    if let Some(refused) = policy.check(&mut req, &mut exchange, &listener.metrics) {
        let response = policy.finish(exchange, &listener.metrics, &conn.peer, refused);
        return Ok(response.map(|body| Guarded::new(body, guard)));
    }
    if let Some(refused) = policy.limit_rate(&mut exchange, &conn.peer, &listener.metrics) {
        let response = policy.finish(exchange, &listener.metrics, &conn.peer, refused);
        return Ok(response.map(|body| Guarded::new(body, guard)));
    }
    if let Some(slots) = &listener.app_slots {
        match slots.clone().try_acquire_owned() {
            // Held until the response has been sent: the app's connection is busy until then.
            Ok(permit) => guard.hold(permit),
            Err(_) => {
                listener.metrics.limit_exceeded(Limit::MaxAppRequests);
                let mut response: Response<ResponseBody> = forward::answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "ambassador: inbound route `{}`: the app has {} requests in flight already (max_app_requests)\n",
                        listener.route.name, listener.limits.max_app_requests
                    ),
                );
                response
                    .headers_mut()
                    .insert("x-ambassador-error", HeaderValue::from_static("overloaded"));
                let response = policy.finish(exchange, &listener.metrics, &conn.peer, response);
                return Ok(response.map(|body| Guarded::new(body, guard)));
            }
        }
    }
    let upgrade = forward::wants_upgrade(&req);
    let headers = req.headers_mut();
    forward::strip_hop_by_hop(headers, upgrade);
    headers.remove(&XFCC);
    if let Some(value) = &conn.xfcc {
        headers.insert(XFCC.clone(), value.clone());
    }
    conn.forwarded.apply(headers);
    if listener.route.request_id {
        exchange.set_request_id(forwarded::ensure_request_id(headers));
    }
    exchange.set_upstream(Some(listener.route.app), 0);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    *req.version_mut() = match listener.route.app_protocol {
        AppProtocol::Http1 => Version::HTTP_11,
        AppProtocol::H2c => Version::HTTP_2,
    };
    let pace = Pace::for_request(&req, &listener.limits);
    let req =
        req.map(|body| Either::Left(Counted::new(body, exchange.request_bytes(), pace.as_ref())));
    // Boxed: awaited in place, the app's request future would be part of this one, which
    // hyper's task for the stream holds and moves whole.
    let answered = Box::pin(listener.app.request(req)).await;
    if let Some(pace) = &pace {
        pace.answered();
    }
    let response = match answered {
        Err(_) if pace.as_ref().is_some_and(Pace::was_cut) => {
            listener.metrics.limit_exceeded(Limit::MinBodyRate);
            forward::body_too_slow(
                &format!("inbound route `{}`", listener.route.name),
                conn.http1,
            )
        }
        Ok(mut response) => {
            let status = response.status();
            match client_upgrade {
                Some(client) if forward::upgrade_accepted(exchange.method(), status) => {
                    let upstream = hyper::upgrade::on(&mut response);
                    forward::strip_hop_by_hop(response.headers_mut(), true);
                    forward::spawn_tunnel(
                        &listener.tracker,
                        client,
                        upstream,
                        listener.limits.idle_timeout,
                        listener.stop.clone(),
                        listener.route.name.clone(),
                    );
                }
                _ => forward::strip_hop_by_hop(response.headers_mut(), false),
            }
            response.map(Either::Left)
        }
        Err(e) if e.is_caller_failure() => {
            listener.metrics.upstream_error("request_body");
            forward::answer(
                StatusCode::BAD_REQUEST,
                format!(
                    "ambassador: inbound route `{}`: the request body could not be read: {}\n",
                    listener.route.name,
                    error_chain(&e)
                ),
            )
        }
        Err(e) => {
            listener.metrics.upstream_error("app_unreachable");
            tracing::warn!(route = %listener.route.name, app = %listener.route.app, error = %e, "the app did not answer");
            forward::answer(
                StatusCode::BAD_GATEWAY,
                format!(
                    "ambassador: inbound route `{}`: the app at {} did not answer: {}\n",
                    listener.route.name,
                    listener.route.app,
                    error_chain(&e)
                ),
            )
        }
    };
    let response = policy.finish(exchange, &listener.metrics, &conn.peer, response);
    Ok(response.map(|body| Guarded::new(body, guard)))
}
