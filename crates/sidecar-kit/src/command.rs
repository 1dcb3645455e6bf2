//! External commands a sidecar runs (a validation gate, a notify command): a command line split
//! into argv without a shell (the sidecar images have none), and running it with a timeout.
//!
//! ```
//! use std::time::Duration;
//! use sidecar_kit::command::CommandSpec;
//!
//! let spec = CommandSpec::parse(r#"sh -c 'test "$REV" = abc'"#).unwrap();
//! assert_eq!(spec.program, "sh");
//! assert_eq!(spec.args, ["-c", r#"test "$REV" = abc"#]);
//! spec.run(std::path::Path::new("/"), &[("REV", "abc".into())], Duration::from_secs(10), &|| false)
//!     .unwrap();
//! ```

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A command line split into program and arguments. Quotes ('...' or "...") and backslash
/// escapes group words; there is no expansion of any kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSpec {
    /// The program: a path, or a name looked up in `PATH`.
    pub program: String,
    /// Its arguments, as given.
    pub args: Vec<String>,
}

/// Why a command did not succeed. Each message names the program.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// It could not be started (not found, not executable...).
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// It ran past its timeout and was killed.
    #[error("{program} did not finish within {timeout:?} and was killed")]
    Timeout {
        /// The program.
        program: String,
        /// The time it was allowed.
        timeout: Duration,
    },
    /// It exited unsuccessfully.
    #[error("{program} exited with {status}{}", if output.is_empty() { String::new() } else { format!(": {output}") })]
    Failed {
        /// The program.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The tail of its stdout and stderr (at most 2 KiB), lines joined by ` | `.
        output: String,
    },
    /// Waiting for it failed.
    #[error("waiting for {program}: {source}")]
    Wait {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The caller's `cancelled()` turned true while it ran; it was killed.
    #[error("cancelled while {program} was running")]
    Cancelled {
        /// The program.
        program: String,
    },
}

impl CommandSpec {
    /// Splits a command line into program and arguments; the error says what is wrong with it
    /// (empty, an unclosed quote, a lone trailing backslash).
    pub fn parse(line: &str) -> Result<CommandSpec, String> {
        let mut words = Vec::new();
        let mut word = String::new();
        let mut in_word = false;
        let mut chars = line.chars();
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some('"'), '\\') | (None, '\\') => match chars.next() {
                    Some(next) => word.push(next),
                    None => return Err(format!("command {line:?} ends with a lone backslash")),
                },
                (Some(_), c) => word.push(c),
                (None, '\'' | '"') => {
                    quote = Some(c);
                    in_word = true;
                }
                (None, c) if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                }
                (None, c) => {
                    word.push(c);
                    in_word = true;
                }
            }
            if quote.is_some() {
                in_word = true;
            }
        }
        if quote.is_some() {
            return Err(format!("command {line:?} has an unclosed quote"));
        }
        if in_word {
            words.push(word);
        }
        let mut words = words.into_iter();
        let program = words
            .next()
            .ok_or_else(|| "the command is empty".to_string())?;
        Ok(CommandSpec {
            program,
            args: words.collect(),
        })
    }

    /// Runs the command in `cwd` with extra environment, killing it after `timeout` or when
    /// `cancelled()` turns true. On failure the error carries the tail of its output.
    pub fn run(
        &self,
        cwd: &Path,
        env: &[(&str, String)],
        timeout: Duration,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<(), CommandError> {
        let dir = std::env::temp_dir();
        let log = dir.join(format!(
            "sidecar-cmd-{}-{}.log",
            std::process::id(),
            unique()
        ));
        let result = self.run_logged(cwd, env, timeout, cancelled, &log);
        let _ = std::fs::remove_file(&log);
        result
    }

    fn run_logged(
        &self,
        cwd: &Path,
        env: &[(&str, String)],
        timeout: Duration,
        cancelled: &dyn Fn() -> bool,
        log: &Path,
    ) -> Result<(), CommandError> {
        let program = self.program.clone();
        let spawn_err = |source| CommandError::Spawn {
            program: program.clone(),
            source,
        };
        let out = std::fs::File::create(log).map_err(spawn_err)?;
        let err = out.try_clone().map_err(spawn_err)?;
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(cwd)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(spawn_err)?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(source) => return Err(CommandError::Wait { program, source }),
            }
            if cancelled() || Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                if cancelled() {
                    return Err(CommandError::Cancelled { program });
                }
                return Err(CommandError::Timeout { program, timeout });
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if status.success() {
            return Ok(());
        }
        let text = std::fs::read(log).unwrap_or_default();
        let tail = &text[text.len().saturating_sub(2048)..];
        let output = String::from_utf8_lossy(tail).trim().replace('\n', " | ");
        Err(CommandError::Failed {
            program,
            status,
            output,
        })
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words_quotes_and_escapes() {
        let c = CommandSpec::parse(r#"sh -c 'test -f "a b"' x\ y "q\"uote""#).unwrap();
        assert_eq!(c.program, "sh");
        assert_eq!(c.args, vec!["-c", r#"test -f "a b""#, "x y", "q\"uote"]);
        assert_eq!(CommandSpec::parse("  run ''  ").unwrap().args, vec![""]);
        assert!(CommandSpec::parse("a 'b").is_err());
        assert!(CommandSpec::parse("   ").is_err());
    }

    #[test]
    fn runs_with_env_and_reports_failure_output_and_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let ok = CommandSpec::parse(r#"sh -c 'test "$REV" = abc && test -d .'"#).unwrap();
        ok.run(
            dir.path(),
            &[("REV", "abc".into())],
            Duration::from_secs(10),
            &|| false,
        )
        .unwrap();
        let bad = CommandSpec::parse("sh -c 'echo nope >&2; exit 3'").unwrap();
        let err = bad
            .run(dir.path(), &[], Duration::from_secs(10), &|| false)
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let slow = CommandSpec::parse("sleep 5").unwrap();
        let err = slow
            .run(dir.path(), &[], Duration::from_millis(100), &|| false)
            .unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }));
        let missing = CommandSpec::parse("/nonexistent/prog").unwrap();
        assert!(matches!(
            missing.run(dir.path(), &[], Duration::from_secs(1), &|| false),
            Err(CommandError::Spawn { .. })
        ));
    }
}
