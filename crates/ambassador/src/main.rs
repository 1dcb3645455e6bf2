use std::process::ExitCode;

use ambassador::{Cli, Config, INFO};

fn main() -> ExitCode {
    let cli: Cli = sidecar_kit::cli::parse(&INFO);
    let config = match Config::from_cli(&cli) {
        Ok(config) => config,
        Err(e) => return sidecar_kit::config::exit_config_error(&e),
    };
    // The kit's runtime is shard 0; the ambassador starts the other worker threads itself.
    let mut kit = cli.kit.clone();
    kit.worker_threads = 1;
    sidecar_kit::run(&INFO, &kit, |sidecar| ambassador::serve(config, sidecar))
}
