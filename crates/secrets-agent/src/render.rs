//! Turning secrets into file contents: Jinja templates (minijinja) and ready formats.
//!
//! Formats, for a file that takes one secret as it is:
//! - `raw`: one field's value (a string as it is, anything else as JSON);
//! - `json`: the secret's data as a JSON object;
//! - `env`: `KEY='value'` lines, quoted for `sh` (`. file`) and dotenv readers;
//! - `pem`: the named fields (PEM strings, or lists of them such as `ca_chain`) one after the
//!   other, each ending in a newline: a certificate chain, a key, a CA bundle.
//!
//! Templates see every secret by its name (`{{ db.password }}`); a missing secret or field is
//! an error (strict undefined), so a typo never renders an empty password. Nothing is escaped;
//! the filter `uri_component` percent-encodes a value for a URL (a password in a DSN).
//! Templates cannot read files or the environment: minijinja has no such functions unless
//! they are added, and none is.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::Value;

use crate::sensitive::{SecretBytes, SecretData};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Json,
    Env,
    Pem,
}

#[derive(Debug, Clone)]
pub enum Content {
    /// A template, compiled under the file's path.
    Template,
    /// One secret in a ready format.
    Format {
        secret: String,
        format: Format,
        /// `raw`: the one field; `pem`: the fields in order.
        fields: Vec<String>,
    },
}

/// One output file.
#[derive(Debug, Clone)]
pub struct FileSpec {
    /// Relative to the output directory, checked by [`check_relative_path`].
    pub path: PathBuf,
    pub content: Content,
    pub mode: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

/// A rendered file, ready to publish.
#[derive(Debug)]
pub struct Rendered {
    pub path: PathBuf,
    pub content: SecretBytes,
    pub mode: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

/// Why a file cannot be rendered. Names the file; never quotes a secret value.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: {message}")]
pub struct RenderError {
    pub file: String,
    pub message: String,
}

/// A path that may be used inside the output directory: relative, no `..`, no component
/// starting with `..` (the layout's own names), nothing empty.
pub fn check_relative_path(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("the path is empty".into());
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(format!(
            "{path:?} is absolute; paths are relative to the output directory"
        ));
    }
    for component in p.components() {
        match component {
            Component::Normal(name) => {
                if name.to_string_lossy().starts_with("..") {
                    return Err(format!(
                        "{path:?}: names starting with `..` belong to the publish layout"
                    ));
                }
            }
            Component::ParentDir => {
                return Err(format!("{path:?} leaves the output directory (`..`)"));
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {
                return Err(format!("{path:?} must be a plain relative path"));
            }
        }
    }
    if path.ends_with('/') || path.contains("//") || path.starts_with("./") {
        return Err(format!("{path:?} must be a plain relative path"));
    }
    Ok(p.to_path_buf())
}

#[derive(Debug)]
pub struct Renderer {
    env: Environment<'static>,
    files: Vec<FileSpec>,
}

impl Renderer {
    /// Compiles the templates (`(file path, source)`); a syntax error names the file and line.
    pub fn new(files: Vec<FileSpec>, templates: Vec<(String, String)>) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        // As Ansible renders: a file keeps its last newline, a block tag does not leave one.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .trim_blocks(true)
            .build()
            .map_err(|e| format!("template syntax settings: {e}"))?;
        env.set_syntax(syntax);
        env.add_filter("uri_component", uri_component);
        for (name, source) in templates {
            env.add_template_owned(name.clone(), source)
                .map_err(|e| format!("template of {name}: {}", describe(&e)))?;
        }
        Ok(Self { env, files })
    }

    pub fn files(&self) -> &[FileSpec] {
        &self.files
    }

    /// Renders every file from the secrets (by name).
    pub fn render(
        &self,
        secrets: &BTreeMap<String, &SecretData>,
    ) -> Result<Vec<Rendered>, RenderError> {
        let mut context: Option<minijinja::Value> = None;
        let mut out = Vec::with_capacity(self.files.len());
        for file in &self.files {
            let name = file.path.to_string_lossy().into_owned();
            let fail = |message: String| RenderError {
                file: name.clone(),
                message,
            };
            let content = match &file.content {
                Content::Template => {
                    let context = context.get_or_insert_with(|| {
                        secrets
                            .iter()
                            .map(|(k, v)| (k.clone(), to_template_value(v.value())))
                            .collect::<BTreeMap<String, minijinja::Value>>()
                            .into()
                    });
                    let template = self
                        .env
                        .get_template(&name)
                        .map_err(|e| fail(describe(&e)))?;
                    SecretBytes::new(
                        template
                            .render(context.clone())
                            .map_err(|e| fail(describe(&e)))?
                            .into_bytes(),
                    )
                }
                Content::Format {
                    secret,
                    format,
                    fields,
                } => {
                    let data = secrets
                        .get(secret)
                        .ok_or_else(|| fail(format!("no secret named `{secret}`")))?;
                    format_secret(data, *format, fields).map_err(fail)?
                }
            };
            out.push(Rendered {
                path: file.path.clone(),
                content,
                mode: file.mode,
                owner: file.owner,
                group: file.group,
            });
        }
        Ok(out)
    }
}

/// minijinja's message, kind and location, without its debug rendering (which would show the
/// values in scope).
fn describe(e: &minijinja::Error) -> String {
    let mut text = e.kind().to_string();
    if let Some(detail) = e.detail() {
        text.push_str(": ");
        text.push_str(detail);
    }
    if let (Some(name), Some(line)) = (e.name(), e.line()) {
        text.push_str(&format!(" ({name} line {line})"));
    }
    text
}

/// Percent-encodes all but RFC 3986's unreserved characters, for a value inside a URL's
/// userinfo, path segment or query (`urlencode` keeps `/`, as Jinja's does).
fn uri_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn to_template_value(value: &Value) -> minijinja::Value {
    match value {
        Value::Null => minijinja::Value::from(()),
        Value::Bool(b) => minijinja::Value::from(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                minijinja::Value::from(i)
            } else if let Some(u) = n.as_u64() {
                minijinja::Value::from(u)
            } else {
                minijinja::Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => minijinja::Value::from(s.as_str()),
        Value::Array(items) => items
            .iter()
            .map(to_template_value)
            .collect::<Vec<_>>()
            .into(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), to_template_value(v)))
            .collect::<BTreeMap<String, minijinja::Value>>()
            .into(),
    }
}

fn format_secret(
    data: &SecretData,
    format: Format,
    fields: &[String],
) -> Result<SecretBytes, String> {
    let mut out = SecretBytes::default();
    match format {
        Format::Raw => {
            let field = fields.first().map(String::as_str).unwrap_or_default();
            match data.field(field) {
                Some(Value::String(s)) => out.extend_from_slice(s.as_bytes()),
                Some(other) => out.extend(json_bytes(other, false)?.iter()),
                None => return Err(format!("the secret has no field `{field}`")),
            }
        }
        Format::Json => {
            out.extend(json_bytes(data.value(), true)?.iter());
            out.push(b'\n');
        }
        Format::Env => {
            let Some(map) = data.value().as_object() else {
                return Err("the secret is not an object of fields".into());
            };
            for (key, value) in map {
                if !is_env_name(key) {
                    return Err(format!(
                        "field `{key}` is not a valid environment variable name"
                    ));
                }
                out.extend_from_slice(key.as_bytes());
                out.push(b'=');
                match value {
                    Value::String(s) => quote_sh(s.as_bytes(), &mut out),
                    other => quote_sh(&json_bytes(other, false)?, &mut out),
                }
                out.push(b'\n');
            }
        }
        Format::Pem => {
            for field in fields {
                let pems: Vec<&str> = match data.field(field) {
                    Some(Value::String(s)) => vec![s.as_str()],
                    Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
                    Some(_) => return Err(format!("field `{field}` is not PEM text")),
                    None => return Err(format!("the secret has no field `{field}`")),
                };
                for pem in pems {
                    let pem = pem.trim();
                    if !pem.starts_with("-----BEGIN ") {
                        return Err(format!("field `{field}` is not PEM text"));
                    }
                    out.extend_from_slice(pem.as_bytes());
                    out.push(b'\n');
                }
            }
        }
    }
    Ok(out)
}

fn json_bytes(value: &Value, pretty: bool) -> Result<SecretBytes, String> {
    let bytes = if pretty {
        serde_json::to_vec_pretty(value)
    } else {
        serde_json::to_vec(value)
    };
    bytes.map(SecretBytes::new).map_err(|e| e.to_string())
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `'value'`, with each `'` written as `'\''`: literal for sh, whatever the value holds.
fn quote_sh(value: &[u8], out: &mut SecretBytes) {
    out.push(b'\'');
    for &b in value {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(path: &str, content: Content) -> FileSpec {
        FileSpec {
            path: path.into(),
            content,
            mode: 0o400,
            owner: None,
            group: None,
        }
    }

    fn fmt(secret: &str, format: Format, fields: &[&str]) -> Content {
        Content::Format {
            secret: secret.into(),
            format,
            fields: fields.iter().map(|f| f.to_string()).collect(),
        }
    }

    fn render_one(
        content: Content,
        template: Option<&str>,
        data: Value,
    ) -> Result<String, RenderError> {
        let templates = template
            .map(|t| vec![("out".to_owned(), t.to_owned())])
            .unwrap_or_default();
        let r = Renderer::new(vec![spec("out", content)], templates).unwrap();
        let data = SecretData::new(data);
        let secrets = BTreeMap::from([("db".to_owned(), &data)]);
        let files = r.render(&secrets)?;
        Ok(String::from_utf8(files[0].content.to_vec()).unwrap())
    }

    #[test]
    fn paths_stay_inside_the_output_directory() {
        assert!(check_relative_path("tls.crt").is_ok());
        assert!(check_relative_path("db/creds.env").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "./a",
            "a//b",
            "a/",
            "..data/x",
            "..2024/x",
        ] {
            assert!(check_relative_path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn formats() {
        let data = json!({"username": "u", "password": "p'w", "port": 5432});
        assert_eq!(
            render_one(fmt("db", Format::Raw, &["password"]), None, data.clone()).unwrap(),
            "p'w"
        );
        assert_eq!(
            render_one(fmt("db", Format::Raw, &["port"]), None, data.clone()).unwrap(),
            "5432"
        );
        assert_eq!(
            render_one(fmt("db", Format::Env, &[]), None, data.clone()).unwrap(),
            "password='p'\\''w'\nport='5432'\nusername='u'\n"
        );
        let json = render_one(fmt("db", Format::Json, &[]), None, data.clone()).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), data);
        let err = render_one(fmt("db", Format::Raw, &["nope"]), None, data).unwrap_err();
        assert_eq!(err.to_string(), "out: the secret has no field `nope`");
        let err = render_one(fmt("db", Format::Env, &[]), None, json!({"a-b": "x"})).unwrap_err();
        assert!(err.message.contains("a-b"), "{err}");
    }

    #[test]
    fn env_files_read_back_through_sh() {
        let data = json!({"A": "it's $HOME `x` \"q\"\nline2"});
        let text = render_one(fmt("db", Format::Env, &[]), None, data).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{text}\nprintf %s \"$A\""))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "it's $HOME `x` \"q\"\nline2"
        );
    }

    #[test]
    fn pem_bundles_join_fields_and_lists() {
        let a = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----";
        let b = "-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        let data = json!({"certificate": a, "ca_chain": [b, a], "private_key": "nope"});
        let out = render_one(
            fmt("db", Format::Pem, &["certificate", "ca_chain"]),
            None,
            data.clone(),
        )
        .unwrap();
        assert_eq!(out, format!("{a}\n{b}{a}\n"));
        let err = render_one(fmt("db", Format::Pem, &["private_key"]), None, data).unwrap_err();
        assert!(err.message.contains("not PEM"), "{err}");
    }

    #[test]
    fn templates_see_secrets_by_name_and_are_strict() {
        let data = json!({"username": "app", "password": "s3cr3t/+", "hosts": ["a", "b"]});
        let out = render_one(
            Content::Template,
            Some("url=postgres://{{ db.username }}:{{ db.password|uri_component }}@{{ db.hosts|join(',') }}\n"),
            data.clone(),
        )
        .unwrap();
        assert_eq!(out, "url=postgres://app:s3cr3t%2F%2B@a,b\n");
        let err =
            render_one(Content::Template, Some("{{ db.pasword }}"), data.clone()).unwrap_err();
        assert!(err.message.contains("undefined"), "{err}");
        // Errors never quote a value.
        let err = render_one(Content::Template, Some("{{ db.password|int }}"), data).unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        assert!(
            Renderer::new(vec![], vec![("x".into(), "{% if %}".into())])
                .unwrap_err()
                .contains("template of x")
        );
    }
}
