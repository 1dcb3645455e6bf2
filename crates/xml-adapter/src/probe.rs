//! Probe mode's configuration: named modules (a mapping and its own request settings) and the
//! allow-list of targets `/probe` may fetch. The handler is in `probe_serve`.
//!
//! The allow-list is required: a `/probe?target=` without one would let anyone who reaches the
//! adapter make it fetch any URL (an SSRF relay into the pod's network).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sidecar_kit::config::ConfigError;

use crate::http::{HttpSettings, HttpSpec, Names, resolve};
use crate::mapping::{InputFormat, Mapping};

/// The module the `--config` mapping and the request flags form.
pub const DEFAULT_MODULE: &str = "default";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeFileSpec {
    #[serde(default)]
    allowed_targets: Vec<String>,
    #[serde(default)]
    modules: BTreeMap<String, ModuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleSpec {
    /// The mapping file, relative to the probe file's directory.
    mapping: PathBuf,
    /// Overrides the mapping's `format`.
    #[serde(default)]
    format: Option<InputFormat>,
    #[serde(default)]
    http: HttpSpec,
}

/// One module from the probe file.
#[derive(Debug)]
pub struct Module {
    pub mapping: Mapping,
    pub mapping_path: PathBuf,
    pub http: HttpSettings,
}

/// One entry of the allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// Any URL on this host (and this port, when given).
    Host { host: String, port: Option<u16> },
    /// URLs with this scheme, host and port whose path starts with `path`, at a `/`.
    Prefix {
        scheme: String,
        host: String,
        port: u16,
        path: String,
    },
}

/// The targets `/probe` may fetch.
#[derive(Debug, Clone, Default)]
pub struct AllowList(pub Vec<Allowed>);

impl AllowList {
    pub fn parse(entries: &[(String, String)]) -> Result<AllowList, ConfigError> {
        let mut out = Vec::new();
        for (origin, e) in entries {
            out.push(
                parse_allowed(e).map_err(|m| ConfigError::field(format!("{origin} `{e}`"), m))?,
            );
        }
        Ok(AllowList(out))
    }

    /// Whether `url` may be fetched. The URL is parsed (so `..` and `%2e%2e` are already
    /// resolved) before it is compared.
    pub fn allows(&self, url: &reqwest::Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let port = url.port_or_known_default();
        self.0.iter().any(|a| match a {
            Allowed::Host { host: h, port: p } => *h == host && p.is_none_or(|p| Some(p) == port),
            Allowed::Prefix {
                scheme,
                host: h,
                port: p,
                path,
            } => {
                scheme == url.scheme()
                    && *h == host
                    && Some(*p) == port
                    && (path.ends_with('/') && url.path().starts_with(path.as_str())
                        || url.path() == path
                        || url
                            .path()
                            .strip_prefix(path.as_str())
                            .is_some_and(|rest| rest.starts_with('/')))
            }
        })
    }
}

fn parse_allowed(e: &str) -> Result<Allowed, String> {
    let e = e.trim();
    if e.contains("://") {
        let url = reqwest::Url::parse(e).map_err(|err| err.to_string())?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("only http and https targets can be probed".into());
        }
        if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
            return Err("a URL prefix is scheme://host[:port][/path], nothing more".into());
        }
        let host = url.host_str().ok_or("no host")?.to_ascii_lowercase();
        let port = url.port_or_known_default().ok_or("no port")?;
        return Ok(Allowed::Prefix {
            scheme: url.scheme().to_string(),
            host,
            port,
            path: url.path().to_string(),
        });
    }
    // A host, or host:port; parsed as a URL so that IPv6 brackets and case are handled.
    let url = reqwest::Url::parse(&format!("http://{e}/")).map_err(|err| err.to_string())?;
    if url.path() != "/" || e.is_empty() || e.contains(['/', '?', '#', '@']) {
        return Err("expected a host, host:port or a URL prefix (http://host:port/path)".into());
    }
    Ok(Allowed::Host {
        host: url.host_str().ok_or("no host")?.to_ascii_lowercase(),
        port: url.port(),
    })
}

/// Where probe mode's configuration comes from, kept to read it again when the files change.
#[derive(Debug, Clone)]
pub struct ProbeSource {
    pub file: Option<PathBuf>,
    pub flag_allow: Vec<String>,
    pub default_timeout: Duration,
    pub default_max_body: u64,
}

/// What probe mode runs with.
#[derive(Debug)]
pub struct ProbeConfig {
    pub allow: AllowList,
    /// The probe file's modules (the `default` module is the adapter's own mapping and flags).
    pub modules: BTreeMap<String, Module>,
    pub source: ProbeSource,
}

impl ProbeConfig {
    /// The files a change of which reloads the probe configuration.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.source.file.iter().cloned().collect();
        files.extend(self.modules.values().map(|m| m.mapping_path.clone()));
        files
    }

    /// Reads the probe file (if any) and joins its allow-list to `--probe-allow`'s. Refused
    /// without any allowed target.
    pub fn load(source: ProbeSource) -> Result<ProbeConfig, ConfigError> {
        let ProbeSource {
            file,
            flag_allow,
            default_timeout,
            default_max_body,
        } = &source;
        let (file, default_timeout, default_max_body) =
            (file.as_deref(), *default_timeout, *default_max_body);
        let mut entries: Vec<(String, String)> = flag_allow
            .iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| ("--probe-allow".to_string(), a.clone()))
            .collect();
        let mut modules = BTreeMap::new();
        if let Some(path) = file {
            let spec: ProbeFileSpec = sidecar_kit::config::load_yaml(path)?;
            let origin = path.display().to_string();
            let base = path.parent();
            entries.extend(
                spec.allowed_targets
                    .iter()
                    .map(|a| (format!("{origin}: allowed_targets"), a.clone())),
            );
            for (name, m) in spec.modules {
                let field = format!("{origin}: modules.{name}");
                if name == DEFAULT_MODULE {
                    return Err(ConfigError::field(
                        field,
                        "`default` is the --config mapping with the request flags; name this module otherwise",
                    ));
                }
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(ConfigError::field(
                        field,
                        "a module name is letters, digits, `_` and `-`",
                    ));
                }
                let http = m.http.build(
                    Names::Module {
                        origin: &origin,
                        module: &name,
                    },
                    base,
                    default_timeout,
                    default_max_body,
                )?;
                let mapping_path = resolve(base, &m.mapping);
                let mut mapping = Mapping::load(&mapping_path)?;
                if let Some(f) = m.format {
                    mapping.format = f;
                }
                modules.insert(
                    name,
                    Module {
                        mapping,
                        mapping_path,
                        http,
                    },
                );
            }
        }
        let allow = AllowList::parse(&entries)?;
        if allow.0.is_empty() {
            return Err(ConfigError::Value(
                "probe mode needs an allow-list of targets: --probe-allow or `allowed_targets` in --probe-config"
                    .into(),
            ));
        }
        Ok(ProbeConfig {
            allow,
            modules,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> AllowList {
        AllowList::parse(
            &entries
                .iter()
                .map(|e| ("test".to_string(), e.to_string()))
                .collect::<Vec<_>>(),
        )
        .unwrap()
    }

    fn url(u: &str) -> reqwest::Url {
        reqwest::Url::parse(u).unwrap()
    }

    #[test]
    fn hosts_and_prefixes() {
        let a = list(&[
            "bind.internal",
            "127.0.0.1:8053",
            "http://app:8080/status/",
            "https://h/api",
        ]);
        assert!(a.allows(&url("http://BIND.internal:9999/anything")));
        assert!(a.allows(&url("http://127.0.0.1:8053/xml/v3")));
        assert!(!a.allows(&url("http://127.0.0.1:8054/xml/v3")));
        assert!(a.allows(&url("http://app:8080/status/x.xml")));
        assert!(!a.allows(&url("http://app:8080/status")));
        assert!(!a.allows(&url("http://app:8080/admin")));
        assert!(!a.allows(&url("http://app:8080/status/../admin")));
        assert!(!a.allows(&url("http://app:8080/status/%2e%2e/admin")));
        assert!(!a.allows(&url("https://app:8080/status/x")));
        assert!(a.allows(&url("https://h/api")));
        assert!(a.allows(&url("https://h:443/api/v1")));
        assert!(!a.allows(&url("https://h/api-secret")));
        assert!(!a.allows(&url("http://app.evil:8080/status/x")));
    }

    #[test]
    fn tricks_do_not_reach_another_host() {
        let a = list(&["http://app:8080/status/", "127.0.0.1:9000", "[::1]:9100"]);
        for (u, allowed) in [
            // Userinfo and fragments that look like the allowed host.
            ("http://app:8080@evil/status/x", false),
            ("http://evil#@app:8080/status/x", false),
            ("http://evil\\@app:8080/status/x", false),
            ("http://app:8080\\@evil/status/x", false),
            ("http://x@app:8080/status/x", true),
            // Case, default ports, other spellings of one address.
            ("HTTP://APP:8080/status/x", true),
            ("http://2130706433:9000/", true),
            ("http://0x7f.1:9000/", true),
            ("http://127.0.0.1:9001/", false),
            ("http://[0:0:0:0:0:0:0:1]:9100/", true),
            ("http://[::1]:9101/", false),
            // Paths resolved before they are compared.
            ("http://app:8080/status/./x", true),
            ("http://app:8080/status/x/../../admin", false),
            ("http://app:8080/%2E%2E/status/x", true),
            ("http://app:8080/x/%2e%2e/status/y", true),
            ("http://app:8080/statusx", false),
        ] {
            assert_eq!(a.allows(&url(u)), allowed, "{u}");
        }
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in ["ftp://h/", "h/path", "http://u@h/", "http://h/?q"] {
            let e = AllowList::parse(&[("--probe-allow".into(), bad.into())]).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("--probe-allow `{bad}`: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn no_allow_list_is_refused() {
        let e = ProbeConfig::load(ProbeSource {
            file: None,
            flag_allow: vec![],
            default_timeout: Duration::from_secs(1),
            default_max_body: 1,
        })
        .unwrap_err();
        assert!(e.to_string().contains("--probe-allow"), "{e}");
    }
}
