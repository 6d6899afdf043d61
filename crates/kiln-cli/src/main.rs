//! The `kiln` command: parse the command line, run one verb, exit with its status.
#![forbid(unsafe_code)]

mod cli;
mod commands;
mod edge;
mod image;
mod logging;
mod profile;
mod up;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
