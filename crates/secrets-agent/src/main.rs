use std::process::ExitCode;

use secrets_agent::{Cli, Config, INFO};

fn main() -> ExitCode {
    let cli: Cli = sidecar_kit::cli::parse(&INFO);
    let config = match Config::from_cli(&cli) {
        Ok(c) => c,
        Err(e) => return sidecar_kit::config::exit_config_error(&e),
    };
    sidecar_kit::run(&INFO, &cli.kit, |sidecar| {
        secrets_agent::serve(config, sidecar)
    })
}
