//! Managed databases: desired state (run or delete) set by the API, observed status set by
//! the reconciler, the current login (password sealed by the control plane) and a login
//! being retired by a rotation.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::write_error;
use crate::{Desired, Result, Store, StoreError, get_time, new_id, now};

/// A stored database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseRecord {
    /// `db_…` id.
    pub id: String,
    /// The owning org.
    pub org_id: String,
    /// The owning app.
    pub app_id: String,
    /// Name within the app.
    pub name: String,
    /// `postgres`, `mysql` or `redis`.
    pub engine: String,
    /// The address the server binds (the org's gateway).
    pub host: String,
    /// The port.
    pub port: u16,
    /// What the control plane wants.
    pub desired: Desired,
    /// `provisioning`, `healthy`, `failed`, `deleting`.
    pub status: String,
    /// Why it failed, with the server's log tail.
    pub error: Option<String>,
    /// The current login user.
    pub login_user: String,
    /// The current login's password, sealed.
    pub login_password: String,
    /// Credential generation (1 at create, +1 per rotation).
    pub generation: u32,
    /// The administrator's password, sealed.
    pub admin_password: String,
    /// A login a rotation has replaced but not yet revoked.
    pub retired_user: Option<String>,
    /// Logins replaced by rotations whose machine restarts failed: still valid, since machines
    /// may use them, until the next rotation that restarts every machine revokes them.
    pub stale_users: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// What [`Store::create_database`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDatabase {
    /// The owning org.
    pub org_id: String,
    /// The app, which must belong to `org_id`.
    pub app_id: String,
    /// Name within the app.
    pub name: String,
    /// Engine.
    pub engine: String,
    /// Bind address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// First login user.
    pub login_user: String,
    /// Its sealed password.
    pub login_password: String,
    /// The sealed administrator password.
    pub admin_password: String,
}

macro_rules! columns {
    () => {
        "id, org_id, app_id, name, engine, host, port, desired, status, error, login_user, \
         login_password, generation, admin_password, retired_user, stale_users, created_at, \
         updated_at"
    };
}

fn from_row(row: &AnyRow) -> Result<DatabaseRecord> {
    let desired: String = row.try_get("desired")?;
    let port: i64 = row.try_get("port")?;
    let generation: i64 = row.try_get("generation")?;
    Ok(DatabaseRecord {
        id: row.try_get("id")?,
        org_id: row.try_get("org_id")?,
        app_id: row.try_get("app_id")?,
        name: row.try_get("name")?,
        engine: row.try_get("engine")?,
        host: row.try_get("host")?,
        port: u16::try_from(port).map_err(|_| StoreError::Corrupt {
            what: format!("port = {port}"),
        })?,
        desired: Desired::parse(&desired).ok_or_else(|| StoreError::Corrupt {
            what: format!("desired = {desired:?}"),
        })?,
        status: row.try_get("status")?,
        error: row.try_get("error")?,
        login_user: row.try_get("login_user")?,
        login_password: row.try_get("login_password")?,
        generation: u32::try_from(generation).map_err(|_| StoreError::Corrupt {
            what: format!("generation = {generation}"),
        })?,
        admin_password: row.try_get("admin_password")?,
        retired_user: row.try_get("retired_user")?,
        stale_users: stale_users(row)?,
        created_at: get_time(row, "created_at")?,
        updated_at: get_time(row, "updated_at")?,
    })
}

fn stale_users(row: &AnyRow) -> Result<Vec<String>> {
    let json: String = row.try_get("stale_users")?;
    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
        what: format!("stale_users: {e}"),
    })
}

impl Store {
    /// Creates a database that should run (status `provisioning`). [`StoreError::Conflict`]
    /// when the app already has one of that name or the address is taken;
    /// [`StoreError::NotFound`] when the app does not exist in that org.
    pub async fn create_database(&self, new: &NewDatabase) -> Result<DatabaseRecord> {
        let at = now();
        let id = new_id("db");
        let done = sqlx::query(concat!(
            "INSERT INTO databases (",
            columns!(),
            ") SELECT $1, org_id, id, $2, $3, $4, $5, 'running', 'provisioning', NULL, $6, $7, 1, $8, NULL, '[]', $9, $9 \
             FROM apps WHERE id = $10 AND org_id = $11"
        ))
        .bind(&id)
        .bind(&new.name)
        .bind(&new.engine)
        .bind(&new.host)
        .bind(i64::from(new.port))
        .bind(&new.login_user)
        .bind(&new.login_password)
        .bind(&new.admin_password)
        .bind(at.timestamp_millis())
        .bind(&new.app_id)
        .bind(&new.org_id)
        .execute(&self.pool)
        .await
        .map_err(write_error(|| format!("database {:?}", new.name)))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        self.get_database(None, &id).await
    }

    /// Database `id`; with `org_id`, [`StoreError::NotFound`] also when another org owns it.
    pub async fn get_database(&self, org_id: Option<&str>, id: &str) -> Result<DatabaseRecord> {
        let row = match org_id {
            Some(org_id) => {
                sqlx::query(concat!(
                    "SELECT ",
                    columns!(),
                    " FROM databases WHERE id = $1 AND org_id = $2"
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
                    " FROM databases WHERE id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
            }
        };
        row.as_ref()
            .map(from_row)
            .transpose()?
            .ok_or(StoreError::NotFound)
    }

    /// The app's databases, oldest first.
    pub async fn list_databases(&self, app_id: &str) -> Result<Vec<DatabaseRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM databases WHERE app_id = $1 ORDER BY id"
        ))
        .bind(app_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Every database (the reconciler's view).
    pub async fn list_all_databases(&self) -> Result<Vec<DatabaseRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM databases ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Ports in use on `host`.
    pub async fn database_ports(&self, host: &str) -> Result<Vec<u16>> {
        let rows = sqlx::query("SELECT port FROM databases WHERE host = $1")
            .bind(host)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let port: i64 = r.try_get("port")?;
                Ok(u16::try_from(port).unwrap_or(0))
            })
            .collect()
    }

    /// Records an observed status (and the failure, if any).
    pub async fn set_database_status(
        &self,
        id: &str,
        status: &str,
        error: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE databases SET status = $2, error = $3, updated_at = $4 \
             WHERE id = $1 AND desired = 'running'",
        )
        .bind(id)
        .bind(status)
        .bind(error)
        .bind(now().timestamp_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Asks for the database to be deleted (status `deleting`).
    pub async fn delete_database(&self, id: &str) -> Result<()> {
        let done = sqlx::query(
            "UPDATE databases SET desired = 'deleted', status = 'deleting', updated_at = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(now().timestamp_millis())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Makes `user` (sealed `password`) the current login of generation `generation` and
    /// remembers `retired` for revocation, in one statement; only if the generation before
    /// was `generation - 1` (two rotations never interleave).
    pub async fn rotate_database_login(
        &self,
        id: &str,
        generation: u32,
        user: &str,
        password: &str,
        retired: &str,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE databases SET login_user = $2, login_password = $3, generation = $4, \
             retired_user = $5, updated_at = $6 WHERE id = $1 AND generation = $7",
        )
        .bind(id)
        .bind(user)
        .bind(password)
        .bind(i64::from(generation))
        .bind(retired)
        .bind(now().timestamp_millis())
        .bind(i64::from(generation) - 1)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict {
                what: "a newer credential".into(),
            });
        }
        Ok(())
    }

    /// Forgets the retired login once it is revoked.
    pub async fn clear_retired_login(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE databases SET retired_user = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Keeps the retired login among the stale ones instead of revoking it (the machines that
    /// use it could not be restarted).
    pub async fn keep_retired_login(&self, id: &str) -> Result<()> {
        self.change_stale_logins(id, |record| {
            record.retired_user.take().into_iter().collect()
        })
        .await
    }

    /// Forgets stale logins once they are revoked.
    pub async fn forget_stale_logins(&self, id: &str, revoked: &[String]) -> Result<()> {
        self.change_stale_logins(id, |record| {
            record.stale_users.retain(|user| !revoked.contains(user));
            Vec::new()
        })
        .await
    }

    /// Reads the record, lets `change` edit its retired and stale logins (it answers logins
    /// to add to the stale ones), and writes both back, in one transaction.
    async fn change_stale_logins(
        &self,
        id: &str,
        change: impl FnOnce(&mut DatabaseRecord) -> Vec<String>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            columns!(),
            " FROM databases WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let mut record = from_row(&row)?;
        let added = change(&mut record);
        for user in added {
            if !record.stale_users.contains(&user) {
                record.stale_users.push(user);
            }
        }
        let stale =
            serde_json::to_string(&record.stale_users).map_err(|e| StoreError::Corrupt {
                what: format!("stale_users: {e}"),
            })?;
        sqlx::query("UPDATE databases SET retired_user = $2, stale_users = $3 WHERE id = $1")
            .bind(id)
            .bind(record.retired_user)
            .bind(stale)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes the row once the server and its data are gone.
    pub async fn purge_database(&self, id: &str) -> Result<()> {
        sqlx::query("DELETE FROM databases WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
