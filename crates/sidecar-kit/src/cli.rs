//! Command-line flags shared by every sidecar, with env fallbacks under the sidecar's prefix.
//!
//! Declare env names without a prefix (`#[arg(long, env = "UPSTREAM_URL")]`); [`parse`] puts
//! the sidecar's prefix in front of every one of them, in subcommands too, so each sidecar in a
//! pod reads only its own variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Arg, Command, CommandFactory, FromArgMatches};

use crate::{EXIT_CONFIG, SidecarInfo};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal (a container), text when it is.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// The flags every sidecar has. Flatten it into your own `clap::Parser` struct.
///
/// ```
/// #[derive(clap::Parser, Debug)]
/// struct Cli {
///     #[command(flatten)]
///     kit: sidecar_kit::KitArgs,
/// }
/// ```
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Common sidecar options")]
pub struct KitArgs {
    /// Address of the admin server: /livez, /readyz, /metrics, /version.
    // The real default is set per sidecar by `parse` (each has its own port).
    #[arg(
        long,
        env = "ADMIN_ADDR",
        value_name = "ADDR",
        default_value = "0.0.0.0:9900"
    )]
    pub admin_addr: SocketAddr,

    /// Log level, or a default level and per-target levels, e.g. `info` or `info,ambassador=debug`.
    #[arg(long, env = "LOG_LEVEL", value_name = "FILTER", default_value = "info",
          value_parser = parse_log_filter)]
    pub log_level: String,

    /// Log format on stderr.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,

    /// Time allowed from the shutdown signal to exit, the delay included; keep it below
    /// Kubernetes' terminationGracePeriodSeconds.
    #[arg(long, env = "SHUTDOWN_GRACE", value_name = "DURATION", default_value = "25s",
          value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Time to keep accepting work after the signal (readiness already failing), so that load
    /// balancers stop sending traffic before the listeners close.
    #[arg(long, env = "SHUTDOWN_DELAY", value_name = "DURATION", default_value = "0s",
          value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,

    /// Optional YAML configuration file, for settings that need structure.
    #[arg(long, env = "CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Threads that run the sidecar's work. 0: one per CPU core. 1: a single thread for
    /// everything (no hand-offs between threads: the lowest latency and memory, for sidecars
    /// that are not CPU-bound). The default is the sidecar's own.
    // The real default is set per sidecar by `parse` (SidecarInfo::worker_threads).
    #[arg(long, env = "WORKER_THREADS", value_name = "N", default_value_t = 0)]
    pub worker_threads: usize,
}

fn parse_log_filter(value: &str) -> Result<String, String> {
    value
        .parse::<tracing_subscriber::filter::Targets>()
        .map(|_| value.to_owned())
        .map_err(|e| format!("not a log level or `target=level` list: {e}"))
}

/// Parses the process's arguments into `T`, with the sidecar's env prefix and admin port.
///
/// `--help` and `--version` print and exit 0; any other error prints one clear message naming
/// the flag at fault and exits 64.
pub fn parse<T: CommandFactory + FromArgMatches>(info: &SidecarInfo) -> T {
    match try_parse_from(info, std::env::args_os()) {
        Ok(parsed) => parsed,
        Err(err) => std::process::exit(exit_code(&err).into()),
    }
}

/// Like [`parse`] but returns the error instead of exiting, for tests and embedding.
pub fn try_parse_from<T, I, A>(info: &SidecarInfo, args: I) -> Result<T, clap::Error>
where
    T: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = A>,
    A: Into<std::ffi::OsString> + Clone,
{
    let mut command = command::<T>(info);
    let matches = command.try_get_matches_from_mut(args)?;
    T::from_arg_matches(&matches).map_err(|e| e.format(&mut command))
}

/// The clap command for `T`, with env names prefixed and the sidecar's admin port as default.
pub fn command<T: CommandFactory>(info: &SidecarInfo) -> Command {
    // The flattened KitArgs' doc comment would otherwise become every sidecar's long help.
    let command = T::command()
        .name(info.name)
        .version(info.version)
        .about(info.description)
        .long_about(None);
    let command = with_env_prefix(command, info.env_prefix);
    let command = if command
        .get_arguments()
        .any(|a| a.get_id() == "worker_threads")
    {
        command.mut_arg("worker_threads", |a| {
            a.default_value(info.worker_threads.to_string())
        })
    } else {
        command
    };
    if command.get_arguments().any(|a| a.get_id() == "admin_addr") {
        command.mut_arg("admin_addr", |a| {
            a.default_value(format!("0.0.0.0:{}", info.admin_port))
        })
    } else {
        command
    }
}

fn with_env_prefix(command: Command, prefix: &str) -> Command {
    let command = command.mut_args(|arg: Arg| match arg.get_env() {
        Some(env) => {
            let name = format!("{prefix}_{}", env.to_string_lossy());
            arg.env(name)
        }
        None => arg,
    });
    let names: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    names.into_iter().fold(command, |command, name| {
        command.mut_subcommand(name, |sub| with_env_prefix(sub, prefix))
    })
}

/// Prints a clap error and gives the exit code: 0 for help and version, 64 otherwise.
fn exit_code(err: &clap::Error) -> u8 {
    // Printing can only fail if stderr is gone, and then there is no one to tell.
    let _ = err.print();
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
        _ => EXIT_CONFIG,
    }
}

/// Turns a parse error into the process's exit code, printing it; for `main` functions that
/// use [`try_parse_from`].
pub fn exit_on_error(err: &clap::Error) -> ExitCode {
    ExitCode::from(exit_code(err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const INFO: SidecarInfo = SidecarInfo {
        name: "demo",
        env_prefix: "DEMO_KIT_TEST",
        admin_port: 9977,
        version: "1.2.3",
        description: "test",
        worker_threads: 0,
    };

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        kit: KitArgs,
        #[arg(long, env = "TARGET", default_value = "x")]
        target: String,
    }

    #[test]
    fn admin_port_default_is_the_sidecars_own() {
        let cli: Cli = try_parse_from(&INFO, ["demo"]).unwrap();
        assert_eq!(cli.kit.admin_addr.port(), 9977);
        assert_eq!(cli.kit.shutdown_grace, Duration::from_secs(25));
    }

    #[test]
    fn worker_threads_default_is_the_sidecars_own() {
        let cli: Cli = try_parse_from(&INFO, ["demo"]).unwrap();
        assert_eq!(cli.kit.worker_threads, 0);
        const ONE: SidecarInfo = SidecarInfo {
            worker_threads: 1,
            ..INFO
        };
        let cli: Cli = try_parse_from(&ONE, ["demo"]).unwrap();
        assert_eq!(cli.kit.worker_threads, 1);
        let cli: Cli = try_parse_from(&ONE, ["demo", "--worker-threads", "0"]).unwrap();
        assert_eq!(cli.kit.worker_threads, 0);
        let err =
            try_parse_from::<Cli, _, _>(&ONE, ["demo", "--worker-threads", "many"]).unwrap_err();
        assert!(err.to_string().contains("--worker-threads"), "{err}");
    }

    #[test]
    fn env_names_carry_the_prefix() {
        let command = command::<Cli>(&INFO);
        let env_of = |id: &str| {
            command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .and_then(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
        };
        assert_eq!(env_of("target").as_deref(), Some("DEMO_KIT_TEST_TARGET"));
        assert_eq!(
            env_of("admin_addr").as_deref(),
            Some("DEMO_KIT_TEST_ADMIN_ADDR")
        );
        assert_eq!(env_of("config").as_deref(), Some("DEMO_KIT_TEST_CONFIG"));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err =
            try_parse_from::<Cli, _, _>(&INFO, ["demo", "--admin-addr", "nowhere"]).unwrap_err();
        assert!(err.to_string().contains("--admin-addr"), "{err}");
        let err =
            try_parse_from::<Cli, _, _>(&INFO, ["demo", "--shutdown-grace", "soon"]).unwrap_err();
        assert!(err.to_string().contains("--shutdown-grace"), "{err}");
        let err =
            try_parse_from::<Cli, _, _>(&INFO, ["demo", "--log-level", "info,=x=y"]).unwrap_err();
        assert!(err.to_string().contains("--log-level"), "{err}");
    }
}
