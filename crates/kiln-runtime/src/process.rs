//! The `process` driver: VM-shaped machines made of Linux namespaces, cgroups v1 and a veth on
//! the org's bridge, with the guest agent as PID 1.
//!
//! State lives under `state_dir`, so a restarted driver (or a new control-plane process) finds
//! and adopts machines that kept running:
//!
//! ```text
//! <state_dir>/network.json          org → /24 slice index of the node subnet
//! <state_dir>/.network.lock         flock serialising address allocation between processes
//! <state_dir>/<id>/machine.json     org, slice, address (while running), image
//! <state_dir>/<id>/workspace/       the persistent workspace volume (owned 1000:1000)
//! <state_dir>/<id>/etc/             generated hosts, hostname, resolv.conf
//! <state_dir>/<id>/launch.json      the launcher's instructions for the current boot
//! <state_dir>/<id>/agent.sock       the agent's listening socket
//! <state_dir>/<id>/init.pid         host pid of the machine's PID 1
//! <state_dir>/<id>/console.log      launcher and agent output of the current boot
//! ```
//!
//! The machine's processes are found through its `pids` cgroup, never through remembered pids
//! alone, so a stop also catches processes that daemonised.
//!
//! # Operating notes
//!
//! - Machines outlive the control plane only if nothing kills the control plane's whole process
//!   tree: under systemd, run Kiln with `KillMode=process` (launchers start their own session,
//!   but stay in the service's systemd cgroup).
//! - Booting is dominated by the cgroup v1 migration of the launcher (one RCU grace period,
//!   about 10 ms); the driver overlaps it with creating the network namespace.
//! - Isolation is namespaces + cgroups + a reduced capability bounding set, read-only mounts
//!   and `nosuid`; there is no seccomp filter and no user namespace, and the workspace has no
//!   size quota. Hostile tenants belong on the `firecracker` or `qemu` driver.
//! - The guest agent gets the machine's environment as `--env` arguments, which the host's
//!   `ps` shows to every host user.

use std::{
    fs,
    io::ErrorKind,
    net::Ipv4Addr,
    os::unix::fs::{PermissionsExt, chown},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use kiln_guest::client::{AgentClient, Endpoint};
use nix::sys::signal::{Signal, kill};
use serde::{Deserialize, Serialize};

use crate::{
    Driver, MachineInfo, MachineSpec, OrgNetwork,
    addresses::{Claim, NodeNetwork, recorded_claims},
    cgroup::{self, Limits, MachineCgroups},
    error::{IoContext, RuntimeError},
    image::{self, ImageRef, ImageStore},
    launch::LaunchConfig,
    lifecycle::{self, Lifecycle, MachineLocks},
    net::{self, Ipv4Cidr, MachineNet},
    spawn,
    state::{machine_ids, read_json, validate_id, write_json},
};

/// How long a booting agent may take to answer health.
const BOOT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an adoption probe waits for a running agent before declaring it stale.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long PID 1 gets to shut down after SIGTERM before everything is SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long the agent gets to accept a `shutdown` request during a stop.
const SHUTDOWN_REQUEST: Duration = Duration::from_millis(500);
/// How long the launcher gets to reap a killed PID 1 and exit.
const LAUNCHER_EXIT: Duration = Duration::from_secs(1);
/// How long processes get to disappear after SIGKILL.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest unix socket path Linux accepts (`sun_path` is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// The smallest `pids_max` a machine may have: the launcher, the agent's init and the agent's
/// worker threads need about a dozen before any command runs.
const MIN_PIDS: u32 = 32;
/// Where the cgroup v1 controllers are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Lines of the console log quoted in boot errors.
const CONSOLE_TAIL_LINES: usize = 40;

/// Configuration of a [`ProcessDriver`].
#[derive(Debug, Clone)]
pub struct ProcessDriverConfig {
    /// Machines' state and workspace volumes; must be an absolute path.
    pub state_dir: PathBuf,
    /// Built images; may be shared between data directories.
    pub images_dir: PathBuf,
    /// The node subnet; each org gets a /24 of it. Default [`Ipv4Cidr::DEFAULT_SUBNET`].
    pub subnet: Ipv4Cidr,
    /// Whether machines may reach the internet (NAT through the host). False in tests.
    pub egress: bool,
    /// The guest agent binary (`kiln-guest`), bind-mounted into every machine.
    pub agent_bin: PathBuf,
    /// The launcher binary (`kiln-launch`).
    pub launcher_bin: PathBuf,
}

impl ProcessDriverConfig {
    /// A configuration with the default subnet and no egress.
    pub fn new(
        state_dir: impl Into<PathBuf>,
        images_dir: impl Into<PathBuf>,
        agent_bin: impl Into<PathBuf>,
        launcher_bin: impl Into<PathBuf>,
    ) -> Self {
        Self {
            state_dir: state_dir.into(),
            images_dir: images_dir.into(),
            subnet: Ipv4Cidr::DEFAULT_SUBNET,
            egress: false,
            agent_bin: agent_bin.into(),
            launcher_bin: launcher_bin.into(),
        }
    }
}

/// The process driver. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct ProcessDriver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: ProcessDriverConfig,
    images: ImageStore,
    cgroup_root: PathBuf,
    /// One lock per machine id, so start/stop/destroy of one machine never interleave.
    machine_locks: MachineLocks,
    /// Org slices, addresses and bridges.
    network: NodeNetwork,
}

/// `<state_dir>/<id>/machine.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MachineRecord {
    id: String,
    org_id: String,
    image: ImageRef,
    hostname: String,
    /// The org's slice, e.g. `10.88.3.0/24`.
    slice: Ipv4Cidr,
    /// Set while the machine holds an address (from start until stop).
    address: Option<Ipv4Addr>,
    /// Host end of the veth pair.
    veth: String,
    /// Named network namespace.
    netns: String,
}

impl ProcessDriver {
    /// Checks the host (root, cgroups, `ip`, `nft`, binaries), creates the state directory and
    /// installs the `inet kiln` nftables table and the bridges of known orgs. Idempotent.
    pub async fn new(cfg: ProcessDriverConfig) -> Result<Self, RuntimeError> {
        let cgroup_root = PathBuf::from(CGROUP_ROOT);
        if !nix::unistd::geteuid().is_root() {
            return Err(RuntimeError::NotRoot);
        }
        validate_config(&cfg)?;
        for program in ["ip", "nft"] {
            if !spawn::on_path(program) {
                return Err(spawn::missing_program(program).expect("known tool"));
            }
        }
        cgroup::prepare(&cgroup_root)?;
        fs::create_dir_all(&cfg.state_dir)
            .ctx(|| format!("create state directory {}", cfg.state_dir.display()))?;
        let state_dir = cfg.state_dir.clone();
        let network =
            NodeNetwork::open(cfg.state_dir.clone(), cfg.subnet, cfg.egress, &move || {
                claims(&state_dir)
            })
            .await?;
        let driver = Self {
            inner: Arc::new(Inner {
                images: ImageStore::new(&cfg.images_dir),
                cfg,
                cgroup_root,
                machine_locks: MachineLocks::default(),
                network,
            }),
        };
        Ok(driver)
    }

    /// The image store this driver boots from.
    pub fn images(&self) -> &ImageStore {
        &self.inner.images
    }

    /// Stops every running machine of this driver (e.g. when the node shuts down for good).
    /// Errors are logged, not returned, so one stuck machine does not keep the others running.
    pub async fn shutdown_all(&self) {
        crate::stop_all(self).await;
        if let Err(e) = self.remove_idle_bridges().await {
            tracing::error!(error = %e, "cannot remove org bridges");
        }
    }

    /// Deletes the bridges of this driver's orgs that have no machine holding an address. The
    /// slice assignments stay, so a later start recreates the same bridge with the same
    /// addresses.
    pub async fn remove_idle_bridges(&self) -> Result<(), RuntimeError> {
        let dir = self.inner.cfg.state_dir.clone();
        self.inner
            .network
            .remove_idle_bridges(&move || claims(&dir))
            .await
    }

    fn socket_path(&self, id: &str) -> PathBuf {
        self.machine_dir(id).join("agent.sock")
    }

    fn cgroups(&self, id: &str) -> MachineCgroups {
        MachineCgroups::new(&self.inner.cgroup_root, id)
    }

    fn machine_ids(&self) -> Result<Vec<String>, RuntimeError> {
        machine_ids(&self.inner.cfg.state_dir)
    }

    /// Waits until the agent of a booting machine answers health as machine `id`, failing early
    /// when the launcher exits.
    async fn wait_for_agent(
        &self,
        id: &str,
        agent: &AgentClient,
        socket: &Path,
        launcher: &mut tokio::process::Child,
        deadline: Instant,
        console_path: &Path,
    ) -> Result<kiln_guest::HealthInfo, RuntimeError> {
        let health = loop {
            if let Some(status) = launcher
                .try_wait()
                .ctx(|| format!("check the launcher of {id}"))?
            {
                return Err(RuntimeError::BootFailed {
                    id: id.to_owned(),
                    status: status.to_string(),
                    console: console_tail(console_path),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RuntimeError::BootTimeout {
                    id: id.to_owned(),
                    after: BOOT_TIMEOUT,
                    console: console_tail(console_path),
                });
            }
            // The launcher binds the socket before the agent starts, so a connection made now
            // waits in the backlog until the agent answers: one attempt usually suffices.
            if socket.exists() {
                match tokio::time::timeout(deadline - now, agent.health()).await {
                    Ok(Ok(health)) => break health,
                    Ok(Err(e)) => tracing::trace!(machine = %id, error = %e, "agent not ready"),
                    Err(_) => continue,
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        if health.machine_id.as_deref() != Some(id) {
            return Err(RuntimeError::AgentMismatch {
                endpoint: format!("unix:{}", socket.display()),
                found: health.machine_id.unwrap_or_default(),
                expected: id.to_owned(),
            });
        }
        Ok(health)
    }
}

#[async_trait]
impl Lifecycle for ProcessDriver {
    type Record = MachineRecord;
    type Prepared = PathBuf;

    fn address_of(record: &mut MachineRecord) -> &mut Option<Ipv4Addr> {
        &mut record.address
    }

    async fn prepare(&self, spec: &MachineSpec) -> Result<PathBuf, RuntimeError> {
        self.inner.images.ensure(&spec.image).await
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

    /// Returns the running machine if its agent answers as `id`.
    async fn try_adopt(&self, id: &str) -> Option<MachineInfo> {
        let record = self.read_record(id).ok()??;
        let address = record.address?;
        let socket = self.socket_path(id);
        if !socket.exists() || self.cgroups(id).pids().is_empty() {
            return None;
        }
        let agent = AgentClient::new(Endpoint::Unix(socket));
        lifecycle::adopt(id, address, agent, ADOPT_TIMEOUT).await
    }

    /// Assigns the org's slice (creating its bridge) and a free address in it, keeping the
    /// previous address when it is still free; writes the machine record.
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
                        image: spec.image.clone(),
                        hostname: spec.hostname.clone(),
                        slice,
                        address: Some(address),
                        veth: net::veth_name(&spec.id),
                        netns: net::netns_name(&spec.id),
                    };
                    self.write_record(&record)?;
                    Ok(record)
                },
            )
            .await
    }

    /// Boots a machine whose leftovers have been cleaned and whose address is allocated.
    async fn boot(
        &self,
        spec: &MachineSpec,
        record: MachineRecord,
        rootfs: PathBuf,
    ) -> Result<MachineInfo, RuntimeError> {
        let started = Instant::now();
        let id = &spec.id;
        let dir = self.machine_dir(id);
        // The image's unprivileged user runs the commands and owns the workspace.
        let user = image::definition(&spec.image)?.user;
        let address = record.address.expect("allocate always sets an address");

        let workspace = dir.join("workspace");
        if !workspace.exists() {
            fs::create_dir(&workspace).ctx(|| format!("create {}", workspace.display()))?;
            chown(&workspace, Some(user.uid), Some(user.gid))
                .ctx(|| format!("chown {}", workspace.display()))?;
            fs::set_permissions(&workspace, fs::Permissions::from_mode(0o755))
                .ctx(|| format!("chmod {}", workspace.display()))?;
        }
        let etc = dir.join("etc");
        fs::create_dir_all(&etc).ctx(|| format!("create {}", etc.display()))?;
        let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        for (name, text) in [
            ("hosts", net::hosts_file(&spec.hostname, address)),
            ("hostname", format!("{}\n", spec.hostname)),
            (
                "resolv.conf",
                net::resolv_conf(self.inner.cfg.egress, &host_resolv),
            ),
        ] {
            let path = etc.join(name);
            fs::write(&path, text).ctx(|| format!("write {}", path.display()))?;
        }

        let cgroups = self.cgroups(id);
        cgroups.create(Limits {
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            pids_max: spec.pids_max,
        })?;
        let machine_net = MachineNet {
            id: id.clone(),
            slice: record.slice,
            address,
        };
        let socket = self.socket_path(id);
        let launch = LaunchConfig {
            id: id.clone(),
            hostname: spec.hostname.clone(),
            rootfs: rootfs.to_owned(),
            workspace,
            etc_dir: etc,
            agent_bin: self.inner.cfg.agent_bin.clone(),
            netns: net::netns_path(id),
            cgroups: cgroups.dirs(),
            socket: socket.clone(),
            init_pid_file: dir.join("init.pid"),
            run_as: Some((user.uid, user.gid)),
            user_home: user.home.clone(),
            env: spec.env.clone(),
        };
        let launch_path = dir.join("launch.json");
        write_json(&launch_path, &launch)?;

        let console_path = dir.join("console.log");
        let console =
            fs::File::create(&console_path).ctx(|| format!("create {}", console_path.display()))?;
        let console_err = console
            .try_clone()
            .ctx(|| format!("duplicate {}", console_path.display()))?;
        let mut cmd = tokio::process::Command::from(spawn::command(&self.inner.cfg.launcher_bin));
        cmd.arg(&launch_path)
            .current_dir(&dir)
            .stdout(Stdio::from(console))
            .stderr(Stdio::from(console_err));
        let mut launcher = cmd.spawn().ctx(|| {
            format!(
                "start the launcher {}",
                self.inner.cfg.launcher_bin.display()
            )
        })?;

        // The launcher first joins the cgroups, which costs an RCU grace period (~10 ms on
        // cgroup v1); the namespace and veth are created meanwhile, and the launcher waits for
        // the namespace to appear.
        if let Err(e) = net::create_machine_link(&machine_net).await {
            let _ = launcher.start_kill();
            return Err(e);
        }
        let prepared = started.elapsed();

        // The machine side of the network is configured while the machine boots: nothing in it
        // uses the network before `start` returns, and the two together take the longer of
        // both rather than the sum.
        let agent = AgentClient::new(Endpoint::Unix(socket.clone()));
        let (configured, health) = tokio::join!(
            net::configure_guest(&machine_net),
            self.wait_for_agent(
                id,
                &agent,
                &socket,
                &mut launcher,
                started + BOOT_TIMEOUT,
                &console_path
            ),
        );
        configured?;
        let health = health?;
        // The launcher lives as long as the machine; dropping the handle leaves it running and
        // tokio reaps it when it exits.
        drop(launcher);
        tracing::info!(
            machine = %id,
            %address,
            prepared = ?prepared,
            total = ?started.elapsed(),
            "machine booted"
        );
        Ok(MachineInfo {
            id: id.clone(),
            address,
            agent,
            boot_id: health.boot_id,
        })
    }

    /// Ends every process of the machine and removes its cgroups, network and socket. The
    /// record, workspace and address allocation are left to the caller.
    async fn teardown(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let cgroups = self.cgroups(id);
        let dir = self.machine_dir(id);
        let init_pid_file = dir.join("init.pid");
        if !cgroups.pids().is_empty() {
            let init = fs::read_to_string(&init_pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .filter(|&pid| cgroups.contains(pid));
            if !grace.is_zero() {
                // A graceful stop lets the agent stop its supervised processes cleanly. Both
                // ways of asking are used: the agent's `shutdown` request and SIGTERM to PID 1
                // (which its init forwards); either suffices, and whichever works first wins.
                let socket = self.socket_path(id);
                if socket.exists() {
                    let agent = AgentClient::new(Endpoint::Unix(socket))
                        .with_timeouts(SHUTDOWN_REQUEST, SHUTDOWN_REQUEST);
                    if let Err(e) = agent.shutdown().await {
                        tracing::debug!(machine = %id, error = %e, "agent shutdown request failed");
                    }
                }
                if let Some(pid) = init {
                    let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
                }
                wait_empty(&cgroups, grace).await;
            }
            // SIGKILL to PID 1 makes the kernel kill the whole pid namespace. The launcher then
            // reaps PID 1 and exits by itself; killing it first would leave PID 1 a zombie for
            // the host's init to collect. The sweep after that catches anything else.
            if let Some(pid) = init {
                let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                wait_empty(&cgroups, LAUNCHER_EXIT).await;
            }
            let deadline = Instant::now() + KILL_TIMEOUT;
            loop {
                let pids = cgroups.pids();
                if pids.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(RuntimeError::StopFailed {
                        id: id.to_owned(),
                        pids,
                    });
                }
                for pid in pids {
                    let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        cgroups.remove().await?;
        net::teardown_machine(id).await?;
        for name in ["agent.sock", "init.pid", "launch.json"] {
            let path = dir.join(name);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(RuntimeError::io(format!("remove {}", path.display()), e));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Driver for ProcessDriver {
    fn name(&self) -> &'static str {
        "process"
    }

    fn hardware_accelerated(&self) -> bool {
        false
    }

    async fn start(&self, spec: &MachineSpec) -> Result<MachineInfo, RuntimeError> {
        validate_spec(spec)?;
        let socket = self.socket_path(&spec.id);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(RuntimeError::InvalidConfig(format!(
                "agent socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter state directory",
                socket.display()
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
        let dir = self.machine_dir(id);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(RuntimeError::io(format!("remove {}", dir.display()), e));
            }
            _ => {}
        }
        Ok(())
    }

    async fn org_network(&self, org_id: &str) -> Result<OrgNetwork, RuntimeError> {
        let dir = self.inner.cfg.state_dir.clone();
        self.inner
            .network
            .org_network(org_id, &move || claims(&dir))
            .await
    }

    async fn running(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(self
            .machine_ids()?
            .into_iter()
            .filter(|id| !self.cgroups(id).pids().is_empty())
            .collect())
    }

    async fn oom_kills(&self, id: &str) -> Result<u64, RuntimeError> {
        validate_id(id)?;
        self.cgroups(id).oom_kills()
    }
}

/// The addresses the machine records in `dir` hold, for the node network's allocation.
fn claims(dir: &Path) -> Result<Vec<Claim>, RuntimeError> {
    recorded_claims(dir, |r: MachineRecord| Claim {
        id: r.id,
        slice: r.slice,
        address: r.address,
    })
}

fn validate_config(cfg: &ProcessDriverConfig) -> Result<(), RuntimeError> {
    let bad = |m: String| Err(RuntimeError::InvalidConfig(m));
    for (what, path) in [
        ("state_dir", &cfg.state_dir),
        ("images_dir", &cfg.images_dir),
        ("agent_bin", &cfg.agent_bin),
        ("launcher_bin", &cfg.launcher_bin),
    ] {
        if !path.is_absolute() {
            return bad(format!(
                "{what} must be an absolute path, got {}",
                path.display()
            ));
        }
    }
    for (what, path, hint) in [
        (
            "agent_bin",
            &cfg.agent_bin,
            "build it with `cargo build -p kiln-guest`",
        ),
        (
            "launcher_bin",
            &cfg.launcher_bin,
            "build it with `cargo build -p kiln-runtime`",
        ),
    ] {
        if !path.is_file() {
            return bad(format!("{what} {} does not exist; {hint}", path.display()));
        }
    }
    if cfg.subnet.slice_count() == 0 {
        return bad(format!(
            "subnet {} is smaller than a /24; each org needs a /24 slice",
            cfg.subnet
        ));
    }
    Ok(())
}

/// Checks a spec every driver must refuse: bad id, limits, hostname or environment.
pub(crate) fn validate_spec(spec: &MachineSpec) -> Result<(), RuntimeError> {
    validate_id(&spec.id)?;
    let bad = |m: String| {
        Err(RuntimeError::InvalidConfig(format!(
            "machine {}: {m}",
            spec.id
        )))
    };
    if spec.org_id.is_empty() {
        return bad("org_id is empty".into());
    }
    if spec.vcpus == 0 || spec.vcpus > 256 {
        return bad(format!("vcpus must be 1..=256, got {}", spec.vcpus));
    }
    if spec.memory_mib < 16 {
        return bad(format!(
            "memory_mib must be at least 16, got {}",
            spec.memory_mib
        ));
    }
    // The launcher, the agent's init and the agent's threads count against pids.max too.
    if spec.pids_max < MIN_PIDS {
        return bad(format!(
            "pids_max must be at least {MIN_PIDS}, got {}",
            spec.pids_max
        ));
    }
    let h = &spec.hostname;
    let label_ok = !h.is_empty()
        && h.len() <= 63
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-');
    if !label_ok {
        return bad(format!("hostname {h:?} is not a DNS label"));
    }
    for key in spec.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return bad(format!("environment variable name {key:?} is invalid"));
        }
    }
    if spec.env.values().any(|v| v.contains('\0')) {
        return bad("environment values must not contain NUL".into());
    }
    Ok(())
}

async fn wait_empty(cgroups: &MachineCgroups, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && !cgroups.pids().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The last lines of a console log, for boot errors.
pub(crate) fn console_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(CONSOLE_TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn machine_ids_are_checked() {
        for ok in ["sbx_01HZ", "dep-1", "a"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        let long = "x".repeat(65);
        for bad in [
            "",
            "../etc",
            "a/b",
            "a.b",
            "-x",
            "sbx 1",
            long.as_str(),
            "é",
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    fn spec() -> MachineSpec {
        MachineSpec {
            id: "sbx_1".into(),
            org_id: "org_1".into(),
            image: crate::default_image(),
            vcpus: 1,
            memory_mib: 256,
            pids_max: 256,
            hostname: "sbx-1".into(),
            env: BTreeMap::new(),
        }
    }

    #[test]
    fn specs_are_checked() {
        assert!(validate_spec(&spec()).is_ok());
        let cases: Vec<fn(&mut MachineSpec)> = vec![
            |s| s.vcpus = 0,
            |s| s.memory_mib = 1,
            |s| s.pids_max = 0,
            |s| s.hostname = "bad_host".into(),
            |s| s.hostname = String::new(),
            |s| s.org_id = String::new(),
            |s| {
                s.env.insert("A=B".into(), "x".into());
            },
        ];
        for (i, mutate) in cases.into_iter().enumerate() {
            let mut s = spec();
            mutate(&mut s);
            assert!(validate_spec(&s).is_err(), "case {i} should fail");
        }
    }
}
