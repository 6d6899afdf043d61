//! Where instances and templates live, who owns them, and the helper programs that fill them.
//!
//! ```text
//! {root}/                       root, 0711 (engine users traverse, nobody lists)
//!   templates/{engine}-{ver}/   one initialised data dir per engine and version, built once
//!   {db_id}/                    root, 0711
//!     data/                     the engine user, 0700: the server's data directory
//!     server.log                the server's stdout and stderr
//!     server.pid                the running server's pid
//! ```

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::{DbError, Engine};

/// The uid and gid of an engine's Debian user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineUser {
    /// The user name.
    pub name: &'static str,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

impl EngineUser {
    /// Looks up the engine's system user.
    pub fn of(engine: Engine) -> Result<EngineUser, DbError> {
        let name = engine.system_user();
        match nix::unistd::User::from_name(name) {
            Ok(Some(user)) => Ok(EngineUser {
                name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            }),
            _ => Err(DbError::NoUser { user: name }),
        }
    }
}

/// The directory of instance `id`.
pub fn instance_dir(root: &Path, id: &str) -> PathBuf {
    root.join(id)
}

/// The data directory of instance `id`.
pub fn data_dir(root: &Path, id: &str) -> PathBuf {
    instance_dir(root, id).join("data")
}

/// The server log of instance `id`.
pub fn log_file(root: &Path, id: &str) -> PathBuf {
    instance_dir(root, id).join("server.log")
}

/// The pid file of instance `id`.
pub fn pid_file(root: &Path, id: &str) -> PathBuf {
    instance_dir(root, id).join("server.pid")
}

/// Creates `dir` (and parents) with `mode`, or sets `mode` on it if it exists.
pub(crate) fn ensure_dir(dir: &Path, mode: u32) -> Result<(), DbError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| DbError::io(format!("create {}", dir.display()), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| DbError::io(format!("set the mode of {}", dir.display()), e))
}

/// Makes `dir` traversable by other users (adds `o+x`, nothing else).
pub(crate) fn allow_traverse(dir: &Path) -> Result<(), DbError> {
    let meta =
        std::fs::metadata(dir).map_err(|e| DbError::io(format!("stat {}", dir.display()), e))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o001 == 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))
            .map_err(|e| DbError::io(format!("chmod o+x {}", dir.display()), e))?;
    }
    Ok(())
}

/// Checks that every ancestor of `dir` lets an unprivileged user through, so the engine user
/// can reach its data directory; names the first one that does not.
pub(crate) fn check_reachable(dir: &Path, user: &'static str) -> Result<(), DbError> {
    for ancestor in dir.ancestors() {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        if meta.mode() & 0o001 == 0 {
            return Err(DbError::Unreachable {
                user,
                dir: ancestor.display().to_string(),
            });
        }
    }
    Ok(())
}

/// Gives `path` and everything below it to `user`.
pub(crate) fn chown_tree(path: &Path, user: EngineUser) -> Result<(), DbError> {
    let owner = (
        Some(nix::unistd::Uid::from_raw(user.uid)),
        Some(nix::unistd::Gid::from_raw(user.gid)),
    );
    let chown = |p: &Path| {
        nix::unistd::chown(p, owner.0, owner.1).map_err(|e| {
            DbError::io(
                format!("chown {} to {}", p.display(), user.name),
                std::io::Error::from(e),
            )
        })
    };
    chown(path)?;
    if path.is_dir() {
        let entries = std::fs::read_dir(path)
            .map_err(|e| DbError::io(format!("list {}", path.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DbError::io(format!("list {}", path.display()), e))?;
            chown_tree(&entry.path(), user)?;
        }
    }
    Ok(())
}

/// Runs a helper program to completion, as `user` when given, with `stdin` fed to it; returns
/// its stdout. The environment is cleared (see `kiln_runtime::spawn::command`).
pub(crate) async fn run(
    program: &Path,
    args: &[&str],
    user: Option<EngineUser>,
    stdin: Option<&str>,
) -> Result<String, DbError> {
    use tokio::io::AsyncWriteExt;

    let line = format!("{} {}", program.display(), args.join(" "));
    let mut cmd = tokio::process::Command::from(kiln_runtime::spawn::command(program));
    cmd.args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true);
    if let Some(user) = user {
        cmd.uid(user.uid).gid(user.gid).current_dir("/");
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| DbError::io(format!("start `{line}`"), e))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| DbError::io(format!("write to `{line}`"), e))?;
        drop(pipe);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| DbError::io(format!("wait for `{line}`"), e))?;
    if !out.status.success() {
        let mut output = String::from_utf8_lossy(&out.stderr).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stdout));
        return Err(DbError::Command {
            command: line,
            status: out.status.to_string(),
            output: tail(&output, 2048),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Copies directory `from` to `to` keeping owners and modes (`cp -a`, reflinked where the
/// filesystem can).
pub(crate) async fn copy_tree(from: &Path, to: &Path) -> Result<(), DbError> {
    let (from, to) = (from.display().to_string(), to.display().to_string());
    run(
        Path::new("cp"),
        &["-a", "--reflink=auto", &from, &to],
        None,
        None,
    )
    .await
    .map(drop)
}

/// The last `max` bytes of `text`, cut at a character boundary.
pub(crate) fn tail(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].trim().to_owned()
}

/// The last few KiB of a file (the server log), or a note that there is none.
pub fn file_tail(path: &Path, max: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return "(no server log)".into();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max as u64);
    let mut buf = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut buf).is_err() {
        return "(server log unreadable)".into();
    }
    String::from_utf8_lossy(&buf).trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_cuts_at_char_boundaries() {
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(tail("abc", 10), "abc");
    }
}
