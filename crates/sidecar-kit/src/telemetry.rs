//! Logs (tracing to stderr, JSON or text) and the build-info metric.

use std::io::IsTerminal;

use prometheus::{IntGaugeVec, Opts, Registry};
use tracing_subscriber::EnvFilter;

use crate::SidecarInfo;
use crate::cli::LogFormat;

/// Installs the global tracing subscriber writing to stderr. Calling it twice is harmless: the
/// first subscriber stays (tests start several sidecars in one process).
pub fn init_logging(filter: &str, format: LogFormat) {
    let filter = EnvFilter::builder()
        .parse(filter)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _already_set = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
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
