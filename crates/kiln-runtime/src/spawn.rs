//! The one place where Kiln creates child processes.
//!
//! Every process Kiln starts (host tools such as `ip` and `nft`, image builders, machine launchers,
//! database servers) goes through [`command`], so none of them inherits the control plane's
//! environment (tokens, database URLs, `RUST_LOG`) or its working directory by accident. The
//! workspace `clippy.toml` forbids `Command::new` everywhere else.

use std::{ffi::OsStr, path::Path, process::Stdio};

use crate::error::RuntimeError;

/// The `PATH` every spawned program gets: the standard Debian system directories.
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Returns a [`std::process::Command`] for `program` with an empty environment except
/// [`SAFE_PATH`], `/` as working directory and stdin from `/dev/null`.
///
/// Callers add exactly the variables and the directory the program needs. Convert it with
/// `tokio::process::Command::from` to run it asynchronously.
#[allow(clippy::disallowed_methods)] // The single sanctioned constructor; see the module docs.
pub fn command(program: impl AsRef<OsStr>) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.env_clear()
        .env("PATH", SAFE_PATH)
        .current_dir("/")
        .stdin(Stdio::null());
    cmd
}

/// Runs a host tool to completion, feeding it `stdin`, and returns its stdout; a non-zero exit
/// becomes [`RuntimeError::Command`] carrying its stderr.
pub(crate) async fn run_tool(
    program: &'static str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, RuntimeError> {
    use tokio::io::AsyncWriteExt;

    let mut cmd = tokio::process::Command::from(command(program));
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let line = || {
        let mut s = String::from(program);
        for a in args {
            s.push(' ');
            s.push_str(a);
        }
        s
    };
    let mut child = cmd.spawn().map_err(|e| spawn_error(program, e, line()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| RuntimeError::io(format!("write to `{}`", line()), e))?;
        // Dropping the pipe closes it, so batch-reading tools see end of input.
        drop(pipe);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| RuntimeError::io(format!("wait for `{}`", line()), e))?;
    if !out.status.success() {
        let mut command = line();
        if let Some(input) = stdin {
            command.push_str(" <<EOF\n");
            command.push_str(input.trim_end());
            command.push_str("\nEOF");
        }
        return Err(RuntimeError::Command {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Turns a spawn failure into an actionable error: a missing well-known tool names its package.
pub(crate) fn spawn_error(program: &str, e: std::io::Error, line: String) -> RuntimeError {
    if e.kind() == std::io::ErrorKind::NotFound
        && let Some(missing) = missing_program(program)
    {
        return missing;
    }
    RuntimeError::io(format!("start `{line}`"), e)
}

/// The [`RuntimeError::MissingProgram`] for the host tools the runtime relies on.
pub(crate) fn missing_program(program: &str) -> Option<RuntimeError> {
    let (program, package) = match program {
        "ip" => ("ip", "iproute2"),
        "nft" => ("nft", "nftables"),
        "mmdebstrap" => ("mmdebstrap", "mmdebstrap"),
        "qemu-system-x86_64" => ("qemu-system-x86_64", "qemu-system-x86"),
        "mkfs.ext4" => ("mkfs.ext4", "e2fsprogs"),
        "debugfs" => ("debugfs", "e2fsprogs"),
        _ => return None,
    };
    Some(RuntimeError::MissingProgram { program, package })
}

/// Whether `program` is found in one of the [`SAFE_PATH`] directories.
pub(crate) fn on_path(program: &str) -> bool {
    SAFE_PATH
        .split(':')
        .any(|dir| Path::new(dir).join(program).is_file())
}
