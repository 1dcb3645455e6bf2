use std::process::ExitCode;

use log_shipper::{Cli, Config, INFO};

fn main() -> ExitCode {
    let cli: Cli = sidecar_kit::cli::parse(&INFO);
    let config = match Config::from_cli(&cli) {
        Ok(c) => c,
        Err(e) => return sidecar_kit::config::exit_config_error(&e),
    };
    sidecar_kit::run(&INFO, &cli.kit, |sidecar| {
        log_shipper::serve(config, sidecar)
    })
}
