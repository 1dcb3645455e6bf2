//! An ambassador with one JWT-checking inbound route in front of the header app, for the JWT
//! tests.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use test_support::wait::Wait;

use super::start_header_app;
use crate::common::*;

const DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

pub struct Setup {
    /// Holds the certificates' directory.
    _pki: Pki,
    pub ambassador: Ambassador,
    pub listen: std::net::SocketAddr,
    pub client: std::sync::Arc<rustls::ClientConfig>,
}

/// An ambassador with one inbound route `web` whose `jwt:` block is `jwt` (YAML, indented
/// under the route), in front of the header app; waits for readiness when `ready`.
pub async fn start(jwt: &str, ready: bool) -> Setup {
    let pki = Pki::new("jwt test CA");
    let server = pki.secret("server", "spiffe://td/ns/prod/sa/web");
    let client_leaf = pki.ca.good("spiffe://td/ns/prod/sa/frontend");
    let client = client_tls(Some(&client_leaf), pki.ca.pem(), &[b"http/1.1"]);
    let app = start_header_app().await;
    let listen = addr(free_port());
    let config = pki.path().join("ambassador.yaml");
    std::fs::write(
        &config,
        format!(
            "tls: {{cert: {s}/tls.crt, key: {s}/tls.key, ca: {s}/ca.crt}}\n\
             access_log: true\n\
             limits: {{max_header_bytes: 131072}}\n\
             inbound:\n  - name: web\n    listen: {listen}\n    app: {app}\n    \
             allow: {{spiffe: ['spiffe://td/ns/prod/sa/frontend']}}\n    jwt:\n{jwt}",
            s = server.display(),
        ),
    )
    .unwrap();
    let args = strings(&["--config", &config.display().to_string()]);
    let ambassador = if ready {
        Ambassador::start(&args)
    } else {
        start_unready(&args)
    };
    Setup {
        _pki: pki,
        ambassador,
        listen,
        client,
    }
}

/// The binary started without waiting for readiness: once its admin server answers.
fn start_unready(args: &[String]) -> Ambassador {
    let admin = addr(free_port());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ambassador"));
    cmd.args(args)
        .arg("--admin-addr")
        .arg(admin.to_string())
        .args(["--log-format", "text", "--log-level", "info"]);
    let process = test_support::process::Process::spawn("ambassador", cmd);
    Wait::new("the admin server")
        .timeout(DEADLINE)
        .until(|| std::net::TcpStream::connect(admin).is_ok());
    Ambassador { process, admin }
}

/// Indents a YAML block under `jwt:`.
pub fn block(yaml: &str) -> String {
    yaml.lines().map(|l| format!("      {l}\n")).collect()
}

impl Setup {
    /// GET `path` with `headers`.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = Request::get(path).header("host", "web.test");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        mtls_request(
            self.listen,
            self.client.clone(),
            req.body(Full::new(Bytes::new())).unwrap(),
        )
        .await
        .unwrap()
    }

    pub async fn bearer(&self, path: &str, token: &str) -> Reply {
        self.get(path, &[("authorization", &format!("Bearer {token}"))])
            .await
    }

    pub fn refusals(&self, reason: &str) -> f64 {
        self.ambassador
            .metric(
                "ambassador_jwt_refusals_total",
                &[("route", "web"), ("reason", reason)],
            )
            .unwrap_or(0.0)
    }

    pub fn refreshes(&self, result: &str) -> f64 {
        self.ambassador
            .metric(
                "ambassador_jwt_jwks_refreshes_total",
                &[("route", "web"), ("result", result)],
            )
            .unwrap_or(0.0)
    }

    /// A series of the route `web`: `name` with `label`; 0 when absent.
    pub fn metric(&self, name: &str, label: (&str, &str)) -> f64 {
        self.ambassador
            .metric(name, &[("route", "web"), label])
            .unwrap_or(0.0)
    }
}
