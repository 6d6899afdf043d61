//! Artifacts, releases, deployments and rollback.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /v1/artifacts/uploads`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// Total size in bytes.
    pub size: u64,
    /// `sha256:…` of the whole artifact, checked on completion.
    pub digest: String,
}

/// A chunked upload: send parts `1..=parts` of `part_size` bytes (the last one shorter).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Upload {
    /// Upload id.
    pub upload_id: String,
    /// Bytes per part.
    pub part_size: u64,
    /// Number of parts.
    pub parts: u32,
    /// Parts already received (to resume an interrupted upload).
    pub received: Vec<u32>,
}

/// Answer of `POST /v1/artifacts/uploads/{id}/complete`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UploadCompleted {
    /// The verified digest, now stored.
    pub digest: String,
}

/// Body of `POST /v1/apps/{app}/releases`: from a sandbox, or from an uploaded artifact.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseConfig {
    /// Publish this sandbox's workspace (`sbx_…`).
    #[serde(default)]
    pub sandbox: Option<String>,
    /// Or publish an uploaded artifact (`sha256:…`).
    #[serde(default)]
    pub artifact_digest: Option<String>,
    /// Shell command run in the sandbox before packing (e.g. `npm run build`).
    #[serde(default)]
    pub build_cmd: Option<String>,
    /// Shell command that serves the app (e.g. `node server.js`).
    #[serde(default)]
    pub start_cmd: Option<String>,
    /// The port it listens on (on 0.0.0.0).
    #[serde(default)]
    pub port: Option<u16>,
    /// Path that answers when the app is healthy; `/` by default.
    #[serde(default)]
    pub health_path: Option<String>,
}

/// What a release runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Manifest {
    /// Shell command that serves the app.
    pub start_cmd: String,
    /// Port it listens on.
    pub port: u16,
    /// Health check path.
    pub health_path: String,
    /// Runtime image, `name:version`.
    pub runtime_image: String,
    /// The variables the app expects; values are resolved from the app's config at boot.
    #[serde(default)]
    pub env: Vec<EnvSpec>,
}

/// One variable a release expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnvSpec {
    /// Variable name.
    pub name: String,
    /// Whether its value is a secret.
    pub secret: bool,
    /// Where the value comes from: `app` (the app's config, `kiln env set`).
    pub source: String,
}

/// What a deployment's environment changes against the one it replaces (names only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnvDiff {
    /// Variables the new machine has and the old one did not.
    pub added: Vec<String>,
    /// Variables the old machine had and the new one does not.
    pub removed: Vec<String>,
    /// Variables whose value differs.
    pub changed: Vec<String>,
}

/// Where a release came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Provenance {
    /// App id.
    pub app: String,
    /// Sandbox the workspace came from, if any.
    pub source_sandbox: Option<String>,
    /// Digest of the packed workspace (the artifact).
    pub workspace_digest: String,
    /// Build command, if one ran.
    pub build_cmd: Option<String>,
    /// `sha256:` of the build log, if a build ran.
    pub build_log_digest: Option<String>,
    /// Platform version that built it.
    pub builder_version: String,
    /// Token name that published it.
    pub created_by: String,
    /// When publishing started.
    pub started_at: DateTime<Utc>,
    /// When publishing finished.
    pub finished_at: DateTime<Utc>,
}

/// An immutable release.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Release {
    /// `rel_…`
    pub id: String,
    /// App id.
    pub app: String,
    /// `v1`, `v2`, …
    pub version: String,
    /// `sha256:…` of the artifact.
    pub digest: String,
    /// Artifact size.
    pub size: u64,
    /// What it runs.
    pub manifest: Manifest,
    /// Where it came from.
    pub provenance: Provenance,
    /// ed25519 signature (base64) over the release's canonical form.
    pub signature: String,
    /// Public key (base64) the signature verifies with.
    pub public_key: String,
    /// `ready`.
    pub status: String,
    /// Build log, when a build ran (on publish only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_log: Option<String>,
    /// When it was published.
    pub created_at: DateTime<Utc>,
}

/// Answer of `GET /v1/releases/{rel}/verify`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Verification {
    /// The signature matches the release.
    pub signature_valid: bool,
    /// The stored artifact hashes to the release's digest.
    pub artifact_valid: bool,
    /// What is wrong, if anything.
    pub problems: Vec<String>,
}

/// Body of `POST /v1/apps/{app}/deployments`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// Release id or `vN`.
    pub release: String,
}

/// Body of `POST /v1/apps/{app}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackConfig {
    /// Release id or `vN`; the previously live release when absent.
    #[serde(default)]
    pub release: Option<String>,
}

/// A deployment: one promotion of a release to production.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    /// `dep_…`
    pub id: String,
    /// App id.
    pub app: String,
    /// Release id.
    pub release: String,
    /// Release version, `vN`.
    pub version: String,
    /// `pending`, `healthy`, `live`, `superseded`, `stopped` or `failed`.
    pub status: String,
    /// Whether production points at it.
    pub live: bool,
    /// Why it failed.
    pub reason: Option<String>,
    /// The new machine's log tail when it failed.
    pub log_tail: Option<String>,
    /// Who asked for it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Production URL.
    pub url: String,
    /// The environment change against the deployment it replaced (on deploy and rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_diff: Option<EnvDiff>,
}

/// Body of `PUT /v1/apps/{app}/env/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvVarConfig {
    /// The value.
    pub value: String,
    /// Keep it secret: encrypted at rest, never shown again.
    #[serde(default)]
    pub secret: bool,
}

/// One variable of an app's config.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnvVar {
    /// Name.
    pub name: String,
    /// Whether it is a secret.
    pub secret: bool,
    /// The value; never shown for secrets.
    pub value: Option<String>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}
