//! Node networking for machines: per-org bridges and address slices, veth pairs into machine
//! network namespaces, and Kiln's nftables table.
//!
//! Every org gets one /24 slice of the node subnet and one bridge holding the slice's gateway
//! (`.1`); each machine gets a veth pair whose host end is a port of its org's bridge and whose
//! other end is `eth0` in the machine's network namespace. Names are derived, not stored:
//!
//! | what | name | example |
//! |---|---|---|
//! | org bridge | `kb-` + the slice's first three octets | `kb-10-88-3` |
//! | host end of a machine's veth | `kv` + 12 hex digits of sha256(id) | `kv3f2a…` |
//! | machine network namespace | `kiln-` + id (`/run/netns/kiln-<id>`) | `kiln-sbx_1` |
//!
//! Isolation is enforced by the `inet kiln` nftables table (see [`ruleset`]): machines cannot
//! open connections to the host, machines on different bridges cannot talk, and nothing from
//! a machine is forwarded out unless its subnet is in the `egress_nets` set.

use std::{
    fmt, fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{OrgNetwork, error::RuntimeError, spawn::run_tool};

/// The nftables table Kiln owns; nothing else in it is touched by other software.
pub const NFT_TABLE: &str = "kiln";
/// Prefix of org bridges; the nftables rules match `kb-*`.
pub const BRIDGE_PREFIX: &str = "kb-";
/// Name of the machine's interface inside its network namespace.
pub const GUEST_IFACE: &str = "eth0";
/// Where `ip netns` keeps named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// An IPv4 network in CIDR notation, e.g. `10.88.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The default node subnet: `10.88.0.0/16`, 256 org slices of 253 machines each.
    pub const DEFAULT_SUBNET: Ipv4Cidr = Ipv4Cidr {
        network: Ipv4Addr::new(10, 88, 0, 0),
        prefix: 16,
    };

    /// A network from its address and prefix length; host bits must be zero.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, RuntimeError> {
        if prefix > 32 {
            return Err(RuntimeError::InvalidConfig(format!(
                "prefix length /{prefix} is larger than 32"
            )));
        }
        let cidr = Self { network, prefix };
        if u32::from(network) & !cidr.mask() != 0 {
            return Err(RuntimeError::InvalidConfig(format!(
                "{network}/{prefix} has host bits set; did you mean {}/{prefix}?",
                Ipv4Addr::from(u32::from(network) & cidr.mask())
            )));
        }
        Ok(cidr)
    }

    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    /// Whether `addr` lies in this network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.network)
    }

    /// How many /24 org slices this network holds (0 if it is smaller than a /24).
    pub fn slice_count(&self) -> u32 {
        if self.prefix > 24 {
            0
        } else {
            1 << (24 - self.prefix)
        }
    }

    /// The `index`th /24 slice.
    pub fn slice(&self, index: u32) -> Option<Ipv4Cidr> {
        (index < self.slice_count()).then(|| Ipv4Cidr {
            network: Ipv4Addr::from(u32::from(self.network) + (index << 8)),
            prefix: 24,
        })
    }

    /// The `n`th address of the network (`n = 1` is the gateway of a slice).
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + n)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || RuntimeError::InvalidConfig(format!("{s:?} is not an IPv4 CIDR like 10.88.0.0/16"));
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        Self::new(addr, prefix)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// First and last machine host numbers inside a /24 slice (`.1` is the gateway, `.255`
/// broadcast).
pub(crate) const FIRST_HOST: u32 = 2;
pub(crate) const LAST_HOST: u32 = 254;

/// The bridge of a /24 slice.
pub fn bridge_name(slice: Ipv4Cidr) -> String {
    let [a, b, c, _] = slice.network().octets();
    format!("{BRIDGE_PREFIX}{a}-{b}-{c}")
}

/// A stable, locally administered MAC for a slice's bridge. Without it a Linux bridge takes the
/// lowest MAC of its ports, which changes as machines come and go and makes ARP caches stale.
fn bridge_mac(slice: Ipv4Cidr) -> String {
    let [a, b, c, _] = slice.network().octets();
    format!("02:6b:6e:{a:02x}:{b:02x}:{c:02x}")
}

/// The host end of machine `id`'s veth pair (15 characters at most, as Linux requires).
pub fn veth_name(id: &str) -> String {
    let hash = hex::encode(Sha256::digest(id.as_bytes()));
    format!("kv{}", &hash[..12])
}

/// The tap device of VM `id` (15 characters at most, as Linux requires).
pub fn tap_name(id: &str) -> String {
    let hash = hex::encode(Sha256::digest(id.as_bytes()));
    format!("kt{}", &hash[..12])
}

/// The MAC of the machine holding `address`. It follows from the address, so a machine that
/// later gets a reused address has the MAC the node's neighbour cache already holds for it:
/// no stale ARP entry sends its first packets to a machine that is gone.
pub fn guest_mac(address: Ipv4Addr) -> String {
    let [a, b, c, d] = address.octets();
    format!("02:4b:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Creates tap `tap` as a port of `bridge`, without IPv6 on the host side; `owner` lets an
/// unprivileged (jailed) VMM open it. Leftovers must have been removed with [`remove_tap`].
pub(crate) async fn create_tap(
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
    disable_ipv6(tap);
    Ok(())
}

/// Removes tap `tap`; a missing one is fine.
pub(crate) async fn remove_tap(tap: &str) -> Result<(), RuntimeError> {
    if link_exists(tap) {
        run_tool("ip", &["link", "del", tap], None).await?;
    }
    Ok(())
}

/// Whether VM `id`'s tap device exists.
pub fn tap_exists(id: &str) -> bool {
    link_exists(&tap_name(id))
}

/// The named network namespace of machine `id`.
pub fn netns_name(id: &str) -> String {
    format!("kiln-{id}")
}

/// The bind-mounted namespace file of machine `id`.
pub fn netns_path(id: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(netns_name(id))
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Creates the bridge of `slice` with its gateway address unless it exists.
pub(crate) async fn ensure_bridge(slice: Ipv4Cidr) -> Result<(), RuntimeError> {
    let name = bridge_name(slice);
    if !link_exists(&name) {
        let gateway = slice.host(1);
        let batch = format!(
            "link add name {name} address {mac} type bridge\n\
             addr add {gateway}/24 dev {name}\n\
             link set {name} up\n",
            mac = bridge_mac(slice)
        );
        run_tool("ip", &["-batch", "-"], Some(&batch)).await?;
        // Machines have no IPv6; a link-local address on the bridge would only be a way to
        // talk to the host that the IPv4 rules do not mention.
        disable_ipv6(&name);
        tracing::info!(bridge = %name, %slice, "created org bridge");
    }
    Ok(())
}

/// Lets the machines of `org` (on its bridge), and no others, connect to TCP `port` on the
/// org's gateway address: the door to a node service that belongs to that org, such as its
/// database. The address is part of the door, so another org's door to the same port number
/// on its own gateway opens nothing here.
pub async fn allow_org_service(org: &OrgNetwork, port: u16) -> Result<(), RuntimeError> {
    let element = org_door(org, port);
    let script = format!("add element inet {NFT_TABLE} org_doors {element}\n");
    run_tool("nft", &["-f", "-"], Some(&script)).await?;
    Ok(())
}

/// Closes the door [`allow_org_service`] opened. Idempotent.
pub async fn revoke_org_service(org: &OrgNetwork, port: u16) -> Result<(), RuntimeError> {
    // Add, then delete, in one transaction: nftables 1.0.6 cannot delete "if present".
    let element = org_door(org, port);
    let script = format!(
        "add element inet {NFT_TABLE} org_doors {element}\n\
         delete element inet {NFT_TABLE} org_doors {element}\n"
    );
    run_tool("nft", &["-f", "-"], Some(&script)).await?;
    Ok(())
}

/// An `org_doors` element: the org's bridge, its gateway, TCP, the port.
fn org_door(org: &OrgNetwork, port: u16) -> String {
    format!("{{ \"{}\" . {} . tcp . {port} }}", org.bridge, org.gateway)
}

/// Lets machines on bridge `name` reach each other (the `same_bridge` nftables set).
pub(crate) async fn allow_bridge(name: &str) -> Result<(), RuntimeError> {
    let element =
        format!("add element inet {NFT_TABLE} same_bridge {{ \"{name}\" . \"{name}\" }}\n");
    run_tool("nft", &["-f", "-"], Some(&element)).await?;
    Ok(())
}

/// Deletes bridge `name` and its `same_bridge` element; a missing bridge is fine.
pub(crate) async fn remove_bridge(name: &str) -> Result<(), RuntimeError> {
    if link_exists(name) {
        run_tool("ip", &["link", "del", name], None).await?;
    }
    // Add, then delete, in one transaction: nftables 1.0.6 cannot delete "if present".
    let script = format!(
        "add element inet {NFT_TABLE} same_bridge {{ \"{name}\" . \"{name}\" }}\n\
         delete element inet {NFT_TABLE} same_bridge {{ \"{name}\" . \"{name}\" }}\n"
    );
    run_tool("nft", &["-f", "-"], Some(&script)).await?;
    tracing::info!(bridge = %name, "removed org bridge");
    Ok(())
}

pub(crate) fn disable_ipv6(iface: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6");
    if let Err(e) = fs::write(&path, "1") {
        // Kernels without IPv6 have no such file, which is the state we want anyway.
        tracing::debug!(%path, error = %e, "could not disable IPv6");
    }
}

/// Where a machine's network attaches.
#[derive(Debug, Clone)]
pub(crate) struct MachineNet {
    pub id: String,
    pub slice: Ipv4Cidr,
    pub address: Ipv4Addr,
}

/// Creates machine `net.id`'s network namespace and its veth pair, the host end a port of the
/// org's bridge. Leftovers must have been removed with [`teardown_machine`].
pub(crate) async fn create_machine_link(net: &MachineNet) -> Result<(), RuntimeError> {
    let ns = netns_name(&net.id);
    let veth = veth_name(&net.id);
    let bridge = bridge_name(net.slice);
    let mac = guest_mac(net.address);
    // One `ip` process per namespace: this is the host side, [`configure_guest`] the other.
    let host = format!(
        "netns add {ns}\n\
         link add name {veth} type veth peer name {GUEST_IFACE} address {mac} netns {ns}\n\
         link set {veth} master {bridge} up\n"
    );
    run_tool("ip", &["-batch", "-"], Some(&host)).await?;
    disable_ipv6(&veth);
    Ok(())
}

/// Configures `eth0`, `lo` and the default route inside the machine's network namespace.
pub(crate) async fn configure_guest(net: &MachineNet) -> Result<(), RuntimeError> {
    let ns = netns_name(&net.id);
    let guest = format!(
        "addr add {addr}/24 dev {GUEST_IFACE}\n\
         link set {GUEST_IFACE} up\n\
         link set lo up\n\
         route add default via {gateway}\n",
        addr = net.address,
        gateway = net.slice.host(1),
    );
    run_tool("ip", &["-n", &ns, "-batch", "-"], Some(&guest)).await?;
    Ok(())
}

/// Removes machine `id`'s veth pair and network namespace; missing pieces are fine.
pub(crate) async fn teardown_machine(id: &str) -> Result<(), RuntimeError> {
    let veth = veth_name(id);
    let mut batch = String::new();
    if link_exists(&veth) {
        batch.push_str(&format!("link del {veth}\n"));
    }
    if netns_path(id).exists() {
        batch.push_str(&format!("netns del {}\n", netns_name(id)));
    }
    if !batch.is_empty() {
        run_tool("ip", &["-batch", "-"], Some(&batch)).await?;
    }
    Ok(())
}

/// The nftables script that (re)creates Kiln's table idempotently.
///
/// Chains are flushed and rewritten; sets are only created if missing, so their elements (other
/// Kiln drivers' subnets and bridges, operator-allowed services) survive a restart. The
/// `host_services` set is the hook for explicitly allowed host ports: add
/// `tcp . 5432`-style elements to let machines reach a service on the node
/// (`nft add element inet kiln host_services { tcp . 5432 }`). `org_services` is the doors'
/// earlier set, which keyed no address; it is created and dropped so older nodes lose it.
pub fn ruleset() -> String {
    let t = NFT_TABLE;
    let br = format!("\"{BRIDGE_PREFIX}*\"");
    format!(
        "add table inet {t}
add set inet {t} same_bridge {{ type ifname . ifname; comment \"bridges whose ports may talk to each other\"; }}
add set inet {t} egress_nets {{ type ipv4_addr; flags interval; comment \"machine subnets NATed out to the internet\"; }}
add set inet {t} host_services {{ type inet_proto . inet_service; comment \"host ports machines may connect to\"; }}
add set inet {t} org_doors {{ type ifname . ipv4_addr . inet_proto . inet_service; comment \"host address and port only one org's bridge may connect to\"; }}
add set inet {t} org_services {{ type ifname . inet_proto . inet_service; }}
add chain inet {t} input {{ type filter hook input priority filter - 10; policy accept; }}
add chain inet {t} forward {{ type filter hook forward priority filter - 10; policy accept; }}
add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
flush chain inet {t} input
flush chain inet {t} forward
flush chain inet {t} postrouting
add rule inet {t} input iifname {br} ct state established,related accept
add rule inet {t} input iifname {br} meta l4proto . th dport @host_services accept
add rule inet {t} input iifname . ip daddr . meta l4proto . th dport @org_doors accept
add rule inet {t} input iifname {br} drop
add rule inet {t} forward iifname . oifname @same_bridge accept
add rule inet {t} forward oifname {br} ct state established,related accept
add rule inet {t} forward oifname {br} drop
add rule inet {t} forward iifname {br} ip daddr 169.254.0.0/16 drop
add rule inet {t} forward iifname {br} oifname != {br} ip saddr @egress_nets accept
add rule inet {t} forward iifname {br} drop
add rule inet {t} postrouting oifname != {br} ip saddr @egress_nets masquerade
delete set inet {t} org_services
"
    )
}

/// Installs [`ruleset`], registers the bridges in `bridges`, and adds `subnet` to or removes it
/// from `egress_nets`.
pub(crate) async fn install_firewall(
    subnet: Ipv4Cidr,
    egress: bool,
    bridges: &[String],
) -> Result<(), RuntimeError> {
    let t = NFT_TABLE;
    let mut script = ruleset();
    for name in bridges {
        script.push_str(&format!(
            "add element inet {t} same_bridge {{ \"{name}\" . \"{name}\" }}\n"
        ));
    }
    // nftables 1.0.6 has no "delete if present", so add then delete in the same transaction.
    script.push_str(&format!(
        "add element inet {t} egress_nets {{ {subnet} }}\n"
    ));
    if !egress {
        script.push_str(&format!(
            "delete element inet {t} egress_nets {{ {subnet} }}\n"
        ));
    }
    run_tool("nft", &["-f", "-"], Some(&script)).await?;
    if egress {
        // Routing between the bridges and the uplink; the forward chain decides what may pass.
        fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| RuntimeError::io("enable IPv4 forwarding", e))?;
    }
    Ok(())
}

/// The `/etc/resolv.conf` machines get: the host's non-loopback IPv4 name servers when they
/// may reach the internet, none otherwise (so look-ups fail at once instead of timing out).
pub(crate) fn resolv_conf(egress: bool, host_resolv: &str) -> String {
    let mut out = String::from("# Generated by Kiln.\n");
    if !egress {
        out.push_str("# This machine has no egress; no name servers.\n");
        return out;
    }
    for line in host_resolv.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        if let Some(Ok(addr)) = words.next().map(str::parse::<Ipv4Addr>)
            && !addr.is_loopback()
        {
            out.push_str(&format!("nameserver {addr}\n"));
        }
    }
    out
}

/// The `/etc/hosts` of a machine.
pub(crate) fn hosts_file(hostname: &str, address: Ipv4Addr) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{hostname}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_slice() {
        let net: Ipv4Cidr = "10.88.0.0/16".parse().expect("valid");
        assert_eq!(net, Ipv4Cidr::DEFAULT_SUBNET);
        assert_eq!(net.to_string(), "10.88.0.0/16");
        assert_eq!(net.slice_count(), 256);
        let s = net.slice(3).expect("in range");
        assert_eq!(s.to_string(), "10.88.3.0/24");
        assert_eq!(s.host(1), Ipv4Addr::new(10, 88, 3, 1));
        assert!(s.contains(Ipv4Addr::new(10, 88, 3, 200)));
        assert!(!s.contains(Ipv4Addr::new(10, 88, 4, 1)));
        assert_eq!(net.slice(256), None);
        assert_eq!(
            "10.0.0.0/8"
                .parse::<Ipv4Cidr>()
                .expect("valid")
                .slice_count(),
            65536
        );
        assert_eq!(
            "10.9.9.0/25"
                .parse::<Ipv4Cidr>()
                .expect("valid")
                .slice_count(),
            0
        );
        for bad in [
            "10.88.0.1/16",
            "10.88.0.0",
            "10.88.0.0/33",
            "x/8",
            "10.88.0.0/-1",
        ] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn names_fit_linux_limits() {
        let slice: Ipv4Cidr = "255.255.255.0/24".parse().expect("valid");
        assert_eq!(bridge_name(slice), "kb-255-255-255");
        assert!(bridge_name(slice).len() <= 15);
        let veth = veth_name("sbx_0123456789abcdef0123456789abcdef");
        assert!(veth.len() <= 15, "{veth}");
        assert_ne!(veth_name("a"), veth_name("b"));
        assert_eq!(
            bridge_mac("10.88.3.0/24".parse().expect("valid")),
            "02:6b:6e:0a:58:03"
        );
    }

    #[test]
    fn resolv_conf_keeps_only_reachable_servers() {
        let host =
            "search example\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\n";
        assert_eq!(
            resolv_conf(true, host),
            "# Generated by Kiln.\nnameserver 10.255.255.53\n"
        );
        assert!(!resolv_conf(false, host).contains("nameserver"));
    }

    #[test]
    fn ruleset_mentions_every_chain() {
        let r = ruleset();
        for needle in [
            "hook input",
            "hook forward",
            "hook postrouting",
            "@same_bridge",
            "@host_services",
            "@egress_nets",
        ] {
            assert!(r.contains(needle), "missing {needle}");
        }
    }
}
