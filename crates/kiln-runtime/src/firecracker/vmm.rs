//! The Firecracker process of a machine: finding its binary, starting it, recognising it again
//! after a restart (pidfile + command line), and ending it.

use std::{
    ffi::OsString,
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::error::FirecrackerError;
use crate::{
    error::{IoContext, RuntimeError},
    spawn,
};

/// Finds a binary: the path in `configured` (from an environment variable) if given, else
/// `name` on the control plane's `PATH` or the standard system directories.
pub fn resolve_binary(
    what: &'static str,
    name: &'static str,
    env: &'static str,
    configured: Option<&Path>,
    search_path: Option<&str>,
) -> Result<PathBuf, FirecrackerError> {
    let missing = |path: String| FirecrackerError::BinaryMissing {
        what,
        path,
        name,
        env,
    };
    if let Some(path) = configured {
        return if path.is_file() {
            Ok(path.to_owned())
        } else {
            Err(missing(path.display().to_string()))
        };
    }
    search_path
        .into_iter()
        .chain([spawn::SAFE_PATH])
        .flat_map(|p| p.split(':'))
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| missing(format!("`{name}` (searched PATH)")))
}

/// Starts `program args…` as the machine's Firecracker (or jailer) in its own process group,
/// so a signal to the control plane's group does not take machines down with it. Output goes
/// to `console` (Firecracker's messages and the guest's serial console); the pid to `pidfile`.
pub fn start(
    program: &Path,
    args: &[OsString],
    dir: &Path,
    console: &Path,
    pidfile: &Path,
) -> Result<tokio::process::Child, RuntimeError> {
    let out = fs::File::create(console).ctx(|| format!("create {}", console.display()))?;
    let err = out
        .try_clone()
        .ctx(|| format!("duplicate {}", console.display()))?;
    let mut cmd = tokio::process::Command::from(spawn::command(program));
    cmd.args(args)
        .current_dir(dir)
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0);
    let mut child = cmd.spawn().ctx(|| format!("start {}", program.display()))?;
    let pid = child.id().ok_or_else(|| {
        RuntimeError::io(
            format!("start {}", program.display()),
            std::io::Error::other("the process exited at once"),
        )
    })?;
    if let Err(e) = fs::write(pidfile, format!("{pid}\n")) {
        // Without its pidfile no teardown could find it: end it now rather than orphan it.
        let _ = child.start_kill();
        return Err(RuntimeError::io(format!("write {}", pidfile.display()), e));
    }
    Ok(child)
}

/// The pid in `pidfile` if that process still runs and its command line contains `marker`
/// (so a pid reused by an unrelated process is never taken for the machine).
pub fn running_pid(pidfile: &Path, marker: &str) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let ours = cmdline
        .windows(marker.len().max(1))
        .any(|w| w == marker.as_bytes());
    (ours && alive(pid)).then_some(pid)
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits up to `within` for `pid` to end; returns whether it did.
pub async fn wait_exit(pid: i32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// SIGKILLs `pid` and waits up to `within` for it to be gone.
pub async fn kill_and_wait(id: &str, pid: i32, within: Duration) -> Result<(), RuntimeError> {
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    if wait_exit(pid, within).await {
        Ok(())
    } else {
        Err(RuntimeError::StopFailed {
            id: id.to_owned(),
            pids: vec![pid],
        })
    }
}

/// Removes `path` if it exists.
pub fn remove_file(path: &Path) -> Result<(), RuntimeError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(RuntimeError::io(format!("remove {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_resolve_from_the_variable_or_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("firecracker");
        fs::write(&bin, b"").expect("write");
        let search = dir.path().to_string_lossy().into_owned();
        let resolve = |configured: Option<&Path>, path: Option<&str>| {
            resolve_binary(
                "firecracker",
                "firecracker",
                "KILN_FIRECRACKER_BIN",
                configured,
                path,
            )
        };
        assert_eq!(resolve(Some(&bin), None).expect("configured"), bin);
        assert_eq!(resolve(None, Some(&search)).expect("on PATH"), bin);
        let err = resolve(Some(&dir.path().join("nope")), None).expect_err("missing");
        let text = err.to_string();
        assert!(
            text.contains("KILN_FIRECRACKER_BIN") && text.contains("nope"),
            "{text}"
        );
    }

    #[test]
    fn own_pid_is_recognised_only_with_its_marker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("pid");
        fs::write(&pidfile, format!("{}\n", std::process::id())).expect("write");
        let own = i32::try_from(std::process::id()).expect("pid fits");
        // The test binary's command line holds its own path.
        let exe = std::env::args().next().expect("argv[0]");
        assert_eq!(running_pid(&pidfile, &exe), Some(own));
        assert_eq!(running_pid(&pidfile, "--api-sock /elsewhere"), None);
        assert_eq!(running_pid(&dir.path().join("none"), &exe), None);
        assert!(!alive(i32::MAX));
    }
}
