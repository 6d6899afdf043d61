//! PID 1 duties: run the serving agent as a child, reap every orphan, forward termination
//! signals, exit with the child.
//!
//! Why a separate process: PID 1 inherits every orphan in the machine and must reap them, which
//! means calling `waitpid(-1)`. Inside the tokio agent such a global reaper would race tokio's
//! own waiting for the commands it spawned and steal their exit statuses. So init stays a tiny
//! blocking loop, and the agent (its child) waits only for its own children.
//!
//! The loop blocks SIGCHLD, SIGTERM, SIGINT and SIGHUP and takes them with `sigwait`: no signal
//! handler, no unsafe code, no lost wake-ups. Blocked signals are also what makes PID 1
//! receive them at all: the kernel drops signals to a namespace's init that it has neither
//! blocked nor handled. The serving child inherits the mask across fork and exec and clears it
//! itself ([`unblock_signals`]).

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::agent::spawn;
use crate::cli::SERVE_FLAG;

/// Signals init passes on to the serving child.
const FORWARDED: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// Why init could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Becoming a child subreaper failed (only when not PID 1).
    #[error("cannot become a child subreaper")]
    Subreaper(#[source] Errno),
    /// Blocking or waiting for signals failed.
    #[error("cannot take signals")]
    Signals(#[source] Errno),
    /// The inherited listening socket could not be passed on.
    #[error("cannot pass the listening socket to the serving agent")]
    PassSocket(#[source] Errno),
    /// The serving agent could not be started.
    #[error("cannot start the serving agent {exe}")]
    Spawn {
        /// The executable started.
        exe: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Runs init: starts this executable again with `args` plus `--serve`, reaps every child, and
/// returns the exit code to exit with once the serving child has ended (its code, or 128 + the
/// signal that killed it).
///
/// `listen_fd` is the inherited listening socket, if any; it is passed to the child (under the
/// same number) and then closed here. `is_pid1` is false under `--init`, in which case the
/// process becomes a child subreaper so that orphans still come to it.
pub fn run(args: &[OsString], listen_fd: Option<OwnedFd>, is_pid1: bool) -> Result<i32, InitError> {
    if !is_pid1 {
        nix::sys::prctl::set_child_subreaper(true).map_err(InitError::Subreaper)?;
    }
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGCHLD);
    for signal in FORWARDED {
        signals.add(signal);
    }
    signals.thread_block().map_err(InitError::Signals)?;

    if let Some(fd) = &listen_fd {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map_err(InitError::PassSocket)?;
    }
    let exe = own_executable();
    let mut command = spawn::command(&exe, Path::new("/"));
    command.args(args).arg(SERVE_FLAG);
    // The environment is cleared for the child like for any command; only the log filter is
    // worth passing on.
    if let Some(filter) = std::env::var_os("RUST_LOG") {
        command.env("RUST_LOG", filter);
    }
    let child = command.spawn().map_err(|source| InitError::Spawn {
        exe: exe.clone(),
        source,
    })?;
    drop(listen_fd);
    let child = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    tracing::info!(pid = %child, "init started the serving agent");

    loop {
        if let Some(code) = reap(child) {
            tracing::info!(code, "serving agent ended");
            return Ok(code);
        }
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {}
            Ok(signal) => {
                tracing::info!(?signal, "forwarding to the serving agent");
                if let Err(errno) = kill(child, signal) {
                    tracing::warn!(%errno, ?signal, "cannot forward signal");
                }
            }
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(InitError::Signals(errno)),
        }
    }
}

/// Reaps every child that has ended; returns the exit code once the serving child is among
/// them.
fn reap(serving: Pid) -> Option<i32> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == serving => return Some(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == serving => {
                return Some(128 + signal as i32);
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return None,
            Ok(status) => tracing::debug!(?status, "reaped an orphan"),
            Err(Errno::EINTR) => {}
            Err(errno) => {
                tracing::warn!(%errno, "waitpid failed");
                return None;
            }
        }
    }
}

/// The path to execute this binary again: `/proc/self/exe` where `/proc` is mounted (the
/// kernel resolves it even if the file was replaced), else `argv[0]`.
fn own_executable() -> PathBuf {
    let proc_exe = Path::new("/proc/self/exe");
    if proc_exe.exists() {
        return proc_exe.to_path_buf();
    }
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("kiln-guest"))
}

/// Clears the blocked-signal mask of the calling thread.
///
/// A signal mask survives fork and exec, and the standard library does not reset it when it
/// spawns, so the serving child starts with init's mask: SIGTERM and SIGCHLD blocked. The
/// serving agent calls this first thing, before its runtime starts threads, so that its own
/// signal handling works and the commands it runs (which inherit its mask) get signals too.
pub fn unblock_signals() {
    if let Err(errno) = SigSet::empty().thread_set_mask() {
        tracing::warn!(%errno, "cannot clear the signal mask");
    }
}

/// Syncs file systems and powers the machine off; returns only if that failed.
pub fn power_off() -> Errno {
    nix::unistd::sync();
    match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF) {
        Err(errno) => errno,
        Ok(never) => match never {},
    }
}
