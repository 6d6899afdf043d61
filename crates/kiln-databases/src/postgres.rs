//! PostgreSQL: template by `initdb` (SCRAM only, no trust or peer lines, no unix socket),
//! a NOLOGIN owner role that owns the database and everything in it, and login roles that
//! become the owner on connect, so objects made under one credential stay usable under the
//! next.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio_postgres::NoTls;

use crate::layout::{self, EngineUser};
use crate::supervise::ServerCommand;
use crate::{ADMIN_USER, DbError, Engine, Instance, Login, plain};

/// The role that owns the database; login roles `SET role` to it.
pub const OWNER_ROLE: &str = "kiln_owner";
/// How long one login attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The newest installed server's `bin` directory, e.g. `/usr/lib/postgresql/15/bin`.
pub fn bin_dir() -> Result<PathBuf, DbError> {
    let missing = |detail: &str| DbError::NotInstalled {
        engine: Engine::Postgres,
        detail: detail.into(),
    };
    let entries = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| missing("no /usr/lib/postgresql (package `postgresql`)"))?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .max()
        .map(|(_, bin)| bin)
        .ok_or_else(|| missing("no initdb under /usr/lib/postgresql/*/bin"))
}

/// The template's name (engine and major version).
pub fn template_name() -> Result<String, DbError> {
    let bin = bin_dir()?;
    let version = bin
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("unknown");
    // The suffix names the template's layout; a change to `build_template` bumps it.
    Ok(format!("postgres-{version}-4"))
}

/// Builds a template in `dir`: `dir/data` from `initdb` (without fsync: the template is
/// synced once as a whole afterwards) and `dir/admin-password`, the template's superuser
/// password, which every instance replaces before anything can reach it.
pub async fn build_template(dir: &Path, user: EngineUser) -> Result<(), DbError> {
    let bin = bin_dir()?;
    let password = crate::new_password();
    let pwfile = dir.join("initdb-password");
    std::fs::write(&pwfile, &password)
        .map_err(|e| DbError::io("write the initdb password file", e))?;
    layout::chown_tree(&pwfile, user)?;
    let data = dir.join("data");
    let (data_s, pw_s) = (data.display().to_string(), pwfile.display().to_string());
    let out = layout::run(
        &bin.join("initdb"),
        &[
            "-D",
            &data_s,
            "--auth=scram-sha-256",
            "-U",
            ADMIN_USER,
            "--pwfile",
            &pw_s,
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
            "--no-instructions",
            // 1 MiB WAL segments instead of 16: every provision copies the template, and an
            // empty database has no use for a 16 MiB segment.
            "--wal-segsize=1",
        ],
        Some(user),
        None,
    )
    .await;
    let _ = std::fs::remove_file(&pwfile);
    out?;
    // Password logins over TCP only: no `local` lines (there is no socket), no trust, no peer.
    // The administrator logs in only from the node itself (`samehost`: any of the server's own
    // addresses), never from a machine, even with its password.
    let hba = format!(
        "# Managed by Kiln: every login is a SCRAM password login over TCP.\n\
         host all {ADMIN_USER} samehost scram-sha-256\n\
         host all {ADMIN_USER} all reject\n\
         host all all 0.0.0.0/0 scram-sha-256\n"
    );
    std::fs::write(data.join("pg_hba.conf"), hba)
        .map_err(|e| DbError::io("write pg_hba.conf", e))?;
    layout::chown_tree(&data.join("pg_hba.conf"), user)?;
    // The owner role and the app's database exist in the template already (renamed per
    // instance), so a provision does not pay for CREATE DATABASE. Single-user mode needs no
    // server, port or login.
    let data_s = data.display().to_string();
    layout::run(
        &bin.join("postgres"),
        &[
            "--single",
            "-D",
            &data_s,
            "-c",
            "exit_on_error=true",
            "postgres",
        ],
        Some(user),
        Some(&format!(
            "CREATE ROLE {OWNER_ROLE} NOLOGIN\n\
             CREATE DATABASE {TEMPLATE_DB} OWNER {OWNER_ROLE}\n\
             REVOKE ALL ON DATABASE {TEMPLATE_DB} FROM PUBLIC\n\
             REVOKE ALL ON DATABASE postgres FROM PUBLIC\n\
             REVOKE ALL ON DATABASE template1 FROM PUBLIC\n"
        )),
    )
    .await?;
    std::fs::write(dir.join("admin-password"), &password)
        .map_err(|e| DbError::io("write the template password", e))?;
    Ok(())
}

/// The app database as the template has it, renamed to the instance's database name.
const TEMPLATE_DB: &str = "kiln_app";

/// The template's superuser password.
pub fn template_password(template: &Path) -> Result<String, DbError> {
    std::fs::read_to_string(template.join("admin-password"))
        .map(|s| s.trim().to_owned())
        .map_err(|e| DbError::io("read the template password", e))
}

/// The `bin` directory of the major version that made `data` (its `PG_VERSION`): a data
/// directory only starts under the major version that wrote it, so installing a newer server
/// must not move existing databases onto it.
fn bin_dir_for(data: &Path) -> Result<PathBuf, DbError> {
    bin_dir_for_in(Path::new("/usr/lib/postgresql"), data)
}

fn bin_dir_for_in(installed: &Path, data: &Path) -> Result<PathBuf, DbError> {
    let Ok(version) = std::fs::read_to_string(data.join("PG_VERSION")) else {
        return bin_dir(); // not initialised yet: the newest server will create it
    };
    let version = version.trim();
    let bin = installed.join(version).join("bin");
    if bin.join("postgres").exists() {
        return Ok(bin);
    }
    Err(DbError::MajorVersionMissing {
        version: version.to_owned(),
    })
}

/// The server command for `inst` with data in `data`.
pub fn server_command(inst: &Instance, data: &Path) -> Result<ServerCommand, DbError> {
    let bin = bin_dir_for(data)?;
    let args = [
        "-D".to_owned(),
        data.display().to_string(),
        "-c".into(),
        format!("listen_addresses={}", inst.host),
        "-c".into(),
        format!("port={}", inst.port),
        // TCP only: no socket file to guard, and no peer authentication through it.
        "-c".into(),
        "unix_socket_directories=".into(),
        "-c".into(),
        "shared_buffers=16MB".into(),
        "-c".into(),
        "max_connections=50".into(),
        "-c".into(),
        "password_encryption=scram-sha-256".into(),
        "-c".into(),
        "logging_collector=off".into(),
        // A failed `ALTER ROLE … PASSWORD` must not copy its statement, password included,
        // into the log whose tail the API shows.
        "-c".into(),
        "log_min_error_statement=panic".into(),
        "-c".into(),
        "fsync=on".into(),
    ];
    Ok(ServerCommand {
        program: bin.join("postgres"),
        args: args.to_vec(),
        cwd: data.to_owned(),
        uid: 0,
        gid: 0,
        log: PathBuf::new(),
        pid_file: PathBuf::new(),
        // SIGINT is Postgres's "fast" shutdown: clients are disconnected, data is flushed.
        stop_signal: Signal::SIGINT,
        process_name: Engine::Postgres.process_name(),
    })
}

async fn connect(
    inst: &Instance,
    user: &str,
    password: &str,
    database: &str,
) -> Result<tokio_postgres::Client, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(inst.host.to_string())
        .port(inst.port)
        .user(user)
        .password(password)
        .dbname(database)
        .connect_timeout(CONNECT_TIMEOUT);
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(NoTls))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| db_detail(&e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn db_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    }
}

/// Whether the administrator can log in yet (the server is up).
pub async fn ping_admin(inst: &Instance, admin_password: &str) -> Result<(), String> {
    let client = connect(inst, ADMIN_USER, admin_password, "postgres").await?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| db_detail(&e))?;
    Ok(())
}

/// A real login as `login` into the instance's database and `SELECT 1`.
pub async fn check_login(inst: &Instance, login: &Login) -> Result<(), DbError> {
    let fail = |detail: String| DbError::Login {
        engine: Engine::Postgres,
        user: login.user.clone(),
        detail,
    };
    let client = connect(inst, &login.user, &login.password, &inst.database)
        .await
        .map_err(fail)?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| fail(db_detail(&e)))?;
    Ok(())
}

async fn admin_batch(
    inst: &Instance,
    admin_password: &str,
    database: &str,
    action: &str,
    statements: &[String],
) -> Result<(), DbError> {
    let fail = |detail: String| DbError::Admin {
        engine: Engine::Postgres,
        action: action.to_owned(),
        detail,
    };
    let client = connect(inst, ADMIN_USER, admin_password, database)
        .await
        .map_err(fail)?;
    // One by one: `CREATE DATABASE` refuses to run inside the implicit transaction a
    // multi-statement batch gets.
    for sql in statements {
        client
            .batch_execute(sql)
            .await
            .map_err(|e| fail(db_detail(&e)))?;
    }
    Ok(())
}

/// First setup of a fresh copy of the template, in one session: a new superuser password,
/// the database renamed to its name, the first login.
pub async fn bootstrap(
    inst: &Instance,
    template_password: &str,
    admin_password: &str,
    login: &Login,
) -> Result<(), DbError> {
    plain("admin password", admin_password)?;
    plain("database name", &inst.database)?;
    let mut statements = vec![format!(
        "ALTER ROLE {ADMIN_USER} PASSWORD '{admin_password}'"
    )];
    if inst.database != TEMPLATE_DB {
        statements.push(format!(
            "ALTER DATABASE {TEMPLATE_DB} RENAME TO \"{}\"",
            inst.database
        ));
    }
    statements.extend(login_statements(inst, login)?);
    admin_batch(
        inst,
        template_password,
        "postgres",
        "setting up the instance",
        &statements,
    )
    .await
}

fn login_statements(inst: &Instance, login: &Login) -> Result<Vec<String>, DbError> {
    plain("user", &login.user)?;
    plain("password", &login.password)?;
    let (user, password) = (&login.user, &login.password);
    Ok(vec![format!(
        "CREATE ROLE {user} LOGIN PASSWORD '{password}' IN ROLE {OWNER_ROLE};
         ALTER ROLE {user} SET role = {OWNER_ROLE};
         GRANT CONNECT, TEMPORARY ON DATABASE \"{db}\" TO {user};",
        db = inst.database
    )])
}

/// Creates login role `login` that acts as the owner role.
pub async fn add_login(
    inst: &Instance,
    admin_password: &str,
    login: &Login,
) -> Result<(), DbError> {
    admin_batch(
        inst,
        admin_password,
        "postgres",
        "creating a login",
        &login_statements(inst, login)?,
    )
    .await
}

/// Revokes login role `user`: no new logins, its sessions ended, anything it owns handed to
/// the owner role, then the role dropped. Idempotent.
pub async fn remove_login(
    inst: &Instance,
    admin_password: &str,
    user: &str,
) -> Result<(), DbError> {
    plain("user", user)?;
    admin_batch(
        inst,
        admin_password,
        &inst.database,
        "revoking a login",
        // `NOLOGIN` commits on its own first: inside the same transaction as the terminations
        // it would stay invisible to new logins until the end, and one could slip in between.
        &[
            format!(
                "DO $$ BEGIN
                   IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{user}') THEN
                     ALTER ROLE {user} NOLOGIN;
                   END IF;
                 END $$;"
            ),
            format!(
                "DO $$ BEGIN
                   IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{user}') THEN
                     PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{user}';
                     REASSIGN OWNED BY {user} TO {OWNER_ROLE};
                     DROP OWNED BY {user};
                     DROP ROLE {user};
                   END IF;
                 END $$;"
            ),
        ],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_runs_under_the_major_version_that_wrote_it() {
        let installed = tempfile::tempdir().expect("temp dir");
        for version in ["15", "17"] {
            let bin = installed.path().join(version).join("bin");
            std::fs::create_dir_all(&bin).expect("bin dir");
            std::fs::write(bin.join("postgres"), "").expect("server");
        }
        let data = tempfile::tempdir().expect("temp dir");
        std::fs::write(data.path().join("PG_VERSION"), "15\n").expect("PG_VERSION");
        assert_eq!(
            bin_dir_for_in(installed.path(), data.path()).expect("bin dir"),
            installed.path().join("15/bin")
        );
        std::fs::write(data.path().join("PG_VERSION"), "13\n").expect("PG_VERSION");
        let missing = bin_dir_for_in(installed.path(), data.path())
            .expect_err("13 is not installed")
            .to_string();
        assert!(missing.contains("postgresql-13"), "{missing}");
    }
}
