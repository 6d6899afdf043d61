//! Orgs, their brand and their API tokens.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How an org's end-user pages look.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Brand {
    /// Display name shown to end users.
    #[serde(default)]
    pub name: String,
    /// Primary colour as `#rrggbb`.
    #[serde(default)]
    pub primary_color: Option<String>,
    /// Absolute `https://` URL of the logo.
    #[serde(default)]
    pub logo_url: Option<String>,
    /// Absolute URL end users can turn to for help.
    #[serde(default)]
    pub support_url: Option<String>,
}

/// Body of `POST /v1/orgs`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgConfig {
    /// Human name.
    pub name: String,
    /// DNS label, unique on the platform.
    pub slug: String,
    /// Base domain under which the org's apps are served.
    pub base_domain: String,
    /// End-user brand.
    #[serde(default)]
    pub brand: Brand,
}

/// Body of `PATCH /v1/orgs/{org}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgUpdate {
    /// New human name.
    #[serde(default)]
    pub name: Option<String>,
    /// New brand (replaces the old one).
    #[serde(default)]
    pub brand: Option<Brand>,
}

/// An org.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Org {
    /// `org_…`
    pub id: String,
    /// Human name.
    pub name: String,
    /// DNS label.
    pub slug: String,
    /// Base domain of the org's apps.
    pub base_domain: String,
    /// End-user brand.
    pub brand: Brand,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /v1/orgs/{org}/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Name recorded as the creator of what the token does.
    pub name: String,
}

/// Answer of `POST /v1/orgs/{org}/tokens`: the secret is shown once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    /// `tok_…`
    pub id: String,
    /// The token's name.
    pub name: String,
    /// The bearer token; only its hash is stored.
    pub token: String,
}

/// A compute host, from `GET /v1/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Node {
    /// `node_…`
    pub id: String,
    /// `ready` or `unavailable`.
    pub status: String,
    /// Runtime driver: `process`, `qemu` or `firecracker`.
    pub driver: String,
    /// Whether machines run with hardware virtualisation.
    pub hardware_accelerated: bool,
    /// Logical CPUs of the host.
    pub cpus: u32,
    /// Memory of the host in MiB.
    pub memory_mib: u64,
    /// Machines running on the node.
    pub machines_running: u32,
}
