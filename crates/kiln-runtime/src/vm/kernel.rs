//! The guest kernel: where it is, and which of its modules a VM needs to find its disks and
//! network, in load order.
//!
//! `scripts/setup.sh` unpacks Debian's cloud kernel package (never installing it on the host)
//! into [`DEFAULT_KERNEL_DIR`], whose `current` link names the version in use:
//! `current/boot/vmlinuz-<version>` and `current/lib/modules/<version>/kernel/**.ko`. An
//! operator may instead name a kernel file (`KILN_VM_KERNEL`) with the drivers built in, or
//! with a modules directory beside it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use crate::error::{IoContext, RuntimeError};

/// Where `scripts/setup.sh` unpacks the guest kernel.
pub const DEFAULT_KERNEL_DIR: &str = "/var/cache/kiln/kernel/current";

/// The modules a VM loads at boot (with their dependencies): the PCI transport, block and
/// network devices, the entropy source (so the agent's first `getrandom` does not wait) and
/// the vsock transport (the agent's channel under Firecracker).
pub const VM_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "vmw_vsock_virtio_transport",
];

/// A guest kernel and, when its drivers are modules, where they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// The kernel image (`bzImage` for qemu).
    pub image: PathBuf,
    /// `lib/modules/<version>` of that kernel, if it has one.
    pub modules: Option<PathBuf>,
}

impl Kernel {
    /// The kernel at `explicit` (with modules from `modules`, if given), else the one
    /// `scripts/setup.sh` unpacked.
    pub fn locate(explicit: Option<&Path>, modules: Option<&Path>) -> Result<Kernel, RuntimeError> {
        if let Some(image) = explicit {
            if !image.is_file() {
                return Err(RuntimeError::InvalidConfig(format!(
                    "the VM kernel {} does not exist; set KILN_VM_KERNEL to a kernel image or unset it to use the one scripts/setup.sh installs",
                    image.display()
                )));
            }
            return Ok(Kernel {
                image: image.to_owned(),
                modules: modules.map(Path::to_owned),
            });
        }
        Self::in_dir(Path::new(DEFAULT_KERNEL_DIR))
    }

    /// The kernel unpacked in `dir` (`boot/vmlinuz-<v>`, `lib/modules/<v>`).
    pub fn in_dir(dir: &Path) -> Result<Kernel, RuntimeError> {
        let missing = || {
            RuntimeError::InvalidConfig(format!(
                "no guest kernel in {}: run scripts/setup.sh (it unpacks Debian's linux-image-cloud-amd64) or set KILN_VM_KERNEL",
                dir.display()
            ))
        };
        let boot = dir.join("boot");
        let entries = fs::read_dir(&boot).map_err(|_| missing())?;
        let mut versions: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| name.strip_prefix("vmlinuz-").map(str::to_owned))
            .collect();
        versions.sort();
        let version = versions.pop().ok_or_else(missing)?;
        let modules = dir.join("lib/modules").join(&version);
        Ok(Kernel {
            image: boot.join(format!("vmlinuz-{version}")),
            modules: modules.is_dir().then_some(modules),
        })
    }
}

/// The `.ko` files of `wanted` and everything they depend on, dependencies first. Modules the
/// kernel has built in (listed in `modules.builtin`) are skipped; a module found nowhere is
/// an error naming it.
pub fn module_load_order(
    modules_dir: &Path,
    wanted: &[&str],
) -> Result<Vec<PathBuf>, RuntimeError> {
    let index = index_modules(&modules_dir.join("kernel"))?;
    let builtin: BTreeSet<String> = fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.rsplit('/').next())
        .filter_map(|file| file.strip_suffix(".ko"))
        .map(normalise)
        .collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for name in wanted {
        visit(&normalise(name), &index, &builtin, &mut seen, &mut order, 0)?;
    }
    Ok(order)
}

/// Depth-first: a module's dependencies are pushed before it.
fn visit(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<PathBuf>,
    depth: usize,
) -> Result<(), RuntimeError> {
    if depth > 32 {
        return Err(RuntimeError::InvalidConfig(format!(
            "kernel module dependencies around {name} form a cycle"
        )));
    }
    if !seen.insert(name.to_owned()) || builtin.contains(name) {
        return Ok(());
    }
    let path = index.get(name).ok_or_else(|| {
        RuntimeError::InvalidConfig(format!(
            "the guest kernel has no module {name} (uncompressed .ko) and does not build it in"
        ))
    })?;
    let bytes = fs::read(path).ctx(|| format!("read {}", path.display()))?;
    for dep in module_depends(&bytes) {
        visit(&dep, index, builtin, seen, order, depth + 1)?;
    }
    order.push(path.clone());
    Ok(())
}

/// Module name → `.ko` path for every uncompressed module under `dir`.
fn index_modules(dir: &Path) -> Result<BTreeMap<String, PathBuf>, RuntimeError> {
    let mut index = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).ctx(|| format!("list {}", dir.display()))?;
        for entry in entries {
            let entry = entry.ctx(|| format!("list {}", dir.display()))?;
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                index.insert(normalise(stem), path);
            }
        }
    }
    Ok(index)
}

/// The `depends=` entry of a module's `.modinfo` section: NUL-separated `key=value` strings,
/// so a byte search for the NUL-prefixed key finds it without parsing ELF.
fn module_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let value = &ko[at + KEY.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(normalise)
        .collect()
}

/// Module names treat `-` and `_` alike; file names use either.
fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_are_read_from_modinfo() {
        let ko = b"\x7fELF...\0license=GPL\0depends=virtio,virtio_ring\0vermagic=6.1\0";
        assert_eq!(module_depends(ko), ["virtio", "virtio_ring"]);
        assert!(module_depends(b"\0depends=\0name=x\0").is_empty());
        assert!(module_depends(b"no modinfo").is_empty());
    }

    #[test]
    fn load_order_puts_dependencies_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let k = dir.path().join("kernel/drivers");
        fs::create_dir_all(&k).expect("mkdir");
        fs::write(k.join("virtio.ko"), b"\0name=virtio\0").expect("write");
        fs::write(k.join("virtio_ring.ko"), b"\0depends=virtio\0").expect("write");
        fs::write(k.join("virtio_blk.ko"), b"\0depends=virtio_ring,virtio\0").expect("write");
        fs::write(
            k.join("virtio-rng.ko"),
            b"\0depends=virtio_ring,builtin_one\0",
        )
        .expect("write");
        fs::write(
            dir.path().join("modules.builtin"),
            "kernel/lib/builtin_one.ko\n",
        )
        .expect("write");
        let order = module_load_order(dir.path(), &["virtio_blk", "virtio_rng"]).expect("order");
        let names: Vec<_> = order
            .iter()
            .map(|p| p.file_name().and_then(|n| n.to_str()).unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                "virtio.ko",
                "virtio_ring.ko",
                "virtio_blk.ko",
                "virtio-rng.ko"
            ]
        );
        let err = module_load_order(dir.path(), &["virtio_net"]).expect_err("missing");
        assert!(err.to_string().contains("virtio_net"), "{err}");
    }

    #[test]
    fn the_installed_cloud_kernel_has_the_vm_modules() {
        let Ok(kernel) = Kernel::in_dir(Path::new(DEFAULT_KERNEL_DIR)) else {
            eprintln!("skipped: no kernel in {DEFAULT_KERNEL_DIR} (run scripts/setup.sh)");
            return;
        };
        let modules = kernel.modules.expect("the cloud kernel has modules");
        let order = module_load_order(&modules, VM_MODULES).expect("resolvable");
        let names: Vec<String> = order
            .iter()
            .filter_map(|p| p.file_stem()?.to_str().map(str::to_owned))
            .collect();
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap_or(usize::MAX);
        assert!(pos("virtio") < pos("virtio_pci"), "{names:?}");
        assert!(pos("net_failover") < pos("virtio_net"), "{names:?}");
        assert!(pos("virtio_blk") != usize::MAX, "{names:?}");
    }
}
