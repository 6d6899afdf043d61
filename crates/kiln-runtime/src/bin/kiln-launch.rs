//! `kiln-launch <launch.json>`: boots one process-driver machine (see `kiln_runtime::launch`).
//!
//! Spawned by the process driver, never by hand; it lives as long as the machine and exits
//! with the status of the machine's PID 1.

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(config), None) = (args.next(), args.next()) else {
        eprintln!("usage: kiln-launch <launch.json>");
        std::process::exit(kiln_runtime::launch::EXIT_SETUP_FAILED);
    };
    std::process::exit(kiln_runtime::launch::run(std::path::Path::new(&config)));
}
