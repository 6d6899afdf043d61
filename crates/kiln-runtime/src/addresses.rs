//! The node's machine network as every driver shares it: which /24 slice of the node subnet
//! each org has, which address each machine holds, and the org bridges with their firewall
//! membership. The `process`, `qemu` and `firecracker` drivers all allocate here, so a
//! machine's address works the same way whatever runs it. Each driver's state directory holds
//! its own allocation: a node runs one driver at a time.
//!
//! ```text
//! <state_dir>/network.json    org → /24 slice index of the node subnet
//! <state_dir>/.network.lock   flock serialising allocation between processes
//! ```
//!
//! Which addresses are taken is not stored here: each driver keeps it in its machine records
//! and hands it in as [`Claim`]s, read under the lock, so the records stay the one truth.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};

use crate::{
    OrgNetwork,
    error::RuntimeError,
    lock,
    net::{self, Ipv4Cidr},
    state::{machine_ids, read_json, write_json},
};

/// A machine's hold on an address, as its driver recorded it.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    /// The machine.
    pub id: String,
    /// Its org's slice.
    pub slice: Ipv4Cidr,
    /// Its address while it runs.
    pub address: Option<Ipv4Addr>,
}

/// `<state_dir>/network.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct NetworkState {
    pub subnet: Option<Ipv4Cidr>,
    /// org id → index of its /24 slice.
    pub orgs: BTreeMap<String, u32>,
}

/// Slices, addresses and bridges of one state directory.
#[derive(Debug)]
pub(crate) struct NodeNetwork {
    state_dir: PathBuf,
    subnet: Ipv4Cidr,
    /// Serialises allocation within this process (the flock does across processes).
    alloc: tokio::sync::Mutex<()>,
    /// Bridges this process has put into the nftables `same_bridge` set, so that costs one
    /// `nft` run per bridge and process rather than one per machine start.
    allowed_bridges: Mutex<HashSet<String>>,
}

/// Reads the drivers' current claims; called with the allocation locks held.
pub(crate) type Claims<'a> = &'a (dyn Fn() -> Result<Vec<Claim>, RuntimeError> + Send + Sync);

/// The claims in the machine records (`<dir>/<id>/machine.json`, read as `R`) of a driver's
/// state directory.
pub(crate) fn recorded_claims<R: serde::de::DeserializeOwned>(
    dir: &Path,
    claim: fn(R) -> Claim,
) -> Result<Vec<Claim>, RuntimeError> {
    let mut out = Vec::new();
    for id in machine_ids(dir)? {
        if let Some(record) = read_json::<R>(&dir.join(&id).join("machine.json"))? {
            out.push(claim(record));
        }
    }
    Ok(out)
}

impl NodeNetwork {
    /// Checks the state directory against `subnet`, installs the `inet kiln` nftables table
    /// and registers the bridges of known orgs. Idempotent.
    pub async fn open(
        state_dir: PathBuf,
        subnet: Ipv4Cidr,
        egress: bool,
        claims: Claims<'_>,
    ) -> Result<NodeNetwork, RuntimeError> {
        let network = NodeNetwork {
            state_dir,
            subnet,
            alloc: tokio::sync::Mutex::new(()),
            allowed_bridges: Mutex::default(),
        };
        let bridges = {
            let _guard = network.alloc.lock().await;
            let _flock = lock::exclusive(&network.lock_path()).await?;
            let mut state = network.load()?;
            network.check_subnet(&mut state, claims)?;
            network.save(&state)?;
            state
                .orgs
                .values()
                .filter_map(|&i| subnet.slice(i))
                .map(net::bridge_name)
                .collect::<Vec<_>>()
        };
        net::install_firewall(subnet, egress, &bridges).await?;
        network.bridges().extend(bridges);
        Ok(network)
    }

    fn bridges(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.allowed_bridges
            .lock()
            .expect("bridge set lock is never held across a panic")
    }

    fn lock_path(&self) -> PathBuf {
        self.state_dir.join(".network.lock")
    }

    fn load(&self) -> Result<NetworkState, RuntimeError> {
        read_json(&self.state_dir.join("network.json")).map(Option::unwrap_or_default)
    }

    fn save(&self, state: &NetworkState) -> Result<(), RuntimeError> {
        write_json(&self.state_dir.join("network.json"), state)
    }

    /// A state directory keeps the subnet it was set up with while machines hold addresses
    /// from it; with none left it may move to a new subnet.
    fn check_subnet(
        &self,
        state: &mut NetworkState,
        claims: Claims<'_>,
    ) -> Result<(), RuntimeError> {
        let subnet = self.subnet;
        match state.subnet {
            Some(old) if old != subnet => {
                let holders: Vec<String> = claims()?
                    .into_iter()
                    .filter(|c| c.address.is_some())
                    .map(|c| c.id)
                    .collect();
                if !holders.is_empty() {
                    return Err(RuntimeError::InvalidConfig(format!(
                        "state directory {} uses subnet {old}, but {subnet} is configured; stop machines {} first",
                        self.state_dir.display(),
                        holders.join(", ")
                    )));
                }
                state.orgs.clear();
                state.subnet = Some(subnet);
            }
            Some(_) => {}
            None => state.subnet = Some(subnet),
        }
        Ok(())
    }

    /// The org's network, assigning its slice and bringing up its bridge if needed.
    pub async fn org_network(
        &self,
        org_id: &str,
        claims: Claims<'_>,
    ) -> Result<OrgNetwork, RuntimeError> {
        let _guard = self.alloc.lock().await;
        let _flock = lock::exclusive(&self.lock_path()).await?;
        self.org_network_locked(org_id, claims).await
    }

    /// Assigns the org's slice if it has none yet and brings up its bridge, under the
    /// allocation locks.
    async fn org_network_locked(
        &self,
        org_id: &str,
        claims: Claims<'_>,
    ) -> Result<OrgNetwork, RuntimeError> {
        let subnet = self.subnet;
        let mut state = self.load()?;
        self.check_subnet(&mut state, claims)?;
        let index = match state.orgs.get(org_id) {
            Some(&i) => i,
            None => {
                let taken: BTreeSet<u32> = state.orgs.values().copied().collect();
                let i = (0..subnet.slice_count())
                    .find(|i| !taken.contains(i))
                    .ok_or_else(|| RuntimeError::SubnetExhausted {
                        subnet: subnet.to_string(),
                        org_id: org_id.to_owned(),
                    })?;
                state.orgs.insert(org_id.to_owned(), i);
                self.save(&state)?;
                i
            }
        };
        let slice = subnet.slice(index).ok_or_else(|| {
            RuntimeError::InvalidConfig(format!(
                "network.json assigns slice {index} to org {org_id}, outside {subnet}"
            ))
        })?;
        net::ensure_bridge(slice).await?;
        let bridge = net::bridge_name(slice);
        let known = self.bridges().contains(&bridge);
        if !known {
            net::allow_bridge(&bridge).await?;
            self.bridges().insert(bridge.clone());
        }
        Ok(OrgNetwork {
            bridge,
            slice,
            gateway: slice.host(1),
        })
    }

    /// Assigns machine `id` of `org_id` an address in its org's slice (creating the bridge),
    /// keeping `previous` when it is still free, and lets `commit` record it while the locks
    /// are held, so no other start can take the same address.
    pub async fn allocate<T>(
        &self,
        org_id: &str,
        id: &str,
        previous: Option<Ipv4Addr>,
        claims: Claims<'_>,
        commit: impl FnOnce(Ipv4Cidr, Ipv4Addr) -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        let _guard = self.alloc.lock().await;
        let _flock = lock::exclusive(&self.lock_path()).await?;
        let slice = self.org_network_locked(org_id, claims).await?.slice;
        let used: BTreeSet<Ipv4Addr> = claims()?
            .into_iter()
            .filter(|c| c.id != id)
            .filter_map(|c| c.address)
            .filter(|a| slice.contains(*a))
            .collect();
        let kept = previous.filter(|a| slice.contains(*a) && !used.contains(a));
        let address = match kept {
            Some(a) => a,
            None => (net::FIRST_HOST..=net::LAST_HOST)
                .map(|n| slice.host(n))
                .find(|a| !used.contains(a))
                .ok_or_else(|| RuntimeError::AddressExhausted {
                    slice: slice.to_string(),
                })?,
        };
        commit(slice, address)
    }

    /// Deletes the bridges of orgs that have no machine holding an address. The slice
    /// assignments stay, so a later start recreates the same bridge with the same addresses.
    pub async fn remove_idle_bridges(&self, claims: Claims<'_>) -> Result<(), RuntimeError> {
        let _guard = self.alloc.lock().await;
        let _flock = lock::exclusive(&self.lock_path()).await?;
        let state = self.load()?;
        let busy: BTreeSet<Ipv4Cidr> = claims()?
            .into_iter()
            .filter(|c| c.address.is_some())
            .map(|c| c.slice)
            .collect();
        for &index in state.orgs.values() {
            let Some(slice) = self.subnet.slice(index) else {
                continue;
            };
            if busy.contains(&slice) {
                continue;
            }
            let bridge = net::bridge_name(slice);
            net::remove_bridge(&bridge).await?;
            self.bridges().remove(&bridge);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::error::RuntimeError;

    #[test]
    fn state_files_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("machine.json");
        assert!(
            read_json::<NetworkState>(&path)
                .expect("missing is fine")
                .is_none()
        );
        let mut state = NetworkState::default();
        state.orgs.insert("org_1".into(), 3);
        state.subnet = Some(Ipv4Cidr::DEFAULT_SUBNET);
        write_json(&path, &state).expect("write");
        let back: NetworkState = read_json(&path).expect("read").expect("present");
        assert_eq!(back.orgs.get("org_1"), Some(&3));
        assert_eq!(back.subnet, Some(Ipv4Cidr::DEFAULT_SUBNET));
        fs::write(&path, "{").expect("write");
        assert!(matches!(
            read_json::<NetworkState>(&path),
            Err(RuntimeError::CorruptState { .. })
        ));
    }
}
