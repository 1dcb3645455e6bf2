//! The secrets-agent's YAML file (secrets, files, templates), through its real loader.
use clap::Parser as _;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let path = sidecars_fuzz::config_file(data);
        let args = [
            "secrets-agent".as_ref(),
            "--config".as_ref(),
            path.as_os_str(),
        ];
        if let Ok(cli) = secrets_agent::Cli::try_parse_from(args) {
            let _ = secrets_agent::Config::from_cli(&cli);
        }
    });
}
