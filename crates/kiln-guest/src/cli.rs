//! The `kiln-guest` command line.

use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;

use crate::agent::{AgentConfig, ListenAddr, RunAs};
use crate::config::{ConfigError, GuestConfig};

/// The flag init adds when it re-executes itself as the serving child.
pub const SERVE_FLAG: &str = "--serve";

/// The guest agent of a Kiln machine.
///
/// As PID 1 (or with `--init`) it acts as init: it re-executes itself with `--serve` as the
/// serving child, reaps orphans, forwards SIGTERM/SIGINT/SIGHUP and exits with the child.
/// Otherwise it serves directly.
#[derive(Debug, Clone, PartialEq, Eq, Parser)]
#[command(name = "kiln-guest", version)]
pub struct Cli {
    /// Where to listen: `fd:N` (an inherited listening socket), `unix:PATH`, `tcp:IP:PORT` or
    /// `vsock:PORT`.
    #[arg(
        long,
        value_name = "fd:N|unix:PATH|tcp:IP:PORT|vsock:PORT",
        required_unless_present = "config"
    )]
    pub listen: Option<ListenAddr>,

    /// Read listen address, machine id, environment, token and workspace from this JSON file
    /// (see [`crate::config::GuestConfig`]) instead of flags; the only way to give a token.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = ["listen", "machine_id", "env", "workspace"]
    )]
    pub config: Option<PathBuf>,

    /// The workspace root; file paths are confined to it and commands run in it.
    #[arg(long, value_name = "DIR", default_value = "/workspace")]
    pub workspace: PathBuf,

    /// The machine's id, reported by `health`.
    #[arg(long, value_name = "ID")]
    pub machine_id: Option<String>,

    /// The unprivileged user commands run as (ignored when the agent is not root).
    #[arg(long, value_name = "UID:GID", default_value = "1000:1000")]
    pub run_as: RunAs,

    /// An environment variable for every command; repeat for more.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<EnvVar>,

    /// Act as init even when not PID 1: the process becomes a child subreaper, so orphans are
    /// still reaped. For running under another init, and for tests.
    #[arg(long)]
    pub init: bool,

    /// As PID 1, power the machine off when the agent is done instead of exiting. For VMs,
    /// where PID 1 exiting panics the kernel. Ignored when not PID 1.
    #[arg(long)]
    pub poweroff: bool,

    /// Serve directly; set by init on its serving child.
    #[arg(long = "serve", hide = true)]
    pub serve: bool,
}

/// What the process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Be init and run the serving child.
    Init,
    /// Serve requests.
    Serve,
}

impl Cli {
    /// The mode for a process with pid `pid`.
    pub fn mode(&self, pid: u32) -> Mode {
        if self.serve {
            Mode::Serve
        } else if self.init || pid == 1 {
            Mode::Init
        } else {
            Mode::Serve
        }
    }

    /// Where to listen and how to serve: from `--config` when given, else from the flags.
    pub fn settings(&self) -> Result<(ListenAddr, AgentConfig), ConfigError> {
        let Some(path) = &self.config else {
            let listen = self
                .listen
                .clone()
                .expect("clap requires --listen unless --config is given");
            return Ok((listen, self.agent_config()));
        };
        let file = GuestConfig::load(path)?;
        let listen = file.listen_addr().map_err(|e| ConfigError::Invalid {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let config = AgentConfig {
            workspace: file.workspace,
            machine_id: file.machine_id,
            run_as: self.run_as,
            env: file.env.into_iter().collect(),
            token: file.token,
        };
        Ok((listen, config))
    }

    /// The serving configuration the flags describe (without `--config`).
    pub fn agent_config(&self) -> AgentConfig {
        AgentConfig {
            workspace: self.workspace.clone(),
            machine_id: self.machine_id.clone(),
            run_as: self.run_as,
            env: self
                .env
                .iter()
                .map(|var| (var.key.clone(), var.value.clone()))
                .collect(),
            token: None,
        }
    }
}

/// One `--env KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    /// The name: not empty, no `=`.
    pub key: String,
    /// The value, possibly empty.
    pub value: String,
}

/// Why a string is not `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not KEY=VALUE with a non-empty KEY")]
pub struct ParseEnvVarError(String);

impl FromStr for EnvVar {
    type Err = ParseEnvVarError;

    fn from_str(s: &str) -> Result<EnvVar, ParseEnvVarError> {
        match s.split_once('=') {
            Some((key, value)) if !key.is_empty() && !s.contains('\0') => Ok(EnvVar {
                key: key.to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(ParseEnvVarError(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kiln-guest").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_and_repeated_env() {
        let cli = parse(&[
            "--listen", "fd:3", "--env", "A=1", "--env", "B=x=y", "--env", "C=",
        ])
        .expect("parse");
        assert_eq!(cli.listen, Some(ListenAddr::Fd(3)));
        assert_eq!(cli.workspace, PathBuf::from("/workspace"));
        assert_eq!(
            cli.run_as,
            RunAs {
                uid: 1000,
                gid: 1000
            }
        );
        let config = cli.agent_config();
        assert_eq!(
            config.env,
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "x=y".to_owned()),
                ("C".to_owned(), String::new())
            ]
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &["--listen", "nowhere"][..],
            &["--listen", "fd:3", "--env", "=x"],
            &["--listen", "fd:3", "--env", "NOEQUALS"],
            &["--listen", "fd:3", "--run-as", "app"],
            &["--config", "/run/kiln/agent.json", "--listen", "fd:3"],
            &["--config", "/run/kiln/agent.json", "--env", "A=1"],
            &[],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn config_replaces_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.json");
        std::fs::write(
            &path,
            r#"{"listen":"tcp:127.0.0.1:7000","machine_id":"m1","token":"s3cret","env":{"K":"v"}}"#,
        )
        .expect("write");
        let cli = parse(&["--config", path.to_str().expect("utf-8"), "--poweroff"]).expect("parse");
        let (listen, config) = cli.settings().expect("settings");
        assert_eq!(listen.to_string(), "tcp:127.0.0.1:7000");
        assert_eq!(config.machine_id.as_deref(), Some("m1"));
        assert_eq!(config.env, [("K".to_owned(), "v".to_owned())]);
        assert!(config.token.is_some_and(|t| t.matches("s3cret")));
    }

    #[test]
    fn mode_follows_pid_and_flags() {
        let cli = parse(&["--listen", "unix:/a.sock"]).expect("parse");
        assert_eq!(cli.mode(1), Mode::Init);
        assert_eq!(cli.mode(42), Mode::Serve);
        let forced = parse(&["--listen", "unix:/a.sock", "--init"]).expect("parse");
        assert_eq!(forced.mode(42), Mode::Init);
        let child = parse(&["--listen", "unix:/a.sock", "--init", SERVE_FLAG]).expect("parse");
        assert_eq!(child.mode(1), Mode::Serve);
    }
}
