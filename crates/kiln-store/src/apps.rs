//! Apps: the named unit of an org that sandboxes (and later releases) belong to.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::write_error;
use crate::{Result, Store, StoreError, get_time, new_id, now, page_limit};

/// A stored app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRecord {
    /// `app_…` id.
    pub id: String,
    /// The org that owns the app.
    pub org_id: String,
    /// Display name.
    pub name: String,
    /// Short name, unique within the org.
    pub slug: String,
    /// The sandbox port the preview URL serves, once a preview was asked for.
    pub preview_port: Option<u16>,
    /// When the app was created.
    pub created_at: DateTime<Utc>,
}

/// The columns [`from_row`] reads, for `concat!` into queries.
macro_rules! columns {
    () => {
        "id, org_id, name, slug, preview_port, created_at"
    };
}

fn from_row(row: &AnyRow) -> Result<AppRecord> {
    Ok(AppRecord {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        name: row.try_get("name")?,
        slug: row.try_get("slug")?,
        preview_port: row
            .try_get::<Option<i64>, _>("preview_port")?
            .map(|p| {
                u16::try_from(p).map_err(|_| StoreError::Corrupt {
                    what: format!("preview port {p}"),
                })
            })
            .transpose()?,
        created_at: get_time(row, "created_at")?,
    })
}

impl Store {
    /// Creates an app in org `org_id`. [`StoreError::Conflict`] when the slug is taken in that
    /// org, [`StoreError::NotFound`] when the org does not exist.
    pub async fn create_app(&self, org_id: &str, name: &str, slug: &str) -> Result<AppRecord> {
        let record = AppRecord {
            id: new_id("app"),
            org_id: org_id.to_owned(),
            name: name.to_owned(),
            slug: slug.to_owned(),
            preview_port: None,
            created_at: now(),
        };
        sqlx::query(
            "INSERT INTO apps (id, org_id, name, slug, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&record.id)
        .bind(&record.org_id)
        .bind(&record.name)
        .bind(&record.slug)
        .bind(record.created_at.timestamp_millis())
        .execute(&self.pool)
        .await
        .map_err(write_error(|| format!("app slug {slug:?}")))?;
        Ok(record)
    }

    /// Returns the app of org `org_id` whose id or slug is `id_or_slug` (an id match wins).
    /// [`StoreError::NotFound`] also when the app belongs to another org.
    pub async fn get_app(&self, org_id: &str, id_or_slug: &str) -> Result<AppRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM apps WHERE org_id = $1 AND (id = $2 OR slug = $2) \
             ORDER BY CASE WHEN id = $2 THEN 0 ELSE 1 END LIMIT 1"
        ))
        .bind(org_id)
        .bind(id_or_slug)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        from_row(&row)
    }

    /// Returns up to `limit` (at most [`crate::MAX_PAGE`]) apps of org `org_id` in id order,
    /// starting after id `after`.
    pub async fn list_apps(
        &self,
        org_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AppRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM apps WHERE org_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind(org_id)
        .bind(after.unwrap_or(""))
        .bind(page_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Sets (or clears) the sandbox port the app's preview serves.
    pub async fn set_app_preview_port(
        &self,
        org_id: &str,
        id: &str,
        port: Option<u16>,
    ) -> Result<AppRecord> {
        let done = sqlx::query("UPDATE apps SET preview_port = $3 WHERE org_id = $1 AND id = $2")
            .bind(org_id)
            .bind(id)
            .bind(port.map(i64::from))
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_app(org_id, id).await
    }

    /// Every app of every org, oldest first: what the edge's route table is built from.
    pub async fn list_all_apps(&self) -> Result<Vec<AppRecord>> {
        let rows = sqlx::query(concat!("SELECT ", columns!(), " FROM apps ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Deletes app `id` of org `org_id`. Its sandboxes are not touched: the control plane
    /// retires them first. [`StoreError::NotFound`] when there is no such app in that org.
    pub async fn delete_app(&self, org_id: &str, id: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM apps WHERE org_id = $1 AND id = $2")
            .bind(org_id)
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}
