//! Machine images: named, versioned definitions compiled into the crate, and the store that
//! builds them into root file systems with `mmdebstrap` once per definition.
//!
//! Layout under the images directory (which several data directories may share):
//!
//! ```text
//! <images_dir>/<name>-<version>-<hash12>/rootfs       the finished root file system
//! <images_dir>/<name>-<version>-<hash12>/image.json   what it was built from
//! <images_dir>/<name>-<version>-<hash12>.lock         flock held while building
//! <images_dir>/<name>-<version>-<hash12>.build.log    mmdebstrap's output of the last build
//! <images_dir>/.build-<name>-<version>-<hash12>-<pid>-<n>/  a build in progress (renamed when done)
//! ```
//!
//! The rename of the finished build is the commit point, so a crash mid-build never leaves a
//! directory that looks complete.

use std::{
    collections::HashMap,
    fmt,
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::{PermissionsExt, chown},
    path::{Path, PathBuf},
    process::Stdio,
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    error::{IoContext, RuntimeError},
    spawn,
};

/// The definitions this build knows, as shipped in `images/`.
const DEFINITIONS: &[&str] = &[include_str!("../images/default.toml")];

/// Bumped whenever the customisation done after `mmdebstrap` changes, so stored images built
/// by older code are rebuilt rather than reused.
const BUILDER_REVISION: &str = "1";

/// Where the guest agent binary is bind-mounted inside every image.
pub const AGENT_PATH: &str = "/sbin/kiln-guest";

/// A reference to an image definition: `name:version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ImageRef {
    /// The definition's name, e.g. `default`.
    pub name: String,
    /// The definition's version.
    pub version: u32,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.version)
    }
}

impl FromStr for ImageRef {
    type Err = RuntimeError;

    /// Parses `name` (the newest version of that name) or `name:version`; only images this
    /// build defines are accepted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || RuntimeError::UnknownImage {
            reference: s.to_owned(),
            known: known_images(),
        };
        let defs = definitions();
        match s.split_once(':') {
            None => defs
                .iter()
                .filter(|d| d.name == s)
                .map(|d| d.image_ref())
                .max_by_key(|r| r.version)
                .ok_or_else(unknown),
            Some((name, version)) => {
                let version: u32 = version.parse().map_err(|_| unknown())?;
                defs.iter()
                    .find(|d| d.name == name && d.version == version)
                    .map(|d| d.image_ref())
                    .ok_or_else(unknown)
            }
        }
    }
}

/// The image machines boot unless asked otherwise: the newest `default`.
pub fn default_image() -> ImageRef {
    "default"
        .parse()
        .expect("images/default.toml is compiled into the crate and parsed by a unit test")
}

/// An image definition as written in `images/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDefinition {
    /// The image name.
    pub name: String,
    /// The image version.
    pub version: u32,
    /// The Debian suite, e.g. `bookworm`.
    pub suite: String,
    /// The Debian mirror to install from.
    pub mirror: String,
    /// The mmdebstrap variant, e.g. `minbase`.
    pub variant: String,
    /// Packages installed on top of the variant.
    pub packages: Vec<String>,
    /// The unprivileged user commands run as.
    pub user: ImageUser,
    /// Mount points that must exist in the read-only root.
    pub placeholders: Placeholders,
    /// The text the definition was parsed from; part of the build key.
    #[serde(skip)]
    pub source: String,
}

/// The unprivileged user of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageUser {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id (a group of the same name is created).
    pub gid: u32,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
}

/// Paths the drivers mount over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placeholders {
    /// Directories to create.
    pub dirs: Vec<String>,
    /// Empty files to create (bind-mount targets).
    pub files: Vec<String>,
}

impl ImageDefinition {
    /// The reference naming this definition.
    pub fn image_ref(&self) -> ImageRef {
        ImageRef {
            name: self.name.clone(),
            version: self.version,
        }
    }

    /// The directory name of the built image: name, version and a hash of the definition and
    /// the builder, so an edited definition never reuses a stale build.
    pub fn build_key(&self) -> String {
        let mut h = Sha256::new();
        h.update(BUILDER_REVISION.as_bytes());
        h.update([0]);
        h.update(self.source.as_bytes());
        let hash = hex::encode(h.finalize());
        format!("{}-{}-{}", self.name, self.version, &hash[..12])
    }
}

/// Parses one definition file.
fn parse_definition(text: &str) -> Result<ImageDefinition, toml::de::Error> {
    let mut def: ImageDefinition = toml::from_str(text)?;
    def.source = text.to_owned();
    Ok(def)
}

/// All definitions compiled into the crate.
pub fn definitions() -> Vec<ImageDefinition> {
    DEFINITIONS
        .iter()
        .map(|text| parse_definition(text).expect("shipped image definitions are unit-tested"))
        .collect()
}

/// The definition of `image`, or [`RuntimeError::UnknownImage`].
pub fn definition(image: &ImageRef) -> Result<ImageDefinition, RuntimeError> {
    definitions()
        .into_iter()
        .find(|d| d.name == image.name && d.version == image.version)
        .ok_or_else(|| RuntimeError::UnknownImage {
            reference: image.to_string(),
            known: known_images(),
        })
}

fn known_images() -> String {
    definitions()
        .iter()
        .map(|d| d.image_ref().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds images on demand and hands out their root file systems.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
    /// Root file systems already verified by this process, so `ensure` is a map lookup on the
    /// hot path of every machine start.
    ready: Arc<Mutex<HashMap<ImageRef, PathBuf>>>,
}

/// What is recorded next to a built root file system.
#[derive(Debug, Serialize, Deserialize)]
struct BuiltImage {
    image: ImageRef,
    key: String,
    definition: String,
}

impl ImageStore {
    /// A store keeping built images under `dir` (created on first build).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            ready: Arc::default(),
        }
    }

    /// The directory images are kept in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Returns the root file system of `image`, building it first if this images directory
    /// does not have it yet. Concurrent callers (threads or processes) build it once.
    pub async fn ensure(&self, image: &ImageRef) -> Result<PathBuf, RuntimeError> {
        if let Some(path) = self.ready_path(image) {
            return Ok(path);
        }
        let def = definition(image)?;
        let key = def.build_key();
        let image_dir = self.dir.join(&key);
        let rootfs = image_dir.join("rootfs");
        if !image_dir.join("image.json").is_file() {
            fs::create_dir_all(&self.dir).ctx(|| format!("create {}", self.dir.display()))?;
            let lock_path = self.dir.join(format!("{key}.lock"));
            let _lock = crate::lock::exclusive(&lock_path).await?;
            // Another process may have finished the build while we waited for the lock.
            if !image_dir.join("image.json").is_file() {
                self.build(&def, &key).await?;
            }
        }
        verify_rootfs(&def, &rootfs)?;
        self.ready
            .lock()
            .expect("image cache lock is never held across a panic")
            .insert(image.clone(), rootfs.clone());
        Ok(rootfs)
    }

    /// The root file system verified earlier, while its build is still complete on disk: an
    /// operator may remove it to reclaim space or to force a rebuild.
    fn ready_path(&self, image: &ImageRef) -> Option<PathBuf> {
        let mut ready = self
            .ready
            .lock()
            .expect("image cache lock is never held across a panic");
        let rootfs = ready.get(image)?;
        if rootfs.with_file_name("image.json").is_file() {
            return Some(rootfs.clone());
        }
        ready.remove(image);
        None
    }

    /// Removes the scratch directories of earlier builds of `key` that never finished (their
    /// process crashed or was killed). Called with the image's lock held, so none of them is
    /// in use; one that cannot be removed yet only costs disk space, so it is logged, not fatal.
    fn remove_abandoned_builds(&self, key: &str) {
        let prefix = format!(".build-{key}");
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let path = entry.path();
                if let Err(e) = fs::remove_dir_all(&path) {
                    tracing::warn!(dir = %path.display(), error = %e, "could not remove an abandoned image build");
                }
            }
        }
    }

    /// Runs mmdebstrap into a scratch directory, customises the result and renames it into
    /// place. Called with the image's lock held.
    async fn build(&self, def: &ImageDefinition, key: &str) -> Result<(), RuntimeError> {
        let image = def.image_ref().to_string();
        if !spawn::on_path("mmdebstrap") {
            return Err(spawn::missing_program("mmdebstrap").expect("mmdebstrap is a known tool"));
        }
        self.remove_abandoned_builds(key);
        // A name of its own for every attempt: the tools of an abandoned build may still be
        // writing into theirs for a moment after their owner died.
        static ATTEMPTS: AtomicU64 = AtomicU64::new(0);
        let attempt = ATTEMPTS.fetch_add(1, Ordering::Relaxed);
        let scratch = self
            .dir
            .join(format!(".build-{key}-{}-{attempt}", std::process::id()));
        fs::create_dir_all(&scratch).ctx(|| format!("create {}", scratch.display()))?;
        let rootfs = scratch.join("rootfs");
        let log_path = self.dir.join(format!("{key}.build.log"));
        let log = fs::File::create(&log_path).ctx(|| format!("create {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .ctx(|| format!("duplicate {}", log_path.display()))?;

        tracing::info!(%image, dir = %scratch.display(), "building image with mmdebstrap");
        let started = std::time::Instant::now();
        // mmdebstrap runs in PID and mount namespaces of its own, and dies (with everything
        // it started, and its mounts) when this process does or the build is abandoned.
        // Otherwise its helpers (apt, dpkg) build on into a directory whose lock is gone.
        let mut cmd = tokio::process::Command::from(spawn::command("unshare"));
        cmd.args([
            "--mount",
            "--pid",
            "--fork",
            "--kill-child=SIGKILL",
            "--",
            "mmdebstrap",
        ])
        .arg(format!("--variant={}", def.variant))
        .arg(format!("--include={}", def.packages.join(",")))
        // Documentation and man pages are dead weight in a machine image; copyright files
        // stay for license compliance.
        .arg("--dpkgopt=path-exclude=/usr/share/man/*")
        .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
        .arg("--dpkgopt=path-include=/usr/share/doc/*/copyright")
        .arg(&def.suite)
        .arg(&rootfs)
        .arg(&def.mirror)
        .env("TMPDIR", &scratch)
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe, so it may run between fork and exec.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let status = cmd
            .status()
            .await
            .map_err(|e| spawn::spawn_error("unshare", e, "mmdebstrap".into()))?;
        if !status.success() {
            return Err(RuntimeError::ImageBuild {
                image,
                detail: format!("mmdebstrap exited with {status}"),
                log: log_path,
            });
        }
        customise(def, &rootfs).map_err(|e| RuntimeError::ImageBuild {
            image: image.clone(),
            detail: format!("customising the root file system: {e}"),
            log: log_path.clone(),
        })?;
        let meta = BuiltImage {
            image: def.image_ref(),
            key: key.to_owned(),
            definition: def.source.clone(),
        };
        let meta_json = serde_json::to_vec_pretty(&meta).expect("image metadata serialises");
        fs::write(scratch.join("image.json"), meta_json)
            .ctx(|| format!("write {}/image.json", scratch.display()))?;
        let target = self.dir.join(key);
        fs::rename(&scratch, &target)
            .ctx(|| format!("rename {} to {}", scratch.display(), target.display()))?;
        // An abandoned build whose tools were still dying when this one began is gone by now.
        self.remove_abandoned_builds(key);
        tracing::info!(%image, elapsed = ?started.elapsed(), dir = %target.display(), "image built");
        Ok(())
    }
}

/// Adds what mmdebstrap does not: the unprivileged user, the mount-point placeholders, and
/// neutral `/etc` files so nothing of the build host ends up in the image.
fn customise(def: &ImageDefinition, rootfs: &Path) -> std::io::Result<()> {
    let at = |p: &str| rootfs.join(p.trim_start_matches('/'));
    let u = &def.user;

    append_line(
        &at("/etc/passwd"),
        &format!(
            "{}:x:{}:{}:{}:{}:{}",
            u.name, u.uid, u.gid, u.name, u.home, u.shell
        ),
    )?;
    append_line(&at("/etc/group"), &format!("{}:x:{}:", u.name, u.gid))?;
    append_line(
        &at("/etc/shadow"),
        &format!("{}:!:19000:0:99999:7:::", u.name),
    )?;
    append_line(&at("/etc/gshadow"), &format!("{}:!::", u.name))?;

    for dir in &def.placeholders.dirs {
        fs::create_dir_all(at(dir))?;
    }
    for file in &def.placeholders.files {
        let path = at(file);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        // Truncate: mmdebstrap copies the build host's resolv.conf and hostname.
        fs::write(&path, b"")?;
    }
    fs::set_permissions(at(AGENT_PATH), fs::Permissions::from_mode(0o755))?;
    fs::write(at("/etc/hostname"), b"kiln\n")?;
    fs::write(
        at("/etc/hosts"),
        b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )?;
    for dir in ["/tmp", "/var/tmp"] {
        fs::set_permissions(at(dir), fs::Permissions::from_mode(0o1777))?;
    }
    for dir in [&u.home, "/workspace"] {
        let path = at(dir);
        chown(&path, Some(u.uid), Some(u.gid))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    }
    // Every boot gets a fresh identity from the driver, never one baked into the image.
    let _ = fs::remove_file(at("/etc/machine-id"));
    fs::write(at("/etc/machine-id"), b"")?;
    Ok(())
}

fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let existing = fs::read_to_string(path).unwrap_or_default();
    let name = line.split(':').next().unwrap_or_default();
    if existing.lines().any(|l| l.split(':').next() == Some(name)) {
        return Ok(());
    }
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    if !existing.is_empty() && !existing.ends_with('\n') {
        f.write_all(b"\n")?;
    }
    writeln!(f, "{line}")
}

/// Checks that a built root has every placeholder the drivers mount onto.
fn verify_rootfs(def: &ImageDefinition, rootfs: &Path) -> Result<(), RuntimeError> {
    let broken = |detail: String| RuntimeError::ImageBroken {
        image: def.image_ref().to_string(),
        path: rootfs.to_owned(),
        detail,
    };
    for dir in &def.placeholders.dirs {
        if !rootfs.join(dir.trim_start_matches('/')).is_dir() {
            return Err(broken(format!("directory {dir} is missing")));
        }
    }
    for file in &def.placeholders.files {
        if !rootfs.join(file.trim_start_matches('/')).is_file() {
            return Err(broken(format!("file {file} is missing")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_builds_of_the_image_are_removed_and_nothing_else() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = ImageStore::new(dir.path());
        let key = "default-1-0123456789ab";
        for abandoned in [
            format!(".build-{key}"),
            format!(".build-{key}-4242-0"),
            format!(".build-{key}-4242-1"),
        ] {
            fs::create_dir_all(dir.path().join(abandoned).join("rootfs/var/cache"))?;
        }
        let kept = [
            key.to_owned(),
            format!("{key}.lock"),
            ".build-other-1-0123456789ab-7-0".to_owned(),
        ];
        for name in &kept {
            fs::create_dir_all(dir.path().join(name))?;
        }

        store.remove_abandoned_builds(key);

        let mut left: Vec<String> = fs::read_dir(dir.path())?
            .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        left.sort();
        let mut expected = kept.to_vec();
        expected.sort();
        assert_eq!(left, expected);
        Ok(())
    }

    #[test]
    fn a_removed_root_file_system_is_not_handed_out_again() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = ImageStore::new(dir.path());
        let image: ImageRef = "default".parse().expect("the default image");
        let build = dir.path().join("default-1-0123456789ab");
        fs::create_dir_all(build.join("rootfs"))?;
        fs::write(build.join("image.json"), b"{}")?;
        store
            .ready
            .lock()
            .expect("lock")
            .insert(image.clone(), build.join("rootfs"));

        assert_eq!(store.ready_path(&image), Some(build.join("rootfs")));
        fs::remove_dir_all(&build)?;
        assert_eq!(store.ready_path(&image), None);
        assert!(store.ready.lock().expect("lock").is_empty(), "forgotten");
        Ok(())
    }

    #[test]
    fn shipped_definitions_parse() {
        let defs = definitions();
        assert!(!defs.is_empty());
        for d in &defs {
            assert!(
                d.placeholders.files.iter().any(|f| f == AGENT_PATH),
                "{}",
                d.name
            );
            assert!(
                d.build_key()
                    .starts_with(&format!("{}-{}-", d.name, d.version))
            );
        }
    }

    #[test]
    fn image_refs_parse_and_display() {
        let cases: &[(&str, Option<&str>)] = &[
            ("default", Some("default:1")),
            ("default:1", Some("default:1")),
            ("default:2", None),
            ("default:", None),
            ("default:x", None),
            ("nope", None),
            ("", None),
            (":1", None),
        ];
        for (input, want) in cases {
            let got = input.parse::<ImageRef>().ok().map(|r| r.to_string());
            assert_eq!(got.as_deref(), *want, "parsing {input:?}");
        }
        assert_eq!(default_image().to_string(), "default:1");
    }

    #[test]
    fn unknown_image_error_lists_known_ones() {
        let err = "ubuntu"
            .parse::<ImageRef>()
            .expect_err("ubuntu is not defined")
            .to_string();
        assert!(err.contains("default:1"), "{err}");
    }

    #[test]
    fn build_key_changes_with_the_definition() {
        let mut d = definitions().remove(0);
        let before = d.build_key();
        d.source.push_str("\n# edited\n");
        assert_ne!(before, d.build_key());
    }

    #[test]
    fn customise_adds_user_and_placeholders() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: customise chowns to the image user, which needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash").expect("write");
        fs::write(root.join("etc/resolv.conf"), "nameserver 192.0.2.53\n").expect("write");
        let def = definitions().remove(0);
        customise(&def, root).expect("customise");
        customise(&def, root).expect("customise is idempotent");
        let passwd = fs::read_to_string(root.join("etc/passwd")).expect("read");
        assert_eq!(
            passwd,
            "root:x:0:0:root:/root:/bin/bash\napp:x:1000:1000:app:/home/app:/bin/bash\n"
        );
        assert_eq!(fs::read(root.join("etc/resolv.conf")).expect("read"), b"");
        verify_rootfs(&def, root).expect("placeholders exist");
    }
}
