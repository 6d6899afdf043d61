//! Supervised long-running processes (the dev server, a release's start command): start,
//! restart with exponential back-off, captured logs, graceful stop.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use tokio::io::AsyncReadExt;
use tokio::process::Child;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::logs::{LOG_CAPACITY, LogRing};
use super::spawn::{UserCommands, describe_spawn_error, kill_group, validate_command};
use crate::protocol::{ErrorBody, ErrorKind, ProcessInfo, ProcessSpec, ProcessStatus};

/// The first restart delay; it doubles after every failed run.
const INITIAL_BACKOFF: Duration = Duration::from_millis(250);
/// The longest restart delay.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A run at least this long counts as healthy: the next failure starts the back-off over.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// How long a process (and its group) gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often to check whether a stopping process group is gone.
const GROUP_POLL: Duration = Duration::from_millis(50);
/// Prefix of the lines the supervisor itself writes into a process's log.
const NOTE: &str = "[supervisor]";

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here only assigns fields, so state is consistent after a panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Checks a [`ProcessSpec`] before anything is started.
pub fn validate_spec(spec: &ProcessSpec) -> Result<(), ErrorBody> {
    let invalid = |message: String| ErrorBody::new(ErrorKind::InvalidRequest, message);
    let name = &spec.name;
    let well_formed = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.starts_with(['.', '-']);
    if !well_formed {
        return Err(invalid(format!(
            "`{name}` is not a valid process name: use 1 to 64 of A-Z a-z 0-9 . _ -, \
             not starting with . or -"
        )));
    }
    validate_command(&spec.cmd, &spec.env).map_err(invalid)
}

/// The set of supervised processes.
#[derive(Debug)]
pub struct Supervisor {
    commands: Arc<UserCommands>,
    processes: Mutex<BTreeMap<String, Arc<Supervised>>>,
    /// Serializes starts, stops and shutdown, so that replacing a process cannot race another
    /// change of the same name; holds whether the agent is shutting down.
    lifecycle: tokio::sync::Mutex<bool>,
}

impl Supervisor {
    /// An empty supervisor running commands as `commands` says.
    pub fn new(commands: Arc<UserCommands>) -> Supervisor {
        Supervisor {
            commands,
            processes: Mutex::new(BTreeMap::new()),
            lifecycle: tokio::sync::Mutex::new(false),
        }
    }

    /// Starts `spec` in `cwd` (already confined to the workspace), first stopping a process of
    /// the same name. Returns once the first start attempt is done.
    pub async fn start(&self, spec: ProcessSpec, cwd: PathBuf) -> Result<ProcessInfo, ErrorBody> {
        validate_spec(&spec)?;
        let shutting_down = self.lifecycle.lock().await;
        if *shutting_down {
            return Err(ErrorBody::new(
                ErrorKind::Conflict,
                "the agent is shutting down",
            ));
        }
        let old = lock(&self.processes).get(&spec.name).cloned();
        if let Some(old) = old {
            tracing::info!(name = %spec.name, "replacing supervised process");
            old.stop().await;
        }
        let process = Arc::new(Supervised::new(spec));
        let (first_attempt, attempted) = oneshot::channel();
        let task = tokio::spawn(
            process
                .clone()
                .run(self.commands.clone(), cwd, first_attempt),
        );
        *lock(&process.task) = Some(task);
        lock(&self.processes).insert(process.spec.name.clone(), process.clone());
        // An error only means the task ended (it was cancelled); the info says what happened.
        let _ = attempted.await;
        Ok(process.info())
    }

    /// Stops the process `name` (SIGTERM to its group, SIGKILL after the grace period) and
    /// forgets it.
    pub async fn stop(&self, name: &str) -> Result<(), ErrorBody> {
        let _guard = self.lifecycle.lock().await;
        let process = lock(&self.processes)
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))?;
        process.stop().await;
        lock(&self.processes).remove(name);
        Ok(())
    }

    /// Every process, sorted by name.
    pub fn list(&self) -> Vec<ProcessInfo> {
        lock(&self.processes).values().map(|p| p.info()).collect()
    }

    /// The log of the process `name`.
    pub fn log(&self, name: &str) -> Result<Arc<LogRing>, ErrorBody> {
        lock(&self.processes)
            .get(name)
            .map(|p| p.log.clone())
            .ok_or_else(|| not_found(name))
    }

    /// Refuses further starts and stops every process, all at once.
    pub async fn shutdown(&self) {
        let mut shutting_down = self.lifecycle.lock().await;
        *shutting_down = true;
        let processes: Vec<Arc<Supervised>> = lock(&self.processes).values().cloned().collect();
        futures::future::join_all(processes.iter().map(|p| p.stop())).await;
        lock(&self.processes).clear();
    }
}

fn not_found(name: &str) -> ErrorBody {
    ErrorBody::new(ErrorKind::NotFound, format!("no process named `{name}`"))
}

/// One supervised process and its restart loop.
#[derive(Debug)]
struct Supervised {
    spec: ProcessSpec,
    state: Mutex<RunState>,
    log: Arc<LogRing>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct RunState {
    status: ProcessStatus,
    restarts: u32,
    last_exit_code: Option<i32>,
    last_exit_signal: Option<i32>,
    last_error: Option<String>,
    pid: Option<u32>,
}

impl Supervised {
    fn new(spec: ProcessSpec) -> Supervised {
        Supervised {
            spec,
            state: Mutex::new(RunState {
                status: ProcessStatus::Backoff,
                restarts: 0,
                last_exit_code: None,
                last_exit_signal: None,
                last_error: None,
                pid: None,
            }),
            log: Arc::new(LogRing::new(LOG_CAPACITY)),
            cancel: CancellationToken::new(),
            task: Mutex::new(None),
        }
    }

    fn info(&self) -> ProcessInfo {
        let state = lock(&self.state);
        ProcessInfo {
            name: self.spec.name.clone(),
            cmd: self.spec.cmd.clone(),
            port: self.spec.port,
            status: state.status,
            restarts: state.restarts,
            last_exit_code: state.last_exit_code,
            last_exit_signal: state.last_exit_signal,
            last_error: state.last_error.clone(),
            pid_in_machine: state.pid,
        }
    }

    fn note(&self, text: &str) {
        self.log.append(format!("{NOTE} {text}\n").as_bytes());
    }

    /// Ends the restart loop, stopping the running process gracefully, and waits for it.
    async fn stop(&self) {
        lock(&self.state).status = ProcessStatus::Stopped;
        self.cancel.cancel();
        let task = lock(&self.task).take();
        if let Some(task) = task
            && let Err(err) = task.await
        {
            tracing::error!(name = %self.spec.name, %err, "supervisor task failed");
        }
    }

    /// Runs the process until cancelled, restarting it with back-off whenever it ends.
    async fn run(
        self: Arc<Self>,
        commands: Arc<UserCommands>,
        cwd: PathBuf,
        first_attempt: oneshot::Sender<()>,
    ) {
        let mut first_attempt = Some(first_attempt);
        let mut backoff = INITIAL_BACKOFF;
        loop {
            let started = Instant::now();
            match self.spawn(&commands, &cwd) {
                Ok((mut child, pid)) => {
                    {
                        let mut state = lock(&self.state);
                        state.status = ProcessStatus::Running;
                        state.pid = Some(pid);
                        state.last_error = None;
                    }
                    if let Some(tx) = first_attempt.take() {
                        let _ = tx.send(());
                    }
                    let status = tokio::select! {
                        status = child.wait() => status,
                        () = self.cancel.cancelled() => terminate(&mut child, pid).await,
                    };
                    // Whatever the process left behind in its group would keep its port or
                    // files busy for the next run. (As in `exec`, the leader is reaped by now;
                    // its pid being reused as a group id this soon is not a practical risk.)
                    kill_group(pid, Signal::SIGKILL);
                    self.record_exit(status);
                    if started.elapsed() >= HEALTHY_RUN {
                        backoff = INITIAL_BACKOFF;
                    }
                }
                Err(err) => {
                    let failure = describe_spawn_error(&self.spec.cmd[0], &err);
                    self.log.append(failure.message.as_bytes());
                    let mut state = lock(&self.state);
                    state.last_error = Some(failure.message.trim_end().to_owned());
                    drop(state);
                    if let Some(tx) = first_attempt.take() {
                        let _ = tx.send(());
                    }
                }
            }
            if self.cancel.is_cancelled() {
                break;
            }
            lock(&self.state).status = ProcessStatus::Backoff;
            self.note(&format!("restarting in {backoff:?}"));
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.cancel.cancelled() => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            lock(&self.state).restarts += 1;
        }
        {
            let mut state = lock(&self.state);
            state.status = ProcessStatus::Stopped;
            state.pid = None;
        }
        self.note("stopped");
        self.log.close();
    }

    /// Starts one run with standard output and error both on one pipe into the log, so that
    /// the log keeps the order in which the process wrote them.
    fn spawn(&self, commands: &UserCommands, cwd: &Path) -> io::Result<(Child, u32)> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(read)?;
        let mut command = commands.command(&self.spec.cmd, cwd, &self.spec.env);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(write.try_clone()?))
            .stderr(Stdio::from(write));
        let mut command = tokio::process::Command::from(command);
        let child = command.spawn()?;
        // The command holds the parent's copies of the pipe's write end; closing them lets the
        // reader see end-of-file once the process (and all it started) is gone.
        drop(command);
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("the process was reaped before its pid was read"))?;
        tokio::spawn(copy_into_log(reader, self.log.clone()));
        Ok((child, pid))
    }

    fn record_exit(&self, status: io::Result<ExitStatus>) {
        use std::os::unix::process::ExitStatusExt;

        let (code, signal, text) = match status {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => (Some(code), None, format!("exited with code {code}")),
                (None, Some(signal)) => (
                    None,
                    Some(signal),
                    format!("killed by {}", signal_name(signal)),
                ),
                (None, None) => (None, None, "ended".to_owned()),
            },
            Err(err) => (None, None, format!("could not be waited for: {err}")),
        };
        {
            let mut state = lock(&self.state);
            state.last_exit_code = code;
            state.last_exit_signal = signal;
            state.pid = None;
        }
        self.note(&text);
    }
}

/// SIGTERM to the group, then waits (up to [`STOP_GRACE`] in all) for the process and then for
/// the rest of its group; SIGKILL to the group if anything is still there.
async fn terminate(child: &mut Child, pgid: u32) -> io::Result<ExitStatus> {
    let deadline = Instant::now() + STOP_GRACE;
    kill_group(pgid, Signal::SIGTERM);
    let status = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            kill_group(pgid, Signal::SIGKILL);
            return child.wait().await;
        }
    };
    while group_exists(pgid) && Instant::now() < deadline {
        tokio::time::sleep(GROUP_POLL).await;
    }
    status
}

fn group_exists(pgid: u32) -> bool {
    let Ok(raw) = i32::try_from(pgid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(raw), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

fn signal_name(signal: i32) -> String {
    match Signal::try_from(signal) {
        Ok(known) => format!("signal {signal} ({})", known.as_str()),
        Err(_) => format!("signal {signal}"),
    }
}

async fn copy_into_log(mut reader: tokio::net::unix::pipe::Receiver, log: Arc<LogRing>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => log.append(&buf[..n]),
            Err(err) => {
                tracing::warn!(%err, "reading process output failed");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_names_are_checked() {
        let spec = |name: &str| ProcessSpec {
            name: name.to_owned(),
            cmd: vec!["true".into()],
            ..ProcessSpec::default()
        };
        for good in ["dev", "web-1", "a.b_c", "X9"] {
            assert!(validate_spec(&spec(good)).is_ok(), "{good}");
        }
        let long = "a".repeat(65);
        for bad in ["", ".hidden", "-x", "a/b", "a b", "ü", long.as_str()] {
            assert!(validate_spec(&spec(bad)).is_err(), "{bad}");
        }
    }
}
