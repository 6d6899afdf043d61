//! The VM guest image as the `firecracker` driver's boot files: the kernel, root disk and
//! initramfs the `qemu` driver boots, with the agent listening on vsock instead of TCP (a
//! channel only the host reaches, so no token).

use async_trait::async_trait;

use super::{
    image::GuestImageStore,
    machine::{self, MachineSetup},
};
use crate::{
    error::RuntimeError,
    firecracker::{GuestBoot, GuestImage, GuestMachine},
};

/// Kernel arguments of a Firecracker guest; the initramfs configures the network itself.
const KERNEL_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 loglevel=4 quiet";

/// Guest images built by [`GuestImageStore`], for Firecracker.
#[derive(Debug, Clone)]
pub struct VmGuestImage {
    store: GuestImageStore,
    workspace_mib: u64,
    egress: bool,
}

impl VmGuestImage {
    /// Boot files from `store`, with new workspace disks of `workspace_mib`; `egress` decides
    /// the resolver machines get.
    pub fn new(store: GuestImageStore, workspace_mib: u64, egress: bool) -> Self {
        Self {
            store,
            workspace_mib,
            egress,
        }
    }
}

#[async_trait]
impl GuestImage for VmGuestImage {
    async fn prepare(&self, machine: &GuestMachine<'_>) -> Result<GuestBoot, RuntimeError> {
        let guest = self.store.ensure(&machine.spec.image).await?;
        let files = machine::prepare(
            &MachineSetup {
                spec: machine.spec,
                dir: machine.dir,
                address: machine.address,
                slice: machine.slice,
                workspace_mib: self.workspace_mib,
                egress: self.egress,
                listen: format!("vsock:{}", machine.agent_port),
                token: None,
            },
            &guest,
        )
        .await?;
        // Without PCI the devices are virtio-mmio, which a kernel finds only when built with
        // VIRTIO_MMIO_CMDLINE_DEVICES (Debian's cloud kernel is not: use --enable-pci there).
        let boot_args = if machine.pci {
            KERNEL_CMDLINE.to_owned()
        } else {
            format!("{KERNEL_CMDLINE} pci=off")
        };
        Ok(GuestBoot {
            kernel: guest.kernel,
            initrd: Some(files.initrd),
            boot_args,
            rootfs: guest.root_disk,
            workspace: files.workspace,
        })
    }
}
