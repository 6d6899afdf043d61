//! Choosing the accelerator by booting, not by looking.
//!
//! `/dev/kvm` existing proves little: on a PVM host it opens and creates VMs, yet a stock
//! kernel never gets past its real-mode setup. So the driver boots the guest kernel with the
//! base initramfs once under KVM, with a short deadline; `/init` prints a marker and powers
//! off when it runs without a machine's settings. The marker on the serial console means KVM
//! works; anything else means TCG. The verdict is cached per kernel (path, size, mtime) in
//! the images directory, so the probe runs once per kernel, not once per start.

use std::{
    fmt, fs,
    os::unix::fs::MetadataExt,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{error::RuntimeError, spawn};

/// What `/init` prints when it runs without a machine's settings.
pub const PROBE_MARKER: &str = "kiln-init: probe reached init";

/// How long a KVM guest may take to reach init. A working KVM boots this kernel to init in
/// well under a second; the margin is for a busy host.
const PROBE_DEADLINE: Duration = Duration::from_secs(10);

/// How machines are executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's emulator: slower, works everywhere.
    Tcg,
}

impl Accel {
    /// The value of qemu's `-accel`.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        })
    }
}

/// `<images_dir>/vm-accel-<kernel key>.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Verdict {
    accel: Accel,
    kernel: String,
    console: String,
}

/// The accelerator for `kernel`: the cached verdict, else a probe boot (cached afterwards).
pub async fn choose(
    qemu: &Path,
    kernel: &Path,
    initramfs: &Path,
    cache_dir: &Path,
) -> Result<Accel, RuntimeError> {
    // Without /dev/kvm there is nothing to probe, and nothing is cached: a node that gains
    // KVM later (module loaded, device made) probes on its next start.
    if !Path::new("/dev/kvm").exists() {
        return Ok(Accel::Tcg);
    }
    let cache = cache_path(kernel, cache_dir)?;
    if let Ok(bytes) = fs::read(&cache)
        && let Ok(verdict) = serde_json::from_slice::<Verdict>(&bytes)
    {
        return Ok(verdict.accel);
    }
    let (accel, console) = probe_kvm(qemu, kernel, initramfs, cache_dir).await?;
    tracing::info!(%accel, kernel = %kernel.display(), "VM accelerator chosen by a probe boot");
    let verdict = Verdict {
        accel,
        kernel: kernel.display().to_string(),
        console,
    };
    let json = serde_json::to_vec_pretty(&verdict).expect("verdicts serialise");
    if let Err(e) = fs::write(&cache, json) {
        tracing::warn!(path = %cache.display(), error = %e, "cannot cache the accelerator verdict");
    }
    Ok(accel)
}

/// Where the verdict for `kernel` is cached: keyed by its path, size and mtime, so a new
/// kernel is probed again.
fn cache_path(kernel: &Path, cache_dir: &Path) -> Result<std::path::PathBuf, RuntimeError> {
    let meta = fs::metadata(kernel)
        .map_err(|e| RuntimeError::io(format!("stat {}", kernel.display()), e))?;
    let mut h = Sha256::new();
    h.update(kernel.as_os_str().as_encoded_bytes());
    h.update(meta.len().to_le_bytes());
    h.update(meta.mtime().to_le_bytes());
    Ok(cache_dir.join(format!(
        "vm-accel-{}.json",
        &hex::encode(h.finalize())[..12]
    )))
}

/// Boots the probe under KVM; returns the verdict and the console it printed.
async fn probe_kvm(
    qemu: &Path,
    kernel: &Path,
    initramfs: &Path,
    scratch: &Path,
) -> Result<(Accel, String), RuntimeError> {
    let log = scratch.join(format!("vm-accel-probe-{}.log", std::process::id()));
    let mut cmd = tokio::process::Command::from(spawn::command(qemu));
    cmd.args(["-M", "pc", "-accel", "kvm", "-m", "256", "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 loglevel=4"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| spawn::spawn_error("qemu-system-x86_64", e, "qemu probe".into()))?;
    let started = Instant::now();
    let reached = loop {
        let console = fs::read_to_string(&log).unwrap_or_default();
        if console.contains(PROBE_MARKER) {
            break true;
        }
        if started.elapsed() > PROBE_DEADLINE {
            break false;
        }
        if let Ok(Some(_)) = child.try_wait() {
            // Exited without the marker (e.g. qemu refused KVM): re-read once, then decide.
            break fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(PROBE_MARKER);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.start_kill();
    let _ = child.wait().await;
    let console = fs::read_to_string(&log).unwrap_or_default();
    let _ = fs::remove_file(&log);
    let tail: String = console
        .lines()
        .rev()
        .take(5)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    Ok((if reached { Accel::Kvm } else { Accel::Tcg }, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cached_verdict_is_used_without_probing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kernel = dir.path().join("vmlinuz");
        fs::write(&kernel, b"kernel").expect("write");
        let cache = cache_path(&kernel, dir.path()).expect("path");
        fs::write(&cache, r#"{"accel":"kvm","kernel":"k","console":""}"#).expect("write");
        // A QEMU that does not exist proves no probe ran.
        let accel = choose(Path::new("/nonexistent/qemu"), &kernel, &kernel, dir.path())
            .await
            .expect("cached");
        assert_eq!(accel, Accel::Kvm);
        // Another kernel (other size) is not covered by that verdict.
        fs::write(&kernel, b"another kernel").expect("write");
        assert_ne!(cache_path(&kernel, dir.path()).expect("path"), cache);
    }
}
