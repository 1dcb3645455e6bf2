//! The local demo: two "pods" of the demo app with their sidecars, as local processes.
//!
//! Pod B runs the legacy app with all three sidecars: an inbound ambassador terminating mTLS,
//! an xml-adapter turning the app's XML status page into metrics, and git-sync publishing a
//! config repository into the app's config directory. Pod A's app calls pod B through its
//! outbound ambassador: plain HTTP to localhost, mTLS between the pods, identities checked on
//! both sides. Certificates are generated, the git repository is created, and nothing but the
//! binaries built from this workspace is needed.

mod certs;
mod pods;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Runs the sidecars together locally and shows what they do.
#[derive(Parser, Debug)]
#[command(name = "demo", version, about)]
pub struct Cli {
    /// Working directory for certificates, the git repository, volumes and logs (recreated).
    #[arg(long, env = "DEMO_DIR", default_value = ".demo")]
    pub dir: PathBuf,
    /// Where the workspace's binaries are (ambassador, xml-adapter, git-sync, demo-app).
    #[arg(long, env = "DEMO_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,
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
