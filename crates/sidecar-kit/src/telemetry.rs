//! Logs (tracing to stderr, JSON or text) and the build-info metric.

use std::io::IsTerminal;

use prometheus::{IntGaugeVec, Opts, Registry};
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
    let gauge = IntGaugeVec::new(
        Opts::new(
            "sidecar_build_info",
            "Build information of this sidecar; the value is always 1.",
        ),
        &["sidecar", "version", "revision"],
    )?;
    gauge
        .with_label_values(&[
            info.name,
            info.version,
            crate::REVISION.unwrap_or("unknown"),
        ])
        .set(1);
    registry.register(Box::new(gauge))
}
