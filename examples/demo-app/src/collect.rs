//! A stand-in central log store for the demo: what the log-shipper's HTTP sink sends to.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};

use crate::DemoError;

/// How many of the last lines are kept to be shown (the count covers them all).
const KEEP: usize = 100;

#[derive(clap::Args, Debug)]
pub struct CollectArgs {
    /// Address to serve on.
    #[arg(long, env = "DEMO_COLLECT_LISTEN", default_value = "0.0.0.0:8090")]
    pub listen: SocketAddr,
}

#[derive(Default)]
struct Store {
    total: u64,
    last: VecDeque<String>,
}

type Shared = Arc<Mutex<Store>>;

pub async fn collect(args: CollectArgs) -> anyhow::Result<()> {
    let store = Shared::default();
    let app = Router::new()
        .route("/ingest", post(ingest))
        .route("/lines", get(lines))
        .with_state(store);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| DemoError::Listen {
            addr: args.listen,
            source,
        })?;
    eprintln!("demo-app collect listening on {}", args.listen);
    axum::serve(listener, app)
        .with_graceful_shutdown(crate::server::stop_signal())
        .await?;
    Ok(())
}

/// Takes NDJSON: every line must be a JSON object, or the whole batch is refused with 400 (as a
/// store refuses a malformed request), so that a shipper sending garbage is seen.
async fn ingest(State(store): State<Shared>, body: Bytes) -> (StatusCode, String) {
    let Ok(text) = std::str::from_utf8(&body) else {
        return (StatusCode::BAD_REQUEST, "body is not UTF-8\n".into());
    };
    let mut batch = Vec::new();
    for (n, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(_)) => batch.push(line.to_owned()),
            _ => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("line {} is not a JSON object\n", n + 1),
                );
            }
        }
    }
    let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
    store.total += batch.len() as u64;
    for line in batch {
        if store.last.len() == KEEP {
            store.last.pop_front();
        }
        store.last.push_back(line);
    }
    (StatusCode::OK, "ok\n".into())
}

/// `lines: N` and then the last lines received, one per line.
async fn lines(State(store): State<Shared>) -> String {
    let store = store.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = format!("lines: {}\n", store.total);
    for line in &store.last {
        out.push_str(line);
        out.push('\n');
    }
    out
}
