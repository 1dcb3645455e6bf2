//! A stand-in "legacy application" for the container demo and the container tests.
//!
//! The sidecar images are `FROM scratch` and no image can be pulled on the build machine, so
//! the app next to them is built here too. It does what the demo needs from an app and nothing
//! more: plain HTTP on one port, an XML status page for the xml-adapter, the files git-sync
//! publishes into its config volume, an access log file for the log-shipper, a stand-in log
//! store (`collect`), and a small HTTP(S) client (`get`, `job`) because a `FROM scratch` image
//! has no curl.

mod client;
mod collect;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

pub use client::{GetArgs, JobArgs};
pub use collect::CollectArgs;
pub use server::ServeArgs;

#[derive(clap::Parser, Debug)]
#[command(name = "demo-app", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Serve `/` (plain text naming the caller), `/status.xml`, `/config/<file>` and `/healthz`.
    Serve(ServeArgs),
    /// Fetch one URL, print the status and body; exit 0 only on a 2xx answer.
    Get(GetArgs),
    /// A batch job: call a URL a few times, then ask each sidecar to stop (`POST /shutdown`).
    Job(JobArgs),
    /// A stand-in log store: takes NDJSON on `POST /ingest`, answers `GET /lines` with how many
    /// lines it holds and the last of them.
    Collect(CollectArgs),
}

/// Everything that can go wrong, named for the user.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the CA bundle {}: {source}", path.display())]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the access log {}: {source}", path.display())]
    AccessLog {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Http(String),
}

pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => server::serve(args).await,
            Command::Get(args) => client::get(args).await,
            Command::Job(args) => client::job(args).await,
            Command::Collect(args) => collect::collect(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}
