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

/// mimalloc rather than the system allocator: the edge allocates a few small buffers per
/// proxied request, and glibc's malloc was a tenth of its instructions.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
