//! Managed database engines: PostgreSQL, MariaDB (MySQL) and Redis from the node's Debian
//! packages, one server process per database.
//!
//! [`Databases`] provisions an instance (its own data directory under the node's data dir,
//! owned by the engine's unprivileged Debian user, copied from a per-engine template so a
//! provision never pays for `initdb`), starts it as that user with a cleared environment,
//! bound to one address and port, supervises it (restarts with back-off), and administers
//! it: logins are added, verified by a real login, and removed, so a credential can be
//! rotated without a moment in which no credential works.
//!
//! - [`postgres`], [`mysql`], [`redis`]: what differs per engine (template, server command,
//!   bootstrap statements, the login check).
//! - [`supervise`]: the server process: spawn, restart on crash, stop, stale-process cleanup.
//! - [`layout`]: where instances and templates live on disk, ownership and copying.
#![forbid(unsafe_code)]

mod error;
pub mod layout;
mod manager;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod supervise;

use std::fmt;
use std::net::Ipv4Addr;

use rand::Rng;

pub use error::DbError;
pub use manager::Databases;

/// A database engine Kiln can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    /// PostgreSQL.
    Postgres,
    /// MySQL, served by MariaDB.
    Mysql,
    /// Redis.
    Redis,
}

impl Engine {
    /// Every engine, in the order they are documented.
    pub const ALL: [Engine; 3] = [Engine::Postgres, Engine::Mysql, Engine::Redis];

    /// The engine named `name` (`postgres`, `mysql`, `redis`).
    pub fn parse(name: &str) -> Option<Engine> {
        match name {
            "postgres" => Some(Engine::Postgres),
            "mysql" => Some(Engine::Mysql),
            "redis" => Some(Engine::Redis),
            _ => None,
        }
    }

    /// The engine's API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
            Engine::Redis => "redis",
        }
    }

    /// The variable machines find this engine's URL in (`DATABASE_URL`, `MYSQL_URL`,
    /// `REDIS_URL`).
    pub fn env_var(self) -> &'static str {
        match self {
            Engine::Postgres => "DATABASE_URL",
            Engine::Mysql => "MYSQL_URL",
            Engine::Redis => "REDIS_URL",
        }
    }

    /// The unprivileged Debian user the server runs as.
    pub fn system_user(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
            Engine::Redis => "redis",
        }
    }

    /// The kernel's name (`comm`) of the server process, used to recognise a stale one.
    pub(crate) fn process_name(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mariadbd",
            Engine::Redis => "redis-server",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One database instance: which engine, where it listens and what its database is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The database id (`db_…`); names the instance's directory.
    pub id: String,
    /// The engine.
    pub engine: Engine,
    /// The database created inside the server (Postgres and MySQL; Redis uses db 0).
    pub database: String,
    /// The address the server binds: the org's gateway, where its machines reach the host.
    pub host: Ipv4Addr,
    /// The TCP port.
    pub port: u16,
}

impl Instance {
    /// The URL a client logs in with as `login`.
    pub fn url(&self, login: &Login) -> String {
        let (scheme, path) = match self.engine {
            Engine::Postgres => ("postgres", self.database.as_str()),
            Engine::Mysql => ("mysql", self.database.as_str()),
            Engine::Redis => ("redis", "0"),
        };
        format!(
            "{scheme}://{}:{}@{}:{}/{path}",
            login.user, login.password, self.host, self.port
        )
    }
}

/// A credential: user and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// The user name.
    pub user: String,
    /// The password in the clear.
    pub password: String,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Passwords never reach a log line.
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Length of generated passwords: 32 alphanumerics ≈ 190 bits.
const PASSWORD_LEN: usize = 32;

/// A fresh random password of letters and digits (safe inside URLs and SQL literals).
pub fn new_password() -> String {
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(PASSWORD_LEN)
        .map(char::from)
        .collect()
}

/// The login user of credential generation `generation` (`app1`, `app2`, …).
pub fn login_user(generation: u32) -> String {
    format!("app{generation}")
}

/// The administrative user Kiln keeps inside Postgres and Redis instances.
pub const ADMIN_USER: &str = "kiln_admin";

/// Refuses anything but `[A-Za-z0-9_]` in a value that is spliced into a statement: users,
/// passwords and database names are all generated or validated to that alphabet, and this is
/// the last line of defence.
pub(crate) fn plain(what: &'static str, value: &str) -> Result<(), DbError> {
    if !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        Ok(())
    } else {
        Err(DbError::Invalid {
            what,
            detail: "only letters, digits and `_` (at most 63) are allowed".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_per_engine() {
        let login = Login {
            user: "app1".into(),
            password: "pw".into(),
        };
        let mut inst = Instance {
            id: "db_1".into(),
            engine: Engine::Postgres,
            database: "main".into(),
            host: Ipv4Addr::new(10, 93, 0, 1),
            port: 20000,
        };
        assert_eq!(inst.url(&login), "postgres://app1:pw@10.93.0.1:20000/main");
        inst.engine = Engine::Mysql;
        assert_eq!(inst.url(&login), "mysql://app1:pw@10.93.0.1:20000/main");
        inst.engine = Engine::Redis;
        assert_eq!(inst.url(&login), "redis://app1:pw@10.93.0.1:20000/0");
    }

    #[test]
    fn engines_round_trip() {
        for engine in Engine::ALL {
            assert_eq!(Engine::parse(engine.as_str()), Some(engine));
        }
        assert_eq!(Engine::parse("mongodb"), None);
    }

    #[test]
    fn passwords_are_plain_and_fresh() {
        let (a, b) = (new_password(), new_password());
        assert_ne!(a, b);
        assert!(plain("password", &a).is_ok());
        assert!(plain("name", "x'; DROP ROLE y; --").is_err());
        assert!(
            format!(
                "{:?}",
                Login {
                    user: "u".into(),
                    password: a.clone()
                }
            )
            .contains("redacted")
        );
    }
}
