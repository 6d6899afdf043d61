//! MySQL, served by MariaDB: template by `mariadb-install-db` (no test database, no anonymous
//! users, `root` only through the unix socket as the host's root), administered with the
//! `mariadb` client over that socket, and one `'appN'@'%'` user per credential with every
//! privilege on the app's database and nothing else.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use nix::sys::signal::Signal;

use crate::layout::{self, EngineUser};
use crate::supervise::ServerCommand;
use crate::{DbError, Engine, Instance, Login, plain};

const SERVER: &str = "/usr/sbin/mariadbd";
const INSTALL_DB: &str = "/usr/bin/mariadb-install-db";
const CLIENT: &str = "/usr/bin/mariadb";
/// How long one login attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Small InnoDB files: instances are many and mostly small; the default redo log is 96 MiB.
const INNODB_LOG: &str = "--innodb-log-file-size=8M";

/// The template's name.
pub fn template_name() -> Result<String, DbError> {
    if !Path::new(SERVER).exists() || !Path::new(INSTALL_DB).exists() {
        return Err(DbError::NotInstalled {
            engine: Engine::Mysql,
            detail: format!("{SERVER} or {INSTALL_DB} missing (package `mariadb-server`)"),
        });
    }
    Ok("mariadb".into())
}

/// Builds a template in `dir/data` with `mariadb-install-db`.
pub async fn build_template(dir: &Path, user: EngineUser) -> Result<(), DbError> {
    let data = dir.join("data");
    layout::ensure_dir(&data, 0o700)?;
    layout::chown_tree(&data, user)?;
    let datadir = format!("--datadir={}", data.display());
    layout::run(
        Path::new(INSTALL_DB),
        &[
            "--no-defaults",
            &datadir,
            "--skip-test-db",
            "--skip-name-resolve",
            "--auth-root-authentication-method=socket",
            INNODB_LOG,
        ],
        Some(user),
        None,
    )
    .await
    .map(drop)
}

/// The unix socket root administers through.
fn socket(data: &Path) -> PathBuf {
    data.join("mysqld.sock")
}

/// The server command for `inst` with data in `data`.
pub fn server_command(inst: &Instance, data: &Path) -> Result<ServerCommand, DbError> {
    let args = vec![
        "--no-defaults".to_owned(),
        format!("--datadir={}", data.display()),
        format!("--bind-address={}", inst.host),
        format!("--port={}", inst.port),
        format!("--socket={}", socket(data).display()),
        format!("--pid-file={}", data.join("mariadbd.pid").display()),
        "--skip-name-resolve".into(),
        "--innodb-buffer-pool-size=16M".into(),
        INNODB_LOG.into(),
        "--performance-schema=OFF".into(),
        "--max-connections=50".into(),
    ];
    Ok(ServerCommand {
        program: PathBuf::from(SERVER),
        args,
        cwd: data.to_owned(),
        uid: 0,
        gid: 0,
        log: PathBuf::new(),
        pid_file: PathBuf::new(),
        stop_signal: Signal::SIGTERM,
        process_name: Engine::Mysql.process_name(),
    })
}

/// Runs `sql` as root through the instance's socket (the host's root authenticates by its
/// uid, so no admin password exists to leak). The SQL goes in on stdin, never in argv.
async fn admin(data: &Path, action: &str, sql: &str) -> Result<String, DbError> {
    let socket = format!("--socket={}", socket(data).display());
    layout::run(
        Path::new(CLIENT),
        &[
            "--no-defaults",
            "--protocol=socket",
            &socket,
            "--user=root",
            "--batch",
            "--skip-column-names",
        ],
        None,
        Some(sql),
    )
    .await
    .map_err(|e| DbError::Admin {
        engine: Engine::Mysql,
        action: action.to_owned(),
        detail: match e {
            DbError::Command { output, .. } => output,
            other => other.to_string(),
        },
    })
}

/// Whether root can run a query through the socket yet (the server is up).
pub async fn ping_admin(data: &Path) -> Result<(), String> {
    admin(data, "checking the server", "SELECT 1;")
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// First setup: the database, no anonymous users, the first login.
pub async fn bootstrap(inst: &Instance, data: &Path, login: &Login) -> Result<(), DbError> {
    plain("database name", &inst.database)?;
    admin(
        data,
        "setting up the instance",
        &format!(
            "DROP USER IF EXISTS ''@'localhost', ''@'%';
             CREATE DATABASE `{}`;",
            inst.database
        ),
    )
    .await?;
    add_login(inst, data, login).await
}

/// Creates user `login` with every privilege on the instance's database.
pub async fn add_login(inst: &Instance, data: &Path, login: &Login) -> Result<(), DbError> {
    plain("user", &login.user)?;
    plain("password", &login.password)?;
    admin(
        data,
        "creating a login",
        &format!(
            "CREATE USER '{user}'@'%' IDENTIFIED BY '{password}';
             GRANT ALL PRIVILEGES ON `{db}`.* TO '{user}'@'%';",
            user = login.user,
            password = login.password,
            db = inst.database
        ),
    )
    .await
    .map(drop)
}

/// Drops user `user` and ends its sessions. Idempotent.
pub async fn remove_login(data: &Path, user: &str) -> Result<(), DbError> {
    plain("user", user)?;
    // Dropped first, so no session can start between the listing and the kills (a dropped
    // user's open sessions live on until killed).
    admin(
        data,
        "revoking a login",
        &format!("DROP USER IF EXISTS '{user}'@'%';"),
    )
    .await?;
    let sessions = admin(
        data,
        "listing a login's sessions",
        &format!("SELECT id FROM information_schema.processlist WHERE user = '{user}';"),
    )
    .await?;
    for id in sessions
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
    {
        // A session may have ended since the listing; that is what we wanted anyway.
        let _ = admin(data, "ending a session", &format!("KILL CONNECTION {id};")).await;
    }
    Ok(())
}

/// A real login as `login` over TCP (never the socket) and `SELECT 1`.
pub async fn check_login(inst: &Instance, login: &Login) -> Result<(), DbError> {
    let fail = |detail: String| DbError::Login {
        engine: Engine::Mysql,
        user: login.user.clone(),
        detail,
    };
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(inst.host.to_string())
        .tcp_port(inst.port)
        .user(Some(login.user.clone()))
        .pass(Some(login.password.clone()))
        .db_name(Some(inst.database.clone()))
        // The driver would otherwise switch to the server's socket when it runs on this host,
        // and the check must take the machines' path.
        .prefer_socket(false);
    let attempt = async {
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .map_err(|e| e.to_string())?;
        conn.query_drop("SELECT 1")
            .await
            .map_err(|e| e.to_string())?;
        conn.disconnect().await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| fail("timed out".into()))?
        .map_err(fail)
}
