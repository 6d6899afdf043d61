//! An app's configuration variables. Values arrive already sealed when secret; the store
//! keeps whatever text it is given.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Result, Store, StoreError, get_time, now};

/// One stored variable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVarRecord {
    /// The app.
    pub app_id: String,
    /// Variable name.
    pub name: String,
    /// The value, or for a secret its sealed form.
    pub value: String,
    /// Whether the value is a sealed secret.
    pub secret: bool,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

fn from_row(row: &AnyRow) -> Result<EnvVarRecord> {
    let secret: i64 = row.try_get("secret")?;
    Ok(EnvVarRecord {
        app_id: row.try_get("app_id")?,
        name: row.try_get("name")?,
        value: row.try_get("value")?,
        secret: secret != 0,
        updated_at: get_time(row, "updated_at")?,
    })
}

impl Store {
    /// Sets a variable (insert or replace).
    pub async fn set_env(&self, app_id: &str, name: &str, value: &str, secret: bool) -> Result<()> {
        let at = now().timestamp_millis();
        // Two statements rather than a dialect-specific upsert; the primary key keeps one row.
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM app_env WHERE app_id = $1 AND name = $2")
            .bind(app_id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO app_env (app_id, name, value, secret, updated_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(app_id)
            .bind(name)
            .bind(value)
            .bind(i64::from(secret))
            .bind(at)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a variable; [`StoreError::NotFound`] when it was not set.
    pub async fn unset_env(&self, app_id: &str, name: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM app_env WHERE app_id = $1 AND name = $2")
            .bind(app_id)
            .bind(name)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// The app's variables by name.
    pub async fn list_env(&self, app_id: &str) -> Result<Vec<EnvVarRecord>> {
        let rows = sqlx::query("SELECT app_id, name, value, secret, updated_at FROM app_env WHERE app_id = $1 ORDER BY name")
            .bind(app_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Records what a deployment's machine was given (name → value fingerprint, JSON).
    pub async fn set_deployment_env(&self, id: &str, fingerprint: &str) -> Result<()> {
        sqlx::query("UPDATE deployments SET env_fingerprint = $2 WHERE id = $1")
            .bind(id)
            .bind(fingerprint)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// What a deployment's machine was given, if recorded.
    pub async fn deployment_env(&self, id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT env_fingerprint FROM deployments WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => row.try_get::<Option<String>, _>("env_fingerprint")?,
            None => None,
        })
    }
}
