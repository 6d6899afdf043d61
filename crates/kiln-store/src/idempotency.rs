//! Remembered answers to requests sent with an `Idempotency-Key`, so a retry gets the same
//! answer instead of doing the work twice.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::write_error;
use crate::{Result, Store, StoreError, get_time};

/// A stored answer to an idempotent request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// The org that sent the request.
    pub org_id: String,
    /// The client's idempotency key.
    pub key: String,
    /// Hash of the request, to refuse the same key reused for a different request.
    pub request_hash: String,
    /// HTTP status of the answer.
    pub status: u16,
    /// Body of the answer.
    pub body: String,
    /// When the answer was stored.
    pub created_at: DateTime<Utc>,
}

fn from_row(row: &AnyRow) -> Result<IdempotencyRecord> {
    let status: i64 = row.try_get("status")?;
    Ok(IdempotencyRecord {
        org_id: row.try_get("org_id")?,
        key: row.try_get("key")?,
        request_hash: row.try_get("request_hash")?,
        status: u16::try_from(status).map_err(|_| StoreError::Corrupt {
            what: format!("status = {status} is out of range"),
        })?,
        body: row.try_get("body")?,
        created_at: get_time(row, "created_at")?,
    })
}

impl Store {
    /// Returns the answer stored for `key` of org `org_id`, if any.
    pub async fn get_idempotency(
        &self,
        org_id: &str,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>> {
        let row = sqlx::query(
            "SELECT org_id, key, request_hash, status, body, created_at \
             FROM idempotency_keys WHERE org_id = $1 AND key = $2",
        )
        .bind(org_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Stores an answer. [`StoreError::Conflict`] when the org already has an answer for that
    /// key (the first one wins), [`StoreError::NotFound`] when the org does not exist.
    pub async fn put_idempotency(&self, record: &IdempotencyRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO idempotency_keys (org_id, key, request_hash, status, body, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&record.org_id)
        .bind(&record.key)
        .bind(&record.request_hash)
        .bind(i64::from(record.status))
        .bind(&record.body)
        .bind(record.created_at.timestamp_millis())
        .execute(&self.pool)
        .await
        .map_err(write_error(|| format!("idempotency key {:?}", record.key)))?;
        Ok(())
    }

    /// Forgets answers stored before `before`; returns how many were removed.
    pub async fn purge_idempotency(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
            .bind(before.timestamp_millis())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
