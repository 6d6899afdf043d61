//! One VM's own boot files, the same for every VM driver: its persistent workspace disk and
//! its initrd (the image's base initramfs plus this machine's settings and agent config).

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use kiln_guest::config::GuestConfig;

use super::{
    disk,
    image::GuestImage,
    initramfs::{self, MachineBoot},
};
use crate::{
    MachineSpec,
    error::{IoContext, RuntimeError},
    image, net,
    net::Ipv4Cidr,
};

/// Where a machine's own boot files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineFiles {
    /// The persistent workspace disk (ext4, read-write).
    pub workspace: PathBuf,
    /// The image's base initramfs with this boot's settings appended (root-only).
    pub initrd: PathBuf,
}

/// What a machine boots with besides its image.
#[derive(Debug)]
pub struct MachineSetup<'a> {
    /// The machine.
    pub spec: &'a MachineSpec,
    /// Its private state directory.
    pub dir: &'a Path,
    /// Its address on the org's bridge.
    pub address: Ipv4Addr,
    /// The org's slice; `.1` is the gateway.
    pub slice: Ipv4Cidr,
    /// Size of a new workspace disk.
    pub workspace_mib: u64,
    /// Whether machines may reach the internet (decides the resolver the guest gets).
    pub egress: bool,
    /// How the agent listens and authenticates; its env and id come from `spec`.
    pub listen: String,
    /// The agent's per-machine token, when its channel needs one.
    pub token: Option<kiln_guest::protocol::AgentToken>,
}

/// Creates the workspace disk if the machine has none yet and writes this boot's initrd.
pub async fn prepare(
    setup: &MachineSetup<'_>,
    guest: &GuestImage,
) -> Result<MachineFiles, RuntimeError> {
    let spec = setup.spec;
    let user = image::definition(&spec.image)?.user;
    let workspace = setup.dir.join("workspace.ext4");
    if !workspace.exists() {
        let tmp = setup.dir.join("workspace.ext4.tmp");
        disk::create_workspace(&tmp, setup.workspace_mib, user.uid, user.gid).await?;
        fs::rename(&tmp, &workspace)
            .ctx(|| format!("rename {} to {}", tmp.display(), workspace.display()))?;
    }
    let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let boot = MachineBoot {
        hostname: spec.hostname.clone(),
        address: setup.address,
        prefix: setup.slice.prefix(),
        gateway: setup.slice.host(1),
        user: (user.uid, user.gid, user.home.clone()),
        pids_max: spec.pids_max,
        etc: [
            ("hosts", net::hosts_file(&spec.hostname, setup.address)),
            ("hostname", format!("{}\n", spec.hostname)),
            ("resolv.conf", net::resolv_conf(setup.egress, &host_resolv)),
        ],
        agent: GuestConfig {
            listen: setup.listen.clone(),
            machine_id: Some(spec.id.clone()),
            env: spec.env.clone(),
            token: setup.token.clone(),
            workspace: PathBuf::from("/workspace"),
        },
    };
    let initrd = setup.dir.join("initrd.img");
    let (path, base, machine) = (
        initrd.clone(),
        guest.initramfs.clone(),
        initramfs::machine_part(&boot)?,
    );
    // Several MB read and written per boot: off the runtime's threads.
    tokio::task::spawn_blocking(move || write_initrd(&path, &base, &machine))
        .await
        .map_err(|e| RuntimeError::io("write the machine's initrd", std::io::Error::other(e)))??;
    Ok(MachineFiles { workspace, initrd })
}

/// Writes the machine's initrd (base + machine part), readable by root only: it holds the
/// agent's token and the machine's environment.
fn write_initrd(path: &Path, base: &Path, machine: &[u8]) -> Result<(), RuntimeError> {
    use std::io::Write;
    let mut bytes = fs::read(base).ctx(|| format!("read {}", base.display()))?;
    bytes.extend_from_slice(machine);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .ctx(|| format!("create {}", path.display()))?;
    file.write_all(&bytes)
        .ctx(|| format!("write {}", path.display()))
}
