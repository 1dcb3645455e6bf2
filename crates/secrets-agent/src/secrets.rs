//! Fetching secrets and keeping their leases alive.
//!
//! - KV v1 and v2 (the latest version or a pinned one): read again every poll interval.
//! - Dynamic secrets (any path whose answer carries a lease, such as `database/creds/ROLE`):
//!   the lease is renewed at a fraction of its duration; when it cannot be renewed any more
//!   (not renewable, or a renewal capped by its max TTL) the secret is issued again.
//! - PKI `issue`: a certificate, its key and the CA chain, checked (the key matches, the chain
//!   verifies, the certificate is within its validity) before it is used, and issued again at
//!   a fraction of its lifetime.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{Map, Value, json};
use sidecar_kit::tls::{Identity, TrustBundle, check_credentials};
use tokio::time::Instant;

use crate::auth::seconds;
use crate::openbao::{Client, ErrorKind, Failure};
use crate::schedule::renew_at;
use crate::sensitive::{Secret, SecretData, zeroize_value};

/// Where a secret comes from: one key of the YAML file's `secrets` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// A KV entry.
    Kv(Kv),
    /// A path whose answer carries a lease (database, AWS, ... engines).
    Dynamic(Dynamic),
    /// A certificate from the PKI engine.
    Pki(Pki),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kv {
    /// The engine's mount path.
    pub mount: String,
    /// The entry's path under the mount.
    pub path: String,
    /// 1 or 2.
    #[serde(default = "kv_version_default")]
    pub version: u8,
    /// KV v2 only: this version of the entry instead of the latest.
    #[serde(default)]
    pub pin: Option<u64>,
}

fn kv_version_default() -> u8 {
    2
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Get,
    Post,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dynamic {
    /// The full path, e.g. `database/creds/app`.
    pub path: String,
    /// GET (reads such as database/creds) or POST (writes such as aws/sts).
    #[serde(default)]
    pub method: HttpMethod,
    /// The body of a POST.
    #[serde(default)]
    pub params: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pki {
    #[serde(default = "pki_mount_default")]
    pub mount: String,
    pub role: String,
    pub common_name: String,
    #[serde(default)]
    pub alt_names: Vec<String>,
    #[serde(default)]
    pub ip_sans: Vec<String>,
    #[serde(default)]
    pub uri_sans: Vec<String>,
    /// Asked-for lifetime, e.g. `2m` or `24h`; the role's default otherwise.
    #[serde(default)]
    pub ttl: Option<String>,
}

fn pki_mount_default() -> String {
    "pki".to_owned()
}

impl Source {
    /// What the secret is, for messages: `kv v2 secret/app`, `database/creds/app`...
    pub fn describe(&self) -> String {
        match self {
            Self::Kv(kv) => match kv.pin {
                Some(v) => format!("kv v{} {}/{} version {v}", kv.version, kv.mount, kv.path),
                None => format!("kv v{} {}/{}", kv.version, kv.mount, kv.path),
            },
            Self::Dynamic(d) => d.path.clone(),
            Self::Pki(p) => format!("{}/issue/{}", p.mount, p.role),
        }
    }

    /// The metrics label of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kv(_) => "kv",
            Self::Dynamic(_) => "dynamic",
            Self::Pki(_) => "pki",
        }
    }

    /// Checks what can be checked before any request.
    pub fn validate(&self) -> Result<(), String> {
        let path_ok = |what: &str, p: &str| -> Result<(), String> {
            if p.is_empty() || p.split('/').any(|c| c == ".." || c == ".") {
                return Err(format!(
                    "{what} {p:?} must be a non-empty path without . or .."
                ));
            }
            if p.contains('?') || p.contains('#') {
                return Err(format!("{what} {p:?} must not hold ? or #"));
            }
            Ok(())
        };
        match self {
            Self::Kv(kv) => {
                path_ok("mount", &kv.mount)?;
                path_ok("path", &kv.path)?;
                match (kv.version, kv.pin) {
                    (1 | 2, None) | (2, Some(_)) => Ok(()),
                    (1, Some(_)) => Err("pin needs KV version 2".into()),
                    (v, _) => Err(format!("version {v}: KV is version 1 or 2")),
                }
            }
            Self::Dynamic(d) => {
                path_ok("path", &d.path)?;
                if d.params.is_some() && d.method == HttpMethod::Get {
                    return Err("params need method: POST".into());
                }
                Ok(())
            }
            Self::Pki(p) => {
                path_ok("mount", &p.mount)?;
                path_ok("role", &p.role)?;
                if p.common_name.is_empty() {
                    return Err("common_name must not be empty".into());
                }
                Ok(())
            }
        }
    }
}

/// A lease on a dynamic secret.
#[derive(Debug, Clone)]
pub struct Lease {
    pub id: String,
    pub renewable: bool,
    /// When it was obtained or last renewed.
    pub since: Instant,
    pub duration: Duration,
    /// What renewals ask for: the duration it was issued with.
    pub increment: Duration,
    /// A renewal gave less than asked (max TTL near): the next step is a new secret.
    pub capped: bool,
}

impl Lease {
    pub fn expires(&self) -> Instant {
        self.since + self.duration
    }

    /// Whether the next step is a renewal (rather than a new secret).
    pub fn can_renew(&self) -> bool {
        self.renewable && !self.capped
    }
}

/// A secret as fetched.
#[derive(Debug)]
pub struct Fetched {
    pub data: SecretData,
    pub lease: Option<Lease>,
    /// When the data stops working (the lease's or certificate's end); never for KV.
    pub expires: Option<Instant>,
    /// When it is next renewed or read again, failures aside.
    pub due: Instant,
}

impl Fetched {
    pub fn expires_wall(&self) -> Option<SystemTime> {
        self.expires
            .map(|at| SystemTime::now() + at.saturating_duration_since(Instant::now()))
    }
}

/// The schedule settings a fetch needs.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub poll_interval: Duration,
    pub fraction: f64,
}

/// Fetches (or issues) the secret.
pub async fn fetch(
    client: &Client,
    token: &Secret,
    source: &Source,
    timing: Timing,
) -> Result<Fetched, Failure> {
    match source {
        Source::Kv(kv) => fetch_kv(client, token, kv, timing).await,
        Source::Dynamic(d) => fetch_dynamic(client, token, d, timing).await,
        Source::Pki(p) => issue_certificate(client, token, p, timing).await,
    }
}

async fn fetch_kv(
    client: &Client,
    token: &Secret,
    kv: &Kv,
    timing: Timing,
) -> Result<Fetched, Failure> {
    let mount = kv.mount.trim_matches('/');
    let path = kv.path.trim_matches('/');
    let mut answer = if kv.version == 1 {
        client.get(&format!("{mount}/{path}"), Some(token)).await?
    } else {
        let query = kv.pin.map(|v| format!("?version={v}")).unwrap_or_default();
        client
            .get(&format!("{mount}/data/{path}{query}"), Some(token))
            .await?
    };
    let taken = if kv.version == 1 {
        answer.get_mut("data").map(Value::take)
    } else {
        let deleted = answer
            .pointer("/data/metadata/deletion_time")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty());
        if deleted {
            zeroize_value(&mut answer);
            return Err(Failure::new(
                ErrorKind::NotFound,
                format!("{mount}/{path}: this version is deleted"),
            ));
        }
        answer.pointer_mut("/data/data").map(Value::take)
    };
    zeroize_value(&mut answer);
    let data = match taken {
        Some(v @ Value::Object(_)) => v,
        _ => {
            return Err(Failure::new(
                ErrorKind::BadResponse,
                format!("{mount}/{path}: the answer holds no data object"),
            ));
        }
    };
    Ok(Fetched {
        data: SecretData::new(data),
        lease: None,
        expires: None,
        due: Instant::now() + timing.poll_interval,
    })
}

async fn fetch_dynamic(
    client: &Client,
    token: &Secret,
    d: &Dynamic,
    timing: Timing,
) -> Result<Fetched, Failure> {
    let path = d.path.trim_matches('/');
    let mut answer = match d.method {
        HttpMethod::Get => client.get(path, Some(token)).await?,
        HttpMethod::Post => {
            let body = d.params.clone().map(Value::Object).unwrap_or(json!({}));
            client.post(path, Some(token), &body).await?
        }
    };
    let now = Instant::now();
    let id = answer
        .get("lease_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let duration = seconds(answer.get("lease_duration")).unwrap_or_default();
    let renewable = answer
        .get("renewable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let data = match answer.get_mut("data").map(Value::take) {
        Some(v @ Value::Object(_)) => v,
        _ => {
            zeroize_value(&mut answer);
            return Err(Failure::new(
                ErrorKind::BadResponse,
                format!("{path}: the answer holds no data object"),
            ));
        }
    };
    zeroize_value(&mut answer);
    if id.is_empty() || duration.is_zero() {
        // No lease: a static answer, read again like a KV entry.
        return Ok(Fetched {
            data: SecretData::new(data),
            lease: None,
            expires: None,
            due: now + timing.poll_interval,
        });
    }
    let lease = Lease {
        id,
        renewable,
        since: now,
        duration,
        increment: duration,
        capped: false,
    };
    Ok(Fetched {
        data: SecretData::new(data),
        expires: Some(lease.expires()),
        due: renew_at(now, duration, timing.fraction),
        lease: Some(lease),
    })
}

/// Renews a lease; the new lease replaces the old one in `fetched`.
pub async fn renew_lease(
    client: &Client,
    token: &Secret,
    fetched: &mut Fetched,
    timing: Timing,
) -> Result<(), Failure> {
    let Some(lease) = &mut fetched.lease else {
        return Err(Failure::local("no lease to renew"));
    };
    let increment = lease.increment.as_secs().max(1);
    let answer = client
        .post(
            "sys/leases/renew",
            Some(token),
            &json!({ "lease_id": lease.id, "increment": increment }),
        )
        .await?;
    let duration = seconds(answer.get("lease_duration")).ok_or_else(|| {
        Failure::new(
            ErrorKind::BadResponse,
            "sys/leases/renew: no lease_duration in the answer",
        )
    })?;
    let now = Instant::now();
    lease.since = now;
    lease.duration = duration;
    lease.renewable = answer
        .get("renewable")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    lease.capped = duration.as_secs() < increment;
    fetched.expires = Some(lease.expires());
    fetched.due = renew_at(now, duration, timing.fraction);
    Ok(())
}

/// Revokes a lease that is no longer used.
pub async fn revoke_lease(client: &Client, token: &Secret, lease_id: &str) -> Result<(), Failure> {
    client
        .post(
            "sys/leases/revoke",
            Some(token),
            &json!({ "lease_id": lease_id }),
        )
        .await?;
    Ok(())
}

async fn issue_certificate(
    client: &Client,
    token: &Secret,
    p: &Pki,
    timing: Timing,
) -> Result<Fetched, Failure> {
    let path = format!("{}/issue/{}", p.mount.trim_matches('/'), p.role);
    let mut body = json!({ "common_name": p.common_name, "format": "pem" });
    if !p.alt_names.is_empty() {
        body["alt_names"] = Value::String(p.alt_names.join(","));
    }
    if !p.ip_sans.is_empty() {
        body["ip_sans"] = Value::String(p.ip_sans.join(","));
    }
    if !p.uri_sans.is_empty() {
        body["uri_sans"] = Value::String(p.uri_sans.join(","));
    }
    if let Some(ttl) = &p.ttl {
        body["ttl"] = Value::String(ttl.clone());
    }
    let mut answer = client.post(&path, Some(token), &body).await?;
    let data = match answer.get_mut("data").map(Value::take) {
        Some(v @ Value::Object(_)) => v,
        _ => {
            zeroize_value(&mut answer);
            return Err(Failure::new(
                ErrorKind::BadResponse,
                format!("{path}: the answer holds no data object"),
            ));
        }
    };
    zeroize_value(&mut answer);
    let data = SecretData::new(data);
    let (not_before, not_after) = check_issued(&path, &data)?;
    let now_wall = SystemTime::now();
    let now = Instant::now();
    let to_instant = |t: SystemTime| match t.duration_since(now_wall) {
        Ok(ahead) => now + ahead,
        Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
    };
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    Ok(Fetched {
        data,
        lease: None,
        expires: Some(to_instant(not_after)),
        due: renew_at(to_instant(not_before), lifetime, timing.fraction).max(now),
    })
}

/// Refuses an issued certificate that cannot be used: no key, a key that is not the
/// certificate's, a chain that does not verify, outside its validity. Gives its validity.
fn check_issued(path: &str, data: &SecretData) -> Result<(SystemTime, SystemTime), Failure> {
    let text = |field: &str| data.field(field).and_then(Value::as_str).unwrap_or("");
    let cert = text("certificate");
    let key = text("private_key");
    let mut ca: String = match data.field("ca_chain") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|pem| format!("{}\n", pem.trim_end()))
            .collect(),
        _ => String::new(),
    };
    if ca.is_empty() {
        ca = text("issuing_ca").to_owned();
    }
    let refused = |reason: String| {
        Failure::new(
            ErrorKind::BadResponse,
            format!("{path}: the issued certificate is refused: {reason}"),
        )
    };
    if cert.is_empty() || key.is_empty() || ca.is_empty() {
        return Err(refused(
            "certificate, private_key or the CA chain is missing".into(),
        ));
    }
    let identity = Identity::from_pem(
        cert.as_bytes(),
        key.as_bytes(),
        Path::new("certificate"),
        Path::new("private_key"),
    )
    .map_err(|e| refused(e.to_string()))?;
    let bundle = TrustBundle::from_pem(ca.as_bytes(), Path::new("ca_chain"))
        .map_err(|e| refused(e.to_string()))?;
    let leaf = check_credentials(&identity, &bundle, SystemTime::now())
        .map_err(|e| refused(e.to_string()))?;
    Ok((leaf.not_before, leaf.not_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Source, sidecar_kit::config::ConfigError> {
        sidecar_kit::config::parse_yaml(yaml, "t.yaml")
    }

    #[test]
    fn sources_parse_and_validate() {
        let s = parse("kv: {mount: secret, path: app/db}").unwrap();
        assert_eq!(s.describe(), "kv v2 secret/app/db");
        let s = parse("kv: {mount: kv, path: a, version: 1, pin: 3}").unwrap();
        assert!(s.validate().unwrap_err().contains("pin"));
        let s = parse("dynamic: {path: database/creds/app}").unwrap();
        assert!(s.validate().is_ok());
        let s = parse("dynamic: {path: aws/sts/x, params: {ttl: 1h}}").unwrap();
        assert!(s.validate().unwrap_err().contains("POST"));
        let s = parse("pki: {role: web, common_name: a.example, ttl: 2m}").unwrap();
        assert_eq!(s.describe(), "pki/issue/web");
        let s = parse("kv: {mount: secret, path: ../x}").unwrap();
        assert!(s.validate().is_err());
        let err = parse("kv: {mount: secret, path: x, vresion: 2}").unwrap_err();
        assert!(err.to_string().contains("vresion"), "{err}");
        assert!(parse("vault: {path: x}").is_err());
    }

    #[test]
    fn leases_renew_until_capped() {
        let lease = Lease {
            id: "x".into(),
            renewable: true,
            since: Instant::now(),
            duration: Duration::from_secs(10),
            increment: Duration::from_secs(10),
            capped: false,
        };
        assert!(lease.can_renew());
        assert!(
            !Lease {
                capped: true,
                ..lease.clone()
            }
            .can_renew()
        );
        assert!(
            !Lease {
                renewable: false,
                ..lease
            }
            .can_renew()
        );
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let data = SecretData::new(json!({"certificate": "x", "ca_chain": ["y"]}));
        let err = check_issued("pki/issue/web", &data).unwrap_err();
        assert!(err.message.contains("missing"), "{err}");
        assert_eq!(err.kind, ErrorKind::BadResponse);
    }
}
