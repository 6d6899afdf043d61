//! The edge's route table, derived from stored intent and observed machine state, and
//! republished whenever either changes. One resolver answers previews, production hosts and
//! (later) custom domains alike.

use std::collections::HashMap;
use std::time::Duration;

use kiln_api::edge::{BackendEntry, RouteEntry, RouteSet, SiteEntry};
use kiln_api::orgs::Brand;
use kiln_store::{Desired, SandboxRecord};
use tokio_util::sync::CancellationToken;

use crate::service::Service;

/// Republishes the table after every change, and at least this often.
const RESYNC: Duration = Duration::from_secs(5);

/// Runs until `shutdown`, republishing the route table after every change.
pub async fn run(service: Service, shutdown: CancellationToken) {
    let mut changes = service.subscribe_changes();
    loop {
        if let Err(e) = service.refresh_routes().await {
            tracing::warn!(error = %e, "rebuilding routes failed; keeping the previous table");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = changes.changed() => {}
            () = tokio::time::sleep(RESYNC) => {}
        }
    }
}

/// Why a table could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// Reading intent failed.
    #[error("reading the store")]
    Store(#[from] kiln_store::StoreError),
    /// The generated table is inconsistent (e.g. two orgs on one base domain).
    #[error("building the route table")]
    Table(#[from] kiln_edge::RouteTableError),
}

/// Builds the route set (generation 0; the publisher numbers it): every org's base domain,
/// and per app its preview host (`{slug}.sandbox.{base}`) and production host (`{slug}.{base}`).
pub async fn build(service: &Service) -> Result<RouteSet, RoutingError> {
    let store = service.store();
    let orgs = store.list_orgs().await?;
    let mut by_org = HashMap::new();
    let mut sites = Vec::with_capacity(orgs.len());
    for org in &orgs {
        let brand = brand_of(&org.name, &org.brand);
        by_org.insert(org.id.clone(), (org.base_domain.clone(), brand.clone()));
        sites.push(SiteEntry {
            org: org.id.clone(),
            base_domain: org.base_domain.clone(),
            brand,
        });
    }
    let primary = primary_sandboxes(store.list_all_sandboxes().await?);
    let live: HashMap<String, kiln_store::DeploymentRecord> = store
        .list_active_deployments()
        .await?
        .into_iter()
        .filter(|d| d.live)
        .map(|d| (d.app_id.clone(), d))
        .collect();
    let mut routes = Vec::new();
    for app in store.list_all_apps().await? {
        let Some((base, brand)) = by_org.get(&app.org_id) else {
            continue;
        };
        let preview = match (app.preview_port, primary.get(&app.id)) {
            (Some(port), Some(sandbox)) => sandbox_backend(sandbox, port),
            (Some(_), None) | (None, _) => BackendEntry::Stopped,
        };
        routes.push(RouteEntry {
            host: format!("{}.sandbox.{base}", app.slug),
            kind: "preview".into(),
            org: app.org_id.clone(),
            brand: brand.clone(),
            backend: preview,
        });
        // Production points at the live deployment; without one the host answers with the
        // org's "not running" page rather than an unknown-host 404.
        let production = match live.get(&app.id).and_then(|d| d.address.clone()) {
            Some(address) => BackendEntry::Ready {
                addrs: vec![address],
            },
            None => BackendEntry::Stopped,
        };
        routes.push(RouteEntry {
            host: format!("{}.{base}", app.slug),
            kind: "production".into(),
            org: app.org_id.clone(),
            brand: brand.clone(),
            backend: production,
        });
    }
    Ok(RouteSet {
        generation: 0,
        routes,
        sites,
    })
}

/// The sandbox that serves an app's preview: its newest one that should be running.
pub fn primary_sandboxes(sandboxes: Vec<SandboxRecord>) -> HashMap<String, SandboxRecord> {
    let mut primary: HashMap<String, SandboxRecord> = HashMap::new();
    for sandbox in sandboxes {
        if sandbox.desired != Desired::Running {
            continue;
        }
        // Ids sort by creation time, so the greatest id is the newest.
        match primary.get(&sandbox.app_id) {
            Some(current) if current.id > sandbox.id => {}
            _ => {
                primary.insert(sandbox.app_id.clone(), sandbox);
            }
        }
    }
    primary
}

fn sandbox_backend(sandbox: &SandboxRecord, port: u16) -> BackendEntry {
    match (sandbox.status.as_str(), sandbox.address.as_deref()) {
        ("running", Some(address)) => BackendEntry::Ready {
            addrs: vec![format!("{address}:{port}")],
        },
        ("starting", _) | ("running", None) => BackendEntry::Starting,
        _ => BackendEntry::Stopped,
    }
}

/// The brand from the stored JSON; the org's name stands in for a missing brand name.
fn brand_of(org_name: &str, brand_json: &str) -> Brand {
    let mut brand: Brand = serde_json::from_str(brand_json).unwrap_or_default();
    if brand.name.trim().is_empty() {
        org_name.clone_into(&mut brand.name);
    }
    brand
}
