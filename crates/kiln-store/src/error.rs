//! The one error type of the metadata store.

/// What can go wrong in a store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist, or belongs to another org.
    #[error("not found")]
    NotFound,
    /// A uniqueness rule would be broken (a slug is taken, a key was already used).
    #[error("{what} already exists")]
    Conflict {
        /// What is taken, e.g. `app slug "web"`.
        what: String,
    },
    /// The store URL is not one the store can open.
    #[error("invalid store URL: {reason}")]
    InvalidUrl {
        /// Why the URL was rejected (never the URL itself, which may hold a password).
        reason: String,
    },
    /// A stored row holds a value the store cannot read back.
    #[error("stored row is invalid: {what}")]
    Corrupt {
        /// Which value was unreadable.
        what: String,
    },
    /// The database failed or could not be reached.
    #[error("metadata database error")]
    Backend(#[source] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error("metadata schema migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        StoreError::Backend(err)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(err)
    }
}

/// Maps a failed write: a unique violation becomes [`StoreError::Conflict`] naming `what`, a
/// foreign-key violation (the parent row is missing) becomes [`StoreError::NotFound`].
pub(crate) fn write_error(what: impl FnOnce() -> String) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |err| match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict { what: what() }
        }
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound,
        _ => StoreError::Backend(err),
    }
}
