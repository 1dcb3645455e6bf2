//! The configuration: [`Cli`] (the flags), the YAML file's schema, and the two merged into one
//! checked [`Config`] (`Config::from_cli`).

mod file;
mod flags;
mod merge;
mod model;

pub use self::flags::Cli;
pub use self::model::{
    AppProtocol, Config, ForwardedHeaders, InboundRoute, Limits, Mode, OutboundRoute, Telemetry,
};
