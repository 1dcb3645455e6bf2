use std::process::ExitCode;

use clap::Parser;
use demo_app::Cli;

fn main() -> ExitCode {
    demo_app::run(Cli::parse())
}
