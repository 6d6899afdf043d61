//! Machine drivers (process, qemu, firecracker), node networking and images.
//!
//! A *machine* is Kiln's unit of isolation: an image root, a workspace volume, limits, its own
//! network address and the guest agent as PID 1. The rest of the platform reaches a machine only
//! through [`MachineInfo::address`] and [`MachineInfo::agent`], never through host paths or
//! pids, so drivers are interchangeable behind [`Driver`].
//!
//! - [`process`]: Linux namespaces + cgroups v1 + a veth on the org's bridge (the embedded
//!   default where no usable KVM exists).
//! - [`firecracker`]: one Firecracker microVM per machine, configured through its API socket,
//!   a tap on the org's bridge, the agent over vsock, the jailer when configured.
//! - [`vm`]: guest images (kernel, initramfs, ext4 disks) and the `qemu` driver: real VMs
//!   with a tap on the org's bridge and the agent over TCP with a per-machine token.
//! - [`net`]: per-org bridges and /24 slices, veth pairs, the `inet kiln` nftables table.
//! - [`image`]: image definitions and the store that builds them with mmdebstrap.
//! - [`launch`]: the `kiln-launch` program that turns prepared namespaces into a machine.
//! - [`spawn`]: the one function allowed to create child processes.

#![deny(unsafe_code)]

mod addresses;
mod cgroup;
mod error;
pub mod firecracker;
pub mod image;
pub mod launch;
mod lifecycle;
mod lock;
pub mod net;
pub mod process;
pub mod spawn;
mod state;
pub mod vm;

use std::{collections::BTreeMap, net::Ipv4Addr};

use async_trait::async_trait;
use kiln_guest::client::AgentClient;

pub use crate::{
    error::RuntimeError,
    firecracker::{FirecrackerConfig, FirecrackerDriver},
    image::{ImageRef, ImageStore, default_image},
    net::Ipv4Cidr,
    process::{ProcessDriver, ProcessDriverConfig},
    vm::{QemuDriver, QemuDriverConfig},
};

/// What to boot: identity, owner, image, limits and the agent's base environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    /// The machine id (e.g. `sbx_…`); letters, digits, `_` and `-`, at most 64 characters.
    pub id: String,
    /// The owning org; machines of one org share a network, other orgs' are unreachable.
    pub org_id: String,
    /// The image to boot.
    pub image: ImageRef,
    /// Virtual CPUs: the CPU weight and quota in cores.
    pub vcpus: u32,
    /// Memory limit in MiB; exceeding it OOM-kills processes of the machine.
    pub memory_mib: u32,
    /// Maximum number of processes (and threads) in the machine.
    pub pids_max: u32,
    /// The machine's hostname (a DNS label).
    pub hostname: String,
    /// Base environment the agent gives every command it runs.
    pub env: BTreeMap<String, String>,
}

/// A running machine as the platform sees it.
#[derive(Debug, Clone)]
pub struct MachineInfo {
    /// The machine id.
    pub id: String,
    /// The machine's network address, reachable from the node.
    pub address: Ipv4Addr,
    /// A client for the machine's guest agent.
    pub agent: AgentClient,
    /// Identifies this boot; changes whenever the machine is (re)booted, not when adopted.
    pub boot_id: String,
}

/// An org's machine network on this node: its bridge and /24, and the host's address on it
/// (the gateway), where node services the org may use (databases, the S3 endpoint) listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgNetwork {
    /// The org's bridge, e.g. `kb-10-88-3`.
    pub bridge: String,
    /// The org's slice, e.g. `10.88.3.0/24`.
    pub slice: Ipv4Cidr,
    /// The host's address on the bridge: every machine's default gateway.
    pub gateway: Ipv4Addr,
}

/// A way to run machines. Every operation is idempotent, so reconcilers may retry freely.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// The driver's name as configured: `process`, `qemu`, `firecracker`.
    fn name(&self) -> &'static str;

    /// Whether machines run under hardware virtualisation (a kernel boundary per machine).
    fn hardware_accelerated(&self) -> bool;

    /// Boots the machine, or adopts it if it already runs (e.g. after the control plane
    /// restarted); returns once the agent answers health. Idempotent.
    async fn start(&self, spec: &MachineSpec) -> Result<MachineInfo, RuntimeError>;

    /// Stops the machine and frees its address; its workspace volume is kept. Idempotent.
    async fn stop(&self, id: &str) -> Result<(), RuntimeError>;

    /// Stops the machine and deletes its workspace volume and all its state. Idempotent.
    async fn destroy(&self, id: &str) -> Result<(), RuntimeError>;

    /// The org's network, assigning its slice and bringing up its bridge if needed, so a
    /// node service can listen on the gateway before the org's first machine boots.
    /// Idempotent; the slice never changes once assigned.
    async fn org_network(&self, org_id: &str) -> Result<OrgNetwork, RuntimeError>;

    /// Ids of machines currently running.
    async fn running(&self) -> Result<Vec<String>, RuntimeError>;

    /// Count of processes of this machine killed by the kernel's OOM killer so far (cgroup v1
    /// `memory.oom_control` `oom_kill`, or `memory.failcnt` on old kernels) — used to tell an
    /// exec that it died of the memory limit. Zero for a machine that is not running.
    async fn oom_kills(&self, id: &str) -> Result<u64, RuntimeError>;
}

/// Stops every running machine of `driver` side by side. Errors are logged, not returned, so
/// one stuck machine does not keep the others running (for a node shutting down for good).
pub(crate) async fn stop_all<D: Driver + Clone>(driver: &D) {
    let ids = match driver.running().await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!(error = %e, "cannot list machines to shut down");
            return;
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for id in ids {
        let driver = driver.clone();
        tasks.spawn(async move {
            if let Err(e) = driver.stop(&id).await {
                tracing::error!(machine = %id, error = %e, "cannot stop machine");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
