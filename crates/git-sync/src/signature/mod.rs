//! Commit and tag signatures: which objects must be signed (the policy), by whom (trusted keys
//! from files, re-read when they change), and the verdict, in pure Rust: SSH signatures
//! (git's `gpg.format=ssh`) with `ssh-key`, OpenPGP with rPGP. No `git` or `gpg` program.

pub mod openpgp;
pub mod payload;
pub mod ssh;

use std::path::PathBuf;
use std::time::SystemTime;

use self::openpgp::OpenPgpKeys;
use self::payload::{Format, ObjectKind};
use self::ssh::{AllowedSigners, RevokedKeys};

/// `--verify-signatures`: which signatures a revision needs before it is published.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Nothing is checked.
    #[default]
    Off,
    /// --ref must name an annotated tag signed by a trusted key (the commit is not checked).
    Tag,
    /// The published commit must be signed by a trusted key (and the tag, when --ref names an
    /// annotated tag).
    Head,
    /// Every commit since the last published one, on all parents (and the tag, as with head).
    All,
}

impl Policy {
    pub fn checks_commits(self) -> bool {
        matches!(self, Policy::Head | Policy::All)
    }
}

/// Why a signature was refused; the label of `gitsync_signature_refusals_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No signature at all.
    Unsigned,
    /// Signed by a key that no trusted-keys file holds.
    UnknownKey,
    /// The signature does not verify: the object was changed after signing, or it is garbage.
    BadSignature,
    /// The key is revoked: an OpenPGP revocation, or an SSH key in --ssh-revoked-keys-file.
    RevokedKey,
    /// The key, or the signature itself, has expired (OpenPGP expiry; an SSH allowed-signers
    /// entry's `valid-before` earlier than the commit or tag).
    ExpiredKey,
    /// A trusted key, but its entry refuses this use (SSH namespaces or `valid-after`,
    /// an OpenPGP key that may not sign or an unbound subkey).
    NotAllowed,
    /// `--verify-signatures=tag` and --ref is not an annotated tag.
    NotATag,
    /// A signature format git-sync cannot check (gpgsm's X.509).
    Unsupported,
}

impl Reason {
    pub fn label(self) -> &'static str {
        match self {
            Reason::Unsigned => "unsigned",
            Reason::UnknownKey => "unknown_key",
            Reason::BadSignature => "bad_signature",
            Reason::RevokedKey => "revoked_key",
            Reason::ExpiredKey => "expired_key",
            Reason::NotAllowed => "not_allowed",
            Reason::NotATag => "not_a_tag",
            Reason::Unsupported => "unsupported",
        }
    }
}

/// A refused signature: the reason (for the metric) and what exactly is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Refusal {
    pub reason: Reason,
    pub detail: String,
}

impl Refusal {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            detail: detail.into(),
        }
    }
}

/// Who made a good signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The SSH key's SHA256 fingerprint, or the OpenPGP primary key's fingerprint.
    pub key: String,
    /// Principals (SSH) or the primary user id (OpenPGP).
    pub identity: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    AllowedSigners,
    OpenPgp,
    SshRevoked,
}

impl KeyKind {
    fn flag(self) -> &'static str {
        match self {
            KeyKind::AllowedSigners => "--allowed-signers-file",
            KeyKind::OpenPgp => "--openpgp-keys-file",
            KeyKind::SshRevoked => "--ssh-revoked-keys-file",
        }
    }
}

#[derive(Debug, Clone)]
struct KeyFile {
    path: PathBuf,
    kind: KeyKind,
    content: Vec<u8>,
}

/// The trusted keys, from `--allowed-signers-file` and `--openpgp-keys-file`, less the SSH
/// keys of `--ssh-revoked-keys-file`.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    files: Vec<KeyFile>,
    ssh: AllowedSigners,
    openpgp: OpenPgpKeys,
    /// The last refresh error reported, so an unchanged bad file is not reported again.
    last_error: Option<String>,
}

impl TrustedKeys {
    /// Reads and parses every file; an error names the file (and the line, for SSH).
    pub fn load(
        allowed_signers: &[PathBuf],
        openpgp: &[PathBuf],
        ssh_revoked: &[PathBuf],
    ) -> Result<TrustedKeys, String> {
        let files = allowed_signers
            .iter()
            .map(|p| (p, KeyKind::AllowedSigners))
            .chain(openpgp.iter().map(|p| (p, KeyKind::OpenPgp)))
            .chain(ssh_revoked.iter().map(|p| (p, KeyKind::SshRevoked)))
            .map(|(path, kind)| {
                Ok(KeyFile {
                    content: read(path, kind)?,
                    path: path.clone(),
                    kind,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Self::parse(files)
    }

    fn parse(files: Vec<KeyFile>) -> Result<TrustedKeys, String> {
        let mut keys = TrustedKeys::default();
        for file in &files {
            let origin = file.path.display().to_string();
            let flag = file.kind.flag();
            match file.kind {
                KeyKind::AllowedSigners => {
                    let text = std::str::from_utf8(&file.content).map_err(|_| {
                        format!("{flag} {origin}: an allowed-signers file must be text")
                    })?;
                    let parsed =
                        AllowedSigners::parse(text, &origin).map_err(|e| format!("{flag} {e}"))?;
                    if parsed.is_empty() {
                        return Err(format!("{flag} {origin}: holds no allowed signer"));
                    }
                    keys.ssh.extend(parsed);
                }
                KeyKind::OpenPgp => keys.openpgp.extend(
                    OpenPgpKeys::parse(&file.content, &origin)
                        .map_err(|e| format!("{flag} {e}"))?,
                ),
                KeyKind::SshRevoked => keys.ssh.revoked.extend(
                    RevokedKeys::parse(&file.content, &origin)
                        .map_err(|e| format!("{flag} {e}"))?,
                ),
            }
        }
        keys.files = files;
        Ok(keys)
    }

    /// Re-reads the files. Ok(true) when one changed and the new keys are in use; an error
    /// (unreadable file, bad key) leaves the keys in use as they were.
    /// A problem is reported once: while the files stay as they are, later calls say Ok(false).
    pub fn refresh(&mut self) -> Result<bool, String> {
        match self.try_refresh() {
            Err(e) if self.last_error.as_deref() == Some(e.as_str()) => Ok(false),
            Err(e) => {
                self.last_error = Some(e.clone());
                Err(e)
            }
            Ok(changed) => {
                self.last_error = None;
                Ok(changed)
            }
        }
    }

    fn try_refresh(&mut self) -> Result<bool, String> {
        let mut changed = false;
        let mut files = self.files.clone();
        for file in &mut files {
            let content = read(&file.path, file.kind)?;
            if content != file.content {
                file.content = content;
                changed = true;
            }
        }
        if !changed {
            return Ok(false);
        }
        *self = Self::parse(files)?;
        Ok(true)
    }

    /// One line per trusted key source, for the log.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.ssh.is_empty() {
            parts.push(format!("{} allowed signer(s)", self.ssh.signers.len()));
        }
        if !self.ssh.revoked.is_empty() {
            parts.push(format!(
                "{} revoked SSH key(s)",
                self.ssh.revoked.keys.len()
            ));
        }
        if !self.openpgp.is_empty() {
            parts.push(format!(
                "OpenPGP keys {}",
                self.openpgp.describe().join(", ")
            ));
        }
        parts.join("; ")
    }

    /// Checks the signature of a raw commit or tag object, at time `now`.
    pub fn verify(&self, kind: ObjectKind, raw: &[u8], now: SystemTime) -> Result<Signer, Refusal> {
        let what = match kind {
            ObjectKind::Commit => "commit",
            ObjectKind::Tag => "tag",
        };
        let Some(signed) = payload::split(kind, raw) else {
            return Err(Refusal::new(
                Reason::Unsigned,
                format!("the {what} is not signed"),
            ));
        };
        match signed.format() {
            Format::Ssh => self
                .ssh
                .verify(&signed.signature, &signed.payload, signed.timestamp),
            Format::OpenPgp => self.openpgp.verify(&signed.signature, &signed.payload, now),
            Format::X509 => Err(Refusal::new(
                Reason::Unsupported,
                format!("the {what} has an X.509 (gpgsm) signature, which git-sync cannot check"),
            )),
            Format::Unknown => Err(Refusal::new(
                Reason::BadSignature,
                format!("the {what}'s signature is in no known format"),
            )),
        }
    }
}

fn read(path: &std::path::Path, kind: KeyKind) -> Result<Vec<u8>, String> {
    std::fs::read(path)
        .map_err(|e| format!("{} {}: cannot read it: {e}", kind.flag(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const PAYLOAD: &[u8] = include_bytes!("testdata/payload");
    const COMMIT_TIME: i64 = 1_700_000_000;

    /// `payload` as a commit object carrying `signature` in its gpgsig header.
    fn commit_with(signature: &[u8]) -> Vec<u8> {
        let text = String::from_utf8(PAYLOAD.to_vec()).unwrap();
        let (header, message) = text.split_once("\n\n").unwrap();
        let sig = String::from_utf8(signature.to_vec()).unwrap();
        let folded = sig.trim_end().replace('\n', "\n ");
        format!("{header}\ngpgsig {folded}\n\n{message}").into_bytes()
    }

    fn ssh_keys(line: &str) -> TrustedKeys {
        TrustedKeys {
            ssh: AllowedSigners::parse(line, "allowed").unwrap(),
            ..TrustedKeys::default()
        }
    }

    fn pgp_keys(armored: &[u8]) -> TrustedKeys {
        TrustedKeys {
            openpgp: OpenPgpKeys::parse(armored, "keys.asc").unwrap(),
            ..TrustedKeys::default()
        }
    }

    fn at(secs: i64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap())
    }

    const K1: &str = include_str!("testdata/k1.pub");
    const K2: &str = include_str!("testdata/k2.pub");
    const SSH_SIG: &[u8] = include_bytes!("testdata/payload.sig");

    #[test]
    fn payload_round_trip_matches_what_was_signed() {
        let raw = commit_with(SSH_SIG);
        let signed = payload::split(ObjectKind::Commit, &raw).unwrap();
        assert_eq!(signed.payload, PAYLOAD);
        assert_eq!(signed.timestamp, Some(COMMIT_TIME));
    }

    #[test]
    fn ssh_signature_good_unknown_tampered_and_refused_by_options() {
        let now = SystemTime::now();
        let raw = commit_with(SSH_SIG);
        let good = ssh_keys(&format!("signer@example.invalid {K1}"));
        let signer = good.verify(ObjectKind::Commit, &raw, now).unwrap();
        assert!(signer.key.starts_with("SHA256:"), "{signer:?}");
        assert_eq!(signer.identity, "signer@example.invalid");

        let other = ssh_keys(&format!("other@example.invalid {K2}"));
        let refusal = other.verify(ObjectKind::Commit, &raw, now).unwrap_err();
        assert_eq!(refusal.reason, Reason::UnknownKey, "{refusal}");

        let tampered = String::from_utf8(raw.clone())
            .unwrap()
            .replace("\nsigned\n", "\nsigneD\n");
        let refusal = good
            .verify(ObjectKind::Commit, tampered.as_bytes(), now)
            .unwrap_err();
        assert_eq!(refusal.reason, Reason::BadSignature, "{refusal}");

        // valid-before the commit's time: git's -Overify-time refuses it
        let window = ssh_keys(&format!(
            "signer@example.invalid valid-before=\"20231101\" {K1}"
        ));
        let refusal = window.verify(ObjectKind::Commit, &raw, now).unwrap_err();
        assert_eq!(refusal.reason, Reason::ExpiredKey, "{refusal}");
        assert!(refusal.detail.contains("expired"), "{refusal}");
        // valid-after the commit's time: not yet valid, which is not an expiry
        let window = ssh_keys(&format!(
            "signer@example.invalid valid-after=\"20231201\" {K1}"
        ));
        let refusal = window.verify(ObjectKind::Commit, &raw, now).unwrap_err();
        assert_eq!(refusal.reason, Reason::NotAllowed, "{refusal}");
        assert!(refusal.detail.contains("only after"), "{refusal}");
        let window = ssh_keys(&format!(
            "signer@example.invalid valid-after=\"20231101Z\",namespaces=\"git\" {K1}"
        ));
        window.verify(ObjectKind::Commit, &raw, now).unwrap();
        let files_only = ssh_keys(&format!("signer@example.invalid namespaces=\"file\" {K1}"));
        let refusal = files_only
            .verify(ObjectKind::Commit, &raw, now)
            .unwrap_err();
        assert_eq!(refusal.reason, Reason::NotAllowed, "{refusal}");
    }

    #[test]
    fn ssh_revoked_key_is_refused_even_when_allowed() {
        let raw = commit_with(SSH_SIG);
        let mut keys = ssh_keys(&format!("signer@example.invalid {K1}"));
        keys.ssh.revoked = RevokedKeys::parse(
            format!("{}\n{}\n", K2.trim(), K1.trim()).as_bytes(),
            "revoked",
        )
        .unwrap();
        let refusal = keys
            .verify(ObjectKind::Commit, &raw, SystemTime::now())
            .unwrap_err();
        assert_eq!(refusal.reason, Reason::RevokedKey, "{refusal}");
        assert!(refusal.detail.contains("revoked:2"), "{refusal}");
        keys.ssh.revoked = RevokedKeys::parse(K2.as_bytes(), "revoked").unwrap();
        keys.verify(ObjectKind::Commit, &raw, SystemTime::now())
            .unwrap();
    }

    #[test]
    fn ssh_signature_in_another_namespace_is_refused() {
        let raw = commit_with(include_bytes!("testdata/payload.file-namespace.sig"));
        let keys = ssh_keys(&format!("signer@example.invalid {K1}"));
        let refusal = keys
            .verify(ObjectKind::Commit, &raw, SystemTime::now())
            .unwrap_err();
        assert_eq!(refusal.reason, Reason::NotAllowed, "{refusal}");
        assert!(refusal.detail.contains("namespace \"file\""), "{refusal}");
    }

    #[test]
    fn unsigned_is_refused() {
        let keys = ssh_keys(&format!("signer@example.invalid {K1}"));
        let refusal = keys
            .verify(ObjectKind::Commit, PAYLOAD, SystemTime::now())
            .unwrap_err();
        assert_eq!(refusal.reason, Reason::Unsigned);
    }

    #[test]
    fn openpgp_good_unknown_tampered_revoked() {
        let now = SystemTime::now();
        let raw = commit_with(include_bytes!("testdata/payload.asc"));
        let good = pgp_keys(include_bytes!("testdata/good.asc"));
        let signer = good.verify(ObjectKind::Commit, &raw, now).unwrap();
        assert_eq!(signer.key, "46D805E02D362B006DEF17A867623C125A794FE6");
        assert_eq!(signer.identity, "Signer <pgp@example.invalid>");

        let stranger = pgp_keys(include_bytes!("testdata/sub.asc"));
        let refusal = stranger.verify(ObjectKind::Commit, &raw, now).unwrap_err();
        assert_eq!(refusal.reason, Reason::UnknownKey, "{refusal}");

        let tampered = String::from_utf8(raw.clone())
            .unwrap()
            .replace("\nsigned\n", "\nsigneD\n");
        let refusal = good
            .verify(ObjectKind::Commit, tampered.as_bytes(), now)
            .unwrap_err();
        assert_eq!(refusal.reason, Reason::BadSignature, "{refusal}");

        let revoked = pgp_keys(include_bytes!("testdata/revoked.asc"));
        let refusal = revoked.verify(ObjectKind::Commit, &raw, now).unwrap_err();
        assert_eq!(refusal.reason, Reason::RevokedKey, "{refusal}");
    }

    #[test]
    fn openpgp_expired_key_is_refused_now_and_good_while_it_was_valid() {
        let raw = commit_with(include_bytes!("testdata/expired-payload.asc"));
        let keys = pgp_keys(include_bytes!("testdata/expired.asc"));
        let refusal = keys
            .verify(ObjectKind::Commit, &raw, SystemTime::now())
            .unwrap_err();
        assert_eq!(refusal.reason, Reason::ExpiredKey, "{refusal}");
        assert!(refusal.detail.contains("2020-01-03"), "{refusal}");
        // judged on 2020-01-02, within its two days
        keys.verify(ObjectKind::Commit, &raw, at(1_577_923_200))
            .unwrap();
    }

    #[test]
    fn openpgp_signing_subkey_of_a_certify_only_primary() {
        let raw = commit_with(include_bytes!("testdata/sub-payload.asc"));
        let keys = pgp_keys(include_bytes!("testdata/sub.asc"));
        let signer = keys
            .verify(ObjectKind::Commit, &raw, SystemTime::now())
            .unwrap();
        assert_eq!(signer.identity, "Primary <sub@example.invalid>");
    }

    #[test]
    fn key_files_are_reread_when_they_change_and_a_bad_one_keeps_the_old_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("allowed");
        std::fs::write(&file, format!("other@example.invalid {K2}")).unwrap();
        let mut keys = TrustedKeys::load(std::slice::from_ref(&file), &[], &[]).unwrap();
        let raw = commit_with(SSH_SIG);
        let now = SystemTime::now();
        assert_eq!(
            keys.verify(ObjectKind::Commit, &raw, now)
                .unwrap_err()
                .reason,
            Reason::UnknownKey
        );
        assert!(!keys.refresh().unwrap());
        std::fs::write(
            &file,
            format!("other@example.invalid {K2}signer@example.invalid {K1}"),
        )
        .unwrap();
        assert!(keys.refresh().unwrap());
        keys.verify(ObjectKind::Commit, &raw, now).unwrap();
        std::fs::write(&file, "garbage\n").unwrap();
        let err = keys.refresh().unwrap_err();
        assert!(err.contains("allowed:1"), "{err}");
        keys.verify(ObjectKind::Commit, &raw, now).unwrap();
        // reported once while the file stays bad
        assert!(!keys.refresh().unwrap());
        let err = TrustedKeys::load(&[], &[dir.path().join("missing.asc")], &[]).unwrap_err();
        assert!(err.contains("missing.asc"), "{err}");
    }
}
