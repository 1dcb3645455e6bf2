//! Which HTTP proxy a remote is reached through: `--proxy`, else the environment as curl (and
//! so git) reads it: `https_proxy`/`HTTPS_PROXY` for https remotes, `http_proxy`/`HTTP_PROXY`
//! for http ones, `all_proxy`/`ALL_PROXY` for both; `--no-proxy`, else `no_proxy`/`NO_PROXY`,
//! lists the hosts reached directly.
//!
//! NO_PROXY entries, comma-separated: `*` (every host), a host name that also covers its
//! subdomains (`example.com` and `.example.com` both cover `git.example.com`), an IP address,
//! a CIDR block (`10.0.0.0/8`), each optionally with `:port`.

use std::net::IpAddr;

/// An HTTP proxy: `http://[user:password@]host[:port]` (port 1080 when left out, as curl).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxyUrl {
    pub host: String,
    pub port: u16,
    /// `user:password`, sent as `Proxy-Authorization: Basic`.
    pub userinfo: Option<String>,
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for ProxyUrl {
    /// Without the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.userinfo.as_deref().and_then(|u| u.split(':').next()) {
            Some(user) => write!(
                f,
                "http://{user}:***@{}:{}",
                host_for_url(&self.host),
                self.port
            ),
            None => write!(f, "http://{}:{}", host_for_url(&self.host), self.port),
        }
    }
}

fn host_for_url(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

impl ProxyUrl {
    pub fn parse(text: &str) -> Result<ProxyUrl, String> {
        let text = text.trim();
        let rest = match text.split_once("://") {
            None => text,
            Some(("http" | "HTTP", rest)) => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "proxy {:?}: only http:// proxies are supported, not {scheme}://",
                    redact(text)
                ));
            }
        };
        let authority = rest.split('/').next().unwrap_or("");
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()), h),
            None => (None, authority),
        };
        let (host, port) = split_host_port(hostport)
            .ok_or_else(|| format!("proxy {:?}: expected http://host[:port]", redact(text)))?;
        if host.is_empty() {
            return Err(format!("proxy {:?}: no host", redact(text)));
        }
        Ok(ProxyUrl {
            host,
            port: port.unwrap_or(1080),
            userinfo,
        })
    }
}

fn redact(text: &str) -> String {
    sidecar_kit::telemetry::redact_url(text)
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`. None when the port is not a number.
fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            Some((host.to_string(), Some(port.parse().ok()?)))
        }
        Some(_) => Some((text.to_string(), None)), // a bare IPv6 address
        None => Some((text.to_string(), None)),
    }
}

/// The proxies configured, resolved once at start.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProxySettings {
    pub https: Option<ProxyUrl>,
    pub http: Option<ProxyUrl>,
    pub no_proxy: Vec<String>,
}

impl ProxySettings {
    /// From `--proxy`/`--no-proxy` (when given) and the environment.
    pub fn resolve(
        flag: Option<&str>,
        no_proxy_flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ProxySettings, String> {
        let env_any = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| env(n).filter(|v| !v.trim().is_empty()))
        };
        let parse = |v: Option<String>, what: &str| {
            v.map(|v| ProxyUrl::parse(&v).map_err(|e| format!("{what}: {e}")))
                .transpose()
        };
        let (https, http) = match flag.filter(|f| !f.trim().is_empty()) {
            Some(f) => {
                let p = parse(Some(f.to_string()), "--proxy")?;
                (p.clone(), p)
            }
            None => {
                let all = env_any(&["all_proxy", "ALL_PROXY"]);
                (
                    parse(
                        env_any(&["https_proxy", "HTTPS_PROXY"]).or(all.clone()),
                        "HTTPS_PROXY",
                    )?,
                    parse(env_any(&["http_proxy", "HTTP_PROXY"]).or(all), "HTTP_PROXY")?,
                )
            }
        };
        let no_proxy = match no_proxy_flag {
            Some(list) => list.to_string(),
            None => env_any(&["no_proxy", "NO_PROXY"]).unwrap_or_default(),
        };
        let no_proxy = no_proxy
            .split(',')
            .map(|e| e.trim().to_ascii_lowercase())
            .filter(|e| !e.is_empty())
            .collect();
        Ok(ProxySettings {
            https,
            http,
            no_proxy,
        })
    }

    /// The proxy for `scheme://host:port`, or None to connect directly.
    pub fn for_origin(&self, https: bool, host: &str, port: u16) -> Option<&ProxyUrl> {
        let proxy = if https {
            self.https.as_ref()
        } else {
            self.http.as_ref()
        }?;
        if self
            .no_proxy
            .iter()
            .any(|entry| bypasses(entry, host, port))
        {
            return None;
        }
        Some(proxy)
    }
}

/// Whether one NO_PROXY entry covers the host.
fn bypasses(entry: &str, host: &str, port: u16) -> bool {
    if entry == "*" {
        return true;
    }
    let host = host.trim_matches(['[', ']']).to_ascii_lowercase();
    // `host:port` (an IPv6 address only with brackets)
    let (pattern, want_port) = match split_host_port(entry) {
        Some((h, p)) if !entry.contains('/') => (h, p),
        _ => (entry.to_string(), None),
    };
    if want_port.is_some_and(|p| p != port) {
        return false;
    }
    if let Some((net, bits)) = pattern.split_once('/') {
        return match (
            net.parse::<IpAddr>(),
            bits.parse::<u8>(),
            host.parse::<IpAddr>(),
        ) {
            (Ok(net), Ok(bits), Ok(ip)) => in_cidr(ip, net, bits),
            _ => false,
        };
    }
    if let (Ok(a), Ok(b)) = (pattern.parse::<IpAddr>(), host.parse::<IpAddr>()) {
        return a == b;
    }
    let domain = pattern.trim_start_matches('.');
    !domain.is_empty() && (host == domain || host.ends_with(&format!(".{domain}")))
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn proxy_urls() {
        let p = ProxyUrl::parse("http://u:secret@proxy.local:3128/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.local", 3128));
        assert_eq!(p.userinfo.as_deref(), Some("u:secret"));
        assert_eq!(p.to_string(), "http://u:***@proxy.local:3128");
        assert_eq!(ProxyUrl::parse("proxy.local").unwrap().port, 1080);
        assert_eq!(ProxyUrl::parse("http://[::1]:8080").unwrap().host, "::1");
        let err = ProxyUrl::parse("socks5://u:pw@h:1").unwrap_err();
        assert!(err.contains("only http://") && !err.contains("pw"), "{err}");
        assert!(ProxyUrl::parse("http://h:notaport").is_err());
    }

    #[test]
    fn flag_wins_over_the_environment_which_is_per_scheme() {
        let vars = env(&[
            ("HTTPS_PROXY", "http://secure:1"),
            ("http_proxy", "http://plain:2"),
            ("NO_PROXY", "internal.example, 10.0.0.0/8"),
        ]);
        let s = ProxySettings::resolve(None, None, &vars).unwrap();
        assert_eq!(s.https.as_ref().unwrap().host, "secure");
        assert_eq!(s.http.as_ref().unwrap().host, "plain");
        assert_eq!(s.no_proxy, vec!["internal.example", "10.0.0.0/8"]);
        let s = ProxySettings::resolve(Some("http://flag:3"), Some(""), &vars).unwrap();
        assert_eq!(s.https.as_ref().unwrap().host, "flag");
        assert_eq!(s.http.as_ref().unwrap().host, "flag");
        assert!(s.no_proxy.is_empty());
        let s = ProxySettings::resolve(None, None, env(&[("ALL_PROXY", "http://all:4")])).unwrap();
        assert_eq!(s.https.as_ref().unwrap().host, "all");
        assert!(
            ProxySettings::resolve(None, None, env(&[]))
                .unwrap()
                .https
                .is_none()
        );
        let err =
            ProxySettings::resolve(None, None, env(&[("HTTPS_PROXY", "ftp://x")])).unwrap_err();
        assert!(err.starts_with("HTTPS_PROXY"), "{err}");
    }

    #[test]
    fn no_proxy_matching() {
        let s = ProxySettings {
            https: Some(ProxyUrl::parse("http://p:1").unwrap()),
            http: None,
            no_proxy: [
                ".corp.example",
                "git.example.org",
                "10.0.0.0/8",
                "127.0.0.1:8443",
                "::1",
            ]
            .map(String::from)
            .to_vec(),
        };
        let direct = |host: &str, port: u16| s.for_origin(true, host, port).is_none();
        assert!(direct("corp.example", 443));
        assert!(direct("a.b.corp.example", 443));
        assert!(!direct("notcorp.example", 443));
        assert!(direct("git.example.org", 443));
        assert!(direct("sub.git.example.org", 443));
        assert!(!direct("example.org", 443));
        assert!(direct("10.1.2.3", 443));
        assert!(!direct("11.1.2.3", 443));
        assert!(direct("127.0.0.1", 8443));
        assert!(!direct("127.0.0.1", 443));
        assert!(direct("[::1]", 443));
        // no proxy configured for plain http
        assert!(s.for_origin(false, "anything", 80).is_none());
        let all = ProxySettings {
            no_proxy: vec!["*".into()],
            ..s.clone()
        };
        assert!(all.for_origin(true, "anything", 443).is_none());
    }
}
