//! Logs (tracing to stderr, JSON or text), the build-info metric, and text made fit for a log
//! line: an error with its causes, a URL without its password.

use std::io::IsTerminal;

use prometheus::Registry;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::SidecarInfo;
use crate::cli::LogFormat;

/// Installs the global tracing subscriber writing to stderr. Calling it twice is harmless: the
/// first subscriber stays (tests start several sidecars in one process).
///
/// The filter is a static [`Targets`] list rather than an `EnvFilter`: it is cheaper on every
/// event (no per-callsite regex or dynamic span matching) and keeps the regex engine out of the
/// binaries that have no other use for it.
pub fn init_logging(filter: &str, format: LogFormat) {
    let filter: Targets = filter
        .parse()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    let _already_set = if json {
        registry
            .with(layer.json().flatten_event(true).with_current_span(false))
            .try_init()
    } else {
        registry
            .with(layer.with_ansi(std::io::stderr().is_terminal()))
            .try_init()
    };
}

/// Registers `sidecar_build_info{sidecar,version,revision} 1` in `registry`.
pub fn register_build_info(info: &SidecarInfo, registry: &Registry) -> prometheus::Result<()> {
    crate::metrics::gauge_vec(
        registry,
        "sidecar_build_info",
        "Build information of this sidecar; the value is always 1.",
        &["sidecar", "version", "revision"],
    )?
    .with_label_values(&[
        info.name,
        info.version,
        crate::REVISION.unwrap_or("unknown"),
    ])
    .set(1);
    Ok(())
}

/// An error and its causes on one line, `outer: cause: root cause`, as anyhow's `{:#}` prints
/// them; a cause whose text the message already ends with is not repeated.
///
/// ```
/// let io = std::io::Error::other("connection refused");
/// let err = sidecar_kit::config::ConfigError::File {
///     field: "--ca-file".into(),
///     path: "/etc/ca.pem".into(),
///     source: io,
/// };
/// // ConfigError's message already ends with its source's.
/// assert_eq!(sidecar_kit::error_chain(&err), "--ca-file /etc/ca.pem: connection refused");
/// ```
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `https://user:token@host/x` -> `https://user:***@host/x`: a URL is safe to log after this.
/// Text that is not a URL with a password comes back unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let shown = match userinfo.find(':') {
                Some(colon) => format!("{}:***", &userinfo[..colon]),
                None => userinfo.to_string(),
            };
            format!("{}{}@{}", &url[..scheme_end + 3], shown, &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);
    #[derive(Debug, thiserror::Error)]
    #[error("middle: root")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn error_chain_prints_every_cause_once() {
        let err = Outer(Middle(std::io::Error::other("root")));
        assert_eq!(error_chain(&err), "outer: middle: root");
    }

    #[test]
    fn redacts_password_in_url() {
        assert_eq!(
            redact_url("https://bob:s3cret@h:8/r.git"),
            "https://bob:***@h:8/r.git"
        );
        assert_eq!(redact_url("https://h/r.git"), "https://h/r.git");
        assert_eq!(redact_url("ssh://git@h:2222/r"), "ssh://git@h:2222/r");
        assert_eq!(redact_url("git@h:r.git"), "git@h:r.git");
        assert_eq!(redact_url("https://h/a@b"), "https://h/a@b");
    }
}
