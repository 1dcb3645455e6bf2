//! The shared foundation of every sidecar in this project, and of the ones you write yourself.
//!
//! A sidecar built on the kit gets, with a few lines of `main`:
//!
//! - [`cli`]: a clap [`KitArgs`] struct to flatten into your own flags, with an env fallback for
//!   every flag under your sidecar's prefix (`--admin-addr` is also `MYSIDECAR_ADMIN_ADDR`), and
//!   exit code 64 with one clear message on a bad flag;
//! - [`config`]: the sidecar's YAML file (`--config`: optional, required or refused, as the
//!   sidecar declares with [`cli::ConfigFile`]) with unknown fields refused, and the one
//!   [`config::ConfigError`] whose messages name the file, line and field, or the flag;
//! - [`admin`]: an admin server with `/livez`, `/readyz` (named [`readiness`] checks),
//!   `/metrics` (a Prometheus registry; [`metrics`] registers yours in one line each) and
//!   `/version`, plus your own routes;
//! - [`shutdown`]: SIGTERM/SIGINT handling that fails readiness, waits a delay, stops accepting,
//!   drains in-flight work within a grace period and exits 0 (a second signal exits at once);
//! - [`tls`] and [`reload`]: PEM loading, rustls server/client configs for mTLS, peer identities
//!   (SPIFFE and DNS SANs), and certificate hot reload that refuses bad files;
//! - [`watch`]: file watching that sees the Kubernetes `..data` symlink swap, with a polling
//!   fallback;
//! - [`notify`]: telling the app about a change (webhook, command, signal, touched file),
//!   debounced; [`command`] runs commands without a shell, with a timeout;
//! - [`telemetry`]: tracing to stderr as JSON or text, a build-info metric, URL redaction and
//!   [`error_chain`] for log lines.
//!
//! # A complete sidecar
//!
//! ```no_run
//! use clap::Parser;
//! use sidecar_kit::{KitArgs, Sidecar, SidecarInfo};
//!
//! const INFO: SidecarInfo = SidecarInfo {
//!     name: "hello",
//!     env_prefix: "HELLO",
//!     admin_port: 9999,
//!     version: env!("CARGO_PKG_VERSION"),
//!     description: "says hello on the admin port",
//!     worker_threads: 0,
//! };
//!
//! #[derive(Parser, Debug)]
//! struct Cli {
//!     #[command(flatten)]
//!     kit: KitArgs,
//!     /// Who to greet (env: HELLO_NAME).
//!     #[arg(long, env = "NAME", default_value = "world")]
//!     name: String,
//! }
//!
//! async fn serve(name: String, sidecar: Sidecar) -> Result<(), std::io::Error> {
//!     let ready = sidecar.readiness().register("greeter");
//!     sidecar.add_admin_routes(axum::Router::new().route(
//!         "/hello",
//!         axum::routing::get(move || async move { format!("hello, {name}\n") }),
//!     ));
//!     ready.set_ready();
//!     // Stop when the kit says so; the kit then drains and exits 0.
//!     sidecar.shutdown().token().cancelled().await;
//!     Ok(())
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let cli: Cli = sidecar_kit::cli::parse(&INFO);
//!     sidecar_kit::run(&INFO, &cli.kit, |sidecar| serve(cli.name, sidecar))
//! }
//! ```

#![warn(missing_docs)]

pub mod admin;
pub mod cli;
pub mod command;
pub mod config;
pub mod metrics;
pub mod notify;
pub mod readiness;
pub mod reload;
mod runtime;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod watch;

pub use cli::KitArgs;
pub use runtime::{Sidecar, run};
pub use telemetry::error_chain;

/// What a sidecar says about itself: its name, its env prefix and its default admin port.
///
/// Declare it once as a `const` and hand it to [`cli::parse`] and [`run`].
#[derive(Debug, Clone, Copy)]
pub struct SidecarInfo {
    /// The binary's name, used in logs, metrics labels and `/version`.
    pub name: &'static str,
    /// Prefix of every flag's environment variable: `XML_ADAPTER` turns `--admin-addr` into
    /// `XML_ADAPTER_ADMIN_ADDR`.
    pub env_prefix: &'static str,
    /// The default admin port; every sidecar has its own so that several share a pod.
    pub admin_port: u16,
    /// The version, normally `env!("CARGO_PKG_VERSION")`.
    pub version: &'static str,
    /// One line about what the sidecar does.
    pub description: &'static str,
    /// The default of `--worker-threads`: 0 for one thread per CPU core, 1 for a single thread.
    /// On a single thread, `tokio::task::block_in_place` panics and a long computation stalls
    /// every connection: move blocking work to `tokio::task::spawn_blocking`.
    pub worker_threads: usize,
}

/// The source revision baked in at build time (`SIDECARS_REVISION`), if the build set one.
pub const REVISION: Option<&str> = option_env!("SIDECARS_REVISION");

/// The exit code for a configuration error (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: u8 = 64;
