//! Machine drivers (process; later qemu, firecracker), node networking and images.
