//! Running Firecracker under its jailer: the jailer's command line and the chroot it needs.
//!
//! The jailer (Firecracker's `docs/jailer.md`) creates `<chroot base>/<exec file name>/<id>/root`,
//! copies the Firecracker binary in, pivots into it, creates `/dev/kvm` and `/dev/net/tun`,
//! drops to `--uid`/`--gid` and execs Firecracker. Everything Firecracker opens through the API
//! (kernel, drives, log files) must therefore already be inside the chroot: the driver hard-links
//! the boot files in before starting the jailer, and gives the API paths as seen from inside.

use std::{
    ffi::OsString,
    fs,
    io::ErrorKind,
    os::unix::fs::{MetadataExt, chown},
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use super::error::FirecrackerError;
use crate::error::{IoContext, RuntimeError};

/// The default chroot base directory of the jailer.
pub const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";
/// The API socket path Firecracker gets inside the jail.
pub const JAILED_API_SOCKET: &str = "/firecracker.socket";

/// How to run Firecracker under the jailer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailerConfig {
    /// The `jailer` binary.
    pub bin: PathBuf,
    /// The unprivileged user Firecracker runs as.
    pub uid: u32,
    /// The unprivileged group Firecracker runs as.
    pub gid: u32,
    /// Where jails are built (`--chroot-base-dir`); must be on the same file system as the
    /// driver's state directory, because writable drives are hard-linked in.
    pub chroot_base: PathBuf,
}

/// One machine's jail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    /// The jailer's `--id`.
    pub id: String,
    /// `<chroot base>/<exec file name>/<id>`: removed as a whole on cleanup.
    pub dir: PathBuf,
    /// `<dir>/root`: `/` of the jailed Firecracker.
    pub root: PathBuf,
}

impl Jail {
    /// The jail of machine `machine_id` for the Firecracker binary `firecracker`.
    pub fn new(cfg: &JailerConfig, firecracker: &Path, machine_id: &str) -> Jail {
        let id = jail_id(machine_id);
        let exec_name = firecracker
            .file_name()
            .map_or_else(|| OsString::from("firecracker"), ToOwned::to_owned);
        let dir = cfg.chroot_base.join(exec_name).join(&id);
        let root = dir.join("root");
        Jail { id, dir, root }
    }

    /// The jailer's arguments (after the program name) to run `firecracker` in this jail.
    pub fn argv(&self, cfg: &JailerConfig, firecracker: &Path) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::new();
        let mut push = |flag: &str, value: OsString| {
            argv.push(flag.into());
            argv.push(value);
        };
        push("--id", self.id.clone().into());
        push("--exec-file", firecracker.as_os_str().to_owned());
        push("--uid", cfg.uid.to_string().into());
        push("--gid", cfg.gid.to_string().into());
        push("--chroot-base-dir", cfg.chroot_base.as_os_str().to_owned());
        push("--cgroup-version", "1".into());
        // Everything after `--` goes to Firecracker itself.
        argv.push("--".into());
        argv.push("--api-sock".into());
        argv.push(JAILED_API_SOCKET.into());
        argv
    }

    /// Where a path inside the jail is on the host.
    pub fn host_path(&self, inside: &Path) -> PathBuf {
        self.root.join(inside.strip_prefix("/").unwrap_or(inside))
    }

    /// Creates the chroot directory (the jailer leaves an existing one alone).
    pub fn create(&self) -> Result<(), RuntimeError> {
        fs::create_dir_all(&self.root).ctx(|| format!("create jail {}", self.root.display()))
    }

    /// Makes host file `from` available in the jail as `/<name>` and returns that path.
    ///
    /// Files are hard-linked, so a writable drive's writes land in the original; a read-only
    /// file on another file system, or one the jailed user cannot read, is copied instead.
    pub fn stage(
        &self,
        cfg: &JailerConfig,
        from: &Path,
        name: &str,
        writable: bool,
    ) -> Result<PathBuf, RuntimeError> {
        let inside = Path::new("/").join(name);
        let to = self.host_path(&inside);
        let stage_error = |detail: String| FirecrackerError::Stage {
            from: from.to_owned(),
            to: to.clone(),
            detail,
        };
        match fs::remove_file(&to) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(RuntimeError::io(format!("remove {}", to.display()), e));
            }
            _ => {}
        }
        let meta = fs::metadata(from).ctx(|| format!("inspect {}", from.display()))?;
        let world_readable = meta.mode() & 0o004 != 0;
        let linked = if writable || world_readable {
            match fs::hard_link(from, &to) {
                Ok(()) => true,
                Err(e) if e.kind() == ErrorKind::CrossesDevices && !writable => false,
                Err(e) if e.kind() == ErrorKind::CrossesDevices => {
                    return Err(stage_error(format!(
                        "{} is on another file system; a writable drive must be hard-linked, so put the chroot base on the state directory's file system",
                        cfg.chroot_base.display()
                    ))
                    .into());
                }
                Err(e) => return Err(stage_error(e.to_string()).into()),
            }
        } else {
            false
        };
        if !linked {
            fs::copy(from, &to).map_err(|e| stage_error(e.to_string()))?;
        }
        // A writable drive belongs to the jailed user; so does a private copy. A shared hard
        // link of a read-only file keeps its owner: other machines use the same inode.
        if writable || !linked {
            chown(&to, Some(cfg.uid), Some(cfg.gid)).map_err(|e| stage_error(e.to_string()))?;
        }
        Ok(inside)
    }

    /// Creates an empty file owned by the jailed user at `/<name>` (Firecracker's log and
    /// metrics files) and returns its path inside the jail.
    pub fn stage_empty(&self, cfg: &JailerConfig, name: &str) -> Result<PathBuf, RuntimeError> {
        let inside = Path::new("/").join(name);
        let to = self.host_path(&inside);
        fs::write(&to, b"").ctx(|| format!("create {}", to.display()))?;
        chown(&to, Some(cfg.uid), Some(cfg.gid)).ctx(|| format!("chown {}", to.display()))?;
        Ok(inside)
    }

    /// Removes the jail directory; a missing one is fine. Hard-linked drives keep their
    /// originals.
    pub fn remove(&self) -> Result<(), RuntimeError> {
        match fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(RuntimeError::io(
                format!("remove jail {}", self.dir.display()),
                e,
            )),
            _ => Ok(()),
        }
    }
}

/// The jailer's `--id` for a machine: the jailer allows only letters, digits and `-` (at most
/// 64 characters), while machine ids use `_`; a hash suffix keeps `a_b` and `a-b` apart.
pub fn jail_id(machine_id: &str) -> String {
    let readable: String = machine_id
        .chars()
        .take(55)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let hash = hex::encode(Sha256::digest(machine_id.as_bytes()));
    format!("{readable}-{}", &hash[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(base: &Path) -> JailerConfig {
        JailerConfig {
            bin: "/usr/local/bin/jailer".into(),
            uid: 123,
            gid: 100,
            chroot_base: base.to_owned(),
        }
    }

    #[test]
    fn jailer_argv_follows_the_jailer_docs() {
        let cfg = cfg(Path::new("/srv/jailer"));
        let fc = Path::new("/usr/local/bin/firecracker");
        let jail = Jail::new(&cfg, fc, "sbx_01HZ");
        let argv: Vec<String> = jail
            .argv(&cfg, fc)
            .into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect();
        assert_eq!(
            argv,
            [
                "--id",
                &jail.id,
                "--exec-file",
                "/usr/local/bin/firecracker",
                "--uid",
                "123",
                "--gid",
                "100",
                "--chroot-base-dir",
                "/srv/jailer",
                "--cgroup-version",
                "1",
                "--",
                "--api-sock",
                "/firecracker.socket",
            ]
        );
        assert_eq!(
            jail.root,
            Path::new("/srv/jailer/firecracker")
                .join(&jail.id)
                .join("root")
        );
        assert_eq!(
            jail.host_path(Path::new("/firecracker.socket")),
            jail.root.join("firecracker.socket")
        );
    }

    #[test]
    fn jail_ids_are_valid_and_distinct() {
        let long = "x".repeat(64);
        for id in ["sbx_01HZ", "a-b", "a_b", long.as_str()] {
            let jid = jail_id(id);
            assert!(jid.len() <= 64, "{jid}");
            assert!(
                jid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
                "{jid}"
            );
        }
        assert_ne!(jail_id("a_b"), jail_id("a-b"));
        assert!(jail_id("sbx_01HZ").starts_with("sbx-01HZ-"));
    }

    #[test]
    fn staging_links_drives_and_keeps_writes() {
        let base = tempfile::tempdir().expect("tempdir");
        let cfg = cfg(base.path());
        let jail = Jail::new(&cfg, Path::new("/usr/bin/firecracker"), "sbx_1");
        jail.create().expect("create");
        let workspace = base.path().join("workspace.ext4");
        fs::write(&workspace, b"before").expect("write");
        let inside = jail
            .stage(&cfg, &workspace, "workspace.ext4", true)
            .expect("stage");
        assert_eq!(inside, Path::new("/workspace.ext4"));
        let staged = jail.host_path(&inside);
        fs::write(&staged, b"after").expect("write through the jail");
        assert_eq!(fs::read(&workspace).expect("read"), b"after");
        assert_eq!(fs::metadata(&workspace).expect("meta").uid(), 123);
        // Staging again (a reboot) replaces the link instead of failing.
        jail.stage(&cfg, &workspace, "workspace.ext4", true)
            .expect("stage again");
        jail.remove().expect("remove");
        assert!(!jail.dir.exists());
        assert_eq!(fs::read(&workspace).expect("original kept"), b"after");
    }
}
