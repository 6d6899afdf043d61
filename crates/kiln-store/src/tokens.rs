//! API tokens scoped to an org; only a hash of each token is stored.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::write_error;
use crate::{Result, Store, StoreError, get_time, new_id, now};

/// A stored API token (without its secret or hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// `tok_…` id.
    pub id: String,
    /// The org the token acts for.
    pub org_id: String,
    /// A label chosen by whoever created the token.
    pub name: String,
    /// When the token was created.
    pub created_at: DateTime<Utc>,
}

fn from_row(row: &AnyRow) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        name: row.try_get("name")?,
        created_at: get_time(row, "created_at")?,
    })
}

impl Store {
    /// Records a token of org `org_id` by its hash (the caller hashes; the secret never reaches
    /// the store). [`StoreError::NotFound`] when the org does not exist,
    /// [`StoreError::Conflict`] when the hash is already stored.
    pub async fn create_token(
        &self,
        org_id: &str,
        name: &str,
        token_hash: &str,
    ) -> Result<TokenRecord> {
        let record = TokenRecord {
            id: new_id("tok"),
            org_id: org_id.to_owned(),
            name: name.to_owned(),
            created_at: now(),
        };
        sqlx::query(
            "INSERT INTO tokens (id, org_id, name, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&record.id)
        .bind(&record.org_id)
        .bind(&record.name)
        .bind(token_hash)
        .bind(record.created_at.timestamp_millis())
        .execute(&self.pool)
        .await
        .map_err(write_error(|| "token".to_owned()))?;
        Ok(record)
    }

    /// Returns the token whose hash is `token_hash`, if any.
    pub async fn find_token(&self, token_hash: &str) -> Result<Option<TokenRecord>> {
        let row =
            sqlx::query("SELECT id, org_id, name, created_at FROM tokens WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Returns the tokens of org `org_id`, oldest first.
    pub async fn list_tokens(&self, org_id: &str) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(
            "SELECT id, org_id, name, created_at FROM tokens WHERE org_id = $1 ORDER BY id",
        )
        .bind(org_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Revokes token `id` of org `org_id`. [`StoreError::NotFound`] when there is no such token
    /// in that org.
    pub async fn delete_token(&self, org_id: &str, id: &str) -> Result<()> {
        let done = sqlx::query("DELETE FROM tokens WHERE org_id = $1 AND id = $2")
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
