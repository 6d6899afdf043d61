//! The start sequence every driver shares, so each writes only its own steps: adopt a machine
//! that still runs (the node restarted, the machine did not), else clear what an earlier boot
//! left, ready the image, allocate an address (keeping the previous one when it is free) and
//! boot; a boot that fails leaves nothing half-started and no address held.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kiln_guest::client::AgentClient;

use crate::error::{IoContext, RuntimeError};
use crate::{MachineInfo, MachineSpec};

/// A driver's own steps of a machine's life.
#[async_trait]
pub(crate) trait Lifecycle: Send + Sync {
    /// What the driver keeps on disk per machine, across restarts of the node.
    type Record: Send + Sync;
    /// What [`Lifecycle::prepare`] readies for a boot (an image's files).
    type Prepared: Send;

    /// The machine's state directory.
    fn machine_dir(&self, id: &str) -> PathBuf;
    fn read_record(&self, id: &str) -> Result<Option<Self::Record>, RuntimeError>;
    fn write_record(&self, record: &Self::Record) -> Result<(), RuntimeError>;
    /// The address a record holds, for [`Lifecycle::release_address`] to clear.
    fn address_of(record: &mut Self::Record) -> &mut Option<Ipv4Addr>;

    /// The running machine, if its agent still answers as `id`.
    async fn try_adopt(&self, id: &str) -> Option<MachineInfo>;
    /// Ends the machine (gracefully first when `grace` is non-zero) and removes what its boot
    /// created; the record and the workspace stay.
    async fn teardown(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Readies what a boot of `spec` needs (building it the first time).
    async fn prepare(&self, spec: &MachineSpec) -> Result<Self::Prepared, RuntimeError>;
    /// Assigns an address, keeping `previous`'s when it is still free, and writes the record.
    async fn allocate(
        &self,
        spec: &MachineSpec,
        previous: Option<&Self::Record>,
    ) -> Result<Self::Record, RuntimeError>;
    /// Boots a machine whose leftovers are gone and whose address is allocated.
    async fn boot(
        &self,
        spec: &MachineSpec,
        record: Self::Record,
        prepared: Self::Prepared,
    ) -> Result<MachineInfo, RuntimeError>;

    /// Gives the machine's address back (the record stays, for the workspace).
    fn release_address(&self, id: &str) -> Result<(), RuntimeError> {
        if let Some(mut record) = self.read_record(id)?
            && Self::address_of(&mut record).take().is_some()
        {
            self.write_record(&record)?;
        }
        Ok(())
    }
}

/// Starts (or adopts) machine `spec.id`; the caller holds the machine's lock.
pub(crate) async fn start<D: Lifecycle>(
    driver: &D,
    spec: &MachineSpec,
) -> Result<MachineInfo, RuntimeError> {
    if let Some(info) = driver.try_adopt(&spec.id).await {
        return Ok(info);
    }
    let previous = driver.read_record(&spec.id)?;
    // Whatever is left of an earlier boot (a crashed agent, a killed VMM) goes first.
    driver.teardown(&spec.id, Duration::ZERO).await?;
    let prepared = driver.prepare(spec).await?;
    let dir = driver.machine_dir(&spec.id);
    // Only root may look inside: a machine's directory holds its environment (secrets), its
    // agent token and the sockets that control it.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .ctx(|| format!("create {}", dir.display()))?;
    let record = driver.allocate(spec, previous.as_ref()).await?;
    match driver.boot(spec, record, prepared).await {
        Ok(info) => Ok(info),
        Err(e) => {
            // Leave nothing half-started behind; the error is what the caller needs.
            if let Err(cleanup) = driver.teardown(&spec.id, Duration::ZERO).await {
                tracing::error!(machine = %spec.id, error = %cleanup, "cleanup after failed boot");
            }
            if let Err(cleanup) = driver.release_address(&spec.id) {
                tracing::error!(machine = %spec.id, error = %cleanup, "release address after failed boot");
            }
            Err(e)
        }
    }
}

/// Takes over a machine that outlived the node's last run when its agent answers as `id`
/// within `within`; `None` (so it is rebooted) when it answers for another machine or not at all.
pub(crate) async fn adopt(
    id: &str,
    address: Ipv4Addr,
    agent: AgentClient,
    within: Duration,
) -> Option<MachineInfo> {
    match tokio::time::timeout(within, agent.health()).await {
        Ok(Ok(health)) if health.machine_id.as_deref() == Some(id) => {
            tracing::info!(machine = %id, %address, "adopted running machine");
            Some(MachineInfo {
                id: id.to_owned(),
                address,
                agent,
                boot_id: health.boot_id,
            })
        }
        Ok(Ok(health)) => {
            tracing::warn!(machine = %id, found = ?health.machine_id, "agent answers for another machine; rebooting");
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(machine = %id, error = %e, "stale machine state; rebooting");
            None
        }
        Err(_) => {
            tracing::warn!(machine = %id, "agent did not answer within {within:?}; rebooting");
            None
        }
    }
}

/// One lock per machine id, so a start, stop or destroy of one machine never interleaves
/// with another of the same machine.
#[derive(Debug, Default)]
pub(crate) struct MachineLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl MachineLocks {
    /// Waits for machine `id`'s lock.
    pub(crate) async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .0
            .lock()
            .expect("machine lock map is never held across a panic")
            .entry(id.to_owned())
            .or_default()
            .clone();
        lock.lock_owned().await
    }
}
