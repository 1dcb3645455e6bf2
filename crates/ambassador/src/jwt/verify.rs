//! One token's checks: its form, its algorithm against the route's list and the key's type, its
//! signature, then `iss`, `aud`, `exp` and `nbf`; and what the app is told of it (the user
//! headers). A verified token is kept (until it expires or the key set changes) so that a
//! client that sends the same token again costs a lookup, not a signature check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::config::{JwtConfig, Rule};
use super::keys::{Alg, KeySet};

/// Verified tokens kept; past it, the expired ones go, then all.
const CACHE_ENTRIES: usize = 4096;
/// Bytes of tokens kept at most (a few large tokens cannot hold much memory).
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Why a request was refused; the metric's `reason` label and the access log's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    /// More than one token, or a path the route's prefixes cannot judge.
    BadRequest,
    TooLarge,
    Malformed,
    BadAlgorithm,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    BadIssuer,
    BadAudience,
    MissingClaim,
    RuleFailed,
    NoKeys,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::BadRequest => "bad_request",
            Refusal::TooLarge => "too_large",
            Refusal::Malformed => "malformed",
            Refusal::BadAlgorithm => "bad_algorithm",
            Refusal::UnknownKey => "unknown_key",
            Refusal::BadSignature => "bad_signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::BadIssuer => "bad_issuer",
            Refusal::BadAudience => "bad_audience",
            Refusal::MissingClaim => "missing_claim",
            Refusal::RuleFailed => "rule_failed",
            Refusal::NoKeys => "no_keys",
        }
    }
}

/// A verified token: its claims and the headers they give.
#[derive(Debug)]
pub struct Verified {
    pub claims: Map<String, Value>,
    pub user_id: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    exp: f64,
    nbf: Option<f64>,
    generation: u64,
}

#[derive(serde::Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Extensions the verifier must understand: none are.
    #[serde(default)]
    crit: Option<Value>,
}

/// The verified-token cache of a route.
#[derive(Debug, Default)]
pub struct Cache {
    inner: Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    map: HashMap<Box<str>, Arc<Verified>>,
    bytes: usize,
}

pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Cache {
    fn get(&self, token: &str, generation: u64) -> Option<Arc<Verified>> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .map
            .get(token)
            .filter(|v| v.generation == generation)
            .cloned()
    }

    fn put(&self, token: &str, verified: Arc<Verified>, now: f64) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.map.len() >= CACHE_ENTRIES || inner.bytes + token.len() > CACHE_BYTES {
            inner.map.retain(|_, v| v.exp > now);
            inner.bytes = inner.map.keys().map(|k| k.len()).sum();
            if inner.map.len() >= CACHE_ENTRIES || inner.bytes + token.len() > CACHE_BYTES {
                inner.map.clear();
                inner.bytes = 0;
            }
        }
        inner.bytes += token.len();
        if let Some(old) = inner.map.insert(token.into(), verified) {
            drop(old);
            inner.bytes -= token.len();
        }
    }
}

/// Verifies `token` for `config` with `keys` at `now` (seconds since the epoch). An unknown
/// `kid` is [`Refusal::UnknownKey`] (the caller asks for a refresh).
pub fn verify(
    token: &str,
    config: &JwtConfig,
    keys: &KeySet,
    cache: &Cache,
    now: f64,
) -> Result<Arc<Verified>, Refusal> {
    if token.len() > config.max_token_bytes {
        return Err(Refusal::TooLarge);
    }
    let skew = config.clock_skew.as_secs_f64();
    if let Some(hit) = cache.get(token, keys.generation) {
        times(hit.exp, hit.nbf, now, skew)?;
        return Ok(hit);
    }
    let mut parts = token.split('.');
    let (Some(head), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed);
    };
    let header: JoseHeader = URL_SAFE_NO_PAD
        .decode(head)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(Refusal::Malformed)?;
    if header.crit.is_some() {
        return Err(Refusal::Malformed);
    }
    let alg = Alg::parse(&header.alg)
        .filter(|a| config.algorithms.contains(a))
        .ok_or(Refusal::BadAlgorithm)?;
    let candidates: Vec<_> = match &header.kid {
        Some(kid) => keys
            .keys
            .iter()
            .filter(|k| k.kid.as_deref() == Some(kid.as_str()))
            .collect(),
        None => keys.keys.iter().collect(),
    };
    if candidates.is_empty() {
        return Err(Refusal::UnknownKey);
    }
    let message = &token[..head.len() + 1 + payload.len()];
    let mut fitting = false;
    let mut good = false;
    for key in candidates.iter().filter(|k| k.allows(alg)) {
        fitting = true;
        if jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key.decoding, alg.jose())
            .unwrap_or(false)
        {
            good = true;
            break;
        }
    }
    if !fitting {
        return Err(Refusal::BadAlgorithm);
    }
    if !good {
        return Err(Refusal::BadSignature);
    }
    let claims: Map<String, Value> = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(Refusal::Malformed)?;
    // A time that is there but not a number is refused, never taken as absent.
    let exp = match claims.get("exp") {
        Some(v) => v.as_f64().ok_or(Refusal::Malformed)?,
        None => return Err(Refusal::MissingClaim),
    };
    let nbf = match claims.get("nbf") {
        Some(v) => Some(v.as_f64().ok_or(Refusal::Malformed)?),
        None => None,
    };
    times(exp, nbf, now, skew)?;
    if claims.get("iss").and_then(Value::as_str) != Some(config.issuer.as_str()) {
        return Err(Refusal::BadIssuer);
    }
    if !config.audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => config.audiences.contains(a),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| config.audiences.iter().any(|w| w == a)),
            _ => false,
        };
        if !ok {
            return Err(Refusal::BadAudience);
        }
    }
    let user_id = match claims.get("sub") {
        Some(Value::String(s)) => {
            // A subject that cannot be a header value cannot be handed to the app.
            HeaderValue::from_str(s).map_err(|_| Refusal::Malformed)?;
            Some(s.clone())
        }
        Some(_) => return Err(Refusal::Malformed),
        None => None,
    };
    let headers = headers(config, &claims, user_id.as_deref());
    let verified = Arc::new(Verified {
        claims,
        user_id,
        headers,
        exp,
        nbf,
        generation: keys.generation,
    });
    cache.put(token, verified.clone(), now);
    Ok(verified)
}

fn times(exp: f64, nbf: Option<f64>, now: f64, skew: f64) -> Result<(), Refusal> {
    if now > exp + skew {
        return Err(Refusal::Expired);
    }
    if nbf.is_some_and(|nbf| now + skew < nbf) {
        return Err(Refusal::NotYetValid);
    }
    Ok(())
}

/// The headers the app gets: the user id, the roles comma-joined, the mapped claims. A value
/// that cannot be a header value (a control character, a role with a comma) is left out.
fn headers(
    config: &JwtConfig,
    claims: &Map<String, Value>,
    user_id: Option<&str>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    if let Some(v) = user_id.and_then(|s| HeaderValue::from_str(s).ok()) {
        out.push((config.user_id_header.clone(), v));
    }
    if let Some(roles) = lookup(claims, &config.roles_claim) {
        let list: Vec<&str> = match roles {
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_str)
                .filter(|r| !r.contains(','))
                .collect(),
            Value::String(s) if !s.contains(',') => vec![s.as_str()],
            _ => Vec::new(),
        };
        if let Ok(v) = HeaderValue::from_str(&list.join(",")) {
            out.push((config.roles_header.clone(), v));
        }
    }
    for (claim, name) in &config.claim_headers {
        let text = match lookup(claims, claim) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            Some(other) => other.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&text) {
            out.push((name.clone(), v));
        }
    }
    out
}

/// A claim by name; `a.b` looks into the object `a` (a claim named `a.b` itself wins).
fn lookup<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// Checks the rules of the request's path against the claims.
pub fn check_rules(claims: &Map<String, Value>, rules: &[Rule]) -> Result<(), Refusal> {
    for rule in rules {
        match rule {
            Rule::Present(name) => {
                if lookup(claims, name).is_none_or(Value::is_null) {
                    return Err(Refusal::MissingClaim);
                }
            }
            Rule::Equals(name, want) => {
                if lookup(claims, name) != Some(want) {
                    return Err(Refusal::RuleFailed);
                }
            }
            Rule::Contains(name, want) => {
                let ok = match lookup(claims, name) {
                    Some(Value::Array(items)) => items.contains(want),
                    // A space-separated list, as OAuth's `scope`.
                    Some(Value::String(s)) => {
                        want.as_str().is_some_and(|w| s.split(' ').any(|p| p == w))
                    }
                    _ => false,
                };
                if !ok {
                    return Err(Refusal::RuleFailed);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn rules_look_into_lists_scopes_and_objects() {
        let c = claims(json!({"groups": ["admin", "dev"], "scope": "read write",
                              "realm": {"roles": ["x"]}, "email_verified": true}));
        let contains = |n: &str, v: Value| check_rules(&c, &[Rule::Contains(n.into(), v)]);
        assert_eq!(contains("groups", json!("admin")), Ok(()));
        assert_eq!(contains("groups", json!("root")), Err(Refusal::RuleFailed));
        assert_eq!(contains("scope", json!("write")), Ok(()));
        assert_eq!(contains("scope", json!("rea")), Err(Refusal::RuleFailed));
        assert_eq!(contains("realm.roles", json!("x")), Ok(()));
        assert_eq!(
            check_rules(&c, &[Rule::Equals("email_verified".into(), json!(true))]),
            Ok(())
        );
        assert_eq!(
            check_rules(&c, &[Rule::Present("email".into())]),
            Err(Refusal::MissingClaim)
        );
    }

    #[test]
    fn times_allow_the_skew_and_no_more() {
        assert_eq!(times(100.0, None, 129.0, 30.0), Ok(()));
        assert_eq!(times(100.0, None, 131.0, 30.0), Err(Refusal::Expired));
        assert_eq!(times(1000.0, Some(200.0), 171.0, 30.0), Ok(()));
        assert_eq!(
            times(1000.0, Some(200.0), 169.0, 30.0),
            Err(Refusal::NotYetValid)
        );
    }
}
