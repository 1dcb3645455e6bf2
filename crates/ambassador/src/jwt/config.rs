//! The `jwt:` block of an inbound route in the YAML file, as written, and checked into
//! [`JwtConfig`] before anything listens.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::keys::Alg;

/// What a route (or a path below it) asks of a request's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A valid token is needed: none is 401.
    Required,
    /// A token is checked if there is one: none passes without user headers, a bad one is 401.
    Optional,
    /// Not checked; the user headers are still stripped.
    Off,
}

/// A condition on one claim.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRule {
    /// The claim's name; `a.b` looks into the object `a`.
    pub claim: String,
    /// The claim (a list, or a space-separated string such as `scope`) holds this value.
    #[serde(default)]
    pub contains: Option<serde_json::Value>,
    /// The claim equals this value.
    #[serde(default)]
    pub equals: Option<serde_json::Value>,
}

/// Where the token comes from; `Authorization: Bearer` when neither is given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTokenSource {
    /// A header whose whole value is the token.
    #[serde(default)]
    pub header: Option<String>,
    /// A cookie whose value is the token.
    #[serde(default)]
    pub cookie: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileJwks {
    /// A JWKS document on disk, read again when it changes.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// A JWKS document served over HTTPS (plain HTTP only to a loopback address).
    #[serde(default)]
    pub url: Option<String>,
    /// The JWKS named by `<issuer>/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    /// CA certificates (PEM) that the URL's server certificate must chain to, instead of the
    /// system's.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// How often the keys are fetched again (default 5m).
    #[serde(default)]
    pub refresh_interval: Option<String>,
    /// The least time between two fetches that a token with an unknown `kid` triggers (default
    /// 30s).
    #[serde(default)]
    pub unknown_kid_interval: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePath {
    pub prefix: String,
    #[serde(default)]
    pub mode: Option<AuthMode>,
    #[serde(default)]
    pub required_claims: Vec<String>,
    #[serde(default)]
    pub rules: Vec<FileRule>,
}

/// The `jwt:` block of an inbound route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileJwt {
    #[serde(default = "default_mode")]
    pub mode: AuthMode,
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub jwks: FileJwks,
    #[serde(default)]
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub clock_skew: Option<String>,
    #[serde(default)]
    pub token: FileTokenSource,
    /// Keep the token's header in the request to the app (it is removed by default).
    #[serde(default)]
    pub forward_token: bool,
    #[serde(default)]
    pub max_token_bytes: Option<usize>,
    #[serde(default)]
    pub required_claims: Vec<String>,
    #[serde(default)]
    pub rules: Vec<FileRule>,
    #[serde(default)]
    pub user_id_header: Option<String>,
    #[serde(default)]
    pub roles_claim: Option<String>,
    #[serde(default)]
    pub roles_header: Option<String>,
    /// Claim name -> header name.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub paths: Vec<FilePath>,
}

fn default_mode() -> AuthMode {
    AuthMode::Required
}

/// Where the keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
    /// The issuer's discovery document, then its `jwks_uri`.
    Discovery(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    Contains(String, serde_json::Value),
    Equals(String, serde_json::Value),
    Present(String),
}

#[derive(Debug, Clone)]
pub enum TokenSource {
    Bearer,
    Header(HeaderName),
    Cookie(String),
}

/// The settings of one path prefix, with the route's rules included.
#[derive(Debug, Clone)]
pub struct PathPolicy {
    pub prefix: String,
    pub mode: AuthMode,
    pub rules: Vec<Rule>,
}

/// A route's checked JWT settings.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub mode: AuthMode,
    pub issuer: String,
    pub audiences: Vec<String>,
    pub source: JwksSource,
    pub ca: Option<PathBuf>,
    pub refresh_interval: Duration,
    pub unknown_kid_interval: Duration,
    pub algorithms: Vec<Alg>,
    pub clock_skew: Duration,
    pub token: TokenSource,
    pub forward_token: bool,
    pub max_token_bytes: usize,
    /// The route's own rules (required claims included).
    pub rules: Vec<Rule>,
    pub user_id_header: HeaderName,
    pub roles_claim: String,
    pub roles_header: HeaderName,
    pub claim_headers: Vec<(String, HeaderName)>,
    /// Longest prefix first.
    pub paths: Vec<PathPolicy>,
}

impl FileJwt {
    /// Checks the block; the error names the field (`at` says which route).
    pub fn check(self, at: &str) -> Result<JwtConfig, String> {
        let at = format!("{at}: jwt");
        if self.issuer.trim().is_empty() {
            return Err(format!("{at}.issuer is empty"));
        }
        let duration = |text: &Option<String>, name: &str, default: Duration| match text {
            Some(t) => humantime::parse_duration(t)
                .map_err(|e| format!("{at}.{name}: `{t}` is not a duration: {e}")),
            None => Ok(default),
        };
        let source = match (&self.jwks.file, &self.jwks.url, self.jwks.discovery) {
            (Some(f), None, false) => JwksSource::File(f.clone()),
            (None, Some(u), false) => {
                check_url(u).map_err(|e| format!("{at}.jwks.url: {e}"))?;
                JwksSource::Url(u.clone())
            }
            (None, None, true) => {
                check_url(&self.issuer).map_err(|e| {
                    format!("{at}.issuer: discovery needs the issuer to be a URL: {e}")
                })?;
                JwksSource::Discovery(self.issuer.trim_end_matches('/').to_owned())
            }
            _ => {
                return Err(format!(
                    "{at}.jwks: give exactly one of file, url or discovery: true"
                ));
            }
        };
        let refresh_interval = duration(
            &self.jwks.refresh_interval,
            "jwks.refresh_interval",
            Duration::from_secs(300),
        )?;
        let unknown_kid_interval = duration(
            &self.jwks.unknown_kid_interval,
            "jwks.unknown_kid_interval",
            Duration::from_secs(30),
        )?;
        if refresh_interval < Duration::from_secs(1) {
            return Err(format!("{at}.jwks.refresh_interval: at least 1s"));
        }
        let algorithms = if self.algorithms.is_empty() {
            Alg::ALL.to_vec()
        } else {
            let mut out = Vec::new();
            for a in &self.algorithms {
                out.push(Alg::parse(a).ok_or_else(|| {
                    format!(
                        "{at}.algorithms: `{a}` is not allowed (RS256, RS384, RS512, PS256, \
                         PS384, PS512, ES256, ES384, EdDSA)"
                    )
                })?);
            }
            out
        };
        let token = match (&self.token.header, &self.token.cookie) {
            (None, None) => TokenSource::Bearer,
            (Some(h), None) => TokenSource::Header(header_name(h, &format!("{at}.token.header"))?),
            (None, Some(c)) if !c.is_empty() && !c.contains([';', '=', ' ']) => {
                TokenSource::Cookie(c.clone())
            }
            (None, Some(c)) => {
                return Err(format!("{at}.token.cookie: `{c}` is not a cookie name"));
            }
            _ => return Err(format!("{at}.token: give header or cookie, not both")),
        };
        let route_rules = rules(&self.required_claims, &self.rules, &at)?;
        let mut paths = Vec::new();
        for (i, p) in self.paths.iter().enumerate() {
            let pat = format!("{at}.paths[{i}]");
            if !p.prefix.starts_with('/') {
                return Err(format!(
                    "{pat}.prefix: `{}` does not start with /",
                    p.prefix
                ));
            }
            let mut all = route_rules.clone();
            all.extend(rules(&p.required_claims, &p.rules, &pat)?);
            paths.push(PathPolicy {
                prefix: p.prefix.clone(),
                mode: p.mode.unwrap_or(self.mode),
                rules: all,
            });
        }
        paths.sort_by_key(|p| std::cmp::Reverse(p.prefix.len()));
        let user_id_header = header_name(
            self.user_id_header.as_deref().unwrap_or("x-user-id"),
            &format!("{at}.user_id_header"),
        )?;
        let roles_header = header_name(
            self.roles_header.as_deref().unwrap_or("x-user-roles"),
            &format!("{at}.roles_header"),
        )?;
        let mut claim_headers = Vec::new();
        for (claim, header) in &self.claim_headers {
            claim_headers.push((
                claim.clone(),
                header_name(header, &format!("{at}.claim_headers.{claim}"))?,
            ));
        }
        let max_token_bytes = self.max_token_bytes.unwrap_or(8192);
        if max_token_bytes < 64 {
            return Err(format!("{at}.max_token_bytes: at least 64"));
        }
        Ok(JwtConfig {
            mode: self.mode,
            issuer: self.issuer,
            audiences: self.audiences,
            source,
            ca: self.jwks.ca,
            refresh_interval,
            unknown_kid_interval,
            algorithms,
            clock_skew: duration(&self.clock_skew, "clock_skew", Duration::from_secs(60))?,
            token,
            forward_token: self.forward_token,
            max_token_bytes,
            rules: route_rules,
            user_id_header,
            roles_claim: self.roles_claim.unwrap_or_else(|| "roles".to_owned()),
            roles_header,
            claim_headers,
            paths,
        })
    }
}

fn header_name(text: &str, at: &str) -> Result<HeaderName, String> {
    HeaderName::try_from(text).map_err(|_| format!("{at}: `{text}` is not a header name"))
}

fn rules(required: &[String], rules: &[FileRule], at: &str) -> Result<Vec<Rule>, String> {
    let mut out: Vec<Rule> = required.iter().map(|c| Rule::Present(c.clone())).collect();
    for (i, r) in rules.iter().enumerate() {
        out.push(match (&r.contains, &r.equals) {
            (Some(v), None) => Rule::Contains(r.claim.clone(), v.clone()),
            (None, Some(v)) => Rule::Equals(r.claim.clone(), v.clone()),
            _ => {
                return Err(format!(
                    "{at}.rules[{i}] ({}): give exactly one of contains or equals",
                    r.claim
                ));
            }
        });
    }
    Ok(out)
}

/// HTTPS, or plain HTTP to a loopback address (a local IdP or a test).
pub(crate) fn check_url(text: &str) -> Result<(), String> {
    let uri: http::Uri = text.parse().map_err(|e| format!("`{text}`: {e}"))?;
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if matches!(host, "127.0.0.1" | "localhost" | "[::1]") => Ok(()),
        _ => Err(format!(
            "`{text}` is not an https:// URL (plain http:// only to 127.0.0.1, [::1] or localhost)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<JwtConfig, String> {
        let file: FileJwt = serde_saphyr::from_str(yaml).map_err(|e| e.to_string())?;
        file.check("r")
    }

    #[test]
    fn a_full_block_is_checked() {
        let c = parse(
            "issuer: https://idp.example/\njwks: {discovery: true}\naudiences: [api]\n\
             algorithms: [ES256]\nclock_skew: 5s\nroles_claim: groups\n\
             claim_headers: {email: X-User-Email}\nrules: [{claim: groups, contains: admin}]\n\
             paths:\n  - {prefix: /healthz, mode: off}\n  - {prefix: /h, required_claims: [email]}\n",
        )
        .unwrap();
        assert_eq!(
            c.source,
            JwksSource::Discovery("https://idp.example".into())
        );
        assert_eq!(c.algorithms, vec![Alg::Es256]);
        assert_eq!(c.paths[0].prefix, "/healthz");
        assert_eq!(c.paths[0].mode, AuthMode::Off);
        assert_eq!(c.paths[1].rules.len(), 2);
        assert_eq!(c.claim_headers[0].1, "x-user-email");
    }

    #[test]
    fn bad_blocks_name_the_field() {
        for (yaml, field) in [
            ("issuer: a\njwks: {}\n", "jwt.jwks"),
            (
                "issuer: a\njwks: {url: 'http://idp.example/k'}\n",
                "jwt.jwks.url",
            ),
            (
                "issuer: a\njwks: {file: k}\nalgorithms: [HS256]\n",
                "jwt.algorithms",
            ),
            (
                "issuer: a\njwks: {file: k}\nalgorithms: [none]\n",
                "jwt.algorithms",
            ),
            ("issuer: a\njwks: {discovery: true}\n", "jwt.issuer"),
            (
                "issuer: a\njwks: {file: k}\nrules: [{claim: g}]\n",
                "jwt.rules[0]",
            ),
            (
                "issuer: a\njwks: {file: k}\npaths: [{prefix: x}]\n",
                "jwt.paths[0].prefix",
            ),
            (
                "issuer: a\njwks: {file: k}\nclaim_headers: {e: 'a b'}\n",
                "claim_headers.e",
            ),
        ] {
            let err = parse(yaml).unwrap_err();
            assert!(err.contains(field), "{yaml}: {err}");
        }
        assert!(parse("issuer: a\njwks: {url: 'http://127.0.0.1:1/k'}\n").is_ok());
    }
}
