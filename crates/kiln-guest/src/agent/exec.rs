//! `exec`: run a command to completion, streaming its output, with a timeout that kills the
//! whole process group.

use std::collections::HashSet;
use std::io;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::Signal;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::spawn::{describe_spawn_error, kill_group, validate_command};
use super::{Agent, Failure, Rx, Tx, host_gone, reply, send};
use crate::protocol::{
    DATA_CHUNK_LEN, ErrorBody, ErrorKind, ExecRequest, ExitInfo, Frame, FrameKind, Response,
};

/// After the command itself exited (and its group was killed), how long to keep reading
/// output still in the pipes. Only a process that left the group (setsid) can hold a pipe open
/// longer, and the exit status should not wait for it.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// The process groups of running `exec`s, killed when the agent shuts down.
#[derive(Debug, Default)]
pub struct ExecGroups {
    groups: Mutex<HashSet<u32>>,
}

impl ExecGroups {
    fn register(self: &Arc<Self>, pgid: u32) -> GroupGuard {
        self.lock().insert(pgid);
        GroupGuard {
            groups: self.clone(),
            pgid,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// SIGKILL to every running `exec`.
    pub fn kill_all(&self) {
        for pgid in self.lock().drain() {
            kill_group(pgid, Signal::SIGKILL);
        }
    }
}

struct GroupGuard {
    groups: Arc<ExecGroups>,
    pgid: u32,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.groups.lock().remove(&self.pgid);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `request` and streams its output to the host.
pub(super) async fn exec(
    agent: &Arc<Agent>,
    request: ExecRequest,
    rx: &mut Rx,
    tx: &mut Tx,
) -> Result<(), Failure> {
    validate_command(&request.cmd, &request.env)
        .map_err(|message| ErrorBody::new(ErrorKind::InvalidRequest, message))?;
    let cwd = agent
        .dir_path(request.cwd.as_deref().unwrap_or_default())
        .await?;
    let program = request.cmd[0].clone();
    let mut command = agent.commands.command(&request.cmd, &cwd, &request.env);
    command
        .stdin(if request.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut command = tokio::process::Command::from(command);
    // Should this task be dropped without finishing (the runtime shutting down), at least the
    // command itself dies with it.
    command.kill_on_drop(true);
    let spawned = command.spawn();
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            // Not an agent error: the host gets what a shell would have printed.
            let failure = describe_spawn_error(&program, &err);
            reply(tx, &Response::ExecStarted { pid: None }).await?;
            send(tx, output(FrameKind::Stderr, failure.message.into())).await?;
            let exit = ExitInfo {
                code: Some(failure.code),
                not_found: failure.not_found,
                ..ExitInfo::default()
            };
            return reply(tx, &Response::Exit(exit)).await;
        }
    };
    let Some(pgid) = child.id() else {
        return Err(
            ErrorBody::new(ErrorKind::Io, "the command vanished before it was tracked").into(),
        );
    };
    let _registered = agent.execs.register(pgid);
    tracing::debug!(%program, pid = pgid, "exec started");

    let result = stream_until_exit(&mut child, pgid, request, rx, tx).await;
    if result.is_err() {
        // The host is gone (or the stream broke): nobody wants the command any more.
        kill_group(pgid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    result
}

async fn stream_until_exit(
    child: &mut tokio::process::Child,
    pgid: u32,
    request: ExecRequest,
    rx: &mut Rx,
    tx: &mut Tx,
) -> Result<(), Failure> {
    reply(tx, &Response::ExecStarted { pid: Some(pgid) }).await?;

    if let (Some(input), Some(mut stdin)) = (request.stdin, child.stdin.take()) {
        // A separate task, so that a command that never reads its input cannot stall the
        // output; the write fails harmlessly once the command is gone.
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
    }

    let timed_out = Arc::new(AtomicBool::new(false));
    let mut timer = request.timeout_ms.map(|ms| {
        let timed_out = timed_out.clone();
        // A task rather than a branch below: the deadline must hold even while a send to a
        // slow host is pending.
        AbortOnDrop(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            timed_out.store(true, Ordering::SeqCst);
            kill_group(pgid, Signal::SIGKILL);
        }))
    });

    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut out_buf = vec![0u8; DATA_CHUNK_LEN];
    let mut err_buf = vec![0u8; DATA_CHUNK_LEN];
    let mut status = None;
    let mut drain_until = None;
    while status.is_none() || stdout.is_some() || stderr.is_some() {
        tokio::select! {
            biased;
            read = read_some(&mut stdout, &mut out_buf) => match read {
                Ok(n) if n > 0 => {
                    let chunk = Bytes::copy_from_slice(&out_buf[..n]);
                    send(tx, output(FrameKind::Stdout, chunk)).await?;
                }
                _ => stdout = None,
            },
            read = read_some(&mut stderr, &mut err_buf) => match read {
                Ok(n) if n > 0 => {
                    let chunk = Bytes::copy_from_slice(&err_buf[..n]);
                    send(tx, output(FrameKind::Stderr, chunk)).await?;
                }
                _ => stderr = None,
            },
            exited = child.wait(), if status.is_none() => {
                drop(timer.take());
                // Whatever the command left running in its group dies with it: `exec` is for
                // commands that finish; long-running work belongs to supervised processes.
                // (The leader is reaped already, so in theory its pid could have been reused
                // as another group's id; pids are handed out sequentially and wrap only after
                // pid_max allocations, so that window is negligible.)
                kill_group(pgid, Signal::SIGKILL);
                status = Some(exited);
                drain_until = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            },
            () = sleep_until(drain_until) => break,
            () = host_gone(rx) => return Err(Failure::Gone),
        }
    }

    let exit = match status {
        Some(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt;
            ExitInfo {
                code: status.code(),
                signal: status.signal(),
                timed_out: timed_out.load(Ordering::SeqCst),
                not_found: false,
            }
        }
        Some(Err(err)) => {
            return Err(ErrorBody::new(
                ErrorKind::Io,
                format!("waiting for the command failed: {err}"),
            )
            .into());
        }
        // The loop ends only after the command exited; this is never reached.
        None => {
            return Err(ErrorBody::new(ErrorKind::Io, "the command's exit status was lost").into());
        }
    };
    reply(tx, &Response::Exit(exit)).await
}

/// Reads from `reader`, or waits forever when there is none (the stream already ended).
async fn read_some<R: AsyncRead + Unpin>(
    reader: &mut Option<R>,
    buf: &mut [u8],
) -> io::Result<usize> {
    match reader {
        Some(reader) => reader.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn output(kind: FrameKind, payload: Bytes) -> Frame {
    Frame { kind, payload }
}
