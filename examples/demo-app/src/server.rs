//! The app's HTTP server.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::DemoError;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to serve on.
    #[arg(long, env = "DEMO_APP_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Name this app answers with (tells pods apart).
    #[arg(long, env = "DEMO_APP_NAME", default_value = "demo-app")]
    pub name: String,
    /// Directory whose files are served under /config/ (git-sync's published link).
    #[arg(long, env = "DEMO_APP_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,
    /// File to append an access log line to for each request to `/` (JSON, one object per
    /// line), as legacy apps write theirs: the log-shipper tails it.
    #[arg(long, env = "DEMO_APP_ACCESS_LOG")]
    pub access_log: Option<PathBuf>,
}

#[derive(Clone)]
struct AppState {
    name: Arc<str>,
    config_dir: Option<Arc<Path>>,
    started: Instant,
    hits: Arc<Mutex<BTreeMap<&'static str, u64>>>,
    access_log: Option<Arc<Mutex<std::fs::File>>>,
}

impl AppState {
    fn count(&self, route: &'static str) {
        // A poisoned lock only means another request panicked mid-increment; keep counting.
        let mut hits = self.hits.lock().unwrap_or_else(|p| p.into_inner());
        *hits.entry(route).or_default() += 1;
    }
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let access_log = match &args.access_log {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| DemoError::AccessLog {
                    path: path.clone(),
                    source,
                })?;
            Some(Arc::new(Mutex::new(file)))
        }
        None => None,
    };
    let state = AppState {
        name: args.name.into(),
        config_dir: args.config_dir.map(Into::into),
        started: Instant::now(),
        hits: Arc::default(),
        access_log,
    };
    let app = Router::new()
        .route("/", get(hello))
        .route("/status.xml", get(status_xml))
        .route("/config/{*file}", get(config_file))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| DemoError::Listen {
            addr: args.listen,
            source,
        })?;
    eprintln!("demo-app listening on {}", args.listen);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop_signal())
        .await?;
    Ok(())
}

/// As PID 1 in a container SIGTERM has no default action, so the app must handle it to stop
/// promptly.
pub(crate) async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the app can only be killed; keep serving.
        _ => std::future::pending::<()>().await,
    }
}

/// Names the app and the caller identity the ambassador passed in `X-Forwarded-Client-Cert`.
async fn hello(State(state): State<AppState>, headers: HeaderMap) -> String {
    state.count("/");
    let caller = headers
        .get("x-forwarded-client-cert")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    if let Some(log) = &state.access_log {
        let line = serde_json::json!({
            "time_unix_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            "method": "GET",
            "path": "/",
            "status": 200,
            "caller": caller,
        });
        // One write of a whole line, so the shipper never sees half of one.
        let mut line = line.to_string();
        line.push('\n');
        let mut file = log.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(line.as_bytes()) {
            eprintln!("demo-app: cannot write the access log: {e}");
        }
    }
    format!("hello from {}\ncaller: {caller}\n", state.name)
}

async fn status_xml(State(state): State<AppState>) -> Response {
    state.count("/status.xml");
    let uptime = state.started.elapsed().as_secs();
    let (d, h, m, s) = (
        uptime / 86_400,
        uptime % 86_400 / 3600,
        uptime % 3600 / 60,
        uptime % 60,
    );
    let hits = state.hits.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut routes = String::new();
    for (route, count) in hits {
        routes.push_str(&format!(
            "    <route path=\"{route}\"><count>{count}</count></route>\n"
        ));
    }
    let config_files = match &state.config_dir {
        Some(dir) => std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0),
        None => 0,
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<status>\n  <server name=\"{}\" version=\"{}\">\n    <state>UP</state>\n    <uptime>{d}d {h}h {m}m {s}s</uptime>\n  </server>\n  <requests>\n{routes}  </requests>\n  <config files=\"{config_files}\"/>\n</status>\n",
        xml_escape(&state.name),
        env!("CARGO_PKG_VERSION"),
    );
    ([(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn config_file(State(state): State<AppState>, UrlPath(file): UrlPath<String>) -> Response {
    state.count("/config");
    let Some(dir) = &state.config_dir else {
        return (StatusCode::NOT_FOUND, "no --config-dir configured\n").into_response();
    };
    let relative = Path::new(&file);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return (StatusCode::BAD_REQUEST, "plain relative paths only\n").into_response();
    }
    // Read through the link on every request, as an app following git-sync's symlink does.
    match tokio::fs::read(dir.join(relative)).await {
        Ok(bytes) => bytes.into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            (StatusCode::NOT_FOUND, format!("{file}: not found\n")).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{file}: {e}\n")).into_response(),
    }
}
