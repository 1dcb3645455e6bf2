//! Flags (each also an environment variable `SECRETS_AGENT_<NAME>`). The secrets and files
//! themselves are in the YAML file given by the kit's `--config` (see [`crate::config`]).

use std::path::PathBuf;
use std::time::Duration;

use sidecar_kit::{KitArgs, SidecarInfo};

pub const INFO: SidecarInfo = SidecarInfo {
    name: "secrets-agent",
    env_prefix: "SECRETS_AGENT",
    admin_port: 9905,
    version: env!("CARGO_PKG_VERSION"),
    description: "Renders secrets and short-lived certificates from OpenBao/Vault into files, renewed and rotated",
    // A handful of requests a minute: one thread is plenty and keeps memory low.
    worker_threads: 1,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMethod {
    /// A token read from --token-file (renewed while renewable; the file is read again when it
    /// changes or the token can no longer be renewed).
    Token,
    /// AppRole: --role-id-file and --secret-id-file.
    Approle,
    /// A JWT from --jwt-file (a projected service-account token, or any JWT) against the jwt
    /// auth method, with --auth-role.
    Jwt,
    /// A TLS client certificate (--client-cert, --client-key) against the cert auth method.
    Cert,
}

impl AuthMethod {
    /// The flag's spelling: `token`, `approle`, `jwt`, `cert`.
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }
}

#[derive(clap::Parser, Debug)]
#[command(name = "secrets-agent", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub kit: KitArgs,
    #[command(flatten)]
    pub notify: sidecar_kit::notify::NotifyArgs,

    /// OpenBao (or Vault) address, e.g. https://openbao.openbao.svc:8200.
    #[arg(long, env = "ADDR", value_name = "URL", help_heading = "OpenBao")]
    pub addr: String,
    /// CA bundle (PEM) that OpenBao's certificate must chain to, trusted alone; the system's
    /// roots when unset.
    #[arg(long, env = "CA_FILE", value_name = "FILE", help_heading = "OpenBao")]
    pub ca_file: Option<PathBuf>,
    /// Namespace sent with every request (X-Vault-Namespace), for servers that have them.
    #[arg(long, env = "NAMESPACE", value_name = "NS", help_heading = "OpenBao")]
    pub namespace: Option<String>,
    /// Limit of one request to OpenBao.
    #[arg(long, env = "REQUEST_TIMEOUT", value_name = "DURATION", default_value = "10s",
          value_parser = humantime::parse_duration, help_heading = "OpenBao")]
    pub request_timeout: Duration,

    /// How the agent logs in.
    #[arg(long, env = "AUTH_METHOD", value_enum, help_heading = "Authentication")]
    pub auth_method: AuthMethod,
    /// Mount path of the auth method (default: approle, jwt or cert).
    #[arg(
        long,
        env = "AUTH_MOUNT",
        value_name = "PATH",
        help_heading = "Authentication"
    )]
    pub auth_mount: Option<String>,
    /// Role to log in as: required for jwt; for cert, the certificate role's name (optional).
    #[arg(
        long,
        env = "AUTH_ROLE",
        value_name = "NAME",
        help_heading = "Authentication"
    )]
    pub auth_role: Option<String>,
    /// File holding the token (--auth-method token).
    #[arg(
        long,
        env = "TOKEN_FILE",
        value_name = "FILE",
        help_heading = "Authentication"
    )]
    pub token_file: Option<PathBuf>,
    /// File holding the AppRole role_id.
    #[arg(
        long,
        env = "ROLE_ID_FILE",
        value_name = "FILE",
        help_heading = "Authentication"
    )]
    pub role_id_file: Option<PathBuf>,
    /// File holding the AppRole secret_id (omit for a role with bind_secret_id=false).
    #[arg(
        long,
        env = "SECRET_ID_FILE",
        value_name = "FILE",
        help_heading = "Authentication"
    )]
    pub secret_id_file: Option<PathBuf>,
    /// File holding the JWT, e.g. a projected service-account token.
    #[arg(
        long,
        env = "JWT_FILE",
        value_name = "FILE",
        help_heading = "Authentication"
    )]
    pub jwt_file: Option<PathBuf>,
    /// Client certificate chain (PEM) for --auth-method cert.
    #[arg(
        long,
        env = "CLIENT_CERT",
        value_name = "FILE",
        help_heading = "Authentication"
    )]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM) for --auth-method cert.
    #[arg(
        long,
        env = "CLIENT_KEY",
        value_name = "FILE",
        help_heading = "Authentication"
    )]
    pub client_key: Option<PathBuf>,
    /// Also write the token to this file (mode 0400) each time it changes. Off by default: the
    /// token lives in memory only.
    #[arg(
        long,
        env = "TOKEN_SINK_FILE",
        value_name = "FILE",
        help_heading = "Authentication"
    )]
    pub token_sink_file: Option<PathBuf>,

    /// Directory the files are published in (Kubernetes `..data` layout).
    #[arg(long, env = "OUTPUT_DIR", value_name = "DIR", help_heading = "Output")]
    pub output_dir: PathBuf,
    /// Default mode of the files written (octal).
    #[arg(long, env = "FILE_MODE", value_name = "OCTAL", default_value = "0400",
          value_parser = parse_mode, help_heading = "Output")]
    pub file_mode: u32,
    /// Default owner (numeric uid) of the files written; the agent's own when unset.
    #[arg(long, env = "FILE_OWNER", value_name = "UID", help_heading = "Output")]
    pub file_owner: Option<u32>,
    /// Default group (numeric gid) of the files written; the agent's own when unset.
    #[arg(long, env = "FILE_GROUP", value_name = "GID", help_heading = "Output")]
    pub file_group: Option<u32>,

    /// How often KV secrets are read again; a change is published within this interval.
    #[arg(long, env = "POLL_INTERVAL", value_name = "DURATION", default_value = "60s",
          value_parser = humantime::parse_duration, help_heading = "Schedule")]
    pub poll_interval: Duration,
    /// Fraction of a lease's, token's or certificate's lifetime after which it is renewed.
    #[arg(long, env = "RENEW_FRACTION", value_name = "FRACTION", default_value_t = 2.0 / 3.0,
          help_heading = "Schedule")]
    pub renew_fraction: f64,
    /// How long a replaced dynamic secret's lease lives on before it is revoked, so the app can
    /// move to the new credentials first.
    #[arg(long, env = "REVOKE_GRACE", value_name = "DURATION", default_value = "60s",
          value_parser = humantime::parse_duration, help_heading = "Schedule")]
    pub revoke_grace: Duration,
    /// Longest wait between retries after failures (backoff doubles from 1s, with jitter).
    #[arg(long, env = "BACKOFF_MAX", value_name = "DURATION", default_value = "60s",
          value_parser = humantime::parse_duration, help_heading = "Schedule")]
    pub backoff_max: Duration,
    /// Spread of retry waits, as a fraction (0.2 = ±20%).
    #[arg(
        long,
        env = "JITTER",
        value_name = "FRACTION",
        default_value_t = 0.2,
        help_heading = "Schedule"
    )]
    pub jitter: f64,
    /// Render every file once and exit 0 (for init containers); exit 1 naming what failed.
    #[arg(long, env = "ONE_TIME", help_heading = "Schedule")]
    pub one_time: bool,
    /// How long --one-time keeps retrying an unreachable, sealed or failing OpenBao.
    #[arg(long, env = "ONE_TIME_TIMEOUT", value_name = "DURATION", default_value = "60s",
          value_parser = humantime::parse_duration, help_heading = "Schedule")]
    pub one_time_timeout: Duration,
}

/// `0400`, `400` or `0o400`.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!("{text:?} is not an octal file mode such as 0400")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0400"), Ok(0o400));
        assert_eq!(parse_mode("440"), Ok(0o440));
        assert_eq!(parse_mode("0o640"), Ok(0o640));
        assert!(parse_mode("0800").is_err());
        assert!(parse_mode("rw").is_err());
        assert!(parse_mode("77777").is_err());
    }
}
