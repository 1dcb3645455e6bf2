//! git's `gpg.format=ssh` signatures (OpenSSH's sshsig, namespace `git`), checked against an
//! OpenSSH allowed-signers file, as `ssh-keygen -Y find-principals` and `-Y verify` check them
//! for git: a signature is good when the signing key is on a line of the file whose
//! `namespaces` (if any) admit `git` and whose `valid-after`/`valid-before` window (if any)
//! holds the committer's (or tagger's) time, and the key is not in a revoked-keys file
//! (git's `gpg.ssh.revocationFile`, `ssh-keygen -Y verify -r`).
//!
//! File format (ssh-keygen(1), ALLOWED SIGNERS): `principals [options] keytype base64 [comment]`
//! per line; `#` comments. Principals are informational here (git takes them from the file
//! itself). Options: `namespaces="pattern,list"`, `valid-after="YYYYMMDD[HHMM[SS]][Z]"`,
//! `valid-before=...`, `cert-authority` (lines with it are read but never match: git-sync does
//! not verify signatures made with SSH certificates). Times without `Z` are read as UTC, the
//! zone of a container without a time-zone database.

use ssh_key::{PublicKey, SshSig};

use super::{Reason, Refusal, Signer};

/// The namespace git signs in (`ssh-keygen -Y sign -n git`).
pub const GIT_NAMESPACE: &str = "git";

/// One line of an allowed-signers file.
#[derive(Debug, Clone)]
pub struct AllowedSigner {
    pub principals: String,
    pub key: PublicKey,
    pub namespaces: Option<String>,
    pub valid_after: Option<i64>,
    pub valid_before: Option<i64>,
    pub cert_authority: bool,
    /// `file:line`, for log lines.
    pub origin: String,
}

/// The parsed lines of one or more allowed-signers files, and the revoked keys.
#[derive(Debug, Clone, Default)]
pub struct AllowedSigners {
    pub signers: Vec<AllowedSigner>,
    pub revoked: RevokedKeys,
}

/// The start of OpenSSH's binary KRL format (`ssh-keygen -k`), which is not read.
const KRL_MAGIC: &[u8] = b"SSHKRL\n\0";

/// A revoked-keys file as `ssh-keygen -Y verify -r` reads it when it is not a KRL: public keys
/// (`keytype base64 [comment]`), one per line, `#` comments and blank lines skipped.
#[derive(Debug, Clone, Default)]
pub struct RevokedKeys {
    /// Each key with its `file:line`, for log lines.
    pub keys: Vec<(ssh_key::public::KeyData, String)>,
}

impl RevokedKeys {
    /// Parses a file's content; `origin` names the file in errors (`origin:line: ...`).
    /// An empty file is fine (nothing revoked yet); a binary KRL is refused, not skipped, so
    /// that revocations are never silently ignored.
    pub fn parse(content: &[u8], origin: &str) -> Result<RevokedKeys, String> {
        if content.starts_with(KRL_MAGIC) {
            return Err(format!(
                "{origin}: a binary KRL (ssh-keygen -k) is not supported; list the revoked public keys one per line"
            ));
        }
        let text = std::str::from_utf8(content)
            .map_err(|_| format!("{origin}: a revoked-keys file must be text"))?;
        let mut keys = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let at = format!("{origin}:{}", index + 1);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = PublicKey::from_openssh(line).map_err(|e| {
                format!("{at}: cannot read the public key ({e}): expected `keytype base64-key`")
            })?;
            keys.push((key.key_data().clone(), at));
        }
        Ok(RevokedKeys { keys })
    }

    pub fn extend(&mut self, other: RevokedKeys) {
        self.keys.extend(other.keys);
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Where the key is revoked (`file:line`), if it is.
    fn find(&self, key: &ssh_key::public::KeyData) -> Option<&str> {
        self.keys
            .iter()
            .find(|(revoked, _)| revoked == key)
            .map(|(_, origin)| origin.as_str())
    }
}

impl AllowedSigners {
    /// Parses a file's text; `origin` names the file in errors (`origin:line: ...`).
    pub fn parse(text: &str, origin: &str) -> Result<AllowedSigners, String> {
        let mut signers = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let at = format!("{origin}:{}", index + 1);
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            signers.push(parse_line(line, &at).map_err(|e| format!("{at}: {e}"))?);
        }
        Ok(AllowedSigners {
            signers,
            revoked: RevokedKeys::default(),
        })
    }

    pub fn extend(&mut self, other: AllowedSigners) {
        self.signers.extend(other.signers);
        self.revoked.extend(other.revoked);
    }

    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
    }

    /// Verifies an armoured sshsig over `payload`, made at `time` (Unix seconds).
    pub fn verify(
        &self,
        armored: &[u8],
        payload: &[u8],
        time: Option<i64>,
    ) -> Result<Signer, Refusal> {
        let sig = SshSig::from_pem(armored).map_err(|e| {
            Refusal::new(
                Reason::BadSignature,
                format!("unreadable SSH signature: {e}"),
            )
        })?;
        let fingerprint = sig.public_key().fingerprint(ssh_key::HashAlg::Sha256);
        if sig.namespace() != GIT_NAMESPACE {
            return Err(Refusal::new(
                Reason::NotAllowed,
                format!(
                    "the SSH signature is for namespace {:?}, not {GIT_NAMESPACE:?}",
                    sig.namespace()
                ),
            ));
        }
        // As ssh-keygen: a revoked key is refused whatever the allowed-signers file says.
        if let Some(origin) = self.revoked.find(sig.public_key()) {
            return Err(Refusal::new(
                Reason::RevokedKey,
                format!("the SSH key {fingerprint} is revoked ({origin})"),
            ));
        }
        let same_key: Vec<&AllowedSigner> = self
            .signers
            .iter()
            .filter(|s| !s.cert_authority && s.key.key_data() == sig.public_key())
            .collect();
        let Some(first) = same_key.first() else {
            return Err(Refusal::new(
                Reason::UnknownKey,
                format!("no allowed-signers entry for the SSH key {fingerprint}"),
            ));
        };
        first
            .key
            .verify(GIT_NAMESPACE, payload, &sig)
            .map_err(|e| {
                Refusal::new(
                    Reason::BadSignature,
                    format!("the SSH signature by {fingerprint} does not verify: {e}"),
                )
            })?;
        let mut why_not = Vec::new();
        // expired_key only when every entry of the key refuses it for its valid-before
        let mut all_expired = true;
        for signer in same_key {
            match signer.admits(time) {
                Ok(()) => {
                    return Ok(Signer {
                        key: fingerprint.to_string(),
                        identity: signer.principals.clone(),
                    });
                }
                Err((reason, e)) => {
                    all_expired &= reason == Reason::ExpiredKey;
                    why_not.push(format!("{}: {e}", signer.origin));
                }
            }
        }
        Err(Refusal::new(
            if all_expired {
                Reason::ExpiredKey
            } else {
                Reason::NotAllowed
            },
            format!(
                "the SSH key {fingerprint} signed, but its allowed-signers entries refuse it: {}",
                why_not.join("; ")
            ),
        ))
    }
}

impl AllowedSigner {
    /// The line's options against a signature in namespace `git` made at `time`; a refusal
    /// is `expired_key` past `valid-before`, `not_allowed` otherwise.
    fn admits(&self, time: Option<i64>) -> Result<(), (Reason, String)> {
        if let Some(list) = &self.namespaces
            && match_pattern_list(GIT_NAMESPACE, list) != Some(true)
        {
            return Err((
                Reason::NotAllowed,
                format!("namespaces={list:?} does not admit {GIT_NAMESPACE:?}"),
            ));
        }
        if self.valid_after.is_some() || self.valid_before.is_some() {
            let Some(time) = time else {
                return Err((
                    Reason::NotAllowed,
                    "the object has no timestamp to check valid-after/valid-before against".into(),
                ));
            };
            if let Some(after) = self.valid_after
                && time < after
            {
                return Err((
                    Reason::NotAllowed,
                    format!(
                        "signed at {} but the key is valid only after {}",
                        show(time),
                        show(after)
                    ),
                ));
            }
            if let Some(before) = self.valid_before
                && time > before
            {
                return Err((
                    Reason::ExpiredKey,
                    format!(
                        "signed at {} but the key expired at {}",
                        show(time),
                        show(before)
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn show(t: i64) -> String {
    u64::try_from(t)
        .ok()
        .map(|s| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
            )
            .to_string()
        })
        .unwrap_or_else(|| t.to_string())
}

/// `principals [options] keytype base64 [comment]`
fn parse_line(line: &str, origin: &str) -> Result<AllowedSigner, String> {
    let (principals, rest) = take_field(line)?;
    if principals.is_empty() {
        return Err("no principals".into());
    }
    let rest = rest.trim_start();
    // The key may come straight after the principals; otherwise an options field comes first.
    let (options, key_text) = match PublicKey::from_openssh(rest) {
        Ok(_) => (None, rest),
        Err(_) => {
            let (options, after) = take_field(rest)?;
            (Some(options), after.trim_start())
        }
    };
    let key = PublicKey::from_openssh(key_text)
        .map_err(|e| format!("cannot read the public key ({e}): expected `keytype base64-key`"))?;
    let mut signer = AllowedSigner {
        principals: principals.trim_matches('"').to_string(),
        key,
        namespaces: None,
        valid_after: None,
        valid_before: None,
        cert_authority: false,
        origin: origin.to_string(),
    };
    if let Some(options) = options {
        for option in split_options(&options)? {
            let (name, value) = match option.split_once('=') {
                Some((n, v)) => (n.to_ascii_lowercase(), Some(unquote(v)?)),
                None => (option.to_ascii_lowercase(), None),
            };
            match (name.as_str(), value) {
                ("cert-authority", None) => signer.cert_authority = true,
                ("namespaces", Some(v)) => signer.namespaces = Some(v),
                ("valid-after", Some(v)) => signer.valid_after = Some(parse_time(&v)?),
                ("valid-before", Some(v)) => signer.valid_before = Some(parse_time(&v)?),
                _ => return Err(format!("unknown or malformed option {option:?}")),
            }
        }
    }
    Ok(signer)
}

/// One whitespace-delimited field, where double quotes may hold spaces.
fn take_field(text: &str) -> Result<(String, &str), String> {
    let mut in_quotes = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            c if c.is_whitespace() && !in_quotes => return Ok((text[..i].to_string(), &text[i..])),
            _ => {}
        }
    }
    if in_quotes {
        return Err("unterminated quote".into());
    }
    Ok((text.to_string(), ""))
}

/// Comma-separated options; commas inside quotes belong to the value.
fn split_options(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    for c in text.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                current.push(c);
            }
            ',' if !in_quotes => out.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    if in_quotes {
        return Err("unterminated quote in the options".into());
    }
    out.push(current);
    if out.iter().any(String::is_empty) {
        return Err(format!("empty option in {text:?}"));
    }
    Ok(out)
}

fn unquote(value: &str) -> Result<String, String> {
    match value.strip_prefix('"') {
        Some(inner) => inner
            .strip_suffix('"')
            .map(str::to_string)
            .ok_or_else(|| format!("unterminated quote in {value:?}")),
        None => Ok(value.to_string()),
    }
}

/// OpenSSH's `YYYYMMDD`, `YYYYMMDDHHMM` or `YYYYMMDDHHMMSS`, with an optional `Z`.
fn parse_time(text: &str) -> Result<i64, String> {
    let digits = text.strip_suffix(['Z', 'z']).unwrap_or(text);
    let bad = || format!("bad time {text:?}: expected YYYYMMDD[HHMM[SS]][Z]");
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let (date, time) = match digits.len() {
        8 => (digits, "000000".to_string()),
        12 => (&digits[..8], format!("{}00", &digits[8..])),
        14 => (&digits[..8], digits[8..].to_string()),
        _ => return Err(bad()),
    };
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &date[..4],
        &date[4..6],
        &date[6..8],
        &time[..2],
        &time[2..4],
        &time[4..6]
    );
    let at = humantime::parse_rfc3339(&rfc3339).map_err(|_| bad())?;
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad())?
        .as_secs();
    i64::try_from(secs).map_err(|_| bad())
}

/// OpenSSH's `match_pattern_list`: Some(true) when a pattern matches, Some(false) when a
/// negated (`!`) one does (which wins), None when none does.
fn match_pattern_list(value: &str, list: &str) -> Option<bool> {
    let mut matched = None;
    for pattern in list.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        if glob(pattern.as_bytes(), value.as_bytes()) {
            if negated {
                return Some(false);
            }
            matched = Some(true);
        }
    }
    matched
}

/// `*` and `?` wildcards, as OpenSSH's `match_pattern`.
fn glob(pattern: &[u8], value: &[u8]) -> bool {
    match pattern.split_first() {
        None => value.is_empty(),
        Some((b'*', rest)) => (0..=value.len()).any(|i| glob(rest, &value[i..])),
        Some((b'?', rest)) => !value.is_empty() && glob(rest, &value[1..]),
        Some((c, rest)) => value.first() == Some(c) && glob(rest, &value[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";

    #[test]
    fn parses_principals_options_and_keys() {
        let text = format!(
            "# comment\n\n\
             alice@example.com {KEY} alice's laptop\n\
             \"bob@example.com,*@ops.example.com\" namespaces=\"git,file\",valid-after=\"20240101\",valid-before=\"202501021530Z\" {KEY}\n\
             *@example.com cert-authority {KEY}\n"
        );
        let s = AllowedSigners::parse(&text, "signers").unwrap();
        assert_eq!(s.signers.len(), 3);
        assert_eq!(s.signers[0].principals, "alice@example.com");
        assert_eq!(s.signers[0].origin, "signers:3");
        assert!(s.signers[0].namespaces.is_none());
        let b = &s.signers[1];
        assert_eq!(b.principals, "bob@example.com,*@ops.example.com");
        assert_eq!(b.namespaces.as_deref(), Some("git,file"));
        assert_eq!(b.valid_after, Some(1_704_067_200));
        assert_eq!(b.valid_before, Some(1_735_831_800));
        assert!(s.signers[2].cert_authority);
    }

    #[test]
    fn refuses_bad_lines_naming_file_and_line() {
        for (text, want) in [
            (
                format!("a@b bogus-option {KEY}"),
                "signers:1: unknown or malformed option",
            ),
            (format!("a@b valid-after=\"2024\" {KEY}"), "bad time"),
            (
                "a@b ssh-ed25519 notbase64".to_string(),
                "cannot read the public key",
            ),
            (format!("a@b namespaces=\"git {KEY}"), "unterminated quote"),
        ] {
            let err = AllowedSigners::parse(&text, "signers").unwrap_err();
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }

    #[test]
    fn options_admit_or_refuse() {
        let line = |opts: &str| {
            AllowedSigners::parse(&format!("a@b {opts} {KEY}"), "f")
                .unwrap()
                .signers[0]
                .clone()
        };
        assert!(line("namespaces=\"git\"").admits(Some(0)).is_ok());
        assert!(line("namespaces=\"file\"").admits(Some(0)).is_err());
        assert!(line("namespaces=\"*,!git\"").admits(Some(0)).is_err());
        assert!(line("namespaces=\"g?t\"").admits(Some(0)).is_ok());
        let windowed = line("valid-after=\"20240101\",valid-before=\"20240201\"");
        assert!(windowed.admits(Some(1_704_067_200)).is_ok());
        let (reason, detail) = windowed.admits(Some(1_704_067_199)).unwrap_err();
        assert_eq!(reason, Reason::NotAllowed);
        assert!(detail.contains("only after"), "{detail}");
        let (reason, detail) = windowed.admits(Some(1_706_745_601)).unwrap_err();
        assert_eq!(reason, Reason::ExpiredKey);
        assert!(detail.contains("expired"), "{detail}");
        assert!(windowed.admits(None).is_err());
    }

    #[test]
    fn revoked_keys_files_are_lists_of_public_keys_not_krls() {
        let text = format!("# revoked\n\n{KEY} laptop\n");
        let revoked = RevokedKeys::parse(text.as_bytes(), "revoked").unwrap();
        assert_eq!(revoked.keys.len(), 1);
        let key = PublicKey::from_openssh(KEY).unwrap();
        assert_eq!(revoked.find(key.key_data()), Some("revoked:3"));
        assert!(RevokedKeys::parse(b"", "revoked").unwrap().is_empty());
        let err = RevokedKeys::parse(b"SSHKRL\n\0\x01\x02", "krl").unwrap_err();
        assert!(err.contains("binary KRL"), "{err}");
        let err = RevokedKeys::parse(b"ssh-ed25519 notbase64\n", "revoked").unwrap_err();
        assert!(
            err.contains("revoked:1: cannot read the public key"),
            "{err}"
        );
        // options, as in an allowed-signers line, are not part of this format
        let err = RevokedKeys::parse(format!("a@b {KEY}").as_bytes(), "revoked").unwrap_err();
        assert!(err.contains("revoked:1"), "{err}");
    }

    #[test]
    fn pattern_lists_follow_openssh() {
        assert_eq!(match_pattern_list("git", "git"), Some(true));
        assert_eq!(match_pattern_list("git", "file,g*"), Some(true));
        assert_eq!(match_pattern_list("git", "file"), None);
        assert_eq!(match_pattern_list("git", "*,!git"), Some(false));
    }
}
