//! The `qemu` driver: every machine a `qemu-system-x86_64` VM booting the guest image, with a
//! tap device on its org's bridge and the guest agent reached over TCP with a per-machine
//! token.
//!
//! State lives under `state_dir`, so a restarted control plane finds and adopts VMs that kept
//! running (QEMU runs daemonized, in its own session):
//!
//! ```text
//! <state_dir>/network.json        org → /24 slice (shared scheme, see `addresses`)
//! <state_dir>/<id>/machine.json   org, image, slice, address (while running), agent token
//! <state_dir>/<id>/workspace.ext4 the persistent workspace disk (sparse; kept across stops)
//! <state_dir>/<id>/initrd.img     base initramfs + this boot's settings (0600: holds the token)
//! <state_dir>/<id>/qemu.pid       QEMU's pid while the VM runs
//! <state_dir>/<id>/console.log    the guest's serial console of the current boot
//! ```
//!
//! A VM is found by its pidfile, and a pid counts only if its command line names this
//! machine's directory, so a reused pid is never mistaken for (or killed as) a VM.
//!
//! # Limits
//!
//! `vcpus` and `memory_mib` become `-smp` and `-m`; memory is a hard wall (the guest kernel's
//! OOM killer acts inside it and the agent reports its count). `pids_max` is the guest's own
//! cgroup limit, set by `/init` on every process of the machine, agent included.

use std::{
    ffi::OsString,
    fs,
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use kiln_guest::{
    client::{AgentClient, Endpoint},
    protocol::AgentToken,
};
use nix::sys::signal::{Signal, kill};
use serde::{Deserialize, Serialize};

use super::{
    accel::{self, Accel},
    image::{GuestImage, GuestImageStore},
    kernel::Kernel,
    machine::MachineSetup,
};
use crate::{
    Driver, MachineInfo, MachineSpec, OrgNetwork,
    addresses::{Claim, NodeNetwork, recorded_claims},
    error::{IoContext, RuntimeError},
    image::{ImageRef, ImageStore},
    lifecycle::{self, Lifecycle, MachineLocks},
    net::{self, Ipv4Cidr},
    process::{console_tail, validate_spec},
    spawn,
    state::{machine_ids, read_json, validate_id, write_json},
};

/// The TCP port the guest agent listens on, on the machine's own address. Below 1024, so an
/// unprivileged process in the machine can never bind it first.
pub const AGENT_PORT: u16 = 1000;
/// How long a VM may take from QEMU's start to the agent's first answer, per accelerator.
const BOOT_TIMEOUT_KVM: Duration = Duration::from_secs(30);
const BOOT_TIMEOUT_TCG: Duration = Duration::from_secs(120);
/// How long an adoption probe waits for a running agent.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a stopping VM gets to power itself off after the agent's `shutdown`.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// How long QEMU gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// The default size of a workspace disk (sparse: only written blocks take space).
pub const DEFAULT_WORKSPACE_MIB: u64 = 8192;
/// The kernel command line: serial console, reboot (and so exit, with `-no-reboot`) on panic.
/// Nothing secret goes here: every process in the guest can read it.
const KERNEL_CMDLINE: &str = "console=ttyS0 panic=-1 loglevel=4 quiet";

/// Configuration of a [`QemuDriver`].
#[derive(Debug, Clone)]
pub struct QemuDriverConfig {
    /// Machines' state and workspace disks; must be an absolute path.
    pub state_dir: PathBuf,
    /// Built images (root file systems and guest disks); may be shared.
    pub images_dir: PathBuf,
    /// The node subnet; each org gets a /24 of it.
    pub subnet: Ipv4Cidr,
    /// Whether machines may reach the internet (NAT through the host).
    pub egress: bool,
    /// The guest agent binary (`kiln-guest`), copied into every root disk.
    pub agent_bin: PathBuf,
    /// A kernel image to boot instead of the one `scripts/setup.sh` unpacks.
    pub kernel: Option<PathBuf>,
    /// The modules directory (`lib/modules/<version>`) of [`Self::kernel`], if it needs one.
    pub kernel_modules: Option<PathBuf>,
    /// Size of each machine's workspace disk in MiB.
    pub workspace_mib: u64,
}

impl QemuDriverConfig {
    /// A configuration with the default subnet, no egress and the installed kernel.
    pub fn new(
        state_dir: impl Into<PathBuf>,
        images_dir: impl Into<PathBuf>,
        agent_bin: impl Into<PathBuf>,
    ) -> Self {
        Self {
            state_dir: state_dir.into(),
            images_dir: images_dir.into(),
            subnet: Ipv4Cidr::DEFAULT_SUBNET,
            egress: false,
            agent_bin: agent_bin.into(),
            kernel: None,
            kernel_modules: None,
            workspace_mib: DEFAULT_WORKSPACE_MIB,
        }
    }
}

/// The qemu driver. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct QemuDriver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: QemuDriverConfig,
    qemu: PathBuf,
    images: GuestImageStore,
    accel: Accel,
    network: NodeNetwork,
    /// One lock per machine id, so start/stop/destroy of one machine never interleave.
    machine_locks: MachineLocks,
}

/// `<state_dir>/<id>/machine.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct VmRecord {
    id: String,
    org_id: String,
    image: ImageRef,
    hostname: String,
    slice: Ipv4Cidr,
    /// Set while the machine holds an address (from start until stop).
    address: Option<Ipv4Addr>,
    /// The agent token of the current boot.
    token: String,
}

impl VmRecord {
    fn agent(&self) -> Option<AgentClient> {
        let address = self.address?;
        Some(
            AgentClient::new(Endpoint::Tcp(SocketAddr::from((address, AGENT_PORT))))
                .with_token(AgentToken::new(self.token.clone())),
        )
    }
}

impl QemuDriver {
    /// Checks the host (root, `ip`, `nft`, QEMU, e2fsprogs, the kernel), builds the base
    /// initramfs, decides the accelerator (a probe boot, cached per kernel) and installs the
    /// network. Idempotent.
    pub async fn new(cfg: QemuDriverConfig) -> Result<Self, RuntimeError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(RuntimeError::InvalidConfig(
                "the qemu driver needs root (tap devices, bridges); run as root or pick another driver".into(),
            ));
        }
        validate_config(&cfg)?;
        for program in ["ip", "nft", "qemu-system-x86_64", "mkfs.ext4", "debugfs"] {
            if !spawn::on_path(program) {
                return Err(spawn::missing_program(program).expect("known tool"));
            }
        }
        let qemu = spawn::SAFE_PATH
            .split(':')
            .map(|dir| Path::new(dir).join("qemu-system-x86_64"))
            .find(|p| p.is_file())
            .expect("checked on PATH above");
        let kernel = Kernel::locate(cfg.kernel.as_deref(), cfg.kernel_modules.as_deref())?;
        let images = GuestImageStore::new(
            ImageStore::new(&cfg.images_dir),
            kernel.clone(),
            &cfg.agent_bin,
        );
        fs::create_dir_all(&cfg.state_dir)
            .ctx(|| format!("create state directory {}", cfg.state_dir.display()))?;
        let initramfs = images.ensure_initramfs(&cfg.images_dir).await?;
        let accel = accel::choose(&qemu, &kernel.image, &initramfs, &cfg.images_dir).await?;
        let state_dir = cfg.state_dir.clone();
        let network =
            NodeNetwork::open(cfg.state_dir.clone(), cfg.subnet, cfg.egress, &move || {
                claims(&state_dir)
            })
            .await?;
        tracing::info!(%accel, kernel = %kernel.image.display(), "qemu driver ready");
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                qemu,
                images,
                accel,
                network,
                machine_locks: MachineLocks::default(),
            }),
        })
    }

    /// The guest images this driver boots.
    pub fn images(&self) -> &GuestImageStore {
        &self.inner.images
    }

    /// The accelerator the probe chose.
    pub fn accel(&self) -> Accel {
        self.inner.accel
    }

    /// Deletes the bridges of orgs with no running machine (see the process driver's).
    pub async fn remove_idle_bridges(&self) -> Result<(), RuntimeError> {
        let dir = self.inner.cfg.state_dir.clone();
        self.inner
            .network
            .remove_idle_bridges(&move || claims(&dir))
            .await
    }

    /// QEMU's pid for machine `id`, if a process with that pid runs this machine's VM.
    fn vm_pid(&self, id: &str) -> Option<i32> {
        let dir = self.machine_dir(id);
        let pid: i32 = fs::read_to_string(dir.join("qemu.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let needle = dir.join("qemu.pid");
        let needle = needle.as_os_str().as_encoded_bytes();
        cmdline
            .windows(needle.len())
            .any(|w| w == needle)
            .then_some(pid)
    }

    /// Polls the agent until it answers as machine `id`; fails early when QEMU exits.
    async fn wait_for_agent(
        &self,
        id: &str,
        agent: &AgentClient,
        started: Instant,
        console: &Path,
    ) -> Result<kiln_guest::HealthInfo, RuntimeError> {
        let timeout = match self.inner.accel {
            Accel::Kvm => BOOT_TIMEOUT_KVM,
            Accel::Tcg => BOOT_TIMEOUT_TCG,
        };
        // Short per-attempt timeouts: until the guest configured eth0, a connect just waits.
        let probe = agent
            .clone()
            .with_timeouts(Duration::from_millis(500), Duration::from_secs(5));
        loop {
            if self.vm_pid(id).is_none() {
                return Err(RuntimeError::BootFailed {
                    id: id.to_owned(),
                    status: "QEMU exited".into(),
                    console: console_tail(console),
                });
            }
            match probe.health().await {
                Ok(health) if health.machine_id.as_deref() == Some(id) => return Ok(health),
                Ok(health) => {
                    return Err(RuntimeError::AgentMismatch {
                        endpoint: agent.endpoint().to_string(),
                        found: health.machine_id.unwrap_or_default(),
                        expected: id.to_owned(),
                    });
                }
                Err(e) => tracing::trace!(machine = %id, error = %e, "agent not ready"),
            }
            if started.elapsed() > timeout {
                return Err(RuntimeError::BootTimeout {
                    id: id.to_owned(),
                    after: timeout,
                    console: console_tail(console),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[async_trait]
impl Lifecycle for QemuDriver {
    type Record = VmRecord;
    type Prepared = GuestImage;

    fn address_of(record: &mut VmRecord) -> &mut Option<Ipv4Addr> {
        &mut record.address
    }

    async fn prepare(&self, spec: &MachineSpec) -> Result<GuestImage, RuntimeError> {
        self.inner.images.ensure(&spec.image).await
    }

    fn machine_dir(&self, id: &str) -> PathBuf {
        self.inner.cfg.state_dir.join(id)
    }

    fn read_record(&self, id: &str) -> Result<Option<VmRecord>, RuntimeError> {
        read_json(&self.machine_dir(id).join("machine.json"))
    }

    fn write_record(&self, record: &VmRecord) -> Result<(), RuntimeError> {
        write_json(&self.machine_dir(&record.id).join("machine.json"), record)
    }

    /// Returns the running VM if its agent answers as `id`.
    async fn try_adopt(&self, id: &str) -> Option<MachineInfo> {
        let record = self.read_record(id).ok()??;
        let address = record.address?;
        self.vm_pid(id)?;
        let agent = record.agent()?;
        lifecycle::adopt(id, address, agent, ADOPT_TIMEOUT).await
    }

    /// Ends the VM (gracefully first when `grace` is not zero) and removes its tap, pidfile
    /// and boot files. Record, workspace and address are left to the caller.
    async fn teardown(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let dir = self.machine_dir(id);
        if let Some(pid) = self.vm_pid(id) {
            let nix_pid = nix::unistd::Pid::from_raw(pid);
            if !grace.is_zero()
                && let Some(agent) = self.read_record(id)?.and_then(|r| r.agent())
            {
                // The agent stops supervised processes, syncs and powers the VM off, which
                // ends QEMU; that keeps the workspace file system clean.
                let agent = agent.with_timeouts(Duration::from_secs(1), Duration::from_secs(2));
                match agent.shutdown().await {
                    Ok(()) => wait_gone(pid, grace).await,
                    Err(e) => tracing::debug!(machine = %id, error = %e, "agent shutdown failed"),
                }
            }
            if process_alive(pid) {
                let _ = kill(nix_pid, Signal::SIGTERM);
                wait_gone(pid, TERM_GRACE).await;
            }
            if process_alive(pid) {
                let _ = kill(nix_pid, Signal::SIGKILL);
                wait_gone(pid, TERM_GRACE).await;
            }
            if process_alive(pid) {
                return Err(RuntimeError::StopFailed {
                    id: id.to_owned(),
                    pids: vec![pid],
                });
            }
        }
        net::remove_tap(&net::tap_name(id)).await?;
        for name in ["qemu.pid", "initrd.img"] {
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

    async fn allocate(
        &self,
        spec: &MachineSpec,
        previous: Option<&VmRecord>,
    ) -> Result<VmRecord, RuntimeError> {
        let token = new_token()?;
        let dir = self.inner.cfg.state_dir.clone();
        self.inner
            .network
            .allocate(
                &spec.org_id,
                &spec.id,
                previous.and_then(|p| p.address),
                &move || claims(&dir),
                |slice, address| {
                    let record = VmRecord {
                        id: spec.id.clone(),
                        org_id: spec.org_id.clone(),
                        image: spec.image.clone(),
                        hostname: spec.hostname.clone(),
                        slice,
                        address: Some(address),
                        token,
                    };
                    self.write_record(&record)?;
                    Ok(record)
                },
            )
            .await
    }

    async fn boot(
        &self,
        spec: &MachineSpec,
        record: VmRecord,
        guest: GuestImage,
    ) -> Result<MachineInfo, RuntimeError> {
        let started = Instant::now();
        let id = &spec.id;
        let dir = self.machine_dir(id);
        let address = record.address.expect("allocate always sets an address");
        let files = super::machine::prepare(
            &MachineSetup {
                spec,
                dir: &dir,
                address,
                slice: record.slice,
                workspace_mib: self.inner.cfg.workspace_mib,
                egress: self.inner.cfg.egress,
                listen: format!("tcp:{address}:{AGENT_PORT}"),
                token: Some(AgentToken::new(record.token.clone())),
            },
            &guest,
        )
        .await?;
        let (workspace, initrd) = (files.workspace, files.initrd);
        net::create_tap(&net::tap_name(id), &net::bridge_name(record.slice), None).await?;

        let console = dir.join("console.log");
        let args = qemu_args(&QemuArgs {
            accel: self.inner.accel,
            vcpus: spec.vcpus,
            memory_mib: spec.memory_mib,
            kernel: &guest.kernel,
            initrd: &initrd,
            root_disk: &guest.root_disk,
            workspace: &workspace,
            tap: &net::tap_name(id),
            mac: &net::guest_mac(address),
            console: &console,
            pidfile: &dir.join("qemu.pid"),
        });
        let _ = fs::remove_file(&console);
        // `-daemonize`: QEMU forks into its own session once the VM is set up, so it outlives
        // this process (adoption after a restart); the parent's exit status and stderr tell
        // whether the VM could be created at all.
        let mut cmd = tokio::process::Command::from(spawn::command(&self.inner.qemu));
        cmd.args(&args)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let out = cmd.output().await.map_err(|e| {
            spawn::spawn_error("qemu-system-x86_64", e, "qemu-system-x86_64".into())
        })?;
        if !out.status.success() {
            return Err(RuntimeError::BootFailed {
                id: id.clone(),
                status: out.status.to_string(),
                console: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        let agent = record
            .agent()
            .expect("a record with an address has an agent");
        let health = self.wait_for_agent(id, &agent, started, &console).await?;
        tracing::info!(machine = %id, %address, accel = %self.inner.accel, total = ?started.elapsed(), "VM booted");
        Ok(MachineInfo {
            id: id.clone(),
            address,
            agent,
            boot_id: health.boot_id,
        })
    }
}

#[async_trait]
impl Driver for QemuDriver {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn hardware_accelerated(&self) -> bool {
        self.inner.accel == Accel::Kvm
    }

    async fn start(&self, spec: &MachineSpec) -> Result<MachineInfo, RuntimeError> {
        validate_spec(spec)?;
        let _guard = self.inner.machine_locks.lock(&spec.id).await;
        lifecycle::start(self, spec).await
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        validate_id(id)?;
        let _guard = self.inner.machine_locks.lock(id).await;
        self.teardown(id, STOP_GRACE).await?;
        self.release_address(id)
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        validate_id(id)?;
        let _guard = self.inner.machine_locks.lock(id).await;
        self.teardown(id, STOP_GRACE).await?;
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
        Ok(machine_ids(&self.inner.cfg.state_dir)?
            .into_iter()
            .filter(|id| self.vm_pid(id).is_some())
            .collect())
    }

    async fn oom_kills(&self, id: &str) -> Result<u64, RuntimeError> {
        validate_id(id)?;
        if self.vm_pid(id).is_none() {
            return Ok(0);
        }
        let Some(agent) = self.read_record(id)?.and_then(|r| r.agent()) else {
            return Ok(0);
        };
        // The guest kernel counts OOM kills for the whole VM, which is exactly the machine.
        Ok(agent
            .health()
            .await
            .ok()
            .and_then(|h| h.oom_kills)
            .unwrap_or(0))
    }
}

/// What one QEMU invocation needs.
#[derive(Debug)]
struct QemuArgs<'a> {
    accel: Accel,
    vcpus: u32,
    memory_mib: u32,
    kernel: &'a Path,
    initrd: &'a Path,
    root_disk: &'a Path,
    workspace: &'a Path,
    tap: &'a str,
    mac: &'a str,
    console: &'a Path,
    pidfile: &'a Path,
}

/// The QEMU command line of a machine. `-M pc`: the cloud kernel does not boot on `microvm`
/// (no virtio-mmio command-line devices), and `pc` needs no firmware beyond QEMU's own.
fn qemu_args(a: &QemuArgs<'_>) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut push = |s: String| args.push(OsString::from(s));
    push("-M".into());
    push("pc".into());
    push("-accel".into());
    push(a.accel.qemu_name().into());
    // Under TCG, `max` offers the guest every feature QEMU emulates (RDRAND, SSE4, AVX), which
    // language runtimes in the guest expect; under KVM the default model is what boots.
    if a.accel == Accel::Tcg {
        push("-cpu".into());
        push("max".into());
    }
    push("-smp".into());
    push(a.vcpus.to_string());
    push("-m".into());
    push(a.memory_mib.to_string());
    for flag in ["-nodefaults", "-no-user-config", "-no-reboot", "-daemonize"] {
        push(flag.into());
    }
    push("-display".into());
    push("none".into());
    push("-serial".into());
    push(format!("file:{}", a.console.display()));
    push("-pidfile".into());
    push(a.pidfile.display().to_string());
    push("-kernel".into());
    push(a.kernel.display().to_string());
    push("-initrd".into());
    push(a.initrd.display().to_string());
    push("-append".into());
    push(KERNEL_CMDLINE.into());
    // vda: the shared root, read-only; vdb: this machine's workspace.
    push("-drive".into());
    push(format!(
        "file={},if=none,id=root,format=raw,readonly=on",
        a.root_disk.display()
    ));
    push("-device".into());
    push("virtio-blk-pci,drive=root".into());
    push("-drive".into());
    push(format!(
        "file={},if=none,id=workspace,format=raw,discard=unmap",
        a.workspace.display()
    ));
    push("-device".into());
    push("virtio-blk-pci,drive=workspace".into());
    push("-netdev".into());
    push(format!(
        "tap,id=net0,ifname={},script=no,downscript=no",
        a.tap
    ));
    push("-device".into());
    push(format!("virtio-net-pci,netdev=net0,mac={}", a.mac));
    push("-device".into());
    push("virtio-rng-pci".into());
    args
}

/// A fresh agent token: 32 random bytes from the kernel, hex.
fn new_token() -> Result<String, RuntimeError> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .ctx(|| "read /dev/urandom".into())?;
    Ok(hex::encode(bytes))
}

fn process_alive(pid: i32) -> bool {
    // A zombie has exited already; it only waits for its parent.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

async fn wait_gone(pid: i32, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && process_alive(pid) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The addresses the VM records in `dir` hold.
fn claims(dir: &Path) -> Result<Vec<Claim>, RuntimeError> {
    recorded_claims(dir, |r: VmRecord| Claim {
        id: r.id,
        slice: r.slice,
        address: r.address,
    })
}

fn validate_config(cfg: &QemuDriverConfig) -> Result<(), RuntimeError> {
    let bad = |m: String| Err(RuntimeError::InvalidConfig(m));
    for (what, path) in [
        ("state_dir", &cfg.state_dir),
        ("images_dir", &cfg.images_dir),
        ("agent_bin", &cfg.agent_bin),
    ] {
        if !path.is_absolute() {
            return bad(format!(
                "{what} must be an absolute path, got {}",
                path.display()
            ));
        }
    }
    if !cfg.agent_bin.is_file() {
        return bad(format!(
            "agent_bin {} does not exist; build it with `cargo build -p kiln-guest`",
            cfg.agent_bin.display()
        ));
    }
    if cfg.subnet.slice_count() == 0 {
        return bad(format!(
            "subnet {} is smaller than a /24; each org needs a /24 slice",
            cfg.subnet
        ));
    }
    if cfg.workspace_mib < 64 {
        return bad(format!(
            "the workspace disk must be at least 64 MiB, got {}",
            cfg.workspace_mib
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_has_every_device_and_no_secret() {
        let args = qemu_args(&QemuArgs {
            accel: Accel::Tcg,
            vcpus: 2,
            memory_mib: 512,
            kernel: Path::new("/k/vmlinuz"),
            initrd: Path::new("/m/initrd.img"),
            root_disk: Path::new("/i/root.ext4"),
            workspace: Path::new("/m/workspace.ext4"),
            tap: "kt0123",
            mac: "02:4b:0a:5b:00:02",
            console: Path::new("/m/console.log"),
            pidfile: Path::new("/m/qemu.pid"),
        });
        let line: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = line.join(" ");
        for needle in [
            "-M pc",
            "-accel tcg",
            "-cpu max",
            "-smp 2",
            "-m 512",
            "-daemonize",
            "-pidfile /m/qemu.pid",
            "file=/i/root.ext4,if=none,id=root,format=raw,readonly=on",
            "file=/m/workspace.ext4,if=none,id=workspace",
            "tap,id=net0,ifname=kt0123,script=no,downscript=no",
            "virtio-net-pci,netdev=net0,mac=02:4b:0a:5b:00:02",
            "-serial file:/m/console.log",
        ] {
            assert!(line.contains(needle), "{needle} missing from {line}");
        }
        assert!(!line.contains("token"), "{line}");
        let kvm = qemu_args(&QemuArgs {
            accel: Accel::Kvm,
            vcpus: 1,
            memory_mib: 256,
            kernel: Path::new("/k"),
            initrd: Path::new("/i"),
            root_disk: Path::new("/r"),
            workspace: Path::new("/w"),
            tap: "t",
            mac: "m",
            console: Path::new("/c"),
            pidfile: Path::new("/p"),
        });
        assert!(
            !kvm.iter().any(|a| a == "max"),
            "KVM keeps the default CPU model"
        );
    }

    #[test]
    fn tokens_are_fresh_and_long() {
        let a = new_token().expect("token");
        let b = new_token().expect("token");
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
