use std::process::ExitCode;

use log_shipper::{Cli, Config, INFO};
use sidecar_kit::cli::{self, ConfigFile};

fn main() -> ExitCode {
    let cli: Cli = cli::parse_with(
        &INFO,
        ConfigFile::Optional(
            "several inputs, pipelines and sinks (read again when it changes; flags give the defaults)",
        ),
    );
    let config = match Config::from_cli(&cli) {
        Ok(c) => c,
        Err(e) => return sidecar_kit::config::exit_config_error(&e),
    };
    sidecar_kit::run(&INFO, &cli.kit, |sidecar| {
        log_shipper::serve(config, sidecar)
    })
}
