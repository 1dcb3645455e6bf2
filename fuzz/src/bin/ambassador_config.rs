//! The ambassador's YAML routes file, through its real loader (`--config FILE`, merged with the
//! flags and checked as at start).
use clap::Parser as _;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let path = sidecars_fuzz::config_file(data);
        let args = ["ambassador".as_ref(), "--config".as_ref(), path.as_os_str()];
        if let Ok(cli) = ambassador::Cli::try_parse_from(args) {
            let _ = ambassador::Config::from_cli_settings(&cli);
        }
    });
}
