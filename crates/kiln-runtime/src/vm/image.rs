//! Guest images: what a VM boots for an image definition, built from the same root file system
//! the `process` driver uses and cached by content under the images directory.
//!
//! ```text
//! <images_dir>/vm-initramfs-<hash12>.cpio          base initramfs (busybox, modules, /init)
//! <images_dir>/vm-root-<image key>-<hash12>.ext4   root disk: the image tree + the agent
//! <images_dir>/vm-root-<image key>-<hash12>.lock   flock held while building it
//! ```
//!
//! The initramfs is named by the hash of its own bytes; the root disk by the image's build key
//! and the agent binary's hash, so a new agent gets a new disk and machines still running on
//! the old one keep it. Both are written to a temporary name and renamed, so a crash never
//! leaves a file that looks complete. A new root disk replaces the image's older ones at once;
//! a new initramfs replaces older ones a day after they were last written.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use sha2::{Digest, Sha256};

use super::{disk, initramfs, kernel::Kernel};
use crate::{
    error::{IoContext, RuntimeError},
    image::{self, ImageRef, ImageStore},
    lock,
};

/// How long a superseded base initramfs is kept after its last write.
const INITRAMFS_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Bumped whenever the way guest disks are assembled changes, so old builds are not reused.
const GUEST_BUILDER_REVISION: &str = "1";

/// Everything a VM of one image boots from; shared read-only by every VM of that image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// The kernel image.
    pub kernel: PathBuf,
    /// The base initramfs (a machine's own part is appended per boot).
    pub initramfs: PathBuf,
    /// The root disk (ext4, attached read-only).
    pub root_disk: PathBuf,
}

/// Builds and caches guest images. Cheap to clone; clones share the cache.
#[derive(Debug, Clone)]
pub struct GuestImageStore {
    images: ImageStore,
    kernel: Kernel,
    agent_bin: PathBuf,
    busybox: PathBuf,
    ready: Arc<Mutex<HashMap<ImageRef, GuestImage>>>,
}

impl GuestImageStore {
    /// A store building from `images` (the process driver's root file systems), for `kernel`,
    /// with the agent binary `agent_bin` inside every root disk.
    pub fn new(images: ImageStore, kernel: Kernel, agent_bin: impl Into<PathBuf>) -> Self {
        Self {
            images,
            kernel,
            agent_bin: agent_bin.into(),
            busybox: PathBuf::from(initramfs::BUSYBOX),
            ready: Arc::default(),
        }
    }

    /// The kernel this store builds for.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The guest image of `image`, building what is missing (the root file system too).
    /// Concurrent callers, in this process or others, build each part once.
    pub async fn ensure(&self, image: &ImageRef) -> Result<GuestImage, RuntimeError> {
        if let Some(ready) = self.cached(image) {
            return Ok(ready);
        }
        let rootfs = self.images.ensure(image).await?;
        let dir = self.images.dir().to_owned();
        let initramfs = self.ensure_initramfs(&dir).await?;
        let root_disk = self.ensure_root_disk(&dir, image, &rootfs).await?;
        let guest = GuestImage {
            kernel: self.kernel.image.clone(),
            initramfs,
            root_disk,
        };
        self.ready
            .lock()
            .expect("guest image cache lock is never held across a panic")
            .insert(image.clone(), guest.clone());
        Ok(guest)
    }

    /// The guest image built earlier by this store, while its files are still there: an
    /// operator may remove them to reclaim space or to force a rebuild.
    fn cached(&self, image: &ImageRef) -> Option<GuestImage> {
        let mut ready = self
            .ready
            .lock()
            .expect("guest image cache lock is never held across a panic");
        let guest = ready.get(image)?;
        if guest.root_disk.is_file() && guest.initramfs.is_file() {
            return Some(guest.clone());
        }
        ready.remove(image);
        None
    }

    /// The base initramfs of this kernel, named by its content.
    pub async fn ensure_initramfs(&self, dir: &Path) -> Result<PathBuf, RuntimeError> {
        let modules = self.kernel.modules.clone();
        let busybox = self.busybox.clone();
        let bytes =
            tokio::task::spawn_blocking(move || initramfs::base(modules.as_deref(), &busybox))
                .await
                .map_err(|e| RuntimeError::io("build the initramfs", std::io::Error::other(e)))??;
        let hash = hex::encode(Sha256::digest(&bytes));
        let path = dir.join(format!("vm-initramfs-{}.cpio", &hash[..12]));
        if !path.is_file() {
            fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
            write_atomically(&path, &bytes)?;
            // Machines boot from their own copy, so an older base is garbage once a day has
            // passed without a write: the grace keeps two nodes with different kernels on one
            // images directory from deleting each other's on every boot.
            remove_superseded(dir, "vm-initramfs-", &path, INITRAMFS_GRACE);
        }
        Ok(path)
    }

    async fn ensure_root_disk(
        &self,
        dir: &Path,
        image: &ImageRef,
        rootfs: &Path,
    ) -> Result<PathBuf, RuntimeError> {
        let agent = self.agent_bin.clone();
        let agent_hash = tokio::task::spawn_blocking(move || file_sha256(&agent))
            .await
            .map_err(|e| RuntimeError::io("hash the agent", std::io::Error::other(e)))??;
        let image_key = image::definition(image)?.build_key();
        let mut h = Sha256::new();
        h.update(GUEST_BUILDER_REVISION.as_bytes());
        h.update([0]);
        h.update(image_key.as_bytes());
        h.update([0]);
        h.update(agent_hash);
        let key = format!("vm-root-{image_key}-{}", &hex::encode(h.finalize())[..12]);
        let path = dir.join(format!("{key}.ext4"));
        if path.is_file() {
            return Ok(path);
        }
        let _lock = lock::exclusive(&dir.join(format!("{key}.lock"))).await?;
        if path.is_file() {
            return Ok(path);
        }
        let tmp = dir.join(format!(".{key}.ext4.tmp"));
        tracing::info!(%image, disk = %path.display(), "building the VM root disk");
        let started = std::time::Instant::now();
        disk::build_root(rootfs, &self.agent_bin, &tmp).await?;
        fs::rename(&tmp, &path)
            .ctx(|| format!("rename {} to {}", tmp.display(), path.display()))?;
        tracing::info!(%image, elapsed = ?started.elapsed(), "VM root disk built");
        remove_superseded(dir, &format!("vm-root-{image_key}-"), &path, Duration::ZERO);
        Ok(path)
    }
}

/// Deletes the files beside `keep` that share its name's `prefix` and extension (older builds
/// of the same thing) or are its kind's temporary files (`.tmp<pid>`, left by a crash), and
/// were last written more than `grace` ago. VMs still running on a root disk keep it open,
/// and an unlinked file lives as long as it is open, so this is safe while they run; their
/// next boot uses the new file.
fn remove_superseded(dir: &Path, prefix: &str, keep: &Path, grace: Duration) {
    let Some(extension) = keep.extension().and_then(|e| e.to_str()) else {
        return;
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let same_kind = name.starts_with(prefix)
            && path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e == extension || e.starts_with("tmp"));
        let old_enough = || {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|written| written.elapsed().is_ok_and(|age| age >= grace))
        };
        if path != keep
            && same_kind
            && old_enough()
            && let Err(e) = fs::remove_file(&path)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a superseded VM file");
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, bytes).ctx(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, path).ctx(|| format!("rename {} to {}", tmp.display(), path.display()))
}

/// The SHA-256 of a file, streamed.
pub(crate) fn file_sha256(path: &Path) -> Result<[u8; 32], RuntimeError> {
    let mut file = fs::File::open(path).ctx(|| format!("open {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut file, &mut h).ctx(|| format!("read {}", path.display()))?;
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superseded_files_go_once_their_grace_has_passed() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let at = |name: &str| dir.path().join(name);
        let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(48 * 3600);
        for name in [
            "vm-initramfs-old.cpio",
            "vm-initramfs-old.tmp4242",
            "vm-initramfs-recent.cpio",
            "vm-initramfs-new.cpio",
            "vm-root-default-1-abc-old.ext4",
            "vm-initramfs-unrelated.txt",
        ] {
            fs::write(at(name), name)?;
        }
        for name in [
            "vm-initramfs-old.cpio",
            "vm-initramfs-old.tmp4242",
            "vm-root-default-1-abc-old.ext4",
            "vm-initramfs-unrelated.txt",
        ] {
            fs::File::options()
                .write(true)
                .open(at(name))?
                .set_modified(two_days_ago)?;
        }

        let keep = at("vm-initramfs-new.cpio");
        remove_superseded(dir.path(), "vm-initramfs-", &keep, INITRAMFS_GRACE);

        let mut left: Vec<String> = fs::read_dir(dir.path())?
            .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        left.sort();
        assert_eq!(
            left,
            [
                "vm-initramfs-new.cpio",
                "vm-initramfs-recent.cpio",
                "vm-initramfs-unrelated.txt",
                "vm-root-default-1-abc-old.ext4",
            ]
        );

        // Root disks go at once: running VMs hold theirs open.
        let disk = at("vm-root-default-1-abc-new.ext4");
        fs::write(&disk, "disk")?;
        remove_superseded(dir.path(), "vm-root-default-1-abc-", &disk, Duration::ZERO);
        assert!(!at("vm-root-default-1-abc-old.ext4").exists());
        assert!(disk.exists());
        Ok(())
    }

    #[test]
    fn a_cached_image_whose_files_were_removed_is_built_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let kernel = Kernel {
            image: dir.path().join("bzImage"),
            modules: None,
        };
        let store = GuestImageStore::new(ImageStore::new(dir.path()), kernel, "/nonexistent");
        let image: ImageRef = "default".parse().expect("the default image");
        let guest = GuestImage {
            kernel: dir.path().join("bzImage"),
            initramfs: dir.path().join("vm-initramfs-0.cpio"),
            root_disk: dir.path().join("vm-root-default-0.ext4"),
        };
        fs::write(&guest.initramfs, b"initramfs").expect("write initramfs");
        fs::write(&guest.root_disk, b"disk").expect("write disk");
        store
            .ready
            .lock()
            .expect("lock")
            .insert(image.clone(), guest.clone());

        assert_eq!(store.cached(&image), Some(guest.clone()));
        fs::remove_file(&guest.root_disk).expect("remove disk");
        assert_eq!(
            store.cached(&image),
            None,
            "a removed disk is not handed out"
        );
        fs::write(&guest.root_disk, b"disk").expect("write disk again");
        assert_eq!(
            store.cached(&image),
            None,
            "the entry was forgotten, so the next ensure builds and records it afresh"
        );
    }
}
