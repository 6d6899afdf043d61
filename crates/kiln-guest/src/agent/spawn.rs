//! The one place the agent builds processes: clean environment, working directory, user and
//! process group.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::str::FromStr;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// `PATH` of every command the agent runs, unless `--env` or the request overrides it.
pub const BASE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The environment every command starts from, before `--env` and the request's own.
const BASE_ENV: [(&str, &str); 4] = [
    ("PATH", BASE_PATH),
    ("HOME", "/home/app"),
    ("LANG", "C.UTF-8"),
    ("TERM", "xterm"),
];

/// Exit code of a command whose program was not found, as in POSIX shells.
pub const EXIT_NOT_FOUND: i32 = 127;

/// Exit code of a command whose program was found but could not be executed.
pub const EXIT_CANNOT_EXECUTE: i32 = 126;

/// A numeric user and group, `UID:GID` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// The user id.
    pub uid: u32,
    /// The primary group id; the only group the command has.
    pub gid: u32,
}

impl fmt::Display for RunAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// Why a string is not a [`RunAs`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not UID:GID (two numbers)")]
pub struct ParseRunAsError(String);

impl FromStr for RunAs {
    type Err = ParseRunAsError;

    fn from_str(s: &str) -> Result<RunAs, ParseRunAsError> {
        let bad = || ParseRunAsError(s.to_owned());
        let (uid, gid) = s.split_once(':').ok_or_else(bad)?;
        Ok(RunAs {
            uid: uid.parse().map_err(|_| bad())?,
            gid: gid.parse().map_err(|_| bad())?,
        })
    }
}

/// Creates a command for `program` with an empty environment, running in `cwd`.
///
/// The only `Command::new` of this crate: whatever the agent's own environment holds (it may
/// carry the host's secrets in a `process` machine) never leaks into a command by accident.
#[allow(clippy::disallowed_methods)]
pub fn command(program: impl AsRef<OsStr>, cwd: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    command.env_clear().current_dir(cwd);
    command
}

/// How the agent runs the commands of users (exec and supervised processes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCommands {
    /// The `--env` variables, applied over the base environment.
    pub env: Vec<(String, String)>,
    /// The user to switch to; `None` when the agent is not root and cannot switch.
    pub run_as: Option<RunAs>,
}

impl UserCommands {
    /// A command for `argv` in `cwd` with the base environment, then `--env`, then `env`; as
    /// the `--run-as` user; in a new process group (whose id is the child's pid) so that it can
    /// be signalled with everything it started.
    ///
    /// `argv` must have passed [`validate_command`].
    pub fn command(
        &self,
        argv: &[String],
        cwd: &Path,
        env: &BTreeMap<String, String>,
    ) -> std::process::Command {
        let (program, args) = argv
            .split_first()
            .expect("validate_command refuses an empty command");
        let mut command = command(program, cwd);
        command.args(args);
        for (key, value) in BASE_ENV {
            command.env(key, value);
        }
        let overrides = self.env.iter().map(|(k, v)| (k, v)).chain(env);
        for (key, value) in overrides {
            command.env(key, value);
        }
        if let Some(run_as) = self.run_as {
            // Setting the uid makes std also clear the supplementary groups (setgroups(0))
            // before setuid, so the command keeps no group of the agent's.
            command.uid(run_as.uid).gid(run_as.gid);
        }
        command.process_group(0);
        command
    }
}

/// Checks a command line and its environment before anything is spawned.
pub fn validate_command(argv: &[String], env: &BTreeMap<String, String>) -> Result<(), String> {
    match argv.first() {
        None => return Err("`cmd` is empty; give the program and its arguments".into()),
        Some(program) if program.is_empty() => return Err("the program name is empty".into()),
        Some(_) => {}
    }
    if argv.iter().any(|arg| arg.contains('\0')) {
        return Err("an argument contains a NUL byte".into());
    }
    for (key, value) in env {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(format!("`{key}` is not a valid environment variable name"));
        }
        if value.contains('\0') {
            return Err(format!("the value of `{key}` contains a NUL byte"));
        }
    }
    Ok(())
}

/// What a failed spawn means for the caller, phrased the way a shell would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnFailure {
    /// 127 when the program was not found, 126 otherwise.
    pub code: i32,
    /// The program was not found.
    pub not_found: bool,
    /// A line for standard error, e.g. `exec: foo: command not found`.
    pub message: String,
}

/// Explains why spawning `program` failed.
pub fn describe_spawn_error(program: &str, err: &io::Error) -> SpawnFailure {
    let (code, not_found, reason) = match err.kind() {
        io::ErrorKind::NotFound if program.contains('/') => {
            (EXIT_NOT_FOUND, true, "no such file or directory".to_owned())
        }
        io::ErrorKind::NotFound => (EXIT_NOT_FOUND, true, "command not found".to_owned()),
        io::ErrorKind::PermissionDenied => {
            (EXIT_CANNOT_EXECUTE, false, "permission denied".to_owned())
        }
        _ => (EXIT_CANNOT_EXECUTE, false, err.to_string()),
    };
    SpawnFailure {
        code,
        not_found,
        message: format!("exec: {program}: {reason}\n"),
    }
}

/// Sends `signal` to the process group `pgid`; a group that is already gone is fine.
pub fn kill_group(pgid: u32, signal: Signal) {
    let Ok(raw) = i32::try_from(pgid) else {
        return;
    };
    // Never signal group 0 (our own) or -1 (everything) by accident.
    if raw <= 1 {
        return;
    }
    match killpg(Pid::from_raw(raw), signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(errno) => tracing::warn!(pgid, ?signal, %errno, "cannot signal process group"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_as_parses() {
        assert_eq!(
            "1000:1001".parse(),
            Ok(RunAs {
                uid: 1000,
                gid: 1001
            })
        );
        for bad in ["1000", "a:b", "1000:", ":1", "-1:0"] {
            assert!(bad.parse::<RunAs>().is_err(), "{bad}");
        }
    }

    #[test]
    fn commands_and_environments_are_validated() {
        let env = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        let argv = vec!["ls".to_owned()];
        assert!(validate_command(&argv, &BTreeMap::new()).is_ok());
        assert!(validate_command(&[], &BTreeMap::new()).is_err());
        assert!(validate_command(&[String::new()], &BTreeMap::new()).is_err());
        assert!(validate_command(&argv, &env("A=B", "c")).is_err());
        assert!(validate_command(&argv, &env("", "c")).is_err());
        assert!(validate_command(&argv, &env("A", "c\0")).is_err());
    }

    #[test]
    fn spawn_errors_read_like_a_shell() {
        let not_found = io::Error::from(io::ErrorKind::NotFound);
        let failure = describe_spawn_error("foo", &not_found);
        assert_eq!(
            failure,
            SpawnFailure {
                code: 127,
                not_found: true,
                message: "exec: foo: command not found\n".into()
            }
        );
        let failure = describe_spawn_error("./foo", &not_found);
        assert_eq!(failure.message, "exec: ./foo: no such file or directory\n");
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(describe_spawn_error("x", &denied).code, 126);
    }

    #[test]
    fn later_environments_override_earlier_ones() {
        let commands = UserCommands {
            env: vec![("PATH".into(), "/opt/bin".into()), ("A".into(), "1".into())],
            run_as: None,
        };
        let env = BTreeMap::from([("A".to_owned(), "2".to_owned())]);
        let command = commands.command(&["true".to_owned()], Path::new("/"), &env);
        let vars: BTreeMap<_, _> = command
            .get_envs()
            .map(|(k, v)| (k.to_owned(), v.map(ToOwned::to_owned)))
            .collect();
        assert_eq!(
            vars[OsStr::new("PATH")].as_deref(),
            Some(OsStr::new("/opt/bin"))
        );
        assert_eq!(vars[OsStr::new("A")].as_deref(), Some(OsStr::new("2")));
        assert_eq!(
            vars[OsStr::new("HOME")].as_deref(),
            Some(OsStr::new("/home/app"))
        );
    }
}
