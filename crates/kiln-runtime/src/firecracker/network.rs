//! How a Firecracker guest learns its network: addresses come from the node network every
//! driver shares (`addresses.rs`), the tap device and MAC from [`crate::net`], and the kernel
//! configures eth0 from the command line, before init runs.

use std::net::Ipv4Addr;

use crate::net::Ipv4Cidr;

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
    fn kernel_ip_args() {
        let addr = Ipv4Addr::new(10, 92, 3, 7);
        let slice: Ipv4Cidr = "10.92.3.0/24".parse().expect("cidr");
        assert_eq!(
            kernel_ip_arg(addr, slice, "sbx-1"),
            "ip=10.92.3.7::10.92.3.1:255.255.255.0:sbx-1:eth0:off"
        );
    }
}
