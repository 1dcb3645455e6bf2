//! Signed commits for the benchmark: an ed25519 key made by ssh-keygen, `git commit -S` with
//! `gpg.format=ssh`, and the allowed-signers file both git-sync and `git verify-commit` read.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Signer {
    pub key: PathBuf,
    pub allowed_signers: PathBuf,
}

impl Signer {
    pub fn new(dir: &Path) -> Signer {
        let key = dir.join("signing_key");
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f"])
            .arg(&key)
            .status()
            .expect("ssh-keygen (apt-get install openssh-client)")
            .success();
        assert!(ok, "ssh-keygen failed");
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let allowed_signers = dir.join("allowed_signers");
        std::fs::write(&allowed_signers, format!("bench@example.invalid {public}")).unwrap();
        Signer {
            key,
            allowed_signers,
        }
    }

    /// `git -c gpg.format=ssh -c user.signingkey=KEY <args>` (args include `commit -S`).
    pub fn git(&self, dir: &Path, args: &[&str]) -> String {
        let config = [
            "-c".to_string(),
            "gpg.format=ssh".into(),
            "-c".into(),
            format!("user.signingkey={}", self.key.display()),
            "-c".into(),
            format!(
                "gpg.ssh.allowedSignersFile={}",
                self.allowed_signers.display()
            ),
        ];
        let mut all: Vec<&str> = config.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        crate::git(dir, &all)
    }

    /// git-sync's flags to verify with this key.
    pub fn git_sync_args(&self, policy: &str) -> Vec<String> {
        vec![
            "--verify-signatures".into(),
            policy.into(),
            "--allowed-signers-file".into(),
            self.allowed_signers.display().to_string(),
        ]
    }

    /// `git verify-commit REV` with the allowed-signers file, for the git CLI's side.
    pub fn verify_commit_command(&self, rev: &str) -> String {
        format!(
            "git -c gpg.ssh.allowedSignersFile={} verify-commit {rev}",
            self.allowed_signers.display()
        )
    }
}
