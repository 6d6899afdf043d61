//! Sandboxes: desired state (run or delete) set by the API, observed status set by the
//! reconciler, and the row itself removed only once the machine is gone.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::write_error;
use crate::{Result, Store, StoreError, get_time, new_id, now, page_limit};

/// What the control plane wants to become of a sandbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    /// The machine should exist and run.
    Running,
    /// The machine should be torn down, after which the row is purged.
    Deleted,
}

impl Desired {
    /// The stored spelling: `running` or `deleted`.
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Deleted => "deleted",
        }
    }

    /// Reads the stored spelling back; `None` for anything else.
    pub fn parse(s: &str) -> Option<Desired> {
        match s {
            "running" => Some(Desired::Running),
            "deleted" => Some(Desired::Deleted),
            _ => None,
        }
    }
}

/// The status a sandbox has when it is created, before the reconciler has seen it.
pub const STATUS_STARTING: &str = "starting";

/// A stored sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    /// `sbx_…` id.
    pub id: String,
    /// The org that owns the sandbox.
    pub org_id: String,
    /// The app the sandbox belongs to.
    pub app_id: String,
    /// Root filesystem image reference.
    pub image: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Environment as JSON text; the store does not look inside.
    pub env: String,
    /// What the control plane wants.
    pub desired: Desired,
    /// What the reconciler last observed: `starting`, `running`, `failed`, `deleting`.
    pub status: String,
    /// The machine's network address once known.
    pub address: Option<String>,
    /// Why the sandbox failed, if it did.
    pub error: Option<String>,
    /// When the sandbox was created.
    pub created_at: DateTime<Utc>,
    /// When desired state or status last changed.
    pub updated_at: DateTime<Utc>,
}

/// What [`Store::create_sandbox`] needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewSandbox {
    /// The owning org.
    pub org_id: String,
    /// The app, which must belong to `org_id`.
    pub app_id: String,
    /// Root filesystem image reference.
    pub image: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Environment as JSON text.
    pub env: String,
}

/// The columns [`from_row`] reads, for `concat!` into queries.
macro_rules! columns {
    () => {
        "id, org_id, app_id, image, vcpus, memory_mib, env, desired, status, address, error, \
         created_at, updated_at"
    };
}

fn from_row(row: &AnyRow) -> Result<SandboxRecord> {
    let desired: String = row.try_get("desired")?;
    Ok(SandboxRecord {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        app_id: row.try_get("app_id")?,
        image: row.try_get("image")?,
        vcpus: get_u32(row, "vcpus")?,
        memory_mib: get_u32(row, "memory_mib")?,
        env: row.try_get("env")?,
        desired: Desired::parse(&desired).ok_or_else(|| StoreError::Corrupt {
            what: format!("desired = {desired:?}"),
        })?,
        status: row.try_get("status")?,
        address: row.try_get("address")?,
        error: row.try_get("error")?,
        created_at: get_time(row, "created_at")?,
        updated_at: get_time(row, "updated_at")?,
    })
}

fn get_u32(row: &AnyRow, column: &str) -> Result<u32> {
    let value: i64 = row.try_get(column)?;
    u32::try_from(value).map_err(|_| StoreError::Corrupt {
        what: format!("{column} = {value} is out of range"),
    })
}

impl Store {
    /// Creates a sandbox that should run (desired `running`, status `starting`).
    /// [`StoreError::NotFound`] when the app does not exist in that org.
    pub async fn create_sandbox(&self, new: &NewSandbox) -> Result<SandboxRecord> {
        let created_at = now();
        let record = SandboxRecord {
            id: new_id("sbx"),
            org_id: new.org_id.clone(),
            app_id: new.app_id.clone(),
            image: new.image.clone(),
            vcpus: new.vcpus,
            memory_mib: new.memory_mib,
            env: new.env.clone(),
            desired: Desired::Running,
            status: STATUS_STARTING.to_owned(),
            address: None,
            error: None,
            created_at,
            updated_at: created_at,
        };
        // Inserting from the app's row checks, in the same statement, that the app exists and
        // belongs to the org.
        let done = sqlx::query(concat!(
            "INSERT INTO sandboxes (",
            columns!(),
            ") SELECT $1, org_id, id, $2, $3, $4, $5, $6, $7, NULL, NULL, $8, $8 \
             FROM apps WHERE id = $9 AND org_id = $10"
        ))
        .bind(&record.id)
        .bind(&record.image)
        .bind(i64::from(record.vcpus))
        .bind(i64::from(record.memory_mib))
        .bind(&record.env)
        .bind(record.desired.as_str())
        .bind(&record.status)
        .bind(created_at.timestamp_millis())
        .bind(&new.app_id)
        .bind(&new.org_id)
        .execute(&self.pool)
        .await
        .map_err(write_error(|| "sandbox".to_owned()))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(record)
    }

    /// Returns sandbox `id`; with `org_id` set, [`StoreError::NotFound`] also when it belongs
    /// to another org. `None` looks in every org (operator and reconciler).
    pub async fn get_sandbox(&self, org_id: Option<&str>, id: &str) -> Result<SandboxRecord> {
        let row = match org_id {
            Some(org_id) => {
                sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM sandboxes WHERE id = $1 AND org_id = $2"
                ))
                .bind(id)
                .bind(org_id)
                .fetch_optional(&self.pool)
                .await?
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM sandboxes WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        from_row(&row.ok_or(StoreError::NotFound)?)
    }

    /// Returns up to `limit` (at most [`crate::MAX_PAGE`]) sandboxes of org `org_id`, of app
    /// `app_id` if given, in id order, starting after id `after`. Sandboxes whose desired state
    /// is `deleted` are included until they are purged.
    pub async fn list_sandboxes(
        &self,
        org_id: &str,
        app_id: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SandboxRecord>> {
        let after = after.unwrap_or("");
        let limit = page_limit(limit);
        let rows = match app_id {
            Some(app_id) => sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM sandboxes WHERE org_id = $1 AND app_id = $2 AND id > $3 ORDER BY id LIMIT $4"
            ))
            .bind(org_id)
            .bind(app_id)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?,
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM sandboxes WHERE org_id = $1 AND id > $2 ORDER BY id LIMIT $3"
                ))
                .bind(org_id)
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(from_row).collect()
    }

    /// Returns every sandbox of every org, in id order (for the reconciler).
    pub async fn list_all_sandboxes(&self) -> Result<Vec<SandboxRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM sandboxes ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Sets what should become of sandbox `id`. [`StoreError::NotFound`] when it does not exist.
    pub async fn set_sandbox_desired(&self, id: &str, desired: Desired) -> Result<()> {
        let done = sqlx::query("UPDATE sandboxes SET desired = $2, updated_at = $3 WHERE id = $1")
            .bind(id)
            .bind(desired.as_str())
            .bind(now().timestamp_millis())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Records what the reconciler observed of sandbox `id`; `address` and `error` are stored
    /// as given (`None` clears them). [`StoreError::NotFound`] when it does not exist.
    pub async fn set_sandbox_status(
        &self,
        id: &str,
        status: &str,
        address: Option<&str>,
        error: Option<&str>,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE sandboxes SET status = $2, address = $3, error = $4, updated_at = $5 WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(address)
        .bind(error)
        .bind(now().timestamp_millis())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Removes sandbox `id` and its processes in one transaction. Purging a sandbox that is
    /// already gone succeeds, so a reconciler may retry freely.
    pub async fn purge_sandbox(&self, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM processes WHERE sandbox_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM sandboxes WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
