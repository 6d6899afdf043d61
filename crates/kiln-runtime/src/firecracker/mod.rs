//! The `firecracker` driver: one Firecracker microVM per machine, configured through its API
//! socket, a tap device on the org's bridge, and the guest agent reached over vsock.
//!
//! State lives under `state_dir`, so a restarted driver finds and adopts running machines:
//!
//! ```text
//! <state_dir>/network.json            org → /24 slice index (shared node network, `addresses.rs`)
//! <state_dir>/.network.lock           flock serialising address allocation between processes
//! <state_dir>/<id>/machine.json       org, slice, address (while running), tap, workspace, jail
//! <state_dir>/<id>/firecracker.pid    pid of the machine's Firecracker (or jailer, which execs it)
//! <state_dir>/<id>/console.log        Firecracker's output: its messages and the serial console
//! <state_dir>/<id>/api.sock           Firecracker's API socket (in the jail when jailed)
//! <state_dir>/<id>/vsock.sock         the vsock device's host socket (in the jail when jailed)
//! <state_dir>/<id>/firecracker.log    Firecracker's logger output; metrics.json its metrics
//! ```
//!
//! A boot: allocate the address, let the [`GuestImage`] prepare the boot files, create the tap,
//! (when jailed) hard-link the files into the chroot, start Firecracker, send the
//! [`BootPlan`]'s API calls (logger, metrics, machine config, boot source, drives, network
//! interface, vsock, `InstanceStart`), then wait for the agent to answer `health` over the vsock
//! until the boot deadline. A stop asks the agent to shut down and presses Ctrl+Alt+Del, then
//! SIGKILLs Firecracker after a grace period, and removes the tap, sockets and jail.

mod api;
mod boot;
mod config;
mod error;
mod guest;
mod jailer;
mod network;
mod plan;
mod vmm;

#[cfg(test)]
mod tests;

use std::{
    fs,
    io::ErrorKind,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use kiln_guest::client::{AgentClient, Endpoint};
use serde::{Deserialize, Serialize};

pub use self::{
    api::{
        ActionType, ApiClient, ApiRequest, BootSource, Drive, InstanceActionInfo, Logger,
        MachineConfiguration, Metrics, NetworkInterface, Vsock,
    },
    config::FirecrackerConfig,
    error::FirecrackerError,
    guest::{FixedGuestImage, GuestBoot, GuestImage, GuestMachine, base_boot_args},
    jailer::{DEFAULT_CHROOT_BASE, JAILED_API_SOCKET, Jail, JailerConfig, jail_id},
    network::kernel_ip_arg,
    plan::{BootPlan, NET_IFACE, ROOT_DRIVE, WORKSPACE_DRIVE, action_request},
};
pub use crate::net::{guest_mac, tap_name};
use crate::{
    Driver, MachineInfo, MachineSpec, OrgNetwork,
    addresses::{Claim, NodeNetwork, recorded_claims},
    error::{IoContext, RuntimeError},
    lifecycle::{self, Lifecycle, MachineLocks},
    net::Ipv4Cidr,
    process::validate_spec,
    spawn,
    state::{machine_ids, read_json, validate_id, write_json},
};

/// The vsock port the guest agent listens on: below 1024, so only root in the guest (the
/// agent) can bind it, and no user process can take it should the agent ever let go of it.
pub const AGENT_VSOCK_PORT: u32 = 1000;
/// The guest's vsock context id. Firecracker's vsock is a user-space device behind a unix
/// socket, so every guest may use the same CID.
pub const GUEST_CID: u32 = 3;
/// The default time from starting Firecracker to the agent answering.
pub const DEFAULT_BOOT_DEADLINE: Duration = Duration::from_secs(30);
/// The KVM device Firecracker needs.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// How long an adoption probe waits for a running agent.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the guest gets to power off after the shutdown requests.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long each shutdown request may take.
const SHUTDOWN_REQUEST: Duration = Duration::from_millis(500);
/// How long Firecracker gets to disappear after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one health probe of a booting guest may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest unix socket path Linux accepts.
const MAX_SOCKET_PATH: usize = 107;
/// The most vCPUs Firecracker accepts.
const MAX_VCPUS: u32 = 32;

/// The firecracker driver. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct FirecrackerDriver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: FirecrackerConfig,
    /// The resolved Firecracker binary.
    firecracker: PathBuf,
    /// One lock per machine id, so start/stop/destroy of one machine never interleave.
    machine_locks: MachineLocks,
    /// Org slices, addresses and bridges, shared with the other drivers' rules.
    network: NodeNetwork,
}

/// `<state_dir>/<id>/machine.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MachineRecord {
    id: String,
    org_id: String,
    hostname: String,
    slice: Ipv4Cidr,
    /// Set while the machine holds an address (from start until stop).
    address: Option<Ipv4Addr>,
    tap: String,
    /// The workspace volume, once the guest image prepared it; deleted on destroy.
    workspace: Option<PathBuf>,
    /// The jail of the current boot, if jailed.
    jail: Option<JailRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JailRecord {
    id: String,
    dir: PathBuf,
    root: PathBuf,
}

impl From<&Jail> for JailRecord {
    fn from(j: &Jail) -> Self {
        Self {
            id: j.id.clone(),
            dir: j.dir.clone(),
            root: j.root.clone(),
        }
    }
}

impl From<&JailRecord> for Jail {
    fn from(j: &JailRecord) -> Self {
        Jail {
            id: j.id.clone(),
            dir: j.dir.clone(),
            root: j.root.clone(),
        }
    }
}

/// Where one boot's sockets are on the host, and what identifies its process.
#[derive(Debug, Clone)]
struct Sockets {
    api: PathBuf,
    vsock: PathBuf,
    /// A string in Firecracker's command line unique to this machine.
    marker: String,
}

impl FirecrackerDriver {
    /// Checks the host (root, `/dev/kvm`, the Firecracker and jailer binaries, `ip`, `nft`),
    /// creates the state directory and installs the `inet kiln` nftables table with the bridges
    /// of known orgs. Idempotent.
    pub async fn new(cfg: FirecrackerConfig) -> Result<Self, RuntimeError> {
        Self::with_kvm_device(cfg, Path::new(KVM_DEVICE)).await
    }

    /// [`Self::new`] checking `kvm` instead of `/dev/kvm`.
    async fn with_kvm_device(cfg: FirecrackerConfig, kvm: &Path) -> Result<Self, RuntimeError> {
        if !cfg.state_dir.is_absolute() {
            return Err(RuntimeError::InvalidConfig(format!(
                "state_dir must be an absolute path, got {}",
                cfg.state_dir.display()
            )));
        }
        if cfg.subnet.slice_count() == 0 {
            return Err(RuntimeError::InvalidConfig(format!(
                "subnet {} is smaller than a /24; each org needs a /24 slice",
                cfg.subnet
            )));
        }
        let path_var = std::env::var("PATH").ok();
        let firecracker = vmm::resolve_binary(
            "firecracker",
            "firecracker",
            "KILN_FIRECRACKER_BIN",
            cfg.firecracker_bin.as_deref(),
            path_var.as_deref(),
        )?;
        if let Some(jailer) = &cfg.jailer {
            vmm::resolve_binary(
                "jailer",
                "jailer",
                "KILN_FIRECRACKER_JAILER",
                Some(&jailer.bin),
                None,
            )?;
            if !jailer.chroot_base.is_absolute() {
                return Err(RuntimeError::InvalidConfig(format!(
                    "the jailer's chroot base must be an absolute path, got {}",
                    jailer.chroot_base.display()
                )));
            }
        }
        check_kvm(kvm)?;
        if !nix::unistd::geteuid().is_root() {
            return Err(RuntimeError::InvalidConfig(
                "the firecracker driver needs root (tap devices, bridges, nftables)".into(),
            ));
        }
        for program in ["ip", "nft"] {
            if !spawn::on_path(program) {
                return Err(spawn::missing_program(program).expect("known tool"));
            }
        }
        fs::create_dir_all(&cfg.state_dir)
            .ctx(|| format!("create state directory {}", cfg.state_dir.display()))?;
        let state_dir = cfg.state_dir.clone();
        let network =
            NodeNetwork::open(cfg.state_dir.clone(), cfg.subnet, cfg.egress, &move || {
                claims(&state_dir)
            })
            .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                firecracker,
                machine_locks: MachineLocks::default(),
                network,
            }),
        })
    }

    /// The Firecracker binary this driver runs.
    pub fn firecracker_bin(&self) -> &Path {
        &self.inner.firecracker
    }

    /// Stops every running machine of this driver and removes idle org bridges (e.g. when the
    /// node shuts down for good). Errors are logged, so one stuck machine does not keep the
    /// others running.
    pub async fn shutdown_all(&self) {
        crate::stop_all(self).await;
        if let Err(e) = self.remove_idle_bridges().await {
            tracing::error!(error = %e, "cannot remove org bridges");
        }
    }

    /// Deletes the bridges of this driver's orgs that have no machine holding an address; the
    /// slice assignments stay.
    pub async fn remove_idle_bridges(&self) -> Result<(), RuntimeError> {
        let dir = self.inner.cfg.state_dir.clone();
        self.inner
            .network
            .remove_idle_bridges(&move || claims(&dir))
            .await
    }

    fn jail(&self, id: &str) -> Option<Jail> {
        let cfg = self.inner.cfg.jailer.as_ref()?;
        Some(Jail::new(cfg, &self.inner.firecracker, id))
    }

    /// The sockets of machine `id` for a boot in `jail` (or unjailed).
    fn sockets(&self, id: &str, jail: Option<&Jail>) -> Sockets {
        match jail {
            Some(jail) => Sockets {
                api: jail.host_path(Path::new(JAILED_API_SOCKET)),
                vsock: jail.host_path(Path::new("/vsock.sock")),
                marker: jail.id.clone(),
            },
            None => {
                let api = self.machine_dir(id).join("api.sock");
                Sockets {
                    marker: api.to_string_lossy().into_owned(),
                    api,
                    vsock: self.machine_dir(id).join("vsock.sock"),
                }
            }
        }
    }

    fn machine_ids(&self) -> Result<Vec<String>, RuntimeError> {
        machine_ids(&self.inner.cfg.state_dir)
    }

    /// The running Firecracker of machine `id`, if any.
    fn running_pid(&self, id: &str, record: Option<&MachineRecord>) -> Option<i32> {
        let jail = record.and_then(|r| r.jail.as_ref()).map(Jail::from);
        let sockets = self.sockets(id, jail.as_ref());
        vmm::running_pid(
            &self.machine_dir(id).join("firecracker.pid"),
            &sockets.marker,
        )
    }
}

#[async_trait]
impl Lifecycle for FirecrackerDriver {
    type Record = MachineRecord;
    /// The guest files are made per machine inside the boot (they carry its address).
    type Prepared = ();

    fn address_of(record: &mut MachineRecord) -> &mut Option<Ipv4Addr> {
        &mut record.address
    }

    async fn prepare(&self, _spec: &MachineSpec) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn boot(
        &self,
        spec: &MachineSpec,
        record: MachineRecord,
        (): (),
    ) -> Result<MachineInfo, RuntimeError> {
        self.boot_machine(spec, record).await
    }

    fn machine_dir(&self, id: &str) -> PathBuf {
        self.inner.cfg.state_dir.join(id)
    }

    fn read_record(&self, id: &str) -> Result<Option<MachineRecord>, RuntimeError> {
        read_json(&self.machine_dir(id).join("machine.json"))
    }

    fn write_record(&self, record: &MachineRecord) -> Result<(), RuntimeError> {
        write_json(&self.machine_dir(&record.id).join("machine.json"), record)
    }

    /// Assigns the org's slice and a free address (keeping the previous one when free) and
    /// writes the machine record.
    async fn allocate(
        &self,
        spec: &MachineSpec,
        previous: Option<&MachineRecord>,
    ) -> Result<MachineRecord, RuntimeError> {
        let dir = self.inner.cfg.state_dir.clone();
        self.inner
            .network
            .allocate(
                &spec.org_id,
                &spec.id,
                previous.and_then(|p| p.address),
                &move || claims(&dir),
                |slice, address| {
                    let record = MachineRecord {
                        id: spec.id.clone(),
                        org_id: spec.org_id.clone(),
                        hostname: spec.hostname.clone(),
                        slice,
                        address: Some(address),
                        tap: tap_name(&spec.id),
                        workspace: previous.and_then(|p| p.workspace.clone()),
                        jail: None,
                    };
                    self.write_record(&record)?;
                    Ok(record)
                },
            )
            .await
    }

    /// Returns the running machine if its agent answers as `id`.
    async fn try_adopt(&self, id: &str) -> Option<MachineInfo> {
        let record = self.read_record(id).ok()??;
        let address = record.address?;
        self.running_pid(id, Some(&record))?;
        let jail = record.jail.as_ref().map(Jail::from);
        let sockets = self.sockets(id, jail.as_ref());
        let agent = agent_client(&sockets.vsock);
        lifecycle::adopt(id, address, agent, ADOPT_TIMEOUT).await
    }

    /// Ends machine `id`'s Firecracker (gracefully first when `grace` is non-zero) and removes
    /// its tap, sockets, pidfile and jail. The record and workspace are left to the caller.
    async fn teardown(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let record = self.read_record(id)?;
        let jail = record
            .as_ref()
            .and_then(|r| r.jail.as_ref())
            .map(Jail::from);
        let sockets = self.sockets(id, jail.as_ref());
        if let Some(pid) = self.running_pid(id, record.as_ref()) {
            if !grace.is_zero() {
                // The agent powers the guest off cleanly (stopping supervised processes
                // first); Ctrl+Alt+Del is the fallback for a guest whose agent is stuck.
                let agent =
                    agent_client(&sockets.vsock).with_timeouts(SHUTDOWN_REQUEST, SHUTDOWN_REQUEST);
                if let Err(e) = agent.shutdown().await {
                    tracing::debug!(machine = %id, error = %e, "agent shutdown request failed");
                }
                let api = ApiClient::new(&sockets.api);
                let ctrl_alt_del = action_request(ActionType::SendCtrlAltDel);
                if let Ok(Err(e)) =
                    tokio::time::timeout(SHUTDOWN_REQUEST, api.send(&ctrl_alt_del)).await
                {
                    tracing::debug!(machine = %id, error = %e, "SendCtrlAltDel failed");
                }
                vmm::wait_exit(pid, grace).await;
            }
            if vmm::alive(pid) {
                vmm::kill_and_wait(id, pid, KILL_TIMEOUT).await?;
            }
        }
        let tap = record
            .as_ref()
            .map_or_else(|| tap_name(id), |r| r.tap.clone());
        crate::net::remove_tap(&tap).await?;
        let dir = self.machine_dir(id);
        for path in [
            sockets.api.clone(),
            sockets.vsock.clone(),
            dir.join("firecracker.pid"),
        ] {
            vmm::remove_file(&path)?;
        }
        if let Some(jail) = jail.or_else(|| self.jail(id)) {
            jail.remove()?;
        }
        if let Some(mut record) = record
            && record.jail.take().is_some()
        {
            self.write_record(&record)?;
        }
        Ok(())
    }
}

#[async_trait]
impl Driver for FirecrackerDriver {
    fn name(&self) -> &'static str {
        "firecracker"
    }

    fn hardware_accelerated(&self) -> bool {
        true
    }

    async fn start(&self, spec: &MachineSpec) -> Result<MachineInfo, RuntimeError> {
        validate_spec(spec)?;
        if spec.vcpus > MAX_VCPUS || (spec.vcpus > 1 && spec.vcpus % 2 == 1) {
            return Err(RuntimeError::InvalidConfig(format!(
                "machine {}: Firecracker needs 1 or an even number of vcpus up to {MAX_VCPUS}, got {}",
                spec.id, spec.vcpus
            )));
        }
        let _guard = self.inner.machine_locks.lock(&spec.id).await;
        lifecycle::start(self, spec).await
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        validate_id(id)?;
        let _guard = self.inner.machine_locks.lock(id).await;
        self.teardown(id, STOP_GRACE).await?;
        self.release_address(id)?;
        Ok(())
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        validate_id(id)?;
        let _guard = self.inner.machine_locks.lock(id).await;
        self.teardown(id, STOP_GRACE).await?;
        // The guest image may keep the workspace volume outside the machine directory.
        if let Some(workspace) = self.read_record(id)?.and_then(|r| r.workspace) {
            vmm::remove_file(&workspace)?;
        }
        let dir = self.machine_dir(id);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(RuntimeError::io(format!("remove {}", dir.display()), e))
            }
            _ => Ok(()),
        }
    }

    async fn org_network(&self, org_id: &str) -> Result<OrgNetwork, RuntimeError> {
        let dir = self.inner.cfg.state_dir.clone();
        self.inner
            .network
            .org_network(org_id, &move || claims(&dir))
            .await
    }

    async fn running(&self) -> Result<Vec<String>, RuntimeError> {
        let mut out = Vec::new();
        for id in self.machine_ids()? {
            let record = self.read_record(&id)?;
            if self.running_pid(&id, record.as_ref()).is_some() {
                out.push(id);
            }
        }
        Ok(out)
    }

    async fn oom_kills(&self, id: &str) -> Result<u64, RuntimeError> {
        validate_id(id)?;
        let record = self.read_record(id)?;
        if self.running_pid(id, record.as_ref()).is_none() {
            return Ok(0);
        }
        let jail = record.and_then(|r| r.jail).as_ref().map(Jail::from);
        let agent = agent_client(&self.sockets(id, jail.as_ref()).vsock);
        // The guest kernel counts OOM kills for the whole VM, which is exactly the machine.
        Ok(agent
            .health()
            .await
            .ok()
            .and_then(|h| h.oom_kills)
            .unwrap_or(0))
    }
}

/// The addresses the machine records in `dir` hold.
fn claims(dir: &Path) -> Result<Vec<Claim>, RuntimeError> {
    recorded_claims(dir, |r: MachineRecord| Claim {
        id: r.id,
        slice: r.slice,
        address: r.address,
    })
}

/// A client for the agent behind the vsock socket `uds`.
fn agent_client(uds: &Path) -> AgentClient {
    AgentClient::new(Endpoint::Vsock {
        uds: uds.to_owned(),
        port: AGENT_VSOCK_PORT,
    })
}

/// Fails with a clear error when `/dev/kvm` (or `kvm`) cannot be opened read-write.
fn check_kvm(kvm: &Path) -> Result<(), RuntimeError> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(kvm)
        .map(drop)
        .map_err(|source| {
            FirecrackerError::KvmUnavailable {
                path: kvm.to_owned(),
                source,
            }
            .into()
        })
}
