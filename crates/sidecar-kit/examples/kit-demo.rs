//! The smallest useful sidecar on the kit: an HTTP service that answers `GET /slow?ms=N` after N
//! milliseconds, with an optional YAML file for its greeting. The kit's own tests run it as a
//! real process to check signals, the drain, readiness and config errors.
//!
//! ```text
//! cargo run -p sidecar-kit --example kit-demo -- --listen 127.0.0.1:8080 --admin-addr 127.0.0.1:9999
//! curl localhost:8080/slow?ms=500; curl localhost:9999/readyz?verbose
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use clap::Parser;
use sidecar_kit::cli::ConfigFile;
use sidecar_kit::{KitArgs, Sidecar, SidecarInfo};

const INFO: SidecarInfo = SidecarInfo {
    name: "kit-demo",
    env_prefix: "KIT_DEMO",
    admin_port: 9909,
    version: env!("CARGO_PKG_VERSION"),
    description: "A tiny HTTP sidecar showing the kit's admin server, drain and config",
    worker_threads: 0,
};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    kit: KitArgs,
    /// Where to serve the demo HTTP endpoint.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

/// The optional YAML file (`--config`).
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    greeting: String,
    #[serde(default)]
    max_delay_ms: Option<u64>,
}

#[derive(Clone)]
struct AppState {
    sidecar: Sidecar,
    greeting: String,
    max_delay: Duration,
}

#[derive(serde::Deserialize)]
struct SlowQuery {
    ms: Option<u64>,
}

async fn slow(State(state): State<AppState>, Query(q): Query<SlowQuery>) -> String {
    // Registered in-flight work: the drain waits for it.
    let _in_flight = state.sidecar.shutdown().in_flight();
    let delay = Duration::from_millis(q.ms.unwrap_or(0)).min(state.max_delay);
    tokio::time::sleep(delay).await;
    format!("{} after {}ms\n", state.greeting, delay.as_millis())
}

async fn serve(
    listen: SocketAddr,
    file: Option<FileConfig>,
    sidecar: Sidecar,
) -> std::io::Result<()> {
    let ready = sidecar.readiness().register("http");
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let (greeting, max_delay_ms) = match file {
        Some(f) => (f.greeting, f.max_delay_ms.unwrap_or(60_000)),
        None => ("hello".to_owned(), 60_000),
    };
    let state = AppState {
        sidecar: sidecar.clone(),
        greeting,
        max_delay: Duration::from_millis(max_delay_ms),
    };
    let app = Router::new().route("/slow", get(slow)).with_state(state);
    ready.set_ready();
    tracing::info!(%listen, "serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(sidecar.shutdown().token().cancelled_owned())
        .await
}

fn main() -> ExitCode {
    let cli: Cli = sidecar_kit::cli::parse_with(
        &INFO,
        ConfigFile::Optional("the greeting and the longest delay"),
    );
    let file = match cli.kit.load_config::<FileConfig>() {
        Ok(file) => file,
        Err(e) => return sidecar_kit::config::exit_config_error(&e),
    };
    sidecar_kit::run(&INFO, &cli.kit, |sidecar| serve(cli.listen, file, sidecar))
}
