//! SSH host key pinning from an explicit known_hosts file (never `$HOME/.ssh`).
//!
//! Lines are OpenSSH's format: `host[,host...] keytype base64key`, with `[host]:port` for a
//! port other than 22. Hashed (`|1|...`) entries and `@cert-authority` are not supported:
//! write the file with `ssh-keyscan` without `-H`.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("cannot read the known_hosts file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ssh host key for {host} is not in {path} (add it with: ssh-keyscan -p PORT HOST)")]
    Unknown { host: String, path: PathBuf },
    #[error("ssh host key for {host} does not match {path}: possible man-in-the-middle, refusing")]
    Mismatch { host: String, path: PathBuf },
}

/// The port of an ssh URL (`ssh://[user@]host[:port]/path`, or scp-like `user@host:path`).
pub fn ssh_port(url: &str) -> u16 {
    let Some(rest) = url
        .strip_prefix("ssh://")
        .or_else(|| url.strip_prefix("git+ssh://"))
    else {
        return 22;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    if let Some(bracketed) = host_port.strip_prefix('[') {
        // [::1]:2222
        return bracketed
            .split("]:")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(22);
    }
    host_port
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(22)
}

/// Checks the server's raw host key blob against the known_hosts file.
pub fn verify(file: &Path, host: &str, port: u16, key: &[u8]) -> Result<(), HostKeyError> {
    let text = std::fs::read_to_string(file).map_err(|source| HostKeyError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    let wanted_name = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let encoded = base64_encode(key);
    let mut host_listed = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(hosts), Some(_keytype), Some(blob)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !hosts
            .split(',')
            .any(|h| h.eq_ignore_ascii_case(&wanted_name))
        {
            continue;
        }
        host_listed = true;
        if blob == encoded {
            return Ok(());
        }
    }
    let path = file.to_path_buf();
    if host_listed {
        Err(HostKeyError::Mismatch {
            host: wanted_name,
            path,
        })
    } else {
        Err(HostKeyError::Unknown {
            host: wanted_name,
            path,
        })
    }
}

/// Standard base64 with padding: known_hosts stores the key blob this way, so comparing
/// encodings avoids writing (and trusting) a decoder.
pub(crate) fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(raw.as_bytes()), enc);
        }
    }

    #[test]
    fn ports_from_urls() {
        assert_eq!(ssh_port("ssh://git@127.0.0.1:2222/srv/repo.git"), 2222);
        assert_eq!(ssh_port("ssh://127.0.0.1/srv/repo.git"), 22);
        assert_eq!(ssh_port("git@github.com:org/repo.git"), 22);
        assert_eq!(ssh_port("ssh://git@[::1]:2200/r"), 2200);
    }

    #[test]
    fn verifies_pinned_key_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("known_hosts");
        std::fs::write(
            &f,
            "# pinned\n[127.0.0.1]:2222 ssh-ed25519 Zm9vYmFy\nother ssh-ed25519 AAAA\n",
        )
        .unwrap();
        verify(&f, "127.0.0.1", 2222, b"foobar").unwrap();
        assert!(matches!(
            verify(&f, "127.0.0.1", 2222, b"foobaz"),
            Err(HostKeyError::Mismatch { .. })
        ));
        // port 22 entries are written without brackets; the bracketed one does not apply
        assert!(matches!(
            verify(&f, "127.0.0.1", 22, b"foobar"),
            Err(HostKeyError::Unknown { .. })
        ));
        assert!(matches!(
            verify(&dir.path().join("x"), "h", 22, b"k"),
            Err(HostKeyError::Read { .. })
        ));
    }
}
