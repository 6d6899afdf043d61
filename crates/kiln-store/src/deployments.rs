//! Deployments: each promotion of a release to an app's production host, with its outcome.
//! At most one deployment per app is live; switching is one transaction.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError, get_time, new_id, now};

/// A stored deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// `dep_…` id; also the id of its machine.
    pub id: String,
    /// Owning org.
    pub org_id: String,
    /// Owning app.
    pub app_id: String,
    /// The release it runs.
    pub release_id: String,
    /// `pending`, `healthy`, `live`, `superseded`, `stopped` or `failed`.
    pub status: String,
    /// Why it failed, when it did.
    pub reason: Option<String>,
    /// The tail of the machine's log when it failed.
    pub log_tail: Option<String>,
    /// `IP:PORT` its machine serves on, while it runs.
    pub address: Option<String>,
    /// Whether production points at it.
    pub live: bool,
    /// Name of the token that asked for it.
    pub created_by: String,
    /// When it was asked for.
    pub created_at: DateTime<Utc>,
    /// Last status change.
    pub updated_at: DateTime<Utc>,
}

macro_rules! columns {
    () => {
        "id, org_id, app_id, release_id, status, reason, log_tail, address, live, created_by, created_at, updated_at"
    };
}

fn from_row(row: &AnyRow) -> Result<DeploymentRecord> {
    let live: i64 = row.try_get("live")?;
    Ok(DeploymentRecord {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        app_id: row.try_get("app_id")?,
        release_id: row.try_get("release_id")?,
        status: row.try_get("status")?,
        reason: row.try_get("reason")?,
        log_tail: row.try_get("log_tail")?,
        address: row.try_get("address")?,
        live: live != 0,
        created_by: row.try_get("created_by")?,
        created_at: get_time(row, "created_at")?,
        updated_at: get_time(row, "updated_at")?,
    })
}

impl Store {
    /// Records a new deployment of `release_id`, `pending` and not live.
    pub async fn create_deployment(
        &self,
        org_id: &str,
        app_id: &str,
        release_id: &str,
        created_by: &str,
    ) -> Result<DeploymentRecord> {
        let at = now();
        let record = DeploymentRecord {
            id: new_id("dep"),
            org_id: org_id.to_owned(),
            app_id: app_id.to_owned(),
            release_id: release_id.to_owned(),
            status: "pending".into(),
            reason: None,
            log_tail: None,
            address: None,
            live: false,
            created_by: created_by.to_owned(),
            created_at: at,
            updated_at: at,
        };
        sqlx::query(concat!(
            "INSERT INTO deployments (",
            columns!(),
            ") VALUES ($1, $2, $3, $4, $5, NULL, NULL, NULL, 0, $6, $7, $7)"
        ))
        .bind(&record.id)
        .bind(org_id)
        .bind(app_id)
        .bind(release_id)
        .bind(&record.status)
        .bind(created_by)
        .bind(at.timestamp_millis())
        .execute(&self.pool)
        .await?;
        Ok(record)
    }

    /// A deployment by id; `org_id` `None` for any org.
    pub async fn get_deployment(&self, org_id: Option<&str>, id: &str) -> Result<DeploymentRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM deployments WHERE id = $1 AND ($2 IS NULL OR org_id = $2)"
        ))
        .bind(id)
        .bind(org_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(from_row)
            .transpose()?
            .ok_or(StoreError::NotFound)
    }

    /// The app's deployments, newest first.
    pub async fn list_deployments(
        &self,
        org_id: &str,
        app_id: &str,
    ) -> Result<Vec<DeploymentRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM deployments WHERE org_id = $1 AND app_id = $2 ORDER BY id DESC"
        ))
        .bind(org_id)
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Deployments whose machine may run: pending, healthy, live or superseded (warm).
    pub async fn list_active_deployments(&self) -> Result<Vec<DeploymentRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM deployments WHERE status IN ('pending', 'healthy', 'live', 'superseded') ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Sets a deployment's status, reason, log tail and address.
    pub async fn set_deployment_status(
        &self,
        id: &str,
        status: &str,
        reason: Option<&str>,
        log_tail: Option<&str>,
        address: Option<&str>,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE deployments SET status = $2, reason = $3, log_tail = $4, address = $5, updated_at = $6 WHERE id = $1",
        )
        .bind(id)
        .bind(status)
        .bind(reason)
        .bind(log_tail)
        .bind(address)
        .bind(now().timestamp_millis())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Makes `id` the app's live deployment and the previous live one `superseded`, in one
    /// transaction, so production never points at two or at none.
    pub async fn make_live(&self, app_id: &str, id: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let at = now().timestamp_millis();
        sqlx::query("UPDATE deployments SET live = 0, status = 'superseded', updated_at = $2 WHERE app_id = $1 AND live = 1 AND id <> $3")
            .bind(app_id)
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("UPDATE deployments SET live = 1, status = 'live', updated_at = $3 WHERE app_id = $1 AND id = $2")
            .bind(app_id)
            .bind(id)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    /// The app's live deployment, if any.
    pub async fn live_deployment(&self, app_id: &str) -> Result<Option<DeploymentRecord>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM deployments WHERE app_id = $1 AND live = 1"
        ))
        .bind(app_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }
}
