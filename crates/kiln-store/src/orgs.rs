//! Organisations: the tenants that own apps, sandboxes and tokens.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::write_error;
use crate::{Result, Store, StoreError, get_time, new_id, now};

/// A stored organisation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgRecord {
    /// `org_…` id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Unique short name, used in hostnames and URLs.
    pub slug: String,
    /// Domain under which the org's apps are served, e.g. `apps.clinic.example`.
    pub base_domain: String,
    /// Branding as JSON text; the store does not look inside.
    pub brand: String,
    /// When the org was created.
    pub created_at: DateTime<Utc>,
}

/// What [`Store::create_org`] needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrg {
    /// Display name.
    pub name: String,
    /// Unique short name.
    pub slug: String,
    /// Domain under which the org's apps are served.
    pub base_domain: String,
    /// Branding as JSON text.
    pub brand: String,
}

/// The columns [`from_row`] reads, for `concat!` into queries.
macro_rules! columns {
    () => {
        "id, name, slug, base_domain, brand, created_at"
    };
}

fn from_row(row: &AnyRow) -> Result<OrgRecord> {
    Ok(OrgRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        slug: row.try_get("slug")?,
        base_domain: row.try_get("base_domain")?,
        brand: row.try_get("brand")?,
        created_at: get_time(row, "created_at")?,
    })
}

impl Store {
    /// Creates an org. [`StoreError::Conflict`] when the slug is taken.
    pub async fn create_org(&self, new: &NewOrg) -> Result<OrgRecord> {
        let record = OrgRecord {
            id: new_id("org"),
            name: new.name.clone(),
            slug: new.slug.clone(),
            base_domain: new.base_domain.clone(),
            brand: new.brand.clone(),
            created_at: now(),
        };
        sqlx::query(
            "INSERT INTO orgs (id, name, slug, base_domain, brand, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&record.id)
        .bind(&record.name)
        .bind(&record.slug)
        .bind(&record.base_domain)
        .bind(&record.brand)
        .bind(record.created_at.timestamp_millis())
        .execute(&self.pool)
        .await
        .map_err(write_error(|| format!("org slug {:?}", new.slug)))?;
        Ok(record)
    }

    /// Returns the org whose id or slug is `id_or_slug` (an id match wins).
    pub async fn get_org(&self, id_or_slug: &str) -> Result<OrgRecord> {
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM orgs WHERE id = $1 OR slug = $1 \
             ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END LIMIT 1"
        ))
        .bind(id_or_slug)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        from_row(&row)
    }

    /// Returns every org, oldest first.
    pub async fn list_orgs(&self) -> Result<Vec<OrgRecord>> {
        let rows = sqlx::query(concat!("SELECT ", columns!(), " FROM orgs ORDER BY id"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Changes the name and/or brand of the org with id `id`; `None` leaves a field as it is.
    pub async fn update_org(
        &self,
        id: &str,
        name: Option<&str>,
        brand: Option<&str>,
    ) -> Result<OrgRecord> {
        let row = sqlx::query(concat!(
            "UPDATE orgs SET name = COALESCE($2, name), brand = COALESCE($3, brand) \
             WHERE id = $1 RETURNING ",
            columns!()
        ))
        .bind(id)
        .bind(name)
        .bind(brand)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        from_row(&row)
    }
}
