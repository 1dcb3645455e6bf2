//! Flags (each also an environment variable `GIT_SYNC_<NAME>`) and their validation.

use std::path::PathBuf;
use std::time::Duration;

use sidecar_kit::cli::{ConfigFile, LogFormat};
use sidecar_kit::config::ConfigError;
use sidecar_kit::{KitArgs, SidecarInfo};

use sidecar_kit::command::CommandSpec;
use sidecar_kit::notify::{NotifyArgs, NotifyConfig};

use crate::credentials::{Credentials, redact_url};
use crate::git::{RefTarget, Source};
use crate::selection::Selection;
use crate::signature::{Policy, TrustedKeys};
use crate::submodules::SubmoduleMode;
use crate::transport::HttpSettings;
use crate::transport::proxy::ProxySettings;
use crate::tree_policy::{FetchLimits, SymlinkPolicy, TreeLimits, parse_size};

pub const INFO: SidecarInfo = SidecarInfo {
    name: "git-sync",
    env_prefix: "GIT_SYNC",
    admin_port: 9903,
    version: env!("CARGO_PKG_VERSION"),
    description: "Keeps a shared volume on the latest good revision of a git repository",
    worker_threads: 0,
};

/// git-sync is configured by flags and `GIT_SYNC_*` variables alone: `--config` is refused.
pub const CONFIG_FILE: ConfigFile = ConfigFile::None;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ForcePushPolicy {
    /// Publish the rewritten history (counted).
    Follow,
    /// Keep the current tree and hold the rewritten revision back until the ref moves (counted).
    Refuse,
}

#[derive(clap::Parser, Debug)]
#[command(name = "git-sync", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub kit: KitArgs,

    /// Repository URL: https://, http://, ssh://, user@host:path, git://, file:// or a path.
    #[arg(long, env = "REPO", help_heading = "Source")]
    pub repo: String,
    /// What to publish: a branch, a tag (annotated tags are peeled), a full 40-hex SHA, or HEAD.
    #[arg(
        long = "ref",
        env = "REF",
        default_value = "HEAD",
        help_heading = "Source"
    )]
    pub reference: String,
    /// History depth to fetch (0 = all). Ignored for file:// and paths, which libgit2 cannot fetch shallow.
    #[arg(long, env = "DEPTH", default_value_t = 1, help_heading = "Source")]
    pub depth: u32,

    /// Directory holding the link, the published trees and the private repository.
    #[arg(long, env = "ROOT", help_heading = "Publishing")]
    pub root: PathBuf,
    /// Publish this directory of the repository only: it becomes the root of the published tree.
    #[arg(long, env = "SUBPATH", help_heading = "Publishing")]
    pub subpath: Option<String>,
    /// Export only these paths (directories or files, relative to --subpath), with their parent
    /// directories: a sparse checkout of a large monorepo. Repeatable (comma-separated in the
    /// variable).
    #[arg(
        long,
        env = "SPARSE_PATHS",
        value_delimiter = ',',
        help_heading = "Publishing"
    )]
    pub sparse_path: Vec<String>,
    /// Submodules: fetched and published in the tree (recursive: theirs too; top-level: the
    /// repository's own only), or left out (off).
    #[arg(long, env = "SUBMODULES", value_enum, default_value_t = SubmoduleMode::Recursive, help_heading = "Source")]
    pub submodules: SubmoduleMode,
    /// Only these submodule URL prefixes are fetched (each ending in `/`, e.g.
    /// `https://git.example.com/`). Without it, local paths and file:// are refused for a
    /// remote superproject, and so are loopback, link-local and private addresses unless the
    /// superproject's host is of the same kind. Repeatable (comma-separated in the variable).
    #[arg(
        long,
        env = "SUBMODULE_URL_ALLOW",
        value_delimiter = ',',
        help_heading = "Source"
    )]
    pub submodule_url_allow: Vec<String>,
    /// Most bytes one fetch may receive (K, M, G suffixes; 0 = no limit): a bigger pack
    /// stops the fetch and the revision is refused.
    #[arg(
        long,
        env = "MAX_FETCH_SIZE",
        default_value = "0",
        help_heading = "Source"
    )]
    pub max_fetch_size: String,
    /// Symlinks that resolve outside the published tree (absolute, `../` out of it, through
    /// other links, loops): refuse the revision, drop the link, or allow it.
    #[arg(long, env = "SYMLINKS", value_enum, default_value_t = SymlinkPolicy::Refuse, help_heading = "Publishing")]
    pub symlinks: SymlinkPolicy,
    /// Largest file a revision may hold (K, M, G suffixes; 0 = no limit); checked before
    /// the file is read.
    #[arg(
        long,
        env = "MAX_FILE_SIZE",
        default_value = "0",
        help_heading = "Publishing"
    )]
    pub max_file_size: String,
    /// Largest published tree, the sum of its files' sizes (K, M, G suffixes; 0 = no limit).
    #[arg(
        long,
        env = "MAX_TREE_SIZE",
        default_value = "0",
        help_heading = "Publishing"
    )]
    pub max_tree_size: String,
    /// Name of the symlink under --root that the app reads.
    #[arg(
        long,
        env = "LINK",
        default_value = "current",
        help_heading = "Publishing"
    )]
    pub link: String,
    /// Make everything git-sync writes group-writable (umask 002, executables 0775), for an
    /// app that runs as another user of the same group (Kubernetes' fsGroup).
    #[arg(long, env = "GROUP_WRITE", help_heading = "Publishing")]
    pub group_write: bool,
    /// File the last error is written to (Kubernetes' terminationMessagePath, e.g.
    /// /dev/termination-log), emptied after a good sync. Relative to --root unless absolute.
    #[arg(long, env = "ERROR_FILE", help_heading = "Publishing")]
    pub error_file: Option<PathBuf>,
    /// Command run in the staged tree before publishing; a non-zero exit keeps the old tree.
    #[arg(long, env = "VALIDATE_COMMAND", help_heading = "Publishing")]
    pub validate_command: Option<String>,
    #[arg(long, env = "VALIDATE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration, help_heading = "Publishing")]
    pub validate_timeout: Duration,
    /// How long a replaced tree is kept for readers still in it.
    #[arg(long, env = "GRACE_PERIOD", default_value = "60s", value_parser = humantime::parse_duration, help_heading = "Publishing")]
    pub grace_period: Duration,
    /// What to do when the ref's history was rewritten.
    #[arg(long, env = "FORCE_PUSH", value_enum, default_value_t = ForcePushPolicy::Follow, help_heading = "Publishing")]
    pub force_push: ForcePushPolicy,

    /// Time between polls.
    #[arg(long, env = "PERIOD", default_value = "30s", value_parser = humantime::parse_duration, help_heading = "Schedule")]
    pub period: Duration,
    /// Spread of the period and backoff, as a fraction (0.1 = ±10%).
    #[arg(long, env = "JITTER", default_value_t = 0.1, help_heading = "Schedule")]
    pub jitter: f64,
    /// Longest a sync may take before it is abandoned.
    #[arg(long, env = "SYNC_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration, help_heading = "Schedule")]
    pub sync_timeout: Duration,
    /// Longest wait between retries after failures (backoff doubles from 1s).
    #[arg(long, env = "BACKOFF_MAX", default_value = "60s", value_parser = humantime::parse_duration, help_heading = "Schedule")]
    pub backoff_max: Duration,
    /// Exit non-zero after this many consecutive failures (default: never; 0 in --one-time mode).
    #[arg(long, env = "MAX_FAILURES", help_heading = "Schedule")]
    pub max_failures: Option<u32>,
    /// Sync once, publish, and exit 0 (for init containers); exit non-zero on failure.
    #[arg(long, env = "ONE_TIME", help_heading = "Schedule")]
    pub one_time: bool,
    /// Not ready when the last good sync is older than this and syncs keep failing.
    #[arg(long, env = "STALE_AFTER", default_value = "10m", value_parser = humantime::parse_duration, help_heading = "Schedule")]
    pub stale_after: Duration,
    /// File holding the secret for POST /sync (bearer token or GitHub-style HMAC signature).
    /// Without it, POST /sync answers loopback callers only.
    #[arg(long, env = "SYNC_SECRET_FILE", help_heading = "Schedule")]
    pub sync_secret_file: Option<PathBuf>,

    /// HTTPS username.
    #[arg(long, env = "USERNAME", help_heading = "Credentials")]
    pub username: Option<String>,
    /// File holding the HTTPS password or token; read on every sync.
    #[arg(long, env = "PASSWORD_FILE", help_heading = "Credentials")]
    pub password_file: Option<PathBuf>,
    /// SSH private key file (unencrypted); read on every sync.
    #[arg(long, env = "SSH_KEY_FILE", help_heading = "Credentials")]
    pub ssh_key_file: Option<PathBuf>,
    /// known_hosts file pinning the SSH server's key (required for ssh; HOME is never used).
    #[arg(long, env = "SSH_KNOWN_HOSTS_FILE", help_heading = "Credentials")]
    pub ssh_known_hosts_file: Option<PathBuf>,
    /// File holding a token sent as `Authorization: Bearer` to an https remote; read on every
    /// sync. Instead of --username/--password-file.
    #[arg(long, env = "BEARER_TOKEN_FILE", help_heading = "Credentials")]
    pub bearer_token_file: Option<PathBuf>,

    /// PEM CA bundle to verify https remotes with, instead of the system's; read on every sync.
    #[arg(long, env = "CA_FILE", help_heading = "HTTPS")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for https remotes that ask for one; read on every sync.
    #[arg(
        long,
        env = "CLIENT_CERT_FILE",
        requires = "client_key_file",
        help_heading = "HTTPS"
    )]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of --client-cert-file.
    #[arg(
        long,
        env = "CLIENT_KEY_FILE",
        requires = "client_cert_file",
        help_heading = "HTTPS"
    )]
    pub client_key_file: Option<PathBuf>,
    /// HTTP proxy for http(s) remotes, `http://[user:password@]host[:port]` (default port
    /// 1080). Without it, HTTPS_PROXY, HTTP_PROXY and ALL_PROXY (or their lower-case forms)
    /// are used, as by git.
    #[arg(long, env = "PROXY", help_heading = "HTTPS")]
    pub proxy: Option<String>,
    /// Hosts reached without the proxy, comma-separated (`*`, `example.com`, `.example.com`,
    /// IP addresses, CIDR blocks, each with an optional `:port`). Without it, NO_PROXY.
    #[arg(long, env = "NO_PROXY", help_heading = "HTTPS")]
    pub no_proxy: Option<String>,

    /// Which signatures a revision needs before it is published: off, tag (the annotated tag
    /// --ref names), head (the published commit, and the tag when --ref is an annotated tag) or
    /// all (every commit since the last published one, on all parents, and the tag).
    #[arg(long, env = "VERIFY_SIGNATURES", value_enum, default_value_t = Policy::Off, help_heading = "Signatures")]
    pub verify_signatures: Policy,
    /// OpenSSH allowed-signers file trusted for SSH signatures (git's gpg.format=ssh); re-read
    /// when it changes. Repeatable (comma-separated in the variable).
    #[arg(
        long,
        env = "ALLOWED_SIGNERS_FILE",
        value_delimiter = ',',
        help_heading = "Signatures"
    )]
    pub allowed_signers_file: Vec<PathBuf>,
    /// OpenPGP public keys (armoured or binary, several per file) trusted for GnuPG signatures;
    /// re-read when they change. Repeatable (comma-separated in the variable).
    #[arg(
        long,
        env = "OPENPGP_KEYS_FILE",
        value_delimiter = ',',
        help_heading = "Signatures"
    )]
    pub openpgp_keys_file: Vec<PathBuf>,
    /// SSH public keys no longer trusted, one per line (git's gpg.ssh.revocationFile, without
    /// binary KRLs): a signature by one is refused even when --allowed-signers-file lists it.
    /// Re-read when it changes. Repeatable (comma-separated in the variable).
    #[arg(
        long,
        env = "SSH_REVOKED_KEYS_FILE",
        value_delimiter = ',',
        help_heading = "Signatures"
    )]
    pub ssh_revoked_keys_file: Vec<PathBuf>,

    /// Telling the app after a publish: webhook, command, signal, touched file (the kit's flags).
    #[command(flatten)]
    pub notify: NotifyArgs,
}

/// Everything the service needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub source: Source,
    pub root: PathBuf,
    pub link: String,
    pub validate: Option<CommandSpec>,
    pub validate_timeout: Duration,
    pub grace_period: Duration,
    pub force_push: ForcePushPolicy,
    pub period: Duration,
    pub jitter: f64,
    pub sync_timeout: Duration,
    pub backoff_max: Duration,
    pub max_failures: Option<u32>,
    pub one_time: bool,
    pub stale_after: Duration,
    pub sync_secret_file: Option<PathBuf>,
    pub verify: Policy,
    /// Loaded at start (a bad file is a config error); re-read by the syncer when they change.
    pub trusted_keys: TrustedKeys,
    pub selection: Selection,
    pub submodules: SubmoduleMode,
    pub group_write: bool,
    /// --symlinks and the export's size limits.
    pub limits: TreeLimits,
    /// Absolute.
    pub error_file: Option<PathBuf>,
    /// The hooks run after a publish; the command runs in the link.
    pub notify: NotifyConfig,
    /// `--ref` as given, for the hooks.
    pub reference: String,
    /// The kit's --log-level and --log-format, handed to the network worker.
    pub log_filter: String,
    pub log_format: String,
}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::value(msg))
}

fn is_ssh(url: &str) -> bool {
    url.starts_with("ssh://")
        || url.starts_with("git+ssh://")
        || (!url.contains("://") && url.contains('@') && url.contains(':'))
}

fn has_password_in_url(url: &str) -> bool {
    redact_url(url) != url
}

fn readable(flag: &str, path: &std::path::Path) -> Result<(), ConfigError> {
    sidecar_kit::config::require_readable(flag, path)
}

impl Config {
    pub fn from_cli(cli: &Cli) -> Result<Config, ConfigError> {
        let url = cli.repo.trim().to_string();
        if url.is_empty() {
            return err("--repo must not be empty");
        }
        if has_password_in_url(&url) {
            return err(
                "--repo holds a password: put it in a file and pass --username and --password-file",
            );
        }
        let target = RefTarget::parse(&cli.reference).map_err(ConfigError::Value)?;
        if cli.password_file.is_some() != cli.username.is_some() {
            return err("--username and --password-file go together");
        }
        if let Some(f) = &cli.password_file {
            readable("--password-file", f)?;
        }
        if let Some(f) = &cli.ssh_key_file {
            readable("--ssh-key-file", f)?;
        }
        if let Some(f) = &cli.ssh_known_hosts_file {
            readable("--ssh-known-hosts-file", f)?;
        }
        if is_ssh(&url) && cli.ssh_known_hosts_file.is_none() {
            return err(
                "an ssh --repo needs --ssh-known-hosts-file to pin the server's key (HOME's known_hosts is never read)",
            );
        }
        if is_ssh(&url) && cli.ssh_key_file.is_none() {
            return err("an ssh --repo needs --ssh-key-file");
        }
        if let Some(f) = &cli.sync_secret_file {
            readable("--sync-secret-file", f)?;
        }
        if let Some(f) = &cli.bearer_token_file {
            readable("--bearer-token-file", f)?;
            if cli.password_file.is_some() {
                return err(
                    "--bearer-token-file and --password-file are two ways to log in: give one",
                );
            }
        }
        if let Some(f) = &cli.ca_file {
            sidecar_kit::tls::TrustBundle::load(f)
                .map_err(|e| ConfigError::field("--ca-file", e))?;
        }
        if let (Some(cert), Some(key)) = (&cli.client_cert_file, &cli.client_key_file) {
            sidecar_kit::tls::Identity::load(cert, key)
                .and_then(|identity| identity.certified_key())
                .map_err(|e| ConfigError::field("--client-cert-file", e))?;
        }
        let proxy = ProxySettings::resolve(cli.proxy.as_deref(), cli.no_proxy.as_deref(), |name| {
            std::env::var(name).ok()
        })
        .map_err(ConfigError::value)?;
        if !(0.0..=1.0).contains(&cli.jitter) {
            return err(format!("--jitter {} must be between 0 and 1", cli.jitter));
        }
        if cli.period.is_zero() {
            return err("--period must be more than 0");
        }
        if cli.sync_timeout.is_zero() {
            return err("--sync-timeout must be more than 0");
        }
        let validate = cli
            .validate_command
            .as_deref()
            .map(|c| CommandSpec::parse(c).map_err(|e| ConfigError::field("--validate-command", e)))
            .transpose()?;
        let root = if cli.root.is_absolute() {
            cli.root.clone()
        } else {
            std::env::current_dir()
                .map_err(|e| ConfigError::field("--root", e))?
                .join(&cli.root)
        };
        if cli.link.is_empty()
            || cli.link.contains('/')
            || cli.link == "."
            || cli.link == ".."
            || cli.link == crate::publish::INTERNAL_DIR
        {
            return err(format!(
                "--link {:?} must be a plain name (the symlink is created inside --root)",
                cli.link
            ));
        }
        let size = |flag: &str, text: &str| {
            parse_size(text).map_err(|e| ConfigError::value(format!("{flag} {e}")))
        };
        let limits = TreeLimits {
            symlinks: cli.symlinks,
            max_file_size: size("--max-file-size", &cli.max_file_size)?,
            max_tree_size: size("--max-tree-size", &cli.max_tree_size)?,
        };
        if let Some(bad) = cli
            .submodule_url_allow
            .iter()
            .find(|p| !p.contains("://") || !p.ends_with('/'))
        {
            return err(format!(
                "--submodule-url-allow {bad:?} must be a URL prefix ending in / (scheme://host/...)"
            ));
        }
        let fetch_limits = FetchLimits {
            max_fetch_size: size("--max-fetch-size", &cli.max_fetch_size)?,
            submodule_urls: cli.submodule_url_allow.clone(),
        };
        let source = Source {
            url,
            target,
            depth: cli.depth,
            credentials: Credentials {
                username: cli.username.clone(),
                password_file: cli.password_file.clone(),
                ssh_key_file: cli.ssh_key_file.clone(),
                ssh_known_hosts: cli.ssh_known_hosts_file.clone(),
            },
            http: HttpSettings {
                ca_file: cli.ca_file.clone(),
                client_cert_file: cli.client_cert_file.clone(),
                client_key_file: cli.client_key_file.clone(),
                bearer_token_file: cli.bearer_token_file.clone(),
                proxy,
            },
            limits: fetch_limits,
        };
        let selection = Selection::parse(cli.subpath.as_deref(), &cli.sparse_path)
            .map_err(ConfigError::value)?;
        let has_keys = !cli.allowed_signers_file.is_empty() || !cli.openpgp_keys_file.is_empty();
        if !cli.ssh_revoked_keys_file.is_empty() && cli.allowed_signers_file.is_empty() {
            return err("--ssh-revoked-keys-file needs --allowed-signers-file");
        }
        let trusted_keys = match (cli.verify_signatures, has_keys) {
            (Policy::Off, false) => TrustedKeys::default(),
            (Policy::Off, true) => {
                return err(
                    "--allowed-signers-file and --openpgp-keys-file need --verify-signatures (tag, head or all)",
                );
            }
            (_, false) => {
                return err(
                    "--verify-signatures needs trusted keys: --allowed-signers-file and/or --openpgp-keys-file",
                );
            }
            (_, true) => TrustedKeys::load(
                &cli.allowed_signers_file,
                &cli.openpgp_keys_file,
                &cli.ssh_revoked_keys_file,
            )
            .map_err(ConfigError::value)?,
        };
        let error_file = cli.error_file.as_ref().map(|f| root.join(f));
        let mut notify = cli.notify.to_config()?;
        if let Some(command) = &mut notify.command {
            command.cwd = Some(root.join(&cli.link));
        }
        Ok(Config {
            notify,
            reference: cli.reference.clone(),
            source,
            root,
            link: cli.link.clone(),
            validate,
            validate_timeout: cli.validate_timeout,
            grace_period: cli.grace_period,
            force_push: cli.force_push,
            period: cli.period,
            jitter: cli.jitter,
            sync_timeout: cli.sync_timeout,
            backoff_max: cli.backoff_max,
            max_failures: cli
                .max_failures
                .or(if cli.one_time { Some(0) } else { None }),
            one_time: cli.one_time,
            stale_after: cli.stale_after,
            sync_secret_file: cli.sync_secret_file.clone(),
            verify: cli.verify_signatures,
            trusted_keys,
            selection,
            submodules: cli.submodules,
            group_write: cli.group_write,
            limits,
            error_file,
            log_filter: cli.kit.log_level.clone(),
            log_format: match cli.kit.log_format {
                LogFormat::Json => "json",
                LogFormat::Text => "text",
                LogFormat::Auto => "auto",
            }
            .to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut all = vec!["git-sync"];
        all.extend_from_slice(args);
        let cli: Cli =
            sidecar_kit::cli::try_parse_with(&INFO, CONFIG_FILE, all).map_err(|e| e.to_string())?;
        Config::from_cli(&cli).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_config_and_defaults() {
        let c = parse(&[
            "--repo",
            "https://example.invalid/r.git",
            "--root",
            "/tmp/x",
        ])
        .unwrap();
        assert_eq!(c.source.target, RefTarget::Head);
        assert_eq!(c.link, "current");
        assert_eq!(c.max_failures, None);
        let c = parse(&[
            "--repo",
            "https://example.invalid/r.git",
            "--root",
            "/tmp/x",
            "--one-time",
        ])
        .unwrap();
        assert_eq!(c.max_failures, Some(0));
    }

    #[test]
    fn refuses_bad_input_naming_the_flag() {
        let base = ["--root", "/tmp/x"];
        let with = |extra: &[&str]| {
            let mut v: Vec<&str> = base.to_vec();
            v.extend_from_slice(extra);
            parse(&v).unwrap_err()
        };
        assert!(with(&["--repo", "https://u:pw@h/r"]).contains("--password-file"));
        assert!(
            with(&["--repo", "ssh://git@h/r", "--ssh-key-file", "/etc/hostname"])
                .contains("--ssh-known-hosts-file")
        );
        assert!(
            with(&[
                "--repo",
                "https://h/r",
                "--password-file",
                "/nonexistent",
                "--username",
                "u"
            ])
            .contains("--password-file /nonexistent")
        );
        assert!(with(&["--repo", "https://h/r", "--jitter", "2"]).contains("--jitter"));
        assert!(with(&["--repo", "https://h/r", "--config", "/tmp/c.yaml"]).contains("not a file"));
        assert!(with(&["--repo", "https://h/r", "--link", "a/b"]).contains("--link"));
        assert!(
            with(&["--repo", "https://h/r", "--notify-signal", "BOGUS"])
                .contains("--notify-signal")
        );
        assert!(
            with(&["--repo", "https://h/r", "--webhook-url", "ftp://x"]).contains("--webhook-url")
        );
        assert!(with(&["--repo", "https://h/r", "--ref", "abc1234"]).contains("abbreviated"));
        assert!(
            with(&["--repo", "https://h/r", "--validate-command", "sh -c 'x"])
                .contains("--validate-command")
        );
    }

    #[test]
    fn signature_flags_go_together_and_bad_keys_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let signers = dir.path().join("allowed_signers");
        std::fs::write(
            &signers,
            "alice@example.com bogus-option ssh-ed25519 AAAA\n",
        )
        .unwrap();
        let signers = signers.to_str().unwrap();
        let base = ["--repo", "https://h/r", "--root", "/tmp/x"];
        let with = |extra: &[&str]| {
            let mut v: Vec<&str> = base.to_vec();
            v.extend_from_slice(extra);
            parse(&v)
        };
        assert!(
            with(&["--verify-signatures", "head"])
                .unwrap_err()
                .contains("--allowed-signers-file")
        );
        assert!(
            with(&["--allowed-signers-file", signers])
                .unwrap_err()
                .contains("need --verify-signatures")
        );
        let err = with(&[
            "--verify-signatures",
            "all",
            "--allowed-signers-file",
            signers,
        ])
        .unwrap_err();
        assert!(
            err.contains(&format!("--allowed-signers-file {signers}:1")),
            "{err}"
        );
        let err = with(&[
            "--verify-signatures",
            "tag",
            "--openpgp-keys-file",
            "/nonexistent.asc",
        ])
        .unwrap_err();
        assert!(
            err.contains("--openpgp-keys-file /nonexistent.asc"),
            "{err}"
        );
        assert!(
            with(&[
                "--verify-signatures",
                "head",
                "--openpgp-keys-file",
                "/nonexistent.asc",
                "--ssh-revoked-keys-file",
                "/nonexistent.pub",
            ])
            .unwrap_err()
            .contains("--ssh-revoked-keys-file needs --allowed-signers-file")
        );
        let krl = dir.path().join("revoked.krl");
        std::fs::write(&krl, b"SSHKRL\n\0\0\0\0\x01").unwrap();
        let good_signers = dir.path().join("good_signers");
        std::fs::write(
            &good_signers,
            "a@b ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti\n",
        )
        .unwrap();
        let err = with(&[
            "--verify-signatures",
            "head",
            "--allowed-signers-file",
            good_signers.to_str().unwrap(),
            "--ssh-revoked-keys-file",
            krl.to_str().unwrap(),
        ])
        .unwrap_err();
        assert!(
            err.contains("--ssh-revoked-keys-file") && err.contains("binary KRL"),
            "{err}"
        );
        assert!(
            with(&["--verify-signatures", "sometimes"])
                .unwrap_err()
                .contains("--verify-signatures")
        );
        assert_eq!(with(&[]).unwrap().verify, Policy::Off);
    }

    #[test]
    fn transport_and_tree_flags_are_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.crt");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t\n").unwrap();
        let base = ["--repo", "https://h/r", "--root", "/tmp/x"];
        let with = |extra: &[&str]| {
            let mut v: Vec<&str> = base.to_vec();
            v.extend_from_slice(extra);
            parse(&v)
        };
        let token = token.to_str().unwrap();
        assert!(
            with(&["--ca-file", not_pem.to_str().unwrap()])
                .unwrap_err()
                .contains("--ca-file")
        );
        assert!(
            with(&["--client-cert-file", "/x.crt"])
                .unwrap_err()
                .contains("--client-key-file")
        );
        assert!(
            with(&[
                "--bearer-token-file",
                token,
                "--username",
                "u",
                "--password-file",
                token
            ])
            .unwrap_err()
            .contains("give one")
        );
        assert!(
            with(&["--proxy", "socks5://p:1"])
                .unwrap_err()
                .contains("--proxy")
        );
        assert!(
            with(&["--subpath", "a/../../etc"])
                .unwrap_err()
                .contains("--subpath")
        );
        assert!(
            with(&["--sparse-path", ".git"])
                .unwrap_err()
                .contains("--sparse-path")
        );
        assert!(
            with(&["--submodules", "some"])
                .unwrap_err()
                .contains("--submodules")
        );
        let c = with(&[
            "--bearer-token-file",
            token,
            "--proxy",
            "http://p:3128",
            "--no-proxy",
            "internal",
            "--subpath",
            "apps/",
            "--sparse-path",
            "web,api",
            "--error-file",
            "err.log",
            "--group-write",
        ])
        .unwrap();
        assert_eq!(c.source.http.proxy.https.as_ref().unwrap().port, 3128);
        assert_eq!(c.source.http.proxy.no_proxy, vec!["internal"]);
        assert_eq!(c.selection.subpath.as_deref(), Some("apps"));
        assert_eq!(c.selection.sparse, vec!["api", "web"]);
        assert_eq!(
            c.error_file.as_deref(),
            Some(std::path::Path::new("/tmp/x/err.log"))
        );
        assert!(c.group_write);
        assert_eq!(c.submodules, SubmoduleMode::Recursive);
        assert_eq!(c.limits, TreeLimits::default());
        let c = with(&[
            "--symlinks",
            "drop",
            "--max-file-size",
            "1M",
            "--max-tree-size",
            "2G",
            "--max-fetch-size",
            "512K",
            "--submodule-url-allow",
            "https://git.example.com/",
        ])
        .unwrap();
        assert_eq!(c.limits.symlinks, SymlinkPolicy::Drop);
        assert_eq!(c.limits.max_file_size, Some(1 << 20));
        assert_eq!(c.limits.max_tree_size, Some(2 << 30));
        assert_eq!(c.source.limits.max_fetch_size, Some(512 << 10));
        assert!(
            with(&["--max-file-size", "lots"])
                .unwrap_err()
                .contains("--max-file-size")
        );
        assert!(
            with(&["--submodule-url-allow", "https://git.example.com"])
                .unwrap_err()
                .contains("--submodule-url-allow")
        );
        assert!(
            with(&["--symlinks", "follow"])
                .unwrap_err()
                .contains("--symlinks")
        );
    }
}
