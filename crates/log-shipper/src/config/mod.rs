//! The configuration: flags (one input, one pipeline, one sink) or the YAML file (several),
//! checked in full before anything starts. A bad value is an error naming the flag or the
//! file's field, and the process exits with code 64; a bad file on reload keeps the old one.

mod build;
pub mod cli;
pub mod file;
mod inputs;
mod plan;
mod sinks;
pub mod units;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sidecar_kit::SidecarInfo;

use crate::pipeline::PipelineSpec;
use crate::sink::SinkSpec;
use crate::source::file::FileInputSpec;
use crate::source::http::HttpInputSpec;
use crate::source::syslog::SyslogInputSpec;
pub use cli::Cli;
use file::FileConfig;
pub use sidecar_kit::config::ConfigError;

pub const INFO: SidecarInfo = SidecarInfo {
    name: "log-shipper",
    env_prefix: "LOG_SHIPPER",
    admin_port: 9904,
    version: env!("CARGO_PKG_VERSION"),
    description: "Ships an app's log files to central stores, at least once: a line is let go only when every sink has it",
    // One runtime thread (each file input reads on a blocking thread of its own): a sidecar
    // gets a share of a core, and every thread that allocates costs a malloc arena of its
    // own. `--worker-threads 0` gives one per core.
    worker_threads: 1,
};

/// One input and the pipeline it feeds.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub pipeline: String,
    pub kind: InputKind,
}

#[derive(Debug, Clone)]
pub enum InputKind {
    File(FileInputSpec),
    Http(HttpInputSpec),
    Syslog(SyslogInputSpec),
}

impl InputSpec {
    pub fn name(&self) -> &str {
        match &self.kind {
            InputKind::File(f) => &f.name,
            InputKind::Http(h) => &h.name,
            InputKind::Syslog(s) => &s.name,
        }
    }
}

/// What runs: inputs, pipelines, sinks. Replaced whole on a reload.
#[derive(Debug, Clone)]
pub struct Plan {
    pub inputs: Vec<InputSpec>,
    pub pipelines: BTreeMap<String, Arc<PipelineSpec>>,
    pub sinks: Vec<SinkSpec>,
}

/// The state directory, locked for this process.
#[derive(Debug)]
pub struct StateDir {
    pub path: PathBuf,
    _lock: nix::fcntl::Flock<File>,
}

impl StateDir {
    /// Creates, locks and checks the directory; another shipper on it is an error.
    pub fn open(path: &Path) -> Result<Self, ConfigError> {
        let field = "--state-dir";
        let fail = |e: &dyn std::fmt::Display| {
            ConfigError::field(field, format!("{}: {e}", path.display()))
        };
        std::fs::create_dir_all(path).map_err(|e| fail(&e))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join("lock"))
            .map_err(|e| fail(&e))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| fail(&format!("in use by another log-shipper ({e})")))?;
        let probe = path.join(".write-check");
        std::fs::write(&probe, b"ok").map_err(|e| fail(&format!("not writable: {e}")))?;
        std::fs::remove_file(&probe).map_err(|e| fail(&e))?;
        Ok(Self {
            path: path.to_owned(),
            _lock: lock,
        })
    }
}

/// Everything the service needs.
#[derive(Debug)]
pub struct Config {
    pub state: StateDir,
    pub plan: Plan,
    /// The YAML file, watched for reloads.
    pub config_file: Option<PathBuf>,
    pub checkpoint_interval: Duration,
    /// Time the shutdown may take to flush (the kit's grace, less its delay and a margin).
    pub flush_time: Duration,
    /// Flags, the defaults of the YAML file's settings (kept for reloads).
    pub cli: Cli,
}

impl Config {
    pub fn from_cli(cli: &Cli) -> Result<Self, ConfigError> {
        let plan = match &cli.kit.config {
            Some(path) => {
                inputs::no_input_flags(cli)?;
                if cli.sink_url.is_some() {
                    return Err(ConfigError::field(
                        "--sink-url",
                        "give the sinks in --config's sinks, or --sink-url without --config",
                    ));
                }
                load_file(path, cli)?
            }
            None => plan::plan_from_flags(cli)?,
        };
        if cli.checkpoint_interval.is_zero() {
            return Err(ConfigError::field(
                "--checkpoint-interval",
                "must be more than 0",
            ));
        }
        let state = StateDir::open(&cli.state_dir)?;
        let margin = Duration::from_secs(1);
        let flush_time = cli
            .kit
            .shutdown_grace
            .saturating_sub(cli.kit.shutdown_delay)
            .saturating_sub(margin)
            .max(Duration::from_millis(500));
        Ok(Self {
            state,
            plan,
            config_file: cli.kit.config.clone(),
            checkpoint_interval: cli.checkpoint_interval,
            flush_time,
            cli: cli.clone(),
        })
    }
}

/// Reads and checks the YAML file (at start and on reload).
pub fn load_file(path: &Path, cli: &Cli) -> Result<Plan, ConfigError> {
    let file: FileConfig = sidecar_kit::config::load_yaml(path)?;
    let origin = path.display().to_string();
    // A field of the file is named with the file: `/etc/shipper.yaml: sinks.c.url`.
    plan::plan_from_file(file, cli).map_err(|e| match e {
        ConfigError::Field { field, message } => {
            ConfigError::field(format!("{origin}: {field}"), message)
        }
        ConfigError::File {
            field,
            path,
            source,
        } => ConfigError::File {
            field: format!("{origin}: {field}"),
            path,
            source,
        },
        other => other,
    })
}
