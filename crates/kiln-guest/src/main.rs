//! `kiln-guest`: the guest agent binary. Parses flags, then either acts as init (PID 1) or
//! serves; the logic lives in the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use kiln_guest::agent::{self, ListenAddr, Listener};
use kiln_guest::cli::{Cli, Mode};
use kiln_guest::{error_chain, init};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let (listen, config) = match cli.settings() {
        Ok(settings) => settings,
        Err(err) => {
            tracing::error!(err = %error_chain(&err), "cannot start");
            return ExitCode::from(2);
        }
    };
    // Adopted once, first thing, in either mode: the descriptor number is ours to own.
    let inherited = match listen {
        ListenAddr::Fd(fd) => match agent::adopt_listening_fd(fd) {
            Ok(owned) => Some(owned),
            Err(err) => {
                tracing::error!(%err, "cannot use the inherited listening socket");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };

    let pid = std::process::id();
    let code = match cli.mode(pid) {
        Mode::Init => {
            let args: Vec<_> = std::env::args_os().skip(1).collect();
            let code = match init::run(&args, inherited, pid == 1) {
                Ok(code) => code,
                Err(err) => {
                    tracing::error!(err = %error_chain(&err), "init failed");
                    1
                }
            };
            // Only a real PID 1 powers off: under `--init` on a host, this would be the host.
            if cli.poweroff && pid == 1 {
                let errno = init::power_off();
                tracing::error!(%errno, "power-off failed");
            } else if cli.poweroff {
                tracing::warn!("--poweroff ignored: not PID 1");
            }
            code
        }
        Mode::Serve => {
            // Before the runtime starts threads, which inherit the mask.
            init::unblock_signals();
            serve(&listen, config, inherited)
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn serve(
    listen: &ListenAddr,
    config: kiln_guest::agent::AgentConfig,
    inherited: Option<std::os::fd::OwnedFd>,
) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(%err, "cannot start the async runtime");
            return 1;
        }
    };
    let result = runtime.block_on(async {
        let listener = Listener::bind(listen, inherited).map_err(|err| {
            tracing::error!(%listen, %err, "cannot listen");
        })?;
        agent::serve_until_signalled(listener, config)
            .await
            .map_err(|err| tracing::error!(err = %error_chain(&err), "guest agent failed"))
    });
    // Supervised processes are stopped by now; do not wait for stray blocking tasks.
    runtime.shutdown_background();
    if result.is_ok() { 0 } else { 1 }
}
