//! S3 buckets: name, owner, and the bucket's key pair (secret sealed by the control plane).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::write_error;
use crate::{Result, Store, StoreError, get_time, now};

/// A stored bucket.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRecord {
    /// The bucket name, unique on the node.
    pub name: String,
    /// The org that owns it.
    pub org_id: String,
    /// The app it belongs to.
    pub app_id: String,
    /// Public half of its key pair.
    pub access_key_id: String,
    /// Secret half, sealed.
    pub secret_sealed: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for BucketRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketRecord")
            .field("name", &self.name)
            .field("org_id", &self.org_id)
            .field("app_id", &self.app_id)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

macro_rules! columns {
    () => {
        "name, org_id, app_id, access_key_id, secret_sealed, created_at"
    };
}

fn from_row(row: &AnyRow) -> Result<BucketRecord> {
    Ok(BucketRecord {
        name: row.try_get("name")?,
        org_id: row.try_get("org_id")?,
        app_id: row.try_get("app_id")?,
        access_key_id: row.try_get("access_key_id")?,
        secret_sealed: row.try_get("secret_sealed")?,
        created_at: get_time(row, "created_at")?,
    })
}

impl Store {
    /// Records a bucket. [`StoreError::Conflict`] when the name is taken (by any org),
    /// [`StoreError::NotFound`] when the app does not exist.
    pub async fn create_bucket(
        &self,
        name: &str,
        org_id: &str,
        app_id: &str,
        access_key_id: &str,
        secret_sealed: &str,
    ) -> Result<BucketRecord> {
        let record = BucketRecord {
            name: name.to_owned(),
            org_id: org_id.to_owned(),
            app_id: app_id.to_owned(),
            access_key_id: access_key_id.to_owned(),
            secret_sealed: secret_sealed.to_owned(),
            created_at: now(),
        };
        sqlx::query(concat!(
            "INSERT INTO buckets (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(&record.name)
        .bind(&record.org_id)
        .bind(&record.app_id)
        .bind(&record.access_key_id)
        .bind(&record.secret_sealed)
        .bind(record.created_at.timestamp_millis())
        .execute(&self.pool)
        .await
        .map_err(write_error(|| format!("bucket {name:?}")))?;
        Ok(record)
    }

    /// The bucket named `name` if org `org_id` owns it; [`StoreError::NotFound`] otherwise
    /// (another org's bucket looks exactly like a missing one).
    pub async fn get_bucket(&self, org_id: &str, name: &str) -> Result<BucketRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM buckets WHERE name = $1 AND org_id = $2"
        ))
        .bind(name)
        .bind(org_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        from_row(&row)
    }

    /// An app's buckets, oldest first.
    pub async fn list_buckets(&self, app_id: &str) -> Result<Vec<BucketRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM buckets WHERE app_id = $1 ORDER BY created_at, name"
        ))
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Every bucket on the node (to load keys at start).
    pub async fn list_all_buckets(&self) -> Result<Vec<BucketRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM buckets ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Forgets a bucket; [`StoreError::NotFound`] when there was none.
    pub async fn delete_bucket(&self, name: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM buckets WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
