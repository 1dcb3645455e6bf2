//! End-user authentication on inbound routes: the caller's JWT checked against the issuer's
//! keys, and the app told who the user is (`X-User-Id`, `X-User-Roles`, named claims), so that
//! no app needs a JWT library of its own.
//!
//! - [`config`]: the route's `jwt:` block, checked.
//! - [`keys`]: a JWKS turned into verification keys bound to their algorithms.
//! - [`source`]: keys fetched and kept current (file, URL, OIDC discovery).
//! - [`verify`]: one token's checks, the claim rules, the verified-token cache.
//!
//! Signatures are checked by `jsonwebtoken` on `ring`, the crypto provider rustls already uses.

pub mod config;
pub mod keys;
pub mod metrics;
pub mod source;
pub mod verify;

use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use sidecar_kit::readiness::ReadyCheck;
use tokio_util::sync::CancellationToken;

pub use self::config::{AuthMode, FileJwt, JwtConfig};
pub use self::metrics::JwtMetrics;
pub use self::verify::{Refusal, Verified};

use self::config::{Rule, TokenSource};
use self::source::Keys;
use self::verify::Cache;

/// A route's JWT authentication.
#[derive(Debug)]
pub struct Authenticator {
    route: String,
    config: JwtConfig,
    keys: Arc<Keys>,
    cache: Cache,
    metrics: JwtMetrics,
    /// The headers only the ambassador may set.
    owned: Vec<HeaderName>,
}

impl Authenticator {
    /// Starts keeping the route's keys current; `ready` passes once it has some.
    pub fn start(
        route: &str,
        config: JwtConfig,
        ready: ReadyCheck,
        metrics: &JwtMetrics,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let keys = Arc::new(Keys::new(config.unknown_kid_interval));
        metrics.route(route);
        source::spawn(
            route.to_owned(),
            &config,
            keys.clone(),
            ready,
            metrics.clone(),
            stop,
        )?;
        let mut owned = vec![config.user_id_header.clone(), config.roles_header.clone()];
        owned.extend(config.claim_headers.iter().map(|(_, h)| h.clone()));
        Ok(Self {
            route: route.to_owned(),
            config,
            keys,
            cache: Cache::default(),
            metrics: metrics.clone(),
            owned,
        })
    }

    /// Strips the user headers a client sent, then checks the request's token as its path
    /// requires: the verified token (its headers added to the request), none (not needed), or
    /// why it is refused (counted).
    pub fn authenticate<B>(&self, req: &mut Request<B>) -> Result<Option<Arc<Verified>>, Refusal> {
        for name in &self.owned {
            req.headers_mut().remove(name);
        }
        let result = self.check(req);
        match &result {
            Ok(Some(verified)) => {
                let headers = req.headers_mut();
                for (name, value) in &verified.headers {
                    headers.insert(name.clone(), value.clone());
                }
                if !self.config.forward_token {
                    match &self.config.token {
                        TokenSource::Bearer => {
                            headers.remove(header::AUTHORIZATION);
                        }
                        TokenSource::Header(name) => {
                            headers.remove(name);
                        }
                        TokenSource::Cookie(_) => {}
                    }
                }
            }
            Ok(None) => {}
            Err(reason) => self.metrics.refused(&self.route, *reason),
        }
        result
    }

    fn check<B>(&self, req: &Request<B>) -> Result<Option<Arc<Verified>>, Refusal> {
        let (mode, rules) = self.policy_for(req.uri().path())?;
        if mode == AuthMode::Off {
            return Ok(None);
        }
        let Some(token) = self.token(req.headers())? else {
            return if mode == AuthMode::Required {
                Err(Refusal::Missing)
            } else {
                Ok(None)
            };
        };
        let keys = self.keys.current().ok_or(Refusal::NoKeys)?;
        let verified = verify::verify(token, &self.config, &keys, &self.cache, verify::now())
            .inspect_err(|r| {
                if *r == Refusal::UnknownKey {
                    self.keys.ask_refresh();
                }
            })?;
        verify::check_rules(&verified.claims, rules)?;
        Ok(Some(verified))
    }

    /// The mode and rules of the longest prefix that holds `path`, or the route's.
    fn policy_for(&self, path: &str) -> Result<(AuthMode, &[Rule]), Refusal> {
        if self.config.paths.is_empty() {
            return Ok((self.config.mode, &self.config.rules));
        }
        // The app may resolve `..`, `//` or escaped separators to another path than the one
        // matched here: such a path cannot be judged by prefix.
        if !is_normal(path) {
            return Err(Refusal::BadRequest);
        }
        for p in &self.config.paths {
            if under(path, &p.prefix) {
                return Ok((p.mode, &p.rules));
            }
        }
        Ok((self.config.mode, &self.config.rules))
    }

    /// The token, if the request carries one; two is a bad request.
    fn token<'a>(&self, headers: &'a http::HeaderMap) -> Result<Option<&'a str>, Refusal> {
        match &self.config.token {
            TokenSource::Bearer => {
                let mut all = headers.get_all(header::AUTHORIZATION).iter();
                let (Some(value), None) = (all.next(), all.next()) else {
                    return if headers.contains_key(header::AUTHORIZATION) {
                        Err(Refusal::BadRequest)
                    } else {
                        Ok(None)
                    };
                };
                let text = value.to_str().map_err(|_| Refusal::Malformed)?;
                match text.split_once(' ') {
                    Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => {
                        let token = rest.trim_matches(' ');
                        if token.is_empty() {
                            Ok(None)
                        } else {
                            Ok(Some(token))
                        }
                    }
                    // Another scheme (Basic, say) carries no bearer token.
                    _ => Ok(None),
                }
            }
            TokenSource::Header(name) => {
                let mut all = headers.get_all(name).iter();
                match (all.next(), all.next()) {
                    (None, _) => Ok(None),
                    (Some(v), None) => {
                        let t = v.to_str().map_err(|_| Refusal::Malformed)?.trim();
                        Ok((!t.is_empty()).then_some(t))
                    }
                    _ => Err(Refusal::BadRequest),
                }
            }
            TokenSource::Cookie(name) => {
                let mut found = None;
                for value in headers.get_all(header::COOKIE) {
                    let Ok(text) = value.to_str() else { continue };
                    for pair in text.split(';') {
                        if let Some((k, v)) = pair.trim().split_once('=')
                            && k == name
                        {
                            if found.is_some() {
                                return Err(Refusal::BadRequest);
                            }
                            found = Some(v.trim_matches('"'));
                        }
                    }
                }
                Ok(found.filter(|t| !t.is_empty()))
            }
        }
    }
}

/// The answer to a refusal: its status and, for 401 and 403, the `WWW-Authenticate` challenge
/// of RFC 6750 (no error code when there was no token at all).
pub fn challenge(reason: Refusal) -> (StatusCode, Option<HeaderValue>) {
    let (status, value) = match reason {
        Refusal::Missing => (StatusCode::UNAUTHORIZED, Some("Bearer".to_owned())),
        Refusal::BadRequest => (
            StatusCode::BAD_REQUEST,
            Some("Bearer error=\"invalid_request\"".to_owned()),
        ),
        Refusal::MissingClaim | Refusal::RuleFailed => (
            StatusCode::FORBIDDEN,
            Some(format!(
                "Bearer error=\"insufficient_scope\", error_description=\"{}\"",
                reason.as_str()
            )),
        ),
        Refusal::NoKeys => (StatusCode::SERVICE_UNAVAILABLE, None),
        _ => (
            StatusCode::UNAUTHORIZED,
            Some(format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                reason.as_str()
            )),
        ),
    };
    (status, value.and_then(|v| HeaderValue::try_from(v).ok()))
}

/// Whether `path` is `prefix` or below it (`/admin` holds `/admin/x`, not `/administrator`).
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'))
}

/// No dot segments, empty segments or escaped dots and separators.
fn is_normal(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    !(path.contains("//")
        || path.contains('\\')
        || ["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e))
        || path.split('/').any(|s| s == "." || s == ".."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(under("/admin", "/admin"));
        assert!(under("/admin/x", "/admin"));
        assert!(!under("/administrator", "/admin"));
        assert!(under("/api/v1", "/api/"));
        assert!(is_normal("/a/b.c/d"));
        for bad in [
            "/healthz/../admin",
            "/a//b",
            "/a/%2e%2e/b",
            "/a%2Fb",
            "/a/./b",
            "/a\\b",
        ] {
            assert!(!is_normal(bad), "{bad}");
        }
    }

    #[test]
    fn challenges_follow_rfc_6750() {
        let (s, h) = challenge(Refusal::Missing);
        assert_eq!((s.as_u16(), h.unwrap().to_str().unwrap()), (401, "Bearer"));
        let (s, h) = challenge(Refusal::Expired);
        assert_eq!(s, 401);
        assert!(h.unwrap().to_str().unwrap().contains("invalid_token"));
        let (s, h) = challenge(Refusal::RuleFailed);
        assert_eq!(s, 403);
        assert!(h.unwrap().to_str().unwrap().contains("insufficient_scope"));
    }
}
