//! The one error type of the database engines.

use std::net::Ipv4Addr;

use crate::Engine;

/// What can go wrong while provisioning, running or administering a database instance.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The engine's server programs are not installed on this node.
    #[error("{engine} is not installed on this node: {detail}; run scripts/setup.sh")]
    NotInstalled {
        /// The engine.
        engine: Engine,
        /// What is missing.
        detail: String,
    },
    /// A PostgreSQL data directory was written by a major version whose server is gone.
    #[error(
        "the data was written by PostgreSQL {version}, whose server is not installed on this node; install the package postgresql-{version}, or upgrade the data with pg_upgrade"
    )]
    MajorVersionMissing {
        /// The major version in the data directory's `PG_VERSION`.
        version: String,
    },
    /// The Debian user the engine runs as does not exist.
    #[error(
        "the `{user}` system user does not exist; install the engine's package (scripts/setup.sh)"
    )]
    NoUser {
        /// The user name.
        user: &'static str,
    },
    /// Another program already listens on the instance's address.
    #[error(
        "port {port} on {host} is already in use by another program; free it or delete and recreate the database"
    )]
    PortTaken {
        /// The address.
        host: Ipv4Addr,
        /// The port.
        port: u16,
    },
    /// The engine user could not reach its data directory.
    #[error("the `{user}` user cannot reach {dir}: make it traversable (chmod o+x {dir})")]
    Unreachable {
        /// The engine user.
        user: &'static str,
        /// The blocking directory.
        dir: String,
    },
    /// A filesystem operation failed (disk full, permissions).
    #[error("{action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A helper program (initdb, mariadb-install-db, cp, the mariadb client) failed.
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        /// The program and its arguments (never a password).
        command: String,
        /// Its exit status.
        status: String,
        /// The tail of what it printed.
        output: String,
    },
    /// The server did not come up; the log tail says why.
    #[error("the {engine} server did not start: {reason}\n--- server log (tail) ---\n{log_tail}")]
    NotReady {
        /// The engine.
        engine: Engine,
        /// What was observed.
        reason: String,
        /// The end of the server's log.
        log_tail: String,
    },
    /// Logging in with a credential failed, or the query after it did.
    #[error("{engine} login as `{user}` failed: {detail}")]
    Login {
        /// The engine.
        engine: Engine,
        /// The user that tried.
        user: String,
        /// The server's or client's answer.
        detail: String,
    },
    /// An administrative statement (create a role, drop a user) failed.
    #[error("{engine} administration failed while {action}: {detail}")]
    Admin {
        /// The engine.
        engine: Engine,
        /// What was being done.
        action: String,
        /// The server's answer.
        detail: String,
    },
    /// A value handed in cannot be used (a name or password with forbidden characters).
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// Which value.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

impl DbError {
    /// An I/O error with what was being done.
    pub(crate) fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        DbError::Io {
            action: action.into(),
            source,
        }
    }
}
