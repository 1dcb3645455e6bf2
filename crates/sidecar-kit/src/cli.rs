//! Command-line flags shared by every sidecar, with env fallbacks under the sidecar's prefix.
//!
//! Declare env names without a prefix (`#[arg(long, env = "UPSTREAM_URL")]`); [`parse`] puts
//! the sidecar's prefix in front of every one of them, in subcommands too, so each sidecar in a
//! pod reads only its own variables.
//!
//! `--config` has one meaning in every sidecar: the sidecar's YAML file, for settings that need
//! structure. A sidecar says what the file is to it with [`ConfigFile`] and [`parse_with`]:
//! optional, required (the flag is then required, and its help says what the file holds), or
//! not used (the flag is then refused with exit 64, never silently ignored).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Arg, Command, CommandFactory, FromArgMatches};

use crate::config::{ConfigError, load_yaml};
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
    // The help and whether it is required or refused are set per sidecar by `parse_with`.
    #[arg(long, env = "CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Threads that run the sidecar's work. 0: one per CPU core. 1: a single thread for
    /// everything (no hand-offs between threads: the lowest latency and memory, for sidecars
    /// that are not CPU-bound). The default is the sidecar's own.
    // The real default is set per sidecar by `parse` (SidecarInfo::worker_threads).
    #[arg(long, env = "WORKER_THREADS", value_name = "N", default_value_t = 0)]
    pub worker_threads: usize,
}

impl KitArgs {
    /// Loads the YAML file given with `--config` into `T` (put `#[serde(deny_unknown_fields)]`
    /// on it); `None` without `--config`. The error names the file, line and field.
    pub fn load_config<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, ConfigError> {
        self.config.as_deref().map(load_yaml).transpose()
    }

    /// The `--config` file of a sidecar that cannot run without one; the error says `what` is
    /// required (`"a mapping file"`). [`ConfigFile::Required`] already makes clap require the
    /// flag; this covers code that parsed without it (tests, embedding).
    pub fn required_config(&self, what: &str) -> Result<&Path, ConfigError> {
        self.config
            .as_deref()
            .ok_or_else(|| ConfigError::field("--config", format!("{what} is required")))
    }
}

/// What `--config` (the sidecar's YAML file) is to a sidecar; see [`parse_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFile {
    /// The file is optional; the text says what it holds, for `--help` (`"routes and limits"`).
    Optional(&'static str),
    /// The sidecar cannot run without it; the text says what it holds (`"the mapping"`).
    /// `--config` is then required, except by a subcommand (an offline tool) that has its own.
    Required(&'static str),
    /// The sidecar is configured by flags and environment alone: `--config` (or its variable)
    /// is refused with exit 64, and hidden from `--help`.
    None,
}

impl ConfigFile {
    /// What [`parse`] assumes: an optional file, for settings that need structure.
    pub const DEFAULT: ConfigFile = ConfigFile::Optional("settings that need structure");
}

fn parse_log_filter(value: &str) -> Result<String, String> {
    value
        .parse::<tracing_subscriber::filter::Targets>()
        .map(|_| value.to_owned())
        .map_err(|e| format!("not a log level or `target=level` list: {e}"))
}

/// Parses the process's arguments into `T`, with the sidecar's env prefix and admin port, and
/// `--config` as an optional file ([`ConfigFile::DEFAULT`]).
///
/// `--help` and `--version` print and exit 0; any other error prints one clear message naming
/// the flag at fault and exits 64.
pub fn parse<T: CommandFactory + FromArgMatches>(info: &SidecarInfo) -> T {
    parse_with(info, ConfigFile::DEFAULT)
}

/// Like [`parse`], with what `--config` is to this sidecar:
///
/// ```no_run
/// use sidecar_kit::cli::{self, ConfigFile};
/// # const INFO: sidecar_kit::SidecarInfo = sidecar_kit::SidecarInfo {
/// #     name: "x", env_prefix: "X", admin_port: 1, version: "0", description: "", worker_threads: 0 };
/// #[derive(clap::Parser, Debug)]
/// struct Cli {
///     #[command(flatten)]
///     kit: sidecar_kit::KitArgs,
/// }
/// let cli: Cli = cli::parse_with(&INFO, ConfigFile::Required("the mapping"));
/// ```
pub fn parse_with<T: CommandFactory + FromArgMatches>(info: &SidecarInfo, config: ConfigFile) -> T {
    match try_parse_with(info, config, std::env::args_os()) {
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
    try_parse_with(info, ConfigFile::DEFAULT, args)
}

/// Like [`parse_with`] but returns the error instead of exiting, for tests and embedding.
pub fn try_parse_with<T, I, A>(
    info: &SidecarInfo,
    config: ConfigFile,
    args: I,
) -> Result<T, clap::Error>
where
    T: CommandFactory + FromArgMatches,
    I: IntoIterator<Item = A>,
    A: Into<std::ffi::OsString> + Clone,
{
    let mut command = command_with::<T>(info, config);
    let matches = command.try_get_matches_from_mut(args)?;
    T::from_arg_matches(&matches).map_err(|e| e.format(&mut command))
}

/// The clap command for `T`, with env names prefixed and the sidecar's admin port as default.
pub fn command<T: CommandFactory>(info: &SidecarInfo) -> Command {
    command_with::<T>(info, ConfigFile::DEFAULT)
}

/// Like [`command`], with what `--config` is to this sidecar.
pub fn command_with<T: CommandFactory>(info: &SidecarInfo, config: ConfigFile) -> Command {
    with_config_file(command_for::<T>(info), info, config)
}

fn with_config_file(command: Command, info: &SidecarInfo, config: ConfigFile) -> Command {
    if !command.get_arguments().any(|a| a.get_id() == "config") {
        return command;
    }
    match config {
        ConfigFile::Optional(what) => {
            command.mut_arg("config", |a| a.help(format!("Optional YAML file: {what}.")))
        }
        ConfigFile::Required(what) => {
            command
                .subcommand_negates_reqs(true)
                .mut_arg("config", |a| {
                    a.required(true)
                        .help(format!("The YAML file with {what} (required)."))
                })
        }
        ConfigFile::None => {
            let refusal = format!(
                "{} is configured by flags or {}_* variables only, not a file",
                info.name, info.env_prefix
            );
            command.mut_arg("config", move |a| {
                a.hide(true).value_parser(clap::builder::ValueParser::new(
                    move |_: &str| -> Result<PathBuf, String> { Err(refusal.clone()) },
                ))
            })
        }
    }
}

fn command_for<T: CommandFactory>(info: &SidecarInfo) -> Command {
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
    code_of(err)
}

fn code_of(err: &clap::Error) -> u8 {
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
    fn config_is_the_one_yaml_file_optional_required_or_refused() {
        #[derive(Parser, Debug)]
        struct WithCheck {
            #[command(flatten)]
            kit: KitArgs,
            #[command(subcommand)]
            check: Option<Sub>,
        }
        #[derive(clap::Subcommand, Debug)]
        enum Sub {
            Check {
                #[arg(long)]
                config: PathBuf,
            },
        }
        // Optional: absent or present.
        let cli: Cli = try_parse_with(&INFO, ConfigFile::Optional("routes"), ["demo"]).unwrap();
        assert_eq!(cli.kit.config, None);
        assert_eq!(
            cli.kit
                .required_config("the routes")
                .unwrap_err()
                .to_string(),
            "--config: the routes is required"
        );
        let help = command_with::<Cli>(&INFO, ConfigFile::Optional("routes")).render_long_help();
        assert!(
            help.to_string().contains("Optional YAML file: routes."),
            "{help}"
        );
        // Required: missing is a clap error naming the flag; a subcommand runs without it.
        let err =
            try_parse_with::<WithCheck, _, _>(&INFO, ConfigFile::Required("the mapping"), ["demo"])
                .unwrap_err();
        assert_eq!(code_of(&err), EXIT_CONFIG);
        assert!(err.to_string().contains("--config <FILE>"), "{err}");
        let cli: WithCheck = try_parse_with(
            &INFO,
            ConfigFile::Required("the mapping"),
            ["demo", "--config", "/m.yaml"],
        )
        .unwrap();
        assert_eq!(cli.kit.required_config("x").unwrap(), Path::new("/m.yaml"));
        let cli: WithCheck = try_parse_with(
            &INFO,
            ConfigFile::Required("the mapping"),
            ["demo", "check", "--config", "/m.yaml"],
        )
        .unwrap();
        assert!(matches!(cli.check, Some(Sub::Check { .. })));
        // None: refused, not ignored, and not in the help.
        let err =
            try_parse_with::<Cli, _, _>(&INFO, ConfigFile::None, ["demo", "--config", "/c.yaml"])
                .unwrap_err();
        assert_eq!(code_of(&err), EXIT_CONFIG);
        let text = err.to_string();
        assert!(text.contains("--config"), "{text}");
        assert!(
            text.contains("demo is configured by flags or DEMO_KIT_TEST_* variables only"),
            "{text}"
        );
        let help = command_with::<Cli>(&INFO, ConfigFile::None).render_long_help();
        assert!(!help.to_string().contains("--config"), "{help}");
        let cli: Cli = try_parse_with(&INFO, ConfigFile::None, ["demo"]).unwrap();
        assert_eq!(cli.kit.config, None);
    }

    #[test]
    fn load_config_reads_the_yaml_file() {
        #[derive(serde::Deserialize, Debug, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct File {
            greeting: String,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "greeting: hi\n").unwrap();
        let cli: Cli = try_parse_from(&INFO, ["demo", "--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(
            cli.kit.load_config::<File>().unwrap(),
            Some(File {
                greeting: "hi".into()
            })
        );
        std::fs::write(&path, "greting: hi\n").unwrap();
        let err = cli.kit.load_config::<File>().unwrap_err().to_string();
        assert!(err.contains("c.yaml: line 1 column 1"), "{err}");
        let cli: Cli = try_parse_from(&INFO, ["demo"]).unwrap();
        assert_eq!(cli.kit.load_config::<File>().unwrap(), None);
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
