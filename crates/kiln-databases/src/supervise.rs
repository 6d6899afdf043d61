//! The server process of an instance: started as the engine's user with a cleared
//! environment in its own process group, restarted with back-off when it dies, stopped with
//! the engine's clean-shutdown signal, and recognised by its pid file after the node restarts.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use crate::DbError;

/// First restart delay after a crash; doubled per crash up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Longest restart delay.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// A server that ran this long before dying starts again without delay growth.
const STABLE_RUN: Duration = Duration::from_secs(30);
/// How often an adopted server (not our child, so no exit notification) is looked at.
const ADOPTED_POLL: Duration = Duration::from_millis(500);
/// How long a clean shutdown may take before the server is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// How to run one server.
#[derive(Debug, Clone)]
pub struct ServerCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments (never a password).
    pub args: Vec<String>,
    /// Working directory (the data dir).
    pub cwd: PathBuf,
    /// The unprivileged user and group it runs as.
    pub uid: u32,
    /// The group.
    pub gid: u32,
    /// Where stdout and stderr go (appended).
    pub log: PathBuf,
    /// Where the running server's pid is written.
    pub pid_file: PathBuf,
    /// The signal that shuts the server down cleanly and quickly.
    pub stop_signal: Signal,
    /// The kernel's name of the server process (`comm`), to recognise a stale one.
    pub process_name: &'static str,
}

/// A supervised server. Dropping it does not stop the server; call [`Supervisor::stop`].
pub struct Supervisor {
    stop: CancellationToken,
    exits: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    /// Starts the server and keeps it running until [`Supervisor::stop`].
    pub fn start(cmd: ServerCommand) -> Supervisor {
        let stop = CancellationToken::new();
        let exits = Arc::new(AtomicU32::new(0));
        let task = tokio::spawn(run(cmd, stop.clone(), exits.clone()));
        Supervisor { stop, exits, task }
    }

    /// Takes over a server an earlier life of the node started (found by [`find_running`]):
    /// watches it, stops it on [`Supervisor::stop`], and starts a new one if it dies. The
    /// server keeps serving across a restart of the control plane.
    pub fn adopt(cmd: ServerCommand, pid: i32) -> Supervisor {
        let stop = CancellationToken::new();
        let exits = Arc::new(AtomicU32::new(0));
        let (token, counter) = (stop.clone(), exits.clone());
        let task = tokio::spawn(async move {
            loop {
                if !is_process(pid, cmd.process_name) {
                    tracing::warn!(pid, log = %cmd.log.display(), "adopted database server exited; restarting");
                    break;
                }
                tokio::select! {
                    () = token.cancelled() => {
                        stop_pid(pid, cmd.process_name, cmd.stop_signal).await;
                        let _ = std::fs::remove_file(&cmd.pid_file);
                        return;
                    }
                    () = tokio::time::sleep(ADOPTED_POLL) => {}
                }
            }
            run(cmd, token, counter).await;
        });
        Supervisor { stop, exits, task }
    }

    /// How many times the server has exited (or failed to spawn) so far.
    pub fn exits(&self) -> u32 {
        self.exits.load(Ordering::SeqCst)
    }

    /// Shuts the server down cleanly (killing it after a grace period) and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn run(cmd: ServerCommand, stop: CancellationToken, exits: Arc<AtomicU32>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = tokio::time::Instant::now();
        match spawn(&cmd) {
            Ok(mut child) => {
                if let Some(pid) = child.id() {
                    let _ = std::fs::write(&cmd.pid_file, pid.to_string());
                }
                tokio::select! {
                    status = child.wait() => {
                        exits.fetch_add(1, Ordering::SeqCst);
                        let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                        tracing::warn!(server = %cmd.program.display(), %status, log = %cmd.log.display(), "database server exited; restarting");
                    }
                    () = stop.cancelled() => {
                        shut_down(&mut child, cmd.stop_signal).await;
                        let _ = std::fs::remove_file(&cmd.pid_file);
                        return;
                    }
                }
            }
            Err(e) => {
                exits.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(server = %cmd.program.display(), error = %e, "starting database server failed; retrying");
            }
        }
        if started.elapsed() > STABLE_RUN {
            backoff = FIRST_BACKOFF;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn spawn(cmd: &ServerCommand) -> Result<tokio::process::Child, DbError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cmd.log)
        .map_err(|e| DbError::io(format!("open {}", cmd.log.display()), e))?;
    let err_log = log
        .try_clone()
        .map_err(|e| DbError::io("duplicate the log handle", e))?;
    // `command` clears the environment: no PG*, MYSQL*, REDIS* or tokens reach the server.
    let mut command = tokio::process::Command::from(kiln_runtime::spawn::command(&cmd.program));
    command
        .args(&cmd.args)
        .current_dir(&cmd.cwd)
        .uid(cmd.uid)
        .gid(cmd.gid)
        // Its own process group: a Ctrl-C meant for `kiln up` must not kill the server
        // behind the supervisor's back.
        .process_group(0)
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err_log))
        .kill_on_drop(false);
    command
        .spawn()
        .map_err(|e| DbError::io(format!("start {}", cmd.program.display()), e))
}

async fn shut_down(child: &mut tokio::process::Child, stop_signal: Signal) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = signal::kill(Pid::from_raw(pid), stop_signal);
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!("database server ignored its stop signal; killing it");
        let _ = child.kill().await;
    }
}

/// The pid of a server left running by an earlier life of the node (after `kill -9` of
/// `kiln up`), found through its pid file and recognised by its process name and its working
/// directory, the instance's data directory: after a reboot the pid may belong to another
/// instance's server of the same engine, which must not be taken for this one.
pub fn find_running(pid_file: &Path, process_name: &str, data: &Path) -> Option<i32> {
    let pid = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    let data = std::fs::canonicalize(data).ok()?;
    (is_process(pid, process_name) && cwd == data).then_some(pid)
}

/// Stops a server left running by an earlier life of the node, if there is one, so a new one
/// can take the port and the data directory.
pub async fn stop_stale(pid_file: &Path, process_name: &str, data: &Path, stop_signal: Signal) {
    if let Some(pid) = find_running(pid_file, process_name, data) {
        tracing::info!(
            pid,
            process_name,
            "stopping a database server left by an earlier start"
        );
        stop_pid(pid, process_name, stop_signal).await;
    }
    let _ = std::fs::remove_file(pid_file);
}

/// Sends `stop_signal`, waits for the process to go, kills it after the grace period.
async fn stop_pid(pid: i32, process_name: &str, stop_signal: Signal) {
    let pid_t = Pid::from_raw(pid);
    let _ = signal::kill(pid_t, stop_signal);
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while is_process(pid, process_name) {
        if tokio::time::Instant::now() > deadline {
            let _ = signal::kill(pid_t, Signal::SIGKILL);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `pid` is a live (not zombie) process called `name`.
fn is_process(pid: i32, name: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state …`; comm may contain spaces, so split at the last `)`.
    let Some((head, tail)) = stat.rsplit_once(')') else {
        return false;
    };
    let comm = head.split_once('(').map(|(_, c)| c).unwrap_or_default();
    let state = tail.trim_start().chars().next().unwrap_or('X');
    comm == name && state != 'Z' && state != 'X'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_itself_only_by_name() {
        let me = i32::try_from(std::process::id()).expect("pids fit in i32");
        let name = std::fs::read_to_string("/proc/self/comm").expect("comm is readable");
        assert!(is_process(me, name.trim()));
        assert!(!is_process(me, "postgres"));
        assert!(!is_process(i32::MAX, "postgres"));
    }
}
