//! Metadata store of the control plane: SQLite or PostgreSQL behind one interface, with migrations.
//!
//! One [`Store`] value fronts either backend, chosen by URL. Every query is written once, with
//! `$1`-style placeholders that both SQLite and PostgreSQL accept, and runs through sqlx's `Any`
//! driver. Column types are kept portable (`TEXT`, `BIGINT`); timestamps are stored as
//! milliseconds since the Unix epoch and returned as [`chrono::DateTime<Utc>`].
//!
//! Operations live in one module per resource, each adding methods to [`Store`].

#![forbid(unsafe_code)]

mod apps;
mod buckets;
mod cron;
mod databases;
mod deployments;
mod env;
mod error;
mod id;
mod idempotency;
mod orgs;
mod processes;
mod releases;
mod sandboxes;
mod settings;
mod tokens;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};

pub use apps::AppRecord;
pub use buckets::BucketRecord;
pub use cron::{CronJobRecord, CronRunRecord, NewCronJob};
pub use databases::{DatabaseRecord, NewDatabase};
pub use deployments::DeploymentRecord;
pub use env::EnvVarRecord;
pub use error::StoreError;
pub use id::new_id;
pub use idempotency::IdempotencyRecord;
pub use orgs::{NewOrg, OrgRecord};
pub use processes::ProcessRecord;
pub use releases::{NewRelease, ReleaseRecord};
pub use sandboxes::{Desired, NewSandbox, STATUS_STARTING, SandboxRecord};
pub use tokens::TokenRecord;

/// Result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a SQLite connection waits for another writer before giving up.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// Which database a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Backend {
    /// Picks the backend from a store URL's scheme.
    pub fn from_url(url: &str) -> Result<Backend> {
        let scheme = url.split_once(':').map(|(scheme, _)| scheme).unwrap_or("");
        match scheme {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            _ => Err(StoreError::InvalidUrl {
                reason: format!("expected sqlite:// or postgres://, got scheme {scheme:?}"),
            }),
        }
    }

    /// The backend's name as written in logs: `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Handle on the metadata store: a connection pool, cheap to clone and shared across tasks.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens the store at `url` and brings its schema up to date.
    ///
    /// `sqlite:///path/to/kiln.db` opens (creating if missing) a SQLite file in WAL mode with
    /// foreign keys enforced and a busy timeout; `postgres://user@host:port/db` connects to
    /// PostgreSQL. Migrations for the chosen backend run before this returns.
    pub async fn connect(url: &str) -> Result<Store> {
        let backend = Backend::from_url(url)?;
        sqlx::any::install_default_drivers();
        let pool = match backend {
            Backend::Sqlite => {
                let url = sqlite_url(url);
                let in_memory = url.contains(":memory:") || url.contains("mode=memory");
                AnyPoolOptions::new()
                    // Every connection to an in-memory database is a database of its own.
                    .max_connections(if in_memory { 1 } else { 8 })
                    .after_connect(move |conn, _meta| {
                        Box::pin(async move {
                            if !in_memory {
                                sqlx::query("PRAGMA journal_mode = WAL")
                                    .execute(&mut *conn)
                                    .await?;
                                sqlx::query("PRAGMA synchronous = NORMAL")
                                    .execute(&mut *conn)
                                    .await?;
                            }
                            sqlx::query("PRAGMA foreign_keys = ON")
                                .execute(&mut *conn)
                                .await?;
                            let busy = format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}");
                            sqlx::query(sqlx::AssertSqlSafe(busy))
                                .execute(&mut *conn)
                                .await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await?
            }
        };
        let migrator = match backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&pool).await?;
        tracing::debug!(backend = backend.as_str(), "metadata store ready");
        Ok(Store { pool, backend })
    }

    /// Which database this store talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks that the database answers a trivial query (for health checks).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection, waiting for those in use to be returned.
    ///
    /// Clones of this store see a closed pool afterwards; their operations fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Adds `mode=rwc` (read, write, create) to a SQLite URL that does not choose a mode, so a
/// missing database file is created.
fn sqlite_url(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}mode=rwc")
}

/// The current time, truncated to what the store keeps (milliseconds), so that a record
/// returned by a write equals the same record read back.
pub(crate) fn now() -> DateTime<Utc> {
    from_millis(Utc::now().timestamp_millis()).unwrap_or_else(Utc::now)
}

fn from_millis(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

/// Reads a millisecond timestamp column.
pub(crate) fn get_time(row: &AnyRow, column: &str) -> Result<DateTime<Utc>> {
    let ms: i64 = row.try_get(column)?;
    from_millis(ms).ok_or_else(|| StoreError::Corrupt {
        what: format!("{column} = {ms} is not a valid timestamp"),
    })
}

/// The largest page a list returns, whatever limit the caller asks for.
pub const MAX_PAGE: u32 = 1000;

/// Turns a caller's page size into a `LIMIT` value.
pub(crate) fn page_limit(limit: u32) -> i64 {
    i64::from(limit.min(MAX_PAGE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_shareable() {
        fn shareable<T: Clone + Send + Sync + 'static>() {}
        shareable::<Store>();
    }

    #[test]
    fn backend_from_url() {
        assert_eq!(
            Backend::from_url("sqlite:///tmp/k.db").ok(),
            Some(Backend::Sqlite)
        );
        assert_eq!(
            Backend::from_url("sqlite::memory:").ok(),
            Some(Backend::Sqlite)
        );
        assert_eq!(
            Backend::from_url("postgres://u@h/db").ok(),
            Some(Backend::Postgres)
        );
        assert_eq!(
            Backend::from_url("postgresql://u@h/db").ok(),
            Some(Backend::Postgres)
        );
        assert!(matches!(
            Backend::from_url("mysql://u:secret@h/db"),
            Err(StoreError::InvalidUrl { reason }) if !reason.contains("secret")
        ));
        assert!(Backend::from_url("/tmp/k.db").is_err());
    }

    #[test]
    fn sqlite_url_creates_by_default() {
        assert_eq!(
            sqlite_url("sqlite:///tmp/k.db"),
            "sqlite:///tmp/k.db?mode=rwc"
        );
        assert_eq!(
            sqlite_url("sqlite:///tmp/k.db?cache=shared"),
            "sqlite:///tmp/k.db?cache=shared&mode=rwc"
        );
        assert_eq!(
            sqlite_url("sqlite:///tmp/k.db?mode=ro"),
            "sqlite:///tmp/k.db?mode=ro"
        );
        assert_eq!(sqlite_url("sqlite::memory:"), "sqlite::memory:");
    }

    #[tokio::test]
    async fn sqlite_connections_are_configured() -> Result<()> {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let path = dir.path().join("new").join("kiln.db");
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("create dir");
        let store = Store::connect(&format!("sqlite://{}", path.display())).await?;
        assert!(path.exists(), "the database file is created");
        // Check several pooled connections, not just the first.
        let mut conns = Vec::new();
        for _ in 0..3 {
            let mut conn = store.pool.acquire().await?;
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut *conn)
                .await?;
            let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
                .fetch_one(&mut *conn)
                .await?;
            let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
                .fetch_one(&mut *conn)
                .await?;
            assert_eq!(
                (mode.as_str(), fk, busy),
                ("wal", 1, i64::from(SQLITE_BUSY_TIMEOUT_MS))
            );
            conns.push(conn);
        }
        Ok(())
    }

    #[tokio::test]
    async fn sqlite_in_memory_works() -> Result<()> {
        let store = Store::connect("sqlite::memory:").await?;
        store.put_setting("k", "v").await?;
        assert_eq!(store.get_setting("k").await?.as_deref(), Some("v"));
        Ok(())
    }
}
