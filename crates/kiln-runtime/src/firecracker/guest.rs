//! The seam between the driver and the guest image: what the image needs to know about a
//! machine, and the boot files it hands back.
//!
//! The guest image (kernel, initramfs, root file system, per-machine configuration, workspace
//! volume) is built elsewhere; the driver only needs a [`GuestImage`] that prepares one
//! machine's [`GuestBoot`]. [`FixedGuestImage`] is the simplest one: operator-supplied files and
//! a workspace volume made with `mkfs.ext4`.

use std::{
    fmt,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use async_trait::async_trait;

use super::network::kernel_ip_arg;
use crate::{MachineSpec, error::RuntimeError, net::Ipv4Cidr, spawn::run_tool};

/// What a guest image needs to know to prepare one machine's boot.
#[derive(Debug, Clone)]
pub struct GuestMachine<'a> {
    /// The machine.
    pub spec: &'a MachineSpec,
    /// The machine's private state directory (mode 0700), for per-machine files.
    pub dir: &'a Path,
    /// The machine's address.
    pub address: Ipv4Addr,
    /// The org's slice; its `.1` is the gateway.
    pub slice: Ipv4Cidr,
    /// The vsock port the guest agent must listen on (`--listen vsock:PORT`).
    pub agent_port: u32,
    /// Whether Firecracker exposes its devices over virtio-pci (`--enable-pci`) rather than
    /// virtio-mmio.
    pub pci: bool,
}

/// One machine's boot files, as host paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestBoot {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The initramfs, if the kernel needs one.
    pub initrd: Option<PathBuf>,
    /// The full kernel command line.
    pub boot_args: String,
    /// The root file system image (attached read-only).
    pub rootfs: PathBuf,
    /// The machine's persistent workspace volume (attached read-write; deleted on destroy).
    pub workspace: PathBuf,
}

/// Prepares the boot files of a machine. Called on every boot; must be idempotent and must
/// keep an existing workspace volume.
#[async_trait]
pub trait GuestImage: fmt::Debug + Send + Sync + 'static {
    /// The boot files of `machine`.
    async fn prepare(&self, machine: &GuestMachine<'_>) -> Result<GuestBoot, RuntimeError>;
}

/// The kernel arguments every Firecracker guest gets: the serial console, reboot through the
/// keyboard controller (which makes Firecracker exit), a panic that reboots instead of hanging,
/// no PCI probing unless the devices are on PCI, and the static network setup.
pub fn base_boot_args(machine: &GuestMachine<'_>) -> String {
    format!(
        "console=ttyS0 reboot=k panic=1{} {}",
        if machine.pci { "" } else { " pci=off" },
        kernel_ip_arg(machine.address, machine.slice, &machine.spec.hostname)
    )
}

/// A guest image made of fixed files: a kernel, an optional initramfs and a root file system
/// whose init starts the agent (told its listen address and machine id through the kernel
/// command line: `kiln.listen=vsock:PORT kiln.machine_id=ID`), plus a fresh ext4 workspace
/// volume per machine. The machine's environment is not passed: the kernel command line is
/// no place for secrets, and a real guest image carries it in its per-machine configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedGuestImage {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// The root file system image.
    pub rootfs: PathBuf,
    /// Extra kernel arguments appended to the generated ones.
    pub extra_boot_args: String,
    /// The size of new workspace volumes in MiB.
    pub workspace_mib: u64,
}

#[async_trait]
impl GuestImage for FixedGuestImage {
    async fn prepare(&self, machine: &GuestMachine<'_>) -> Result<GuestBoot, RuntimeError> {
        let workspace = machine.dir.join("workspace.ext4");
        if !workspace.exists() {
            make_ext4(&workspace, self.workspace_mib).await?;
        }
        let mut boot_args = format!(
            "{} kiln.listen=vsock:{} kiln.machine_id={}",
            base_boot_args(machine),
            machine.agent_port,
            machine.spec.id
        );
        if !self.extra_boot_args.is_empty() {
            boot_args.push(' ');
            boot_args.push_str(&self.extra_boot_args);
        }
        Ok(GuestBoot {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            boot_args,
            rootfs: self.rootfs.clone(),
            workspace,
        })
    }
}

/// Creates a sparse ext4 image of `mib` MiB at `path`, via a temporary file so a crash never
/// leaves a half-made volume that later boots would take for the workspace.
async fn make_ext4(path: &Path, mib: u64) -> Result<(), RuntimeError> {
    let tmp = path.with_extension("ext4.tmp");
    let tmp_text = tmp.to_string_lossy().into_owned();
    let size = format!("{mib}M");
    // `-E root_owner` gives the workspace to the image's unprivileged user (1000:1000).
    run_tool(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            "root_owner=1000:1000",
            "-L",
            "workspace",
            &tmp_text,
            &size,
        ],
        None,
    )
    .await?;
    std::fs::rename(&tmp, path)
        .map_err(|e| RuntimeError::io(format!("rename {tmp_text} to {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn boot_args_carry_network_and_pci_choice() {
        let spec = MachineSpec {
            id: "sbx_1".into(),
            org_id: "org_1".into(),
            image: crate::default_image(),
            vcpus: 1,
            memory_mib: 256,
            pids_max: 256,
            hostname: "sbx-1".into(),
            env: BTreeMap::new(),
        };
        let slice: Ipv4Cidr = "10.92.0.0/24".parse().expect("cidr");
        let mut machine = GuestMachine {
            spec: &spec,
            dir: Path::new("/tmp"),
            address: slice.host(2),
            slice,
            agent_port: 1024,
            pci: false,
        };
        assert_eq!(
            base_boot_args(&machine),
            "console=ttyS0 reboot=k panic=1 pci=off ip=10.92.0.2::10.92.0.1:255.255.255.0:sbx-1:eth0:off"
        );
        machine.pci = true;
        assert!(!base_boot_args(&machine).contains("pci=off"));
    }
}
