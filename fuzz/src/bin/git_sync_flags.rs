//! git-sync's configuration (flags and their environment variables; it has no file): up to 16
//! arguments, NUL-separated, through clap and the checks made at start.
use clap::Parser as _;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let mut args = vec!["git-sync".to_owned()];
        args.extend(
            data.split(|&b| b == 0)
                .take(16)
                .map(|a| String::from_utf8_lossy(a).into_owned()),
        );
        if let Ok(cli) = git_sync::Cli::try_parse_from(&args) {
            let _ = git_sync::Config::from_cli(&cli);
        }
    });
}
