//! The log-shipper's YAML file (inputs, pipelines, sinks), through the loader used at start and
//! on reload.
use clap::Parser as _;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let path = sidecars_fuzz::config_file(data);
        let args = [
            "log-shipper".as_ref(),
            "--config".as_ref(),
            path.as_os_str(),
        ];
        if let Ok(cli) = log_shipper::Cli::try_parse_from(args) {
            let _ = log_shipper::config::load_file(&path, &cli);
        }
    });
}
