//! The sidecar's YAML file (`--config`), and the one error type for a configuration that cannot
//! be used, whether the fault is in the file or in a flag: a sidecar refuses it at start with
//! [`exit_config_error`] (exit 64), or on a reload keeps the configuration it has.
//!
//! Put `#[serde(deny_unknown_fields)]` on every struct you load: a misspelt key is then an error
//! naming the file, the line and the field, instead of a setting silently ignored.
//!
//! ```
//! #[derive(serde::Deserialize, Debug)]
//! #[serde(deny_unknown_fields)]
//! struct Routes {
//!     listen: String,
//!     timeout_ms: u32,
//! }
//!
//! let err = sidecar_kit::config::parse_yaml::<Routes>("listen: a\ntimeout_ms: soon\n", "routes.yaml")
//!     .unwrap_err();
//! assert_eq!(err.to_string(), "routes.yaml: line 2 column 13: field `timeout_ms`: invalid u32");
//! ```

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::de::DeserializeOwned;

use crate::EXIT_CONFIG;

/// A configuration that cannot be used. Its message names what is at fault (the file and line,
/// the field, the flag) and what is wrong there. Every sidecar's configuration errors are this
/// type.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file was read but its content is refused.
    #[error("{origin}: {location}{field}{message}")]
    Invalid {
        /// The file (or other origin) of the text.
        origin: String,
        /// `line L column C: `, or empty when the parser gave no location.
        location: String,
        /// ``field `a.b`: ``, or empty when the error is not about one field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A value that parses but makes no sense (a port of 0, two routes on one address...).
    #[error("{0}")]
    Value(String),
    /// One setting (a flag, a field of a file) that cannot be used.
    #[error("{field}: {message}")]
    Field {
        /// The setting, as the user wrote it: `--jitter`, `routes[0].timeout`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A file named by a setting cannot be read.
    #[error("{field} {}: {source}", path.display())]
    File {
        /// The setting that names the file: `--password-file`.
        field: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl ConfigError {
    /// A value that parsed but cannot be used; the message should name the setting.
    pub fn value(message: impl Into<String>) -> Self {
        Self::Value(message.into())
    }

    /// A setting that cannot be used: prints as `{field}: {message}`.
    pub fn field(field: impl Into<String>, message: impl Display) -> Self {
        Self::Field {
            field: field.into(),
            message: message.to_string(),
        }
    }
}

/// Reads and parses a YAML file into `T`.
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_yaml(&text, &path.display().to_string())
}

/// Parses YAML text into `T`; `origin` names the text in error messages (usually its path).
pub fn parse_yaml<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    let mut field_path = String::new();
    let result = serde_saphyr::with_deserializer_from_str(text, |de| {
        serde_path_to_error::deserialize(de).map_err(|e| {
            field_path = e.path().to_string();
            e.into_inner()
        })
    });
    result.map_err(|e| {
        let location = e
            .location()
            .map(|l| format!("line {} column {}: ", l.line(), l.column()))
            .unwrap_or_default();
        // serde-saphyr's message starts with its own "error: line L column C:" and may carry a
        // source snippet after a newline; keep only the message proper.
        let full = e.to_string();
        let first = full.lines().next().unwrap_or_default();
        let message = first
            .strip_prefix("error: ")
            .unwrap_or(first)
            .split_once(": ")
            .filter(|(head, _)| head.starts_with("line "))
            .map_or(first, |(_, rest)| rest)
            .to_owned();
        let field = match field_path.as_str() {
            "" | "." => String::new(),
            // The message names the unknown field itself; say where it sits, if nested.
            path if message.contains("unknown field") => match path.rsplit_once('.') {
                Some((parent, _)) => format!("in `{parent}`: "),
                None => String::new(),
            },
            path => format!("field `{path}`: "),
        };
        ConfigError::Invalid {
            origin: origin.to_owned(),
            location,
            field,
            message,
        }
    })
}

/// Checks at start that a file named by a setting can be read (a secret file, a CA bundle), so
/// that a wrong path is refused with exit 64 instead of failing later. The error names the
/// setting and the file.
pub fn require_readable(field: &str, path: &Path) -> Result<(), ConfigError> {
    let refused = |source| ConfigError::File {
        field: field.to_owned(),
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(refused)?;
    match file.metadata() {
        Ok(meta) if meta.is_dir() => Err(refused(std::io::ErrorKind::IsADirectory.into())),
        Ok(_) => Ok(()),
        Err(e) => Err(refused(e)),
    }
}

/// Prints a configuration error as one line on stderr and returns exit code 64.
///
/// Use it in `main` before the sidecar starts: `return exit_config_error(&err)`.
/// `{:#}` is used so an `anyhow` chain prints in full on that one line.
pub fn exit_config_error(err: &dyn Display) -> ExitCode {
    let name = std::env::args()
        .next()
        .and_then(|a| {
            Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "sidecar".to_owned());
    eprintln!("{name}: configuration error: {err:#}");
    ExitCode::from(EXIT_CONFIG)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[allow(dead_code)]
        name: String,
        #[allow(dead_code)]
        routes: Vec<Route>,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    struct Route {
        #[allow(dead_code)]
        port: u16,
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let err = parse_yaml::<Outer>(
            "name: a\nroutes:\n  - port: 1\n  - port: 2\n    prot: 3\n",
            "r.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("r.yaml: line 5 column 5: "), "{err}");
        assert!(err.contains("unknown field `prot`"), "{err}");
        assert!(err.contains("routes[1]"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_field() {
        let err = parse_yaml::<Outer>("name: a\nroutes:\n  - port: big\n", "r.yaml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "r.yaml: line 3 column 11: field `routes[0].port`: invalid u16"
        );
    }

    #[test]
    fn unreadable_files_name_the_setting_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "x").unwrap();
        require_readable("--password-file", &file).unwrap();
        let missing = dir.path().join("missing");
        let err = require_readable("--password-file", &missing)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("--password-file {}: ", missing.display())),
            "{err}"
        );
        let err = require_readable("--ca-file", dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--ca-file") && err.contains("directory"),
            "{err}"
        );
    }

    #[test]
    fn missing_file_names_the_file() {
        let err = load_yaml::<Outer>(Path::new("/nonexistent/x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot read config file /nonexistent/x.yaml:"),
            "{err}"
        );
    }
}
