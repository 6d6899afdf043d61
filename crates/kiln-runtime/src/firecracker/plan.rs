//! [`BootPlan`]: everything one Firecracker machine is configured with, and the API calls that
//! configure and start it, in the order Firecracker needs them.

use std::path::PathBuf;

use super::api::{
    ActionType, ApiRequest, BootSource, Drive, InstanceActionInfo, Logger, MachineConfiguration,
    Metrics, NetworkInterface, Vsock,
};

/// The drive id of the root file system (`/dev/vda` in the guest).
pub const ROOT_DRIVE: &str = "rootfs";
/// The drive id of the workspace volume (`/dev/vdb` in the guest).
pub const WORKSPACE_DRIVE: &str = "workspace";
/// The interface id of the machine's network interface (`eth0` in the guest).
pub const NET_IFACE: &str = "eth0";

/// One machine's boot configuration. Paths are as Firecracker sees them: host paths, or paths
/// inside the chroot when the jailer runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPlan {
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The initramfs, if any.
    pub initrd: Option<PathBuf>,
    /// The kernel command line.
    pub boot_args: String,
    /// The root file system image, attached read-only.
    pub rootfs: PathBuf,
    /// The workspace volume image, attached read-write.
    pub workspace: PathBuf,
    /// The tap device on the org's bridge.
    pub tap: String,
    /// The guest's MAC address.
    pub mac: String,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// The guest's vsock context id.
    pub vsock_cid: u32,
    /// The host unix socket of the vsock device.
    pub vsock_uds: PathBuf,
    /// Firecracker's own log file.
    pub log: PathBuf,
    /// Firecracker's metrics file.
    pub metrics: PathBuf,
}

impl BootPlan {
    /// The API calls that configure the machine and boot it, in order: logging first (so the
    /// rest is logged), then machine, kernel, disks, network, vsock, and `InstanceStart` last.
    pub fn requests(&self) -> Vec<ApiRequest> {
        vec![
            ApiRequest::put(
                "/logger",
                &Logger {
                    log_path: self.log.clone(),
                    level: "Warning",
                    show_level: true,
                },
            ),
            ApiRequest::put(
                "/metrics",
                &Metrics {
                    metrics_path: self.metrics.clone(),
                },
            ),
            ApiRequest::put(
                "/machine-config",
                &MachineConfiguration {
                    vcpu_count: self.vcpus,
                    mem_size_mib: self.memory_mib,
                },
            ),
            ApiRequest::put(
                "/boot-source",
                &BootSource {
                    kernel_image_path: self.kernel.clone(),
                    initrd_path: self.initrd.clone(),
                    boot_args: self.boot_args.clone(),
                },
            ),
            ApiRequest::put(
                format!("/drives/{ROOT_DRIVE}"),
                &Drive {
                    drive_id: ROOT_DRIVE.into(),
                    path_on_host: self.rootfs.clone(),
                    is_root_device: true,
                    is_read_only: true,
                },
            ),
            ApiRequest::put(
                format!("/drives/{WORKSPACE_DRIVE}"),
                &Drive {
                    drive_id: WORKSPACE_DRIVE.into(),
                    path_on_host: self.workspace.clone(),
                    is_root_device: false,
                    is_read_only: false,
                },
            ),
            ApiRequest::put(
                format!("/network-interfaces/{NET_IFACE}"),
                &NetworkInterface {
                    iface_id: NET_IFACE.into(),
                    host_dev_name: self.tap.clone(),
                    guest_mac: self.mac.clone(),
                },
            ),
            ApiRequest::put(
                "/vsock",
                &Vsock {
                    guest_cid: self.vsock_cid,
                    uds_path: self.vsock_uds.clone(),
                },
            ),
            action_request(ActionType::InstanceStart),
        ]
    }
}

/// `PUT /actions` with `action`.
pub fn action_request(action: ActionType) -> ApiRequest {
    ApiRequest::put(
        "/actions",
        &InstanceActionInfo {
            action_type: action,
        },
    )
}
