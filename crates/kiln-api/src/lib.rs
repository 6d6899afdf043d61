//! Wire types of the Kiln HTTP API v1, shared by the server, the CLI and the tests,
//! and the typed client that drives the API.
#![forbid(unsafe_code)]

pub mod apps;
pub mod buckets;
pub mod client;
pub mod cron;
pub mod databases;
pub mod edge;
pub mod orgs;
pub mod problem;
pub mod releases;
pub mod sandboxes;

pub use client::{Client, ClientError};
pub use problem::Problem;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A page of a list endpoint: `{"items": [...], "next": cursor|null}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct List<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Cursor for the next page, or null on the last page.
    pub next: Option<String>,
}

/// Answer of `GET /v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `"ok"` when the server answers.
    pub status: String,
    /// The server's version.
    pub version: String,
}
