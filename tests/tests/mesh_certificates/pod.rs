//! One pod: its secrets-agent, its app (the demo app) and its ambassador.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use sidecar_kit::tls::{Identity, PeerIdentity};
use test_support::metrics::Metrics;
use test_support::ports::free_addr;
use test_support::process::Process;

use crate::openbao::OpenBao;
use crate::{START, TTL, peer_of, spiffe, workspace_bin};

pub(crate) struct Pod {
    pub(crate) name: &'static str,
    /// Where the agent publishes tls.crt, tls.key and ca.crt.
    pub(crate) certs: PathBuf,
    pub(crate) agent_admin: SocketAddr,
    pub(crate) agent: Option<Process>,
    pub(crate) app: SocketAddr,
    pub(crate) app_process: Option<Process>,
    pub(crate) inbound: SocketAddr,
    pub(crate) outbound_http: SocketAddr,
    pub(crate) outbound_tcp: SocketAddr,
    pub(crate) ambassador_admin: SocketAddr,
    pub(crate) ambassador: Option<Process>,
}

impl Pod {
    pub(crate) fn new(name: &'static str) -> Pod {
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

    pub(crate) fn start_agent(&mut self, bao: &OpenBao, dir: &Path) {
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

    pub(crate) fn start_app(&mut self) {
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
    pub(crate) fn start_ambassador(&mut self, dir: &Path, peer_inbound: SocketAddr) {
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
    pub(crate) fn published(&self) -> Option<PeerIdentity> {
        let identity =
            Identity::load(&self.certs.join("tls.crt"), &self.certs.join("tls.key")).ok()?;
        PeerIdentity::from_der(identity.chain().first()?).ok()
    }

    pub(crate) fn ambassador_metrics(&self) -> Metrics {
        test_support::metrics::scrape(self.ambassador_admin)
    }

    /// The serial of the leaf certificate the ambassador has in use (its reloader's gauge).
    pub(crate) fn ambassador_serial(&self) -> Option<String> {
        let metrics = test_support::metrics::try_scrape(self.ambassador_admin).ok()?;
        let subject = format!("CN={}", self.name);
        metrics
            .series("sidecar_certificate_expiry_timestamp_seconds")
            .find(|s| {
                s.label("role") == Some("identity") && s.label("subject") == Some(subject.as_str())
            })
            .and_then(|s| s.label("serial").map(str::to_owned))
    }

    pub(crate) fn logs(&self) -> String {
        [&self.agent, &self.ambassador]
            .into_iter()
            .flatten()
            .map(|p| format!("---- {}\n{}", p.name(), tail(&p.log(), 30)))
            .collect()
    }
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What one pod went through: the certificates its agent published and the serials its
/// ambassador had in use, each in the order first seen.
#[derive(Default)]
pub(crate) struct History {
    pub(crate) issued: Vec<PeerIdentity>,
    pub(crate) ambassador: Vec<String>,
}

impl History {
    pub(crate) fn sample(&mut self, pod: &Pod) {
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
