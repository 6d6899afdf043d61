//! Apps.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /v1/apps`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Human name.
    pub name: String,
    /// DNS label, unique in the org; derived from the name when absent.
    #[serde(default)]
    pub slug: Option<String>,
}

/// The URLs an app is reachable at.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppUrls {
    /// `http(s)://{slug}.sandbox.{base}`: the live sandbox.
    pub preview: String,
    /// `http(s)://{slug}.{base}`: the live deployment.
    pub production: String,
}

/// An app.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct App {
    /// `app_…`
    pub id: String,
    /// Owning org, `org_…`.
    pub org: String,
    /// Human name.
    pub name: String,
    /// DNS label.
    pub slug: String,
    /// Where the app answers.
    pub urls: AppUrls,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /v1/apps/{app}/preview`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewConfig {
    /// The sandbox port the dev server listens on (bound to `0.0.0.0`).
    pub port: u16,
}

/// Answer of `POST /v1/apps/{app}/preview`: given only once the port answers through the edge.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Preview {
    /// The stable preview URL.
    pub url: String,
    /// `ready`.
    pub status: String,
    /// The sandbox port it serves.
    pub port: u16,
    /// The sandbox serving it now, `sbx_…`.
    pub sandbox: String,
}
