//! Managed databases: PostgreSQL, MySQL (MariaDB) and Redis instances with issued credentials.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /v1/apps/{app}/databases`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres`, `mysql` or `redis`.
    pub engine: String,
    /// Name, unique within the app: a lowercase letter, then lowercase letters, digits or
    /// `_`, at most 32 characters. Names the database inside the server and the variable
    /// `{ENGINE_VAR}_{NAME}` machines get.
    pub name: String,
}

/// Lifecycle of a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseStatus {
    /// The server is being set up; its URL does not work yet.
    Provisioning,
    /// The platform logged in with the issued URL and ran a query.
    Healthy,
    /// Provisioned and running, but the platform's latest login (rechecked every few
    /// seconds) failed; see `error`. Machines keep getting its URL; `healthy` again once a
    /// login works.
    Unhealthy,
    /// Provisioning or starting failed; see `error` (with the server's log tail).
    Failed,
    /// Deletion is in progress.
    Deleting,
    /// Gone: server stopped, data and credentials removed.
    Deleted,
}

/// A managed database.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Database {
    /// `db_…`
    pub id: String,
    /// Owning app, `app_…`.
    pub app: String,
    /// Name within the app.
    pub name: String,
    /// `postgres`, `mysql` or `redis`.
    pub engine: String,
    /// Current status.
    pub status: DatabaseStatus,
    /// Where machines of the org reach it.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The current login user.
    pub user: String,
    /// The connection URL with its password: only in the answers of create and rotate.
    pub url: Option<String>,
    /// The URL with the password masked, always present.
    pub url_masked: String,
    /// The variables machines of the app get the URL in, e.g. `DATABASE_URL` and
    /// `DATABASE_URL_MAIN`.
    pub env: Vec<String>,
    /// Why it failed, with the server's log tail, when it did.
    pub error: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Answer of `DELETE /v1/databases/{db}`: what was deleted and who loses it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DatabaseDeleted {
    /// The database id.
    pub id: String,
    /// `deleted` once server, data and credentials are gone; `deleting` while that is still
    /// under way (it finishes in the background).
    pub status: DatabaseStatus,
    /// Apps whose machines were given this database's URL (running sandboxes or a live
    /// deployment) and lose it: their next boot no longer has the variables.
    pub detached_apps: Vec<DetachedApp>,
}

/// An app that loses a deleted database.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DetachedApp {
    /// `app_…`
    pub id: String,
    /// The app's slug.
    pub slug: String,
    /// Variables its machines lose.
    pub env: Vec<String>,
    /// What of the app was using it: `sandbox`, `deployment`.
    pub machines: Vec<String>,
}

/// Answer of `POST /v1/databases/{db}/credentials/rotate`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Rotated {
    /// The database, with the new `url` in full.
    pub database: Database,
    /// The user whose credential was revoked.
    pub revoked_user: String,
    /// Deployments restarted with the new URL (a new machine, then a route switch).
    pub restarted_deployments: Vec<String>,
    /// Sandboxes restarted with the new URL.
    pub restarted_sandboxes: Vec<String>,
}
