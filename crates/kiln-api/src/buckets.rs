//! S3 buckets and presigned URLs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /v1/apps/{app}/buckets`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// S3 bucket name: 3–63 lowercase letters, digits and hyphens, unique on the platform.
    pub name: String,
}

/// A bucket with its own key pair.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct Bucket {
    /// The bucket name.
    pub name: String,
    /// The app it belongs to, `app_…`.
    pub app: String,
    /// The S3 endpoint for clients outside the platform (path-style: `{endpoint}/{name}/{key}`).
    pub endpoint: String,
    /// The SigV4 region.
    pub region: String,
    /// The bucket's access key id.
    pub access_key_id: String,
    /// The bucket's secret key: shown on create only, injected into the app's machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("name", &self.name)
            .field("app", &self.app)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Body of `POST /v1/buckets/{bucket}/presign`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresignConfig {
    /// `GET` (download) or `PUT` (upload).
    pub method: String,
    /// The object key.
    pub key: String,
    /// Seconds the URL stays valid: 1 to 604800 (7 days).
    pub expires_s: u64,
}

/// Answer of `POST /v1/buckets/{bucket}/presign`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PresignedUrl {
    /// The URL; anyone holding it may do `method` on `key` until `expires_at`.
    pub url: String,
    /// `GET` or `PUT`.
    pub method: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}
