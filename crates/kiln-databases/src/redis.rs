//! Redis: no template (a fresh data dir is an empty directory), an ACL file with the default
//! user disabled, an administrative user, and one user per credential that may run every
//! command but the administrative ones. Passwords are stored in the ACL file as SHA-256
//! hashes only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};

use crate::layout::{self, EngineUser};
use crate::supervise::ServerCommand;
use crate::{ADMIN_USER, DbError, Engine, Instance, Login, plain};

const SERVER: &str = "/usr/bin/redis-server";
/// How long one login attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// What an app's user may do: everything on every key and channel but administration.
const APP_RULES: &str = "~* &* +@all -@admin";

/// Checks the server is installed.
pub fn check_installed() -> Result<(), DbError> {
    if Path::new(SERVER).exists() {
        Ok(())
    } else {
        Err(DbError::NotInstalled {
            engine: Engine::Redis,
            detail: format!("{SERVER} missing (package `redis-server`)"),
        })
    }
}

fn hashed(password: &str) -> String {
    format!("#{}", hex::encode(Sha256::digest(password.as_bytes())))
}

/// Writes `redis.conf` and `users.acl` into the (empty) data dir `data`.
pub fn write_config(
    inst: &Instance,
    data: &Path,
    user: EngineUser,
    admin_password: &str,
    login: &Login,
) -> Result<(), DbError> {
    plain("user", &login.user)?;
    let conf = format!(
        "# Managed by Kiln.\n\
         bind {host}\n\
         port {port}\n\
         protected-mode yes\n\
         daemonize no\n\
         dir {dir}\n\
         logfile \"\"\n\
         appendonly yes\n\
         appendfsync everysec\n\
         save \"\"\n\
         aclfile {dir}/users.acl\n",
        host = inst.host,
        port = inst.port,
        dir = data.display()
    );
    let acl = format!(
        "user default off resetkeys resetchannels -@all\n\
         user {ADMIN_USER} on {admin} ~* &* +@all\n\
         user {user} on {app} {APP_RULES}\n",
        admin = hashed(admin_password),
        user = login.user,
        app = hashed(&login.password),
    );
    for (name, text) in [("redis.conf", conf), ("users.acl", acl)] {
        let path = data.join(name);
        std::fs::write(&path, text).map_err(|e| DbError::io(format!("write {name}"), e))?;
        layout::chown_tree(&path, user)?;
    }
    Ok(())
}

/// The server command for `inst` with data in `data`.
pub fn server_command(_inst: &Instance, data: &Path) -> Result<ServerCommand, DbError> {
    check_installed()?;
    Ok(ServerCommand {
        program: PathBuf::from(SERVER),
        args: vec![data.join("redis.conf").display().to_string()],
        cwd: data.to_owned(),
        uid: 0,
        gid: 0,
        log: PathBuf::new(),
        pid_file: PathBuf::new(),
        stop_signal: Signal::SIGTERM,
        process_name: Engine::Redis.process_name(),
    })
}

async fn connect(
    inst: &Instance,
    user: &str,
    password: &str,
) -> Result<redis::aio::MultiplexedConnection, String> {
    let url = format!("redis://{user}:{password}@{}:{}/0", inst.host, inst.port);
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())
}

async fn admin(
    inst: &Instance,
    admin_password: &str,
    action: &str,
    commands: Vec<redis::Cmd>,
) -> Result<(), DbError> {
    let fail = |detail: String| DbError::Admin {
        engine: Engine::Redis,
        action: action.to_owned(),
        detail,
    };
    let mut conn = connect(inst, ADMIN_USER, admin_password)
        .await
        .map_err(fail)?;
    for cmd in commands {
        cmd.query_async::<redis::Value>(&mut conn)
            .await
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

/// Whether the administrator can log in yet (the server is up).
pub async fn ping_admin(inst: &Instance, admin_password: &str) -> Result<(), String> {
    let mut conn = connect(inst, ADMIN_USER, admin_password).await?;
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A real login as `login` and `PING`.
pub async fn check_login(inst: &Instance, login: &Login) -> Result<(), DbError> {
    let fail = |detail: String| DbError::Login {
        engine: Engine::Redis,
        user: login.user.clone(),
        detail,
    };
    let mut conn = connect(inst, &login.user, &login.password)
        .await
        .map_err(fail)?;
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if pong == "PONG" {
        Ok(())
    } else {
        Err(fail(format!("PING answered {pong:?}")))
    }
}

/// Creates user `login` and saves the ACL file.
pub async fn add_login(
    inst: &Instance,
    admin_password: &str,
    login: &Login,
) -> Result<(), DbError> {
    plain("user", &login.user)?;
    let mut setuser = redis::cmd("ACL");
    setuser
        .arg("SETUSER")
        .arg(&login.user)
        .arg("reset")
        .arg("on")
        .arg(hashed(&login.password));
    for rule in APP_RULES.split(' ') {
        setuser.arg(rule);
    }
    let mut save = redis::cmd("ACL");
    save.arg("SAVE");
    admin(
        inst,
        admin_password,
        "creating a login",
        vec![setuser, save],
    )
    .await
}

/// Deletes user `user` (which also closes its connections) and saves the ACL file.
pub async fn remove_login(
    inst: &Instance,
    admin_password: &str,
    user: &str,
) -> Result<(), DbError> {
    plain("user", user)?;
    let mut del = redis::cmd("ACL");
    del.arg("DELUSER").arg(user);
    let mut save = redis::cmd("ACL");
    save.arg("SAVE");
    admin(inst, admin_password, "revoking a login", vec![del, save]).await
}
