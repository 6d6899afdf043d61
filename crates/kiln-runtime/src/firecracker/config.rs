//! [`FirecrackerConfig`]: what the firecracker driver runs, where it keeps state, and the
//! environment variables that set it.

use std::{path::PathBuf, sync::Arc, time::Duration};

use super::{DEFAULT_BOOT_DEADLINE, GuestImage, JailerConfig, jailer::DEFAULT_CHROOT_BASE};
use crate::{error::RuntimeError, net::Ipv4Cidr};

/// Configuration of a [`super::FirecrackerDriver`].
#[derive(Debug, Clone)]
pub struct FirecrackerConfig {
    /// The Firecracker binary; `None` looks for `firecracker` on `PATH`.
    pub firecracker_bin: Option<PathBuf>,
    /// Run Firecracker under the jailer.
    pub jailer: Option<JailerConfig>,
    /// Machines' state; must be an absolute path.
    pub state_dir: PathBuf,
    /// The node subnet; each org gets a /24 of it.
    pub subnet: Ipv4Cidr,
    /// Whether machines may reach the internet (NAT through the host).
    pub egress: bool,
    /// How long a machine may take from starting Firecracker to its agent answering.
    pub boot_deadline: Duration,
    /// Start Firecracker with `--enable-pci` (virtio-pci devices). Needed for guest kernels
    /// that cannot take virtio-mmio devices from the command line (no
    /// `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`, e.g. Debian's cloud kernel).
    pub enable_pci: bool,
    /// Prepares each machine's kernel, disks and command line.
    pub guest: Arc<dyn GuestImage>,
}

impl FirecrackerConfig {
    /// A configuration with the default subnet, no egress, no jailer and the default boot
    /// deadline, looking for `firecracker` on `PATH`.
    pub fn new(state_dir: impl Into<PathBuf>, guest: Arc<dyn GuestImage>) -> Self {
        Self {
            firecracker_bin: None,
            jailer: None,
            state_dir: state_dir.into(),
            subnet: Ipv4Cidr::DEFAULT_SUBNET,
            egress: false,
            boot_deadline: DEFAULT_BOOT_DEADLINE,
            enable_pci: false,
            guest,
        }
    }

    /// Applies the driver's environment variables: `KILN_FIRECRACKER_BIN` (the binary),
    /// `KILN_FIRECRACKER_PCI=1` (virtio-pci devices), `KILN_FIRECRACKER_JAILER` (the jailer
    /// binary; enables jailing), and for the jailer
    /// `KILN_FIRECRACKER_UID`/`KILN_FIRECRACKER_GID` (default 65534, `nobody`) and
    /// `KILN_FIRECRACKER_CHROOT_BASE` (default `/srv/jailer`).
    pub fn with_env(mut self, var: impl Fn(&str) -> Option<String>) -> Result<Self, RuntimeError> {
        let non_empty = |name: &str| var(name).filter(|v| !v.is_empty());
        if let Some(bin) = non_empty("KILN_FIRECRACKER_BIN") {
            self.firecracker_bin = Some(bin.into());
        }
        if let Some(pci) = non_empty("KILN_FIRECRACKER_PCI") {
            self.enable_pci = match pci.as_str() {
                "1" | "true" => true,
                "0" | "false" => false,
                _ => {
                    return Err(RuntimeError::InvalidConfig(format!(
                        "KILN_FIRECRACKER_PCI={pci:?}: expected 1 or 0"
                    )));
                }
            };
        }
        if let Some(jailer) = non_empty("KILN_FIRECRACKER_JAILER") {
            let id = |name: &str| -> Result<u32, RuntimeError> {
                match non_empty(name) {
                    None => Ok(65534),
                    Some(v) => v.parse().map_err(|_| {
                        RuntimeError::InvalidConfig(format!(
                            "{name}={v:?} is not a numeric user or group id"
                        ))
                    }),
                }
            };
            self.jailer = Some(JailerConfig {
                bin: jailer.into(),
                uid: id("KILN_FIRECRACKER_UID")?,
                gid: id("KILN_FIRECRACKER_GID")?,
                chroot_base: non_empty("KILN_FIRECRACKER_CHROOT_BASE")
                    .unwrap_or_else(|| DEFAULT_CHROOT_BASE.to_owned())
                    .into(),
            });
        }
        Ok(self)
    }
}
