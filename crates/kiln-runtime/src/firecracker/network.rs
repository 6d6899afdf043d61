//! Tap devices, MACs and kernel network arguments of Firecracker machines.
//!
//! Addresses come from the node network every driver shares (`addresses.rs`): every org gets a
//! /24 slice of the node subnet and a bridge holding the slice's gateway; a machine gets a free
//! address of its org's slice. Instead of a veth pair into a network namespace, a VM's port on
//! the bridge is a tap device that Firecracker opens.

use std::{net::Ipv4Addr, path::Path};

use sha2::{Digest, Sha256};

use crate::{error::RuntimeError, net::Ipv4Cidr, spawn::run_tool};

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
    fn names_and_kernel_args() {
        assert!(tap_name("sbx_0123456789abcdef0123456789abcdef").len() <= 15);
        assert_ne!(tap_name("a"), tap_name("b"));
        assert_ne!(tap_name("a"), crate::net::veth_name("a"));
        let addr = Ipv4Addr::new(10, 92, 3, 7);
        assert_eq!(guest_mac(addr), "02:4b:0a:5c:03:07");
        let slice: Ipv4Cidr = "10.92.3.0/24".parse().expect("cidr");
        assert_eq!(
            kernel_ip_arg(addr, slice, "sbx-1"),
            "ip=10.92.3.7::10.92.3.1:255.255.255.0:sbx-1:eth0:off"
        );
    }
}
