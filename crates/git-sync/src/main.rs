use std::process::ExitCode;

use git_sync::config::CONFIG_FILE;
use git_sync::{Cli, Config, INFO};

fn main() -> ExitCode {
    set_libgit2_options();
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() == Some(std::ffi::OsStr::new(git_sync::worker::WORKER_ARG)) {
        let mut next = || {
            args.next()
                .and_then(|a| a.into_string().ok())
                .unwrap_or_default()
        };
        let (filter, format) = (next(), next());
        return git_sync::worker::run_worker(&filter, &format);
    }
    let cli: Cli = sidecar_kit::cli::parse_with(&INFO, CONFIG_FILE);
    let config = match Config::from_cli(&cli) {
        Ok(c) => c,
        Err(e) => return sidecar_kit::config::exit_config_error(&e),
    };
    sidecar_kit::run(&INFO, &cli.kit, |sidecar| git_sync::serve(config, sidecar))
}

fn set_libgit2_options() {
    // libgit2's object cache would hold every blob of a large export in memory; each is read once.
    git2::opts::enable_caching(false);
    // Objects are hashed once when the fetched pack is indexed; hashing each blob again when the
    // export reads it would double the SHA-1 work of a sync (zlib still checks every read).
    git2::opts::strict_hash_verification(false);
}
