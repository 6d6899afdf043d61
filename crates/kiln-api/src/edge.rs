//! The route set the control plane publishes to edges: every host, where it leads and whose
//! brand answers for it. `kiln up` applies it in process; `kiln edge` fetches it over the API.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::orgs::Brand;

/// Answer of `GET /v1/edge/routes`: the whole table, versioned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RouteSet {
    /// Grows by one with every change; ask for `?after=` it to wait for the next.
    pub generation: u64,
    /// Every routed host.
    pub routes: Vec<RouteEntry>,
    /// Every org's base domain, to brand answers for unknown hosts beneath it.
    pub sites: Vec<SiteEntry>,
}

/// One routed host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RouteEntry {
    /// Host name, lowercase, without port.
    pub host: String,
    /// `preview`, `production` or `custom_domain`.
    pub kind: String,
    /// Owning org, `org_…`.
    pub org: String,
    /// Brand of the pages the edge makes for this host.
    pub brand: Brand,
    /// Where requests go.
    pub backend: BackendEntry,
}

/// Where a host's requests go right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum BackendEntry {
    /// Machines answering at these `IP:PORT` addresses.
    Ready {
        /// Upstream addresses, used round-robin.
        addrs: Vec<String>,
    },
    /// Booting: the edge answers with the loading page.
    Starting,
    /// Not running: the edge answers with the not-running page.
    Stopped,
}

/// An org's base domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SiteEntry {
    /// Owning org, `org_…`.
    pub org: String,
    /// The base domain.
    pub base_domain: String,
    /// The org's brand.
    pub brand: Brand,
}
