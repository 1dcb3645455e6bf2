//! How git-sync reaches HTTP(S) remotes: through a loopback bridge in the network worker.
//!
//! libgit2 speaks plain HTTP to `http://127.0.0.1:PORT/...` (one port per remote origin), and
//! the bridge ([`bridge`]) carries each request to the real server: over rustls (the
//! workspace's TLS, ring provider) with the CA bundle of `--ca-file` or the system's, a client
//! certificate (`--client-cert-file`/`--client-key-file`, which libgit2 cannot present), a
//! bearer token from `--bearer-token-file`, and through an HTTP proxy ([`proxy`]: `--proxy`,
//! `HTTPS_PROXY`, `NO_PROXY`...). Files are read again on every sync. Basic auth stays
//! libgit2's (it answers the server's 401 with `--username`/`--password-file`).

pub mod bridge;
pub mod proxy;

use std::path::PathBuf;

use self::proxy::ProxySettings;

/// The HTTP(S) settings of a remote: files (read on every sync) and proxies.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HttpSettings {
    /// PEM CA bundle that replaces the system's for HTTPS remotes.
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// Sent as `Authorization: Bearer` to the remote's origin (not to other origins, such as
    /// a submodule's on another host).
    pub bearer_token_file: Option<PathBuf>,
    pub proxy: ProxySettings,
}

/// `http(s)://[user@]host[:port]/path` split up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl Origin {
    pub fn default_port(&self) -> bool {
        self.port == if self.https { 443 } else { 80 }
    }

    /// `host[:port]` as the Host header and CONNECT write it.
    pub fn authority(&self, with_default_port: bool) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.default_port() && !with_default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    pub fn base_url(&self) -> String {
        format!(
            "{}://{}",
            if self.https { "https" } else { "http" },
            self.authority(false)
        )
    }
}

/// An HTTP(S) URL: its origin, the userinfo (a user name: passwords are refused at start) and
/// the path with its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub origin: Origin,
    pub user: Option<String>,
    pub path: String,
}

impl HttpUrl {
    /// None when `url` is not http:// or https://.
    pub fn parse(url: &str) -> Option<HttpUrl> {
        let (https, rest) = if let Some(r) = strip_prefix_ignore_case(url, "https://") {
            (true, r)
        } else {
            (false, strip_prefix_ignore_case(url, "http://")?)
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            (host.to_string(), after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return None;
        }
        let port = match port {
            Some(p) => p.parse().ok()?,
            None if https => 443,
            None => 80,
        };
        Some(HttpUrl {
            origin: Origin {
                https,
                host: host.to_ascii_lowercase(),
                port,
            },
            user,
            path: if path.starts_with('/') {
                path.to_string()
            } else {
                format!("/{path}")
            },
        })
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    (text.len() >= prefix.len() && text[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls() {
        let u = HttpUrl::parse("https://git.example.com/team/cfg.git").unwrap();
        assert_eq!(
            u.origin,
            Origin {
                https: true,
                host: "git.example.com".into(),
                port: 443
            }
        );
        assert_eq!(u.path, "/team/cfg.git");
        assert_eq!(u.origin.authority(false), "git.example.com");
        assert_eq!(u.origin.authority(true), "git.example.com:443");
        let u = HttpUrl::parse("HTTP://deploy@[::1]:8080/r?x=1").unwrap();
        assert_eq!(
            (u.origin.host.as_str(), u.origin.port, u.origin.https),
            ("::1", 8080, false)
        );
        assert_eq!(u.user.as_deref(), Some("deploy"));
        assert_eq!(u.path, "/r?x=1");
        assert_eq!(u.origin.base_url(), "http://[::1]:8080");
        assert_eq!(HttpUrl::parse("https://h").unwrap().path, "/");
        assert!(HttpUrl::parse("ssh://h/r").is_none());
        assert!(HttpUrl::parse("https://h:x/r").is_none());
    }
}
