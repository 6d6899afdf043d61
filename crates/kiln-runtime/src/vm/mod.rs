//! Virtual machines: the guest image every VM driver boots, and the `qemu` driver.
//!
//! A guest image is a kernel, a base initramfs and a root disk, all shared read-only by the
//! VMs of one image; a machine adds its own workspace disk, a small initramfs part with its
//! settings, and a tap device on its org's bridge. The pieces are driver-neutral, so the
//! `firecracker` driver boots the same kernel, initramfs and disks.
//!
//! - [`kernel`]: finding the guest kernel and the modules it needs.
//! - [`cpio`], [`initramfs`]: the initramfs and its `/init`.
//! - [`disk`]: root and workspace ext4 images, built without loop mounts.
//! - [`image`]: building and caching guest images by content.
//! - [`accel`]: KVM or TCG, decided by a probe boot.
//! - [`qemu`]: the driver.

pub mod accel;
mod cpio;
pub mod disk;
pub mod firecracker_guest;
pub mod image;
pub mod initramfs;
pub mod kernel;
pub mod machine;
pub mod qemu;

pub use accel::Accel;
pub use firecracker_guest::VmGuestImage;
pub use image::{GuestImage, GuestImageStore};
pub use kernel::Kernel;
pub use qemu::{QemuDriver, QemuDriverConfig};
