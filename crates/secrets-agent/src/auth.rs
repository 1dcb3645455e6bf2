//! Logging in and keeping the token alive: renew it at a fraction of its TTL while it is
//! renewable, log in again when it is not (or its max TTL caps the renewal). Credentials are
//! read from their files at every login, so a rotated secret_id, JWT or client certificate is
//! used as soon as it is needed; the service also logs in again when one of the files changes.
//!
//! The token lives in memory only (zeroed on drop), unless a sink file is asked for.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::openbao::{Client, Endpoint, ErrorKind, Failure};
use crate::schedule::renew_at;
use crate::sensitive::{Secret, SecretBytes};

#[derive(Debug, Clone)]
pub enum Method {
    Token {
        file: PathBuf,
    },
    AppRole {
        mount: String,
        role_id_file: PathBuf,
        secret_id_file: Option<PathBuf>,
    },
    Jwt {
        mount: String,
        role: String,
        jwt_file: PathBuf,
    },
    Cert {
        mount: String,
        role: Option<String>,
        cert_file: PathBuf,
        key_file: PathBuf,
    },
}

impl Method {
    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Token { .. } => "token",
            Self::AppRole { .. } => "approle",
            Self::Jwt { .. } => "jwt",
            Self::Cert { .. } => "cert",
        }
    }

    /// The files the credentials are read from.
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            Self::Token { file } => vec![file.clone()],
            Self::AppRole {
                role_id_file,
                secret_id_file,
                ..
            } => std::iter::once(role_id_file.clone())
                .chain(secret_id_file.clone())
                .collect(),
            Self::Jwt { jwt_file, .. } => vec![jwt_file.clone()],
            Self::Cert {
                cert_file,
                key_file,
                ..
            } => vec![cert_file.clone(), key_file.clone()],
        }
    }
}

/// The token in use.
#[derive(Debug)]
pub struct Token {
    pub secret: Secret,
    pub renewable: bool,
    /// When it was obtained or last renewed.
    pub since: Instant,
    /// Its TTL at `since`; zero for a token that never expires (a root token).
    pub ttl: Duration,
    /// The increment renewals ask for: the TTL it was created with.
    pub increment: Duration,
    /// A renewal gave less than it asked for: the max TTL is near, the next step is a login.
    pub capped: bool,
}

impl Token {
    pub fn expires(&self) -> Option<Instant> {
        (!self.ttl.is_zero()).then(|| self.since + self.ttl)
    }

    pub fn expires_wall(&self) -> Option<SystemTime> {
        self.expires()
            .map(|at| SystemTime::now() + at.saturating_duration_since(Instant::now()))
    }
}

/// What a refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    /// A login gave a new token (leases made with the old one end with it).
    LoggedIn,
    /// The token's TTL was extended.
    Renewed,
    /// The token file still holds the token in use.
    Unchanged,
}

#[derive(Debug)]
pub struct Auth {
    method: Method,
    endpoint: Endpoint,
    sink: Option<PathBuf>,
    fraction: f64,
    token: Option<Token>,
    /// Log in at the next refresh even though the token still works (a credential changed).
    login_requested: bool,
    /// +1 for each login that gave a different token.
    generation: u64,
}

impl Auth {
    pub fn new(method: Method, endpoint: Endpoint, sink: Option<PathBuf>, fraction: f64) -> Self {
        Self {
            method,
            endpoint,
            sink,
            fraction,
            token: None,
            login_requested: false,
            generation: 0,
        }
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    pub fn token(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    pub fn secret(&self) -> Option<&Secret> {
        self.token.as_ref().map(|t| &t.secret)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the token needs attention now: there is none, or a login was asked for.
    pub fn needs_login(&self) -> bool {
        self.token.is_none() || self.login_requested
    }

    /// When the token needs attention: now when it [needs a login](Self::needs_login), never
    /// for a token that does not expire, otherwise after the fraction of its TTL.
    pub fn due(&self) -> Option<Instant> {
        if self.login_requested {
            return Some(Instant::now());
        }
        match &self.token {
            None => Some(Instant::now()),
            Some(t) if t.ttl.is_zero() => None,
            Some(t) => Some(renew_at(t.since, t.ttl, self.fraction).max(t.since + MIN_WAIT)),
        }
    }

    /// Logs in at the next refresh; the token in use stays until that succeeds.
    pub fn request_login(&mut self) {
        self.login_requested = true;
    }

    /// After a request was denied: whether the token itself is still good (then the policy
    /// denied the path, and logging in again would change nothing). A token that is gone is
    /// forgotten, so the next refresh logs in.
    pub async fn still_valid(&mut self, client: &Client) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        match client
            .get("auth/token/lookup-self", Some(&token.secret))
            .await
        {
            Ok(_) => true,
            Err(e) if e.kind == ErrorKind::Denied => {
                tracing::warn!("the token was refused (revoked or expired); logging in again");
                self.token = None;
                false
            }
            // Cannot tell: keep it, the next attempt will see.
            Err(_) => true,
        }
    }

    /// Renews the token if it can be renewed, logs in otherwise (or if the renewal is refused).
    pub async fn refresh(&mut self, client: &Client) -> Result<Refreshed, Failure> {
        if self.login_requested {
            let result = self.login(client).await;
            if result.is_ok() {
                self.login_requested = false;
            }
            return result;
        }
        let renewable = self
            .token
            .as_ref()
            .is_some_and(|t| t.renewable && !t.capped);
        if renewable {
            match self.renew(client).await {
                Ok(()) => return Ok(Refreshed::Renewed),
                // The token is gone (revoked, expired): log in. Transient failures are retried.
                Err(e) if e.kind.is_transient() => return Err(e),
                Err(e) => tracing::warn!(error = %e, "the token cannot be renewed; logging in"),
            }
        }
        self.login(client).await
    }

    async fn renew(&mut self, client: &Client) -> Result<(), Failure> {
        let Some(token) = &self.token else {
            return Err(Failure::local("no token to renew"));
        };
        let increment = token.increment.as_secs().max(1);
        let answer = client
            .post(
                "auth/token/renew-self",
                Some(&token.secret),
                &json!({ "increment": format!("{increment}s") }),
            )
            .await?;
        let auth = answer.get("auth").unwrap_or(&Value::Null);
        let ttl = seconds(auth.get("lease_duration")).ok_or_else(|| {
            Failure::new(
                ErrorKind::BadResponse,
                "auth/token/renew-self: no lease_duration in the answer",
            )
        })?;
        let renewable = auth
            .get("renewable")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if let Some(t) = &mut self.token {
            t.since = Instant::now();
            t.ttl = ttl;
            t.renewable = renewable;
            // Less than asked: the max TTL is near; log in before the token runs out.
            t.capped = ttl.as_secs() < increment;
            tracing::debug!(ttl = ?ttl, capped = t.capped, "token renewed");
        }
        Ok(())
    }

    /// Logs in with the configured method (for a token file: reads it and looks the token up).
    pub async fn login(&mut self, client: &Client) -> Result<Refreshed, Failure> {
        let token = match &self.method {
            Method::Token { file } => {
                let secret = Secret::new(read_trimmed(file, "--token-file")?);
                let answer = client
                    .get("auth/token/lookup-self", Some(&secret))
                    .await
                    .map_err(|e| {
                        Failure::from(e).context("looking up the token of --token-file")
                    })?;
                token_from_lookup(secret, &answer)?
            }
            Method::AppRole {
                mount,
                role_id_file,
                secret_id_file,
            } => {
                let role_id = Secret::new(read_trimmed(role_id_file, "--role-id-file")?);
                let mut body = json!({ "role_id": role_id.expose() });
                if let Some(file) = secret_id_file {
                    let secret_id = Secret::new(read_trimmed(file, "--secret-id-file")?);
                    body["secret_id"] = Value::String(secret_id.expose().to_owned());
                }
                let answer = post_login(client, mount, &body).await;
                crate::sensitive::zeroize_value(&mut body);
                token_from_login(mount, &answer?)?
            }
            Method::Jwt {
                mount,
                role,
                jwt_file,
            } => {
                let jwt = Secret::new(read_trimmed(jwt_file, "--jwt-file")?);
                let mut body = json!({ "role": role, "jwt": jwt.expose() });
                let answer = post_login(client, mount, &body).await;
                crate::sensitive::zeroize_value(&mut body);
                token_from_login(mount, &answer?)?
            }
            Method::Cert {
                mount,
                role,
                cert_file,
                key_file,
            } => {
                let mut pem = SecretBytes::default();
                pem.extend(read_file(cert_file, "--client-cert")?.iter());
                pem.push(b'\n');
                pem.extend(read_file(key_file, "--client-key")?.iter());
                let login_client = Client::new(&self.endpoint, Some(&pem))
                    .map_err(|e| Failure::local(e.to_string()))?;
                let body = match role {
                    Some(name) => json!({ "name": name }),
                    None => json!({}),
                };
                let answer = post_login(&login_client, mount, &body).await?;
                token_from_login(mount, &answer)?
            }
        };
        let same = self
            .token
            .as_ref()
            .is_some_and(|old| old.secret == token.secret);
        let ttl = token.ttl;
        let renewable = token.renewable;
        self.token = Some(token);
        if same {
            return Ok(Refreshed::Unchanged);
        }
        self.generation += 1;
        tracing::info!(
            method = self.method.label(),
            ttl = ?ttl,
            renewable,
            "logged in"
        );
        if let Some(sink) = &self.sink
            && let Some(t) = &self.token
            && let Err(e) = write_sink(sink, &t.secret)
        {
            tracing::warn!(file = %sink.display(), error = %e, "cannot write the token sink file");
        }
        Ok(Refreshed::LoggedIn)
    }
}

/// The shortest time between two refreshes of the token, so a token about to run out (a
/// token file nobody replaces) is not looked up in a tight loop.
const MIN_WAIT: Duration = Duration::from_secs(1);

async fn post_login(client: &Client, mount: &str, body: &Value) -> Result<Value, Failure> {
    let path = format!("auth/{mount}/login");
    client
        .post(&path, None, body)
        .await
        .map_err(|e| Failure::from(e).context("logging in"))
}

fn token_from_login(mount: &str, answer: &Value) -> Result<Token, Failure> {
    let auth = answer.get("auth").unwrap_or(&Value::Null);
    let bad = |what: &str| {
        Failure::new(
            ErrorKind::BadResponse,
            format!("auth/{mount}/login: {what} in the answer"),
        )
    };
    let token = auth
        .get("client_token")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("no client_token"))?;
    let ttl = seconds(auth.get("lease_duration")).ok_or_else(|| bad("no lease_duration"))?;
    Ok(Token {
        secret: Secret::new(token.to_owned()),
        renewable: auth
            .get("renewable")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        since: Instant::now(),
        ttl,
        increment: ttl,
        capped: false,
    })
}

fn token_from_lookup(secret: Secret, answer: &Value) -> Result<Token, Failure> {
    let data = answer.get("data").unwrap_or(&Value::Null);
    let ttl = seconds(data.get("ttl")).ok_or_else(|| {
        Failure::new(
            ErrorKind::BadResponse,
            "auth/token/lookup-self: no ttl in the answer",
        )
    })?;
    let creation = seconds(data.get("creation_ttl")).unwrap_or(ttl);
    Ok(Token {
        secret,
        renewable: data
            .get("renewable")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        since: Instant::now(),
        ttl,
        increment: if creation.is_zero() { ttl } else { creation },
        capped: false,
    })
}

/// A duration in seconds as the API gives it (a number, or a string of digits).
pub fn seconds(value: Option<&Value>) -> Option<Duration> {
    match value? {
        Value::Number(n) => n.as_u64().map(Duration::from_secs),
        Value::String(s) => s.parse().ok().map(Duration::from_secs),
        _ => None,
    }
}

fn read_file(path: &Path, flag: &str) -> Result<SecretBytes, Failure> {
    std::fs::read(path)
        .map(SecretBytes::new)
        .map_err(|e| Failure::local(format!("cannot read {flag} {}: {e}", path.display())))
}

fn read_trimmed(path: &Path, flag: &str) -> Result<String, Failure> {
    let bytes = read_file(path, flag)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Failure::local(format!("{flag} {} is not UTF-8 text", path.display())))?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Failure::local(format!(
            "{flag} {} is empty",
            path.display()
        )));
    }
    Ok(trimmed.to_owned())
}

/// Writes the token to `path` with mode 0400, atomically (a temporary file renamed over it).
fn write_sink(path: &Path, token: &Secret) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&tmp)?;
    file.write_all(token.expose().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_answers_are_read() {
        let t = token_from_login(
            "approle",
            &json!({"auth": {"client_token": "s.x", "lease_duration": 3600, "renewable": true}}),
        )
        .unwrap();
        assert_eq!(t.ttl, Duration::from_secs(3600));
        assert!(t.renewable);
        assert_eq!(t.secret.expose(), "s.x");
        let err = token_from_login("approle", &json!({"auth": null})).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadResponse);
        assert!(err.message.contains("auth/approle/login"), "{err}");
    }

    #[test]
    fn a_root_token_never_needs_renewal() {
        let t = token_from_lookup(
            Secret::new("root".into()),
            &json!({"data": {"ttl": 0, "renewable": false, "creation_ttl": 0}}),
        )
        .unwrap();
        assert!(t.expires().is_none());
        let endpoint = Endpoint::parse("http://127.0.0.1:1", None, None, MIN_WAIT).unwrap();
        let mut auth = Auth::new(
            Method::Token {
                file: "/nonexistent".into(),
            },
            endpoint,
            None,
            2.0 / 3.0,
        );
        assert!(auth.due().is_some(), "no token yet: due now");
        auth.token = Some(t);
        assert!(auth.due().is_none());
    }

    #[test]
    fn the_sink_file_is_0400() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write_sink(&path, &Secret::new("s.abc".into())).unwrap();
        write_sink(&path, &Secret::new("s.def".into())).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "s.def");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o400);
    }
}
