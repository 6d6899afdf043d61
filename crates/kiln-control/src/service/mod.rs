//! The domain service: every operation the API offers, independent of HTTP. Handlers
//! authorize and extract, then call one method here.

mod apps;
mod buckets;
mod cron;
mod database_pass;
mod databases;
mod deployments;
mod env;
mod machines;
mod orgs;
mod preview;
mod releases;
mod sandboxes;
mod uploads;

use std::net::SocketAddr;
use std::sync::Arc;

use kiln_runtime::Driver;
use kiln_store::Store;
use tokio::sync::{Notify, watch};

pub use buckets::S3Node;
pub use machines::Machines;
pub(crate) use sandboxes::sandboxes_env;

use crate::auth::{self, Caller, DEFAULT_ORG, OPERATOR_TOKEN_HASH};
use crate::config::Config;
use crate::error::{ApiError, ApiResult};

/// Shared state of the control plane. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    driver: Arc<dyn Driver>,
    config: Config,
    node_id: String,
    machines: Machines,
    /// Wakes the reconciler when intent changed.
    wake: Notify,
    /// Bumped whenever a sandbox status changes, so `?wait=` callers re-read.
    changes: watch::Sender<u64>,
    /// The in-process edge's route table.
    routes: kiln_edge::Routes,
    /// The latest route set, for edges in other processes.
    route_set: watch::Sender<Arc<kiln_api::edge::RouteSet>>,
    /// Serialises rebuilds so an older table is never published after a newer one.
    routes_rebuild: tokio::sync::Mutex<()>,
    /// Where the edge listens (loopback when it listens on every interface).
    edge_addr: SocketAddr,
    /// Content-addressed release artifacts.
    artifacts: kiln_artifacts::ArtifactStore,
    /// The key releases are signed with.
    signer: kiln_artifacts::SigningKey,
    /// Seals app secrets at rest.
    sealer: crate::secrets::Sealer,
    /// The node's object store and S3 front ends.
    s3: S3Node,
    /// Deployments being promoted by a request right now; the reconciler leaves them alone.
    promoting: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The node's managed database instances.
    engines: kiln_databases::Databases,
    /// Databases a reconciler task is working on.
    database_tasks: std::sync::Mutex<std::collections::HashSet<String>>,
    /// When each database's login was last checked by the reconciler.
    database_checks: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// The parts of a service that [`Service::new`] does not make itself.
pub struct Parts {
    /// The metadata store.
    pub store: Store,
    /// The node's machine driver.
    pub driver: Arc<dyn Driver>,
    /// Configuration.
    pub config: Config,
    /// This node's id.
    pub node_id: String,
    /// The in-process edge's routes.
    pub routes: kiln_edge::Routes,
    /// Where the edge answers (for probes).
    pub edge_addr: SocketAddr,
    /// Release artifacts.
    pub artifacts: kiln_artifacts::ArtifactStore,
    /// Release signing key.
    pub signer: kiln_artifacts::SigningKey,
    /// Secret sealing key.
    pub sealer: crate::secrets::Sealer,
    /// The object store and its S3 front ends.
    pub s3: S3Node,
    /// The node's managed database instances.
    pub engines: kiln_databases::Databases,
}

impl Service {
    /// Builds the service over an opened store and a driver.
    pub fn new(parts: Parts) -> Self {
        let Parts {
            store,
            driver,
            config,
            node_id,
            routes,
            edge_addr,
            artifacts,
            signer,
            sealer,
            s3,
            engines,
        } = parts;
        Self {
            inner: Arc::new(Inner {
                store,
                driver,
                config,
                node_id,
                artifacts,
                signer,
                sealer,
                s3,
                promoting: std::sync::Mutex::default(),
                engines,
                database_tasks: std::sync::Mutex::default(),
                database_checks: std::sync::Mutex::default(),
                machines: Machines::default(),
                wake: Notify::new(),
                changes: watch::Sender::new(0),
                routes,
                route_set: watch::Sender::new(Arc::default()),
                routes_rebuild: tokio::sync::Mutex::new(()),
                edge_addr,
            }),
        }
    }

    /// The metadata store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The machine driver of this node.
    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.inner.driver
    }

    /// Release artifacts.
    pub fn artifacts(&self) -> &kiln_artifacts::ArtifactStore {
        &self.inner.artifacts
    }

    /// Deployments a request is promoting right now.
    pub fn promoting(&self) -> &std::sync::Mutex<std::collections::HashSet<String>> {
        &self.inner.promoting
    }

    /// Seals and opens app secrets.
    pub fn sealer(&self) -> &crate::secrets::Sealer {
        &self.inner.sealer
    }

    /// The node's managed database instances.
    pub fn engines(&self) -> &kiln_databases::Databases {
        &self.inner.engines
    }

    /// Marks a database as being worked on; false when a task already has it.
    pub(crate) fn claim_database_task(&self, id: &str) -> bool {
        self.inner
            .database_tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id.to_owned())
    }

    /// Whether the database's login is due to be checked again (at most every `every`);
    /// answering true counts as the check starting now.
    pub(crate) fn database_check_due(&self, id: &str, every: std::time::Duration) -> bool {
        let mut checks = self
            .inner
            .database_checks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = std::time::Instant::now();
        match checks.get(id) {
            Some(last) if now.duration_since(*last) < every => false,
            _ => {
                checks.insert(id.to_owned(), now);
                true
            }
        }
    }

    /// Forgets a deleted database's check time.
    pub(crate) fn forget_database_check(&self, id: &str) {
        self.inner
            .database_checks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(id);
    }

    /// Releases what [`Service::claim_database_task`] claimed.
    pub(crate) fn release_database_task(&self, id: &str) {
        self.inner
            .database_tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(id);
    }

    /// The release signing key.
    pub fn signer(&self) -> &kiln_artifacts::SigningKey {
        &self.inner.signer
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Machines this node runs, by sandbox id.
    pub fn machines(&self) -> &Machines {
        &self.inner.machines
    }

    /// Rebuilds the edge's route table from the store and publishes it atomically.
    pub async fn refresh_routes(&self) -> Result<(), crate::routing::RoutingError> {
        let _one_at_a_time = self.inner.routes_rebuild.lock().await;
        let mut set = crate::routing::build(self).await?;
        let current = self.inner.route_set.borrow().clone();
        set.generation = current.generation;
        if set == *current && current.generation > 0 {
            return Ok(());
        }
        set.generation += 1;
        let table = kiln_edge::RouteTable::from_set(&set)?;
        self.inner.routes.publish(table);
        self.inner.route_set.send_replace(Arc::new(set));
        Ok(())
    }

    /// The route set once its generation passes `after`, or the current one after `wait`.
    pub async fn route_set(
        &self,
        after: u64,
        wait: std::time::Duration,
    ) -> Arc<kiln_api::edge::RouteSet> {
        let mut updates = self.inner.route_set.subscribe();
        let newer = updates.wait_for(|set| set.generation > after);
        match tokio::time::timeout(wait, newer).await {
            Ok(Ok(set)) => set.clone(),
            _ => self.inner.route_set.borrow().clone(),
        }
    }

    /// Where the edge answers, for probes through it.
    pub fn edge_addr(&self) -> SocketAddr {
        self.inner.edge_addr
    }

    /// Tells the reconciler that intent changed.
    pub fn wake_reconciler(&self) {
        self.inner.wake.notify_one();
    }

    /// Waits until [`Service::wake_reconciler`] is called.
    pub async fn reconciler_woken(&self) {
        self.inner.wake.notified().await;
    }

    /// Records that some sandbox status changed.
    pub fn notify_change(&self) {
        self.inner.changes.send_modify(|n| *n += 1);
    }

    /// A receiver of status changes.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Creates the default org and the operator token on first start. Returns the operator
    /// token when it was generated now (so it can be shown and written once).
    pub async fn bootstrap(&self) -> anyhow::Result<Option<String>> {
        let store = self.store();
        if store.get_setting(DEFAULT_ORG).await?.is_none() {
            let org = match store.get_org("default").await {
                Ok(org) => org,
                Err(kiln_store::StoreError::NotFound) => {
                    store
                        .create_org(&kiln_store::NewOrg {
                            name: "Default".into(),
                            slug: "default".into(),
                            base_domain: self.config().base_domain.clone(),
                            brand: serde_json::to_string(&kiln_api::orgs::Brand {
                                name: "Default".into(),
                                ..Default::default()
                            })?,
                        })
                        .await?
                }
                Err(e) => return Err(e.into()),
            };
            store.put_setting(DEFAULT_ORG, &org.id).await?;
        }
        let generated = match (
            &self.config().operator_token,
            store.get_setting(OPERATOR_TOKEN_HASH).await?,
        ) {
            (Some(token), _) => {
                store
                    .put_setting(OPERATOR_TOKEN_HASH, &auth::hash_token(token))
                    .await?;
                None
            }
            (None, Some(_)) => None,
            (None, None) => {
                let token = auth::new_token("kop");
                store
                    .put_setting(OPERATOR_TOKEN_HASH, &auth::hash_token(&token))
                    .await?;
                Some(token)
            }
        };
        Ok(generated)
    }

    /// Resolves a bearer token to a caller.
    pub async fn authenticate(&self, token: &str) -> ApiResult<Caller> {
        let hash = auth::hash_token(token);
        let store = self.store();
        if store.get_setting(OPERATOR_TOKEN_HASH).await?.as_deref() == Some(hash.as_str()) {
            let default_org = store.get_setting(DEFAULT_ORG).await?.ok_or_else(|| {
                ApiError::unavailable("the platform is still starting; retry in a moment")
            })?;
            return Ok(Caller::Operator { default_org });
        }
        match store.find_token(&hash).await? {
            Some(record) => Ok(Caller::Org {
                org_id: record.org_id,
                token_name: record.name,
            }),
            None => Err(ApiError::unauthorized()),
        }
    }

    /// The org a call acts on: `?org=` (id or slug) for the operator, else the token's own.
    pub async fn scope(&self, caller: &Caller, named: Option<&str>) -> ApiResult<String> {
        let named = match named {
            Some(org) => match self.store().get_org(org).await {
                Ok(record) => Some(record.id),
                Err(kiln_store::StoreError::NotFound) => {
                    return Err(ApiError::not_found("org", org));
                }
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        caller.org_scope(named.as_deref())
    }
}

/// Maps a store "not found" to a 404 naming the resource the caller asked for.
pub(crate) fn not_found_as(
    what: &'static str,
    id: &str,
) -> impl FnOnce(kiln_store::StoreError) -> ApiError {
    let id = id.to_owned();
    move |err| match err {
        kiln_store::StoreError::NotFound => ApiError::not_found(what, &id),
        other => other.into(),
    }
}

/// Bytes of a process log quoted in errors.
const LOG_TAIL_BYTES: usize = 4096;

/// The last few KiB of a supervised process's log, if it can be read.
pub(crate) async fn log_tail(
    agent: &kiln_guest::client::AgentClient,
    process: &str,
) -> Option<String> {
    use futures::StreamExt;
    let mut stream = agent.process_logs(process, false).await.ok()?;
    let mut log = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        log.extend_from_slice(&chunk);
    }
    let start = log.len().saturating_sub(LOG_TAIL_BYTES);
    Some(String::from_utf8_lossy(&log[start..]).into_owned())
}
