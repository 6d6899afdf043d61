//! Releases: immutable, numbered per app (`v1`, `v2`, …), each pointing at one artifact by
//! digest. There is no update and no delete: history is the point.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::write_error;
use crate::{Result, Store, StoreError, get_time, new_id, now};

/// A stored release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    /// `rel_…` id.
    pub id: String,
    /// Owning org.
    pub org_id: String,
    /// Owning app.
    pub app_id: String,
    /// 1, 2, … per app.
    pub version: u32,
    /// `sha256:…` of the artifact.
    pub digest: String,
    /// Artifact size in bytes.
    pub size: u64,
    /// Manifest as JSON text.
    pub manifest: String,
    /// Provenance as JSON text.
    pub provenance: String,
    /// Signature over manifest, provenance and digest.
    pub signature: String,
    /// When it was published.
    pub created_at: DateTime<Utc>,
}

/// What a new release is made of; id and version are assigned by the store.
#[derive(Clone, Debug)]
pub struct NewRelease {
    /// Owning org.
    pub org_id: String,
    /// Owning app.
    pub app_id: String,
    /// Artifact digest.
    pub digest: String,
    /// Artifact size.
    pub size: u64,
    /// Manifest JSON.
    pub manifest: String,
    /// Provenance JSON.
    pub provenance: String,
}

macro_rules! columns {
    () => {
        "id, org_id, app_id, version, digest, size, manifest, provenance, signature, created_at"
    };
}

fn from_row(row: &AnyRow) -> Result<ReleaseRecord> {
    let version: i64 = row.try_get("version")?;
    let size: i64 = row.try_get("size")?;
    Ok(ReleaseRecord {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        app_id: row.try_get("app_id")?,
        version: u32::try_from(version).map_err(|_| StoreError::Corrupt {
            what: format!("release version {version}"),
        })?,
        digest: row.try_get("digest")?,
        size: u64::try_from(size).map_err(|_| StoreError::Corrupt {
            what: format!("release size {size}"),
        })?,
        manifest: row.try_get("manifest")?,
        provenance: row.try_get("provenance")?,
        signature: row.try_get("signature")?,
        created_at: get_time(row, "created_at")?,
    })
}

impl Store {
    /// Stores a release with the next version of its app. `sign` gets the record (with its
    /// id, version and time) and returns the signature, so what is signed is what is stored.
    pub async fn create_release(
        &self,
        new: &NewRelease,
        sign: impl Fn(&ReleaseRecord) -> String,
    ) -> Result<ReleaseRecord> {
        // Two publishes racing for one version: the unique (app_id, version) index refuses
        // the loser, which takes the next number.
        for _ in 0..8 {
            let next: i64 = sqlx::query(
                "SELECT COALESCE(MAX(version), 0) + 1 AS next FROM releases WHERE app_id = $1",
            )
            .bind(&new.app_id)
            .fetch_one(&self.pool)
            .await?
            .try_get("next")?;
            let mut record = ReleaseRecord {
                id: new_id("rel"),
                org_id: new.org_id.clone(),
                app_id: new.app_id.clone(),
                version: u32::try_from(next).map_err(|_| StoreError::Corrupt {
                    what: "release version".into(),
                })?,
                digest: new.digest.clone(),
                size: new.size,
                manifest: new.manifest.clone(),
                provenance: new.provenance.clone(),
                signature: String::new(),
                created_at: now(),
            };
            record.signature = sign(&record);
            let inserted = sqlx::query(concat!(
                "INSERT INTO releases (",
                columns!(),
                ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            ))
            .bind(&record.id)
            .bind(&record.org_id)
            .bind(&record.app_id)
            .bind(next)
            .bind(&record.digest)
            .bind(i64::try_from(record.size).unwrap_or(i64::MAX))
            .bind(&record.manifest)
            .bind(&record.provenance)
            .bind(&record.signature)
            .bind(record.created_at.timestamp_millis())
            .execute(&self.pool)
            .await
            .map_err(write_error(|| format!("release v{next}")));
            match inserted {
                Ok(_) => return Ok(record),
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict {
            what: "release version (too many concurrent publishes)".into(),
        })
    }

    /// A release of the org by id, or by `vN` within `app_id` when given.
    pub async fn get_release(
        &self,
        org_id: &str,
        app_id: Option<&str>,
        id_or_version: &str,
    ) -> Result<ReleaseRecord> {
        let version = id_or_version
            .strip_prefix('v')
            .and_then(|v| v.parse::<i64>().ok());
        let row = match (app_id, version) {
            (Some(app_id), Some(version)) => {
                sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM releases WHERE org_id = $1 AND app_id = $2 AND version = $3"
                ))
                .bind(org_id)
                .bind(app_id)
                .bind(version)
                .fetch_optional(&self.pool)
                .await?
            }
            _ => {
                sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM releases WHERE org_id = $1 AND id = $2"
                ))
                .bind(org_id)
                .bind(id_or_version)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        row.as_ref()
            .map(from_row)
            .transpose()?
            .ok_or(StoreError::NotFound)
    }

    /// The app's releases, newest first.
    pub async fn list_releases(&self, org_id: &str, app_id: &str) -> Result<Vec<ReleaseRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM releases WHERE org_id = $1 AND app_id = $2 ORDER BY version DESC"
        ))
        .bind(org_id)
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// How many releases point at `digest` (anywhere).
    pub async fn count_releases_with_digest(&self, digest: &str) -> Result<u64> {
        let n: i64 = sqlx::query("SELECT COUNT(*) AS n FROM releases WHERE digest = $1")
            .bind(digest)
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
