use std::process::ExitCode;

use xml_adapter::config::{CONFIG_FILE, Cli, Command, Config, INFO};

fn main() -> ExitCode {
    let cli: Cli = sidecar_kit::cli::parse_with(&INFO, CONFIG_FILE);
    if let Some(Command::Check {
        config,
        input,
        format,
    }) = &cli.command
    {
        return ExitCode::from(xml_adapter::serve::check(config, input, *format));
    }
    let config = match Config::from_cli(&cli) {
        Ok(c) => c,
        Err(e) => return sidecar_kit::config::exit_config_error(&e),
    };
    sidecar_kit::run(&INFO, &cli.kit, |sidecar| {
        xml_adapter::serve::serve(config, sidecar)
    })
}
