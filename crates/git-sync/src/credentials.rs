//! Credentials for the remote. Secrets live in files that are read on every sync (so a
//! rotated Kubernetes Secret is picked up) and never reach a log line or a metric.

use std::path::PathBuf;

/// Paths and names only: no secret is held in memory between syncs.
#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ssh_key_file: Option<PathBuf>,
    pub ssh_known_hosts: Option<PathBuf>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Paths are not secret, but keep the Debug output obviously free of contents.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("ssh_key_file", &self.ssh_key_file)
            .field("ssh_known_hosts", &self.ssh_known_hosts)
            .finish()
    }
}

impl Credentials {
    /// The password or token, without the trailing newline editors and `echo` add.
    pub fn read_password(&self, file: &std::path::Path) -> Result<String, String> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read the password file {}: {e}", file.display()))?;
        let secret = text.trim_end_matches(['\n', '\r']).to_string();
        if secret.is_empty() {
            return Err(format!("the password file {} is empty", file.display()));
        }
        Ok(secret)
    }
}

pub use sidecar_kit::telemetry::redact_url;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_file_is_trimmed_and_empty_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "tok\n").unwrap();
        let c = Credentials::default();
        assert_eq!(c.read_password(&f).unwrap(), "tok");
        std::fs::write(&f, "\n").unwrap();
        assert!(c.read_password(&f).unwrap_err().contains("empty"));
        assert!(
            c.read_password(&dir.path().join("nope"))
                .unwrap_err()
                .contains("nope")
        );
    }
}
