//! Addresses and tap devices of Firecracker machines.
//!
//! The scheme is the process driver's (see [`crate::net`]): every org gets a /24 slice of the
//! node subnet and a bridge holding the slice's gateway; a machine gets a free address of its
//! org's slice. Instead of a veth pair into a network namespace, a VM's port on the bridge is a
//! tap device that Firecracker opens. The allocation state has the process driver's format
//! (`network.json` plus the `address` in each machine record, under a flock), so one node runs
//! one driver on one state directory.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    error::RuntimeError,
    net::{self, Ipv4Cidr},
    spawn::run_tool,
};

/// `<state_dir>/network.json`: org → index of its /24 slice.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct NetworkState {
    pub subnet: Option<Ipv4Cidr>,
    pub orgs: BTreeMap<String, u32>,
}

/// Returns org `org_id`'s slice index, assigning the first free one if it has none.
pub(super) fn org_slice(
    state: &mut NetworkState,
    subnet: Ipv4Cidr,
    org_id: &str,
) -> Result<(Ipv4Cidr, bool), RuntimeError> {
    let (index, assigned) = match state.orgs.get(org_id) {
        Some(&i) => (i, false),
        None => {
            let taken: BTreeSet<u32> = state.orgs.values().copied().collect();
            let i = (0..subnet.slice_count())
                .find(|i| !taken.contains(i))
                .ok_or_else(|| RuntimeError::SubnetExhausted {
                    subnet: subnet.to_string(),
                    org_id: org_id.to_owned(),
                })?;
            state.orgs.insert(org_id.to_owned(), i);
            (i, true)
        }
    };
    let slice = subnet.slice(index).ok_or_else(|| {
        RuntimeError::InvalidConfig(format!(
            "network.json assigns slice {index} to org {org_id}, outside {subnet}"
        ))
    })?;
    Ok((slice, assigned))
}

/// The first free machine address of `slice`, keeping `previous` when it is still free.
pub(super) fn free_address(
    slice: Ipv4Cidr,
    used: &BTreeSet<Ipv4Addr>,
    previous: Option<Ipv4Addr>,
) -> Result<Ipv4Addr, RuntimeError> {
    if let Some(a) = previous.filter(|a| slice.contains(*a) && !used.contains(a)) {
        return Ok(a);
    }
    (net::FIRST_HOST..=net::LAST_HOST)
        .map(|n| slice.host(n))
        .find(|a| !used.contains(a))
        .ok_or_else(|| RuntimeError::AddressExhausted {
            slice: slice.to_string(),
        })
}

/// The tap device of machine `id` (15 characters at most, as Linux requires).
pub fn tap_name(id: &str) -> String {
    let hash = hex::encode(Sha256::digest(id.as_bytes()));
    format!("kf{}", &hash[..12])
}

/// The guest MAC of an address: the same address always gets the same MAC, so the node's
/// neighbour cache is never stale when an address is reused (as in the process driver).
pub fn guest_mac(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("02:4b:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Creates tap `tap` as a port of `bridge`; `owner` lets an unprivileged (jailed) Firecracker
/// open it.
pub(super) async fn create_tap(
    tap: &str,
    bridge: &str,
    owner: Option<(u32, u32)>,
) -> Result<(), RuntimeError> {
    let owner = owner
        .map(|(uid, gid)| format!(" user {uid} group {gid}"))
        .unwrap_or_default();
    let batch = format!(
        "tuntap add dev {tap} mode tap{owner}\n\
         link set {tap} master {bridge} up\n"
    );
    run_tool("ip", &["-batch", "-"], Some(&batch)).await?;
    Ok(())
}

/// Deletes tap `tap`; a missing one is fine.
pub(super) async fn remove_tap(tap: &str) -> Result<(), RuntimeError> {
    if Path::new("/sys/class/net").join(tap).exists() {
        run_tool("ip", &["link", "del", tap], None).await?;
    }
    Ok(())
}

/// The kernel's `ip=` parameter (`Documentation/admin-guide/nfs/nfsroot.rst`): the guest's
/// address, gateway, netmask, hostname and interface, without autoconfiguration.
pub fn kernel_ip_arg(address: Ipv4Addr, slice: Ipv4Cidr, hostname: &str) -> String {
    let mask = Ipv4Addr::from(u32::MAX << (32 - u32::from(slice.prefix())));
    format!(
        "ip={address}::{gateway}:{mask}:{hostname}:eth0:off",
        gateway = slice.host(1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_addresses_are_assigned_once() {
        let subnet: Ipv4Cidr = "10.92.0.0/23".parse().expect("cidr");
        let mut state = NetworkState::default();
        let (a, new_a) = org_slice(&mut state, subnet, "org_a").expect("a");
        let (b, _) = org_slice(&mut state, subnet, "org_b").expect("b");
        let (again, new_again) = org_slice(&mut state, subnet, "org_a").expect("a again");
        assert!(new_a && !new_again);
        assert_eq!(a, again);
        assert_ne!(a, b);
        assert!(matches!(
            org_slice(&mut state, subnet, "org_c"),
            Err(RuntimeError::SubnetExhausted { .. })
        ));

        let mut used = BTreeSet::new();
        let first = free_address(a, &used, None).expect("first");
        assert_eq!(first, a.host(2));
        used.insert(first);
        assert_eq!(free_address(a, &used, None).expect("second"), a.host(3));
        assert_eq!(
            free_address(a, &used, Some(a.host(77))).expect("kept"),
            a.host(77)
        );
        assert_eq!(
            free_address(a, &used, Some(first)).expect("taken"),
            a.host(3)
        );
    }

    #[test]
    fn names_and_kernel_args() {
        assert!(tap_name("sbx_0123456789abcdef0123456789abcdef").len() <= 15);
        assert_ne!(tap_name("a"), tap_name("b"));
        assert_ne!(tap_name("a"), net::veth_name("a"));
        let addr = Ipv4Addr::new(10, 92, 3, 7);
        assert_eq!(guest_mac(addr), "02:4b:0a:5c:03:07");
        let slice: Ipv4Cidr = "10.92.3.0/24".parse().expect("cidr");
        assert_eq!(
            kernel_ip_arg(addr, slice, "sbx-1"),
            "ip=10.92.3.7::10.92.3.1:255.255.255.0:sbx-1:eth0:off"
        );
    }
}
