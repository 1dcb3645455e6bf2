//! The admin server: `/livez`, `/readyz`, `/metrics`, `/version`, `POST /shutdown`, and the
//! sidecar's own routes.
//!
//! Read-only endpoints answer anyone (probes come from the kubelet, scrapes from Prometheus).
//! Anything that changes state must be wrapped in [`loopback_only`] (as `POST /shutdown` is) or
//! authenticate its caller itself.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus::{Encoder, Registry, TextEncoder};
use tower::ServiceExt;

use crate::SidecarInfo;
use crate::readiness::Readiness;
use crate::shutdown::Shutdown;

#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) info: &'static SidecarInfo,
    pub(crate) registry: Registry,
    pub(crate) readiness: Readiness,
    pub(crate) shutdown: Shutdown,
    pub(crate) extra: Arc<ArcSwap<Router>>,
}

pub(crate) fn router(state: AdminState) -> Router {
    let extra = state.extra.clone();
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/version", get(version))
        .route(
            "/shutdown",
            post(request_shutdown).layer(middleware::from_fn(loopback_only)),
        )
        .with_state(state)
        // The sidecar may add routes after the server started; look them up per request.
        .fallback_service(tower::service_fn(move |req: Request| {
            let router = Router::clone(&extra.load());
            async move { router.oneshot(req).await }
        }))
}

async fn livez() -> &'static str {
    "ok\n"
}

#[derive(serde::Deserialize)]
struct ReadyQuery {
    verbose: Option<String>,
}

async fn readyz(State(state): State<AdminState>, Query(q): Query<ReadyQuery>) -> Response {
    let report = state.readiness.report();
    let ready = !report.is_empty() && report.iter().all(|c| c.ready);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = String::new();
    if q.verbose.is_some() {
        for check in &report {
            if check.ready {
                body.push_str(&format!("[+]{} ok\n", check.name));
            } else {
                body.push_str(&format!("[-]{} failed: {}\n", check.name, check.reason));
            }
        }
    }
    if ready {
        body.push_str("ok\n");
    } else {
        let failing: Vec<String> = report
            .iter()
            .filter(|c| !c.ready)
            .map(|c| format!("{} ({})", c.name, c.reason))
            .collect();
        body.push_str(&format!("not ready: {}\n", failing.join(", ")));
    }
    (status, body).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let encoder = TextEncoder::new();
    let mut buf = Vec::new();
    match encoder.encode(&state.registry.gather(), &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, encoder.format_type())], buf).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn version(State(state): State<AdminState>) -> Response {
    axum::Json(serde_json::json!({
        "name": state.info.name,
        "version": state.info.version,
        "revision": crate::REVISION.unwrap_or("unknown"),
    }))
    .into_response()
}

async fn request_shutdown(State(state): State<AdminState>) -> &'static str {
    tracing::info!("shutdown requested on the admin server");
    state.shutdown.request();
    "shutting down\n"
}

/// Middleware refusing callers that are not on loopback (403). Wrap every route that changes
/// state with it: `post(handler).layer(axum::middleware::from_fn(loopback_only))`.
///
/// The kit's admin server is started with connection info, which this needs.
pub async fn loopback_only(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if is_loopback(&peer) {
        next.run(request).await
    } else {
        tracing::warn!(%peer, path = %request.uri().path(), "refused a state-changing admin request from off the loopback");
        (
            StatusCode::FORBIDDEN,
            "refused: this endpoint changes state and answers only callers on loopback\n",
        )
            .into_response()
    }
}

fn is_loopback(peer: &SocketAddr) -> bool {
    match peer.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use std::time::Duration;

    const INFO: SidecarInfo = SidecarInfo {
        name: "t",
        env_prefix: "T",
        admin_port: 1,
        version: "0",
        description: "",
        worker_threads: 0,
    };

    async fn post_shutdown_from(peer: &str) -> (StatusCode, bool) {
        let sidecar = crate::Sidecar::detached(&INFO);
        let mut request = Request::post("/shutdown").body(Body::empty()).unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        let response = sidecar.admin_router().oneshot(request).await.unwrap();
        let requested = tokio::time::timeout(
            Duration::from_millis(100),
            sidecar.shutdown().wait_for_request(),
        )
        .await
        .is_ok();
        (response.status(), requested)
    }

    #[tokio::test]
    async fn state_changes_are_refused_off_the_loopback() {
        assert_eq!(
            post_shutdown_from("192.0.2.7:5000").await,
            (StatusCode::FORBIDDEN, false)
        );
        assert_eq!(
            post_shutdown_from("127.0.0.1:5000").await,
            (StatusCode::OK, true)
        );
    }

    #[test]
    fn loopback_includes_v4_mapped_v6() {
        assert!(is_loopback(&"127.0.0.1:1".parse().unwrap()));
        assert!(is_loopback(&"[::1]:1".parse().unwrap()));
        assert!(is_loopback(&"[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(!is_loopback(&"10.0.0.1:1".parse().unwrap()));
        assert!(!is_loopback(&"[::ffff:10.0.0.1]:1".parse().unwrap()));
    }
}
