//! Supervised processes declared for a sandbox (the dev server and friends), by name.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::write_error;
use crate::{Result, Store, StoreError, get_time, now};

/// A stored process declaration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// The sandbox the process runs in.
    pub sandbox_id: String,
    /// Name, unique within the sandbox.
    pub name: String,
    /// The process spec as JSON text; the store does not look inside.
    pub spec: String,
    /// When a process of this name was first declared.
    pub created_at: DateTime<Utc>,
}

fn from_row(row: &AnyRow) -> Result<ProcessRecord> {
    Ok(ProcessRecord {
        sandbox_id: row.try_get("sandbox_id")?,
        name: row.try_get("name")?,
        spec: row.try_get("spec")?,
        created_at: get_time(row, "created_at")?,
    })
}

impl Store {
    /// Declares process `name` in sandbox `sandbox_id`, replacing the spec of an existing one
    /// (which keeps its `created_at`). [`StoreError::NotFound`] when the sandbox does not exist.
    pub async fn upsert_process(
        &self,
        sandbox_id: &str,
        name: &str,
        spec: &str,
    ) -> Result<ProcessRecord> {
        let row = sqlx::query(
            "INSERT INTO processes (sandbox_id, name, spec, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (sandbox_id, name) DO UPDATE SET spec = excluded.spec \
             RETURNING sandbox_id, name, spec, created_at",
        )
        .bind(sandbox_id)
        .bind(name)
        .bind(spec)
        .bind(now().timestamp_millis())
        .fetch_one(&self.pool)
        .await
        .map_err(write_error(|| format!("process {name:?}")))?;
        from_row(&row)
    }

    /// Returns the processes of sandbox `sandbox_id`, by name.
    pub async fn list_processes(&self, sandbox_id: &str) -> Result<Vec<ProcessRecord>> {
        let rows = sqlx::query(
            "SELECT sandbox_id, name, spec, created_at FROM processes WHERE sandbox_id = $1 ORDER BY name",
        )
        .bind(sandbox_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Removes process `name` from sandbox `sandbox_id`. [`StoreError::NotFound`] when there
    /// is no such process.
    pub async fn delete_process(&self, sandbox_id: &str, name: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM processes WHERE sandbox_id = $1 AND name = $2")
            .bind(sandbox_id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
