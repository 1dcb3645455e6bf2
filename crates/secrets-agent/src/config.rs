//! The YAML file (`--config`): which secrets to fetch and which files to render from them;
//! and the validation of everything, flags included, before anything starts (exit 64).
//!
//! ```yaml
//! secrets:
//!   db:       {dynamic: {path: database/creds/app}}
//!   app:      {kv: {mount: secret, path: app/config}}
//!   identity: {pki: {mount: pki, role: app, common_name: app.example, ttl: 24h}}
//! files:
//!   - {path: db.env, secret: db, format: env}
//!   - {path: tls.crt, secret: identity, format: pem, fields: [certificate, ca_chain]}
//!   - {path: tls.key, secret: identity, field: private_key}
//!   - path: app.yaml
//!     mode: "0440"
//!     template: |
//!       dsn: postgres://{{ db.username }}:{{ db.password|uri_component }}@db:5432/app
//!       api_key: {{ app.api_key }}
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sidecar_kit::notify::NotifyConfig;

use crate::auth::Method;
use crate::cli::{AuthMethod, Cli, parse_mode};
use crate::openbao::Endpoint;
use crate::render::{Content, FileSpec, Format, Renderer, check_relative_path};
use crate::secrets::Source;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    secrets: BTreeMap<String, Source>,
    files: Vec<FileEntry>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FormatName {
    Raw,
    Json,
    Env,
    Pem,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    path: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    format: Option<FormatName>,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    fields: Option<Vec<String>>,
    #[serde(default)]
    template: Option<String>,
    #[serde(default)]
    template_file: Option<PathBuf>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    owner: Option<u32>,
    #[serde(default)]
    group: Option<u32>,
}

/// Everything the service needs, checked.
#[derive(Debug)]
pub struct Config {
    pub endpoint: Endpoint,
    pub auth: Method,
    pub token_sink: Option<PathBuf>,
    pub output_dir: PathBuf,
    /// In the file's order of names.
    pub secrets: Vec<(String, Source)>,
    pub renderer: Renderer,
    pub poll_interval: Duration,
    pub renew_fraction: f64,
    pub revoke_grace: Duration,
    pub backoff_max: Duration,
    pub jitter: f64,
    pub one_time: bool,
    pub one_time_timeout: Duration,
    pub request_timeout: Duration,
    pub notify: NotifyConfig,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

fn readable(flag: &str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::File::open(path) {
        Ok(_) => Ok(()),
        Err(e) => err(format!("{flag} {}: {e}", path.display())),
    }
}

impl Config {
    pub fn from_cli(cli: &Cli) -> Result<Self, ConfigError> {
        let Some(file) = &cli.kit.config else {
            return err("--config FILE is required: it names the secrets and the files to render");
        };
        let parsed: FileConfig =
            sidecar_kit::config::load_yaml(file).map_err(|e| ConfigError(e.to_string()))?;
        let origin = file.display().to_string();
        let (secrets, renderer) = check_file(parsed, cli, &origin)?;

        if !(cli.renew_fraction > 0.0 && cli.renew_fraction < 1.0) {
            return err(format!(
                "--renew-fraction {} must be between 0 and 1",
                cli.renew_fraction
            ));
        }
        if !(0.0..=1.0).contains(&cli.jitter) {
            return err(format!("--jitter {} must be between 0 and 1", cli.jitter));
        }
        for (flag, value) in [
            ("--poll-interval", cli.poll_interval),
            ("--request-timeout", cli.request_timeout),
            ("--backoff-max", cli.backoff_max),
        ] {
            if value.is_zero() {
                return err(format!("{flag} must be more than 0"));
            }
        }
        if let Some(f) = &cli.ca_file {
            readable("--ca-file", f)?;
        }
        let endpoint = Endpoint::parse(
            &cli.addr,
            cli.ca_file.as_deref(),
            cli.namespace.clone(),
            cli.request_timeout,
        )
        .map_err(|e| ConfigError(e.to_string()))?;
        // Builds the TLS client once, so a bad --ca-file is refused now.
        crate::openbao::Client::new(&endpoint, None).map_err(|e| ConfigError(e.to_string()))?;
        let auth = auth_method(cli)?;
        let output_dir = absolute(&cli.output_dir, "--output-dir")?;
        if output_dir == Path::new("/") {
            return err("--output-dir must not be /");
        }
        let mut notify = cli
            .notify
            .to_config()
            .map_err(|e| ConfigError(e.to_string()))?;
        if let Some(command) = &mut notify.command {
            command.cwd = Some(output_dir.clone());
        }
        Ok(Self {
            notify,
            endpoint,
            auth,
            token_sink: cli
                .token_sink_file
                .as_ref()
                .map(|p| absolute(p, "--token-sink-file"))
                .transpose()?,
            output_dir,
            secrets,
            renderer,
            poll_interval: cli.poll_interval,
            renew_fraction: cli.renew_fraction,
            revoke_grace: cli.revoke_grace,
            backoff_max: cli.backoff_max,
            jitter: cli.jitter,
            one_time: cli.one_time,
            one_time_timeout: cli.one_time_timeout,
            request_timeout: cli.request_timeout,
        })
    }
}

fn absolute(path: &Path, flag: &str) -> Result<PathBuf, ConfigError> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(path))
        .map_err(|e| ConfigError(format!("{flag}: {e}")))
}

fn auth_method(cli: &Cli) -> Result<Method, ConfigError> {
    let given: [(&str, bool, &[AuthMethod]); 6] = [
        (
            "--token-file",
            cli.token_file.is_some(),
            &[AuthMethod::Token],
        ),
        (
            "--role-id-file",
            cli.role_id_file.is_some(),
            &[AuthMethod::Approle],
        ),
        (
            "--secret-id-file",
            cli.secret_id_file.is_some(),
            &[AuthMethod::Approle],
        ),
        ("--jwt-file", cli.jwt_file.is_some(), &[AuthMethod::Jwt]),
        (
            "--client-cert",
            cli.client_cert.is_some(),
            &[AuthMethod::Cert],
        ),
        (
            "--client-key",
            cli.client_key.is_some(),
            &[AuthMethod::Cert],
        ),
    ];
    for (flag, set, methods) in given {
        if set && !methods.contains(&cli.auth_method) {
            return err(format!(
                "{flag} is not used by --auth-method {}",
                cli.auth_method.name()
            ));
        }
    }
    let need = |flag: &str, value: &Option<PathBuf>| -> Result<PathBuf, ConfigError> {
        let Some(path) = value else {
            return err(format!(
                "--auth-method {} needs {flag}",
                cli.auth_method.name()
            ));
        };
        readable(flag, path)?;
        absolute(path, flag)
    };
    let mount = |default: &str| -> Result<String, ConfigError> {
        let mount = cli
            .auth_mount
            .as_deref()
            .unwrap_or(default)
            .trim_matches('/')
            .to_owned();
        if mount.is_empty() || mount.split('/').any(|c| c.is_empty() || c == "..") {
            return err(format!("--auth-mount {mount:?} is not a mount path"));
        }
        Ok(mount)
    };
    Ok(match cli.auth_method {
        AuthMethod::Token => {
            if cli.auth_mount.is_some() || cli.auth_role.is_some() {
                return err("--auth-mount and --auth-role are not used by --auth-method token");
            }
            Method::Token {
                file: need("--token-file", &cli.token_file)?,
            }
        }
        AuthMethod::Approle => Method::AppRole {
            mount: mount("approle")?,
            role_id_file: need("--role-id-file", &cli.role_id_file)?,
            secret_id_file: cli
                .secret_id_file
                .as_ref()
                .map(|_| need("--secret-id-file", &cli.secret_id_file))
                .transpose()?,
        },
        AuthMethod::Jwt => Method::Jwt {
            mount: mount("jwt")?,
            role: match cli.auth_role.as_deref() {
                Some(r) if !r.is_empty() => r.to_owned(),
                _ => return err("--auth-method jwt needs --auth-role"),
            },
            jwt_file: need("--jwt-file", &cli.jwt_file)?,
        },
        AuthMethod::Cert => Method::Cert {
            mount: mount("cert")?,
            role: cli.auth_role.clone(),
            cert_file: need("--client-cert", &cli.client_cert)?,
            key_file: need("--client-key", &cli.client_key)?,
        },
    })
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

type Checked = (Vec<(String, Source)>, Renderer);

fn check_file(parsed: FileConfig, cli: &Cli, origin: &str) -> Result<Checked, ConfigError> {
    let bad = |what: String| ConfigError(format!("{origin}: {what}"));
    if parsed.secrets.is_empty() {
        return Err(bad("`secrets` is empty".into()));
    }
    for (name, source) in &parsed.secrets {
        if !is_identifier(name) {
            return Err(bad(format!(
                "secrets.{name}: a secret's name is what templates call it: letters, digits and _, not starting with a digit"
            )));
        }
        source
            .validate()
            .map_err(|e| bad(format!("secrets.{name}: {e}")))?;
    }
    if parsed.files.is_empty() {
        return Err(bad("`files` is empty".into()));
    }
    let mut specs = Vec::new();
    let mut templates = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, entry) in parsed.files.into_iter().enumerate() {
        let at = format!("files[{i}] ({})", entry.path);
        let fail = |what: String| bad(format!("{at}: {what}"));
        let path = check_relative_path(&entry.path).map_err(fail)?;
        if !seen.insert(path.clone()) {
            return Err(fail("another file has the same path".into()));
        }
        let content = file_content(&entry, &parsed.secrets).map_err(fail)?;
        match (&entry.template, &entry.template_file) {
            (Some(text), None) => {
                templates.push((path.to_string_lossy().into_owned(), text.clone()))
            }
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| fail(format!("template_file {}: {e}", file.display())))?;
                templates.push((path.to_string_lossy().into_owned(), text));
            }
            _ => {}
        }
        let mode = match &entry.mode {
            Some(m) => parse_mode(m).map_err(|e| fail(format!("mode: {e}")))?,
            None => cli.file_mode,
        };
        specs.push(FileSpec {
            path,
            content,
            mode,
            owner: entry.owner.or(cli.file_owner),
            group: entry.group.or(cli.file_group),
        });
    }
    // `a` and `a/b` cannot both be files.
    for path in &seen {
        for ancestor in path.ancestors().skip(1) {
            if seen.contains(ancestor) {
                return Err(bad(format!(
                    "files: {} is a file, so {} cannot be inside it",
                    ancestor.display(),
                    path.display()
                )));
            }
        }
    }
    let renderer = Renderer::new(specs, templates).map_err(bad)?;
    Ok((parsed.secrets.into_iter().collect(), renderer))
}

fn file_content(entry: &FileEntry, secrets: &BTreeMap<String, Source>) -> Result<Content, String> {
    let templated = entry.template.is_some() || entry.template_file.is_some();
    if templated {
        if entry.template.is_some() && entry.template_file.is_some() {
            return Err("give template or template_file, not both".into());
        }
        if entry.secret.is_some()
            || entry.format.is_some()
            || entry.field.is_some()
            || entry.fields.is_some()
        {
            return Err(
                "a template names its secrets itself: drop secret, format, field and fields".into(),
            );
        }
        return Ok(Content::Template);
    }
    let Some(secret) = &entry.secret else {
        return Err("give a template, a template_file, or a secret with a format".into());
    };
    if !secrets.contains_key(secret) {
        return Err(format!("secret `{secret}` is not in `secrets`"));
    }
    let format = match (entry.format, &entry.field, &entry.fields) {
        (Some(f), _, _) => f,
        (None, Some(_), None) => FormatName::Raw,
        (None, None, Some(_)) => FormatName::Pem,
        (None, _, _) => return Err("give a format: raw, json, env or pem".into()),
    };
    let (format, fields) = match format {
        FormatName::Raw => match (&entry.field, &entry.fields) {
            (Some(f), None) => (Format::Raw, vec![f.clone()]),
            _ => return Err("format raw takes one `field`".into()),
        },
        FormatName::Pem => match (&entry.field, &entry.fields) {
            (None, Some(f)) if !f.is_empty() => (Format::Pem, f.clone()),
            (Some(f), None) => (Format::Pem, vec![f.clone()]),
            _ => return Err("format pem takes `fields` (or one `field`)".into()),
        },
        FormatName::Json | FormatName::Env => {
            if entry.field.is_some() || entry.fields.is_some() {
                return Err("formats json and env take the whole secret: drop field(s)".into());
            }
            let f = if matches!(format, FormatName::Json) {
                Format::Json
            } else {
                Format::Env
            };
            (f, Vec::new())
        }
    };
    Ok(Content::Format {
        secret: secret.clone(),
        format,
        fields,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The command line of an agent on config `yaml` (written in `dir`) with token auth and
    /// `extra` flags; nothing is asked of a server.
    pub(crate) fn cli(dir: &Path, yaml: &str, extra: &[&str]) -> Cli {
        let config = dir.join("c.yaml");
        std::fs::write(&config, yaml).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "root").unwrap();
        let mut args = vec![
            "secrets-agent".to_owned(),
            "--addr=http://127.0.0.1:8200".into(),
            "--auth-method=token".into(),
            format!("--token-file={}", token.display()),
            format!("--output-dir={}", dir.join("out").display()),
            format!("--config={}", config.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        sidecar_kit::cli::try_parse_from(&crate::INFO, args).unwrap()
    }

    fn check(yaml: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        Config::from_cli(&cli(dir.path(), yaml, &[])).map_err(|e| e.to_string())
    }

    const SECRETS: &str = "secrets:\n  db: {dynamic: {path: database/creds/app}}\n  id: {pki: {role: r, common_name: a}}\n";

    #[test]
    fn a_good_file_is_accepted() {
        let c = check(&format!(
            "{SECRETS}files:\n  - {{path: db.env, secret: db, format: env}}\n  - {{path: tls/crt, secret: id, fields: [certificate, ca_chain]}}\n  - {{path: tls/key, secret: id, field: private_key, mode: '0440'}}\n  - path: t\n    template: \"{{{{ db.username }}}}\"\n"
        ))
        .unwrap();
        assert_eq!(c.renderer.files().len(), 4);
        assert_eq!(c.renderer.files()[2].mode, 0o440);
        assert_eq!(c.renderer.files()[0].mode, 0o400);
    }

    #[test]
    fn paths_outside_the_output_directory_are_refused() {
        for path in ["../escape", "/etc/passwd", "a/../../b"] {
            let e = check(&format!(
                "{SECRETS}files:\n  - {{path: '{path}', secret: db, format: json}}\n"
            ))
            .unwrap_err();
            assert!(e.contains("files[0]"), "{e}");
        }
    }

    #[test]
    fn mistakes_name_the_entry() {
        let cases = [
            (
                "files:\n  - {path: a, secret: nope, format: json}\n",
                "`nope` is not in",
            ),
            ("files:\n  - {path: a, secret: db}\n", "give a format"),
            (
                "files:\n  - {path: a, secret: db, format: raw}\n",
                "one `field`",
            ),
            (
                "files:\n  - {path: a, template: '{% if %}'}\n",
                "template of a",
            ),
            (
                "files:\n  - {path: a, template: x, secret: db}\n",
                "drop secret",
            ),
            (
                "files:\n  - {path: a, secret: db, format: json}\n  - {path: a/b, secret: db, format: json}\n",
                "cannot be inside",
            ),
            (
                "files:\n  - {path: a, secret: db, format: json, mode: rw}\n",
                "mode",
            ),
            (
                "files:\n  - {path: a, secret: db, format: json, owner: me}\n",
                "owner",
            ),
            (
                "files:\n  - {path: a, secret: db, fromat: json}\n",
                "fromat",
            ),
        ];
        for (files, want) in cases {
            let e = check(&format!("{SECRETS}{files}")).unwrap_err();
            assert!(e.contains(want), "{files}: {e}");
        }
        let e = check("secrets:\n  9x: {kv: {mount: s, path: p}}\nfiles: []\n").unwrap_err();
        assert!(e.contains("secrets.9x"), "{e}");
    }

    #[test]
    fn auth_flags_must_fit_the_method() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = format!("{SECRETS}files:\n  - {{path: a, secret: db, format: json}}\n");
        let jwt = dir.path().join("jwt");
        std::fs::write(&jwt, "x").unwrap();
        let e = Config::from_cli(&cli(
            dir.path(),
            &yaml,
            &[&format!("--jwt-file={}", jwt.display())],
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("--jwt-file is not used"), "{e}");
        let e = Config::from_cli(&cli(dir.path(), &yaml, &["--renew-fraction=1.5"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--renew-fraction"), "{e}");
    }
}
