//! Per-machine cgroups (v1): `/sys/fs/cgroup/{memory,pids,cpu}/kiln/<id>`.
//!
//! The limits make a machine VM-shaped (a fixed amount of memory, a process budget, CPU weight
//! and quota by vCPU count), and the `pids` cgroup is the authoritative list of a machine's
//! processes: it is how the driver finds, signals and waits for everything a machine started,
//! including processes that escaped their parent.

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::error::{IoContext, RuntimeError};

/// The controllers every machine is placed in.
pub(crate) const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// The parent cgroup below each controller's root that holds all Kiln machines.
const PARENT: &str = "kiln";

/// The period of the CFS bandwidth controller; the quota is this times the vCPU count.
const CFS_PERIOD_US: u64 = 100_000;

/// Resource limits of one machine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub vcpus: u32,
    pub memory_mib: u32,
    pub pids_max: u32,
}

/// The cgroups of one machine.
#[derive(Debug, Clone)]
pub(crate) struct MachineCgroups {
    root: PathBuf,
    id: String,
}

/// Checks that the v1 controllers Kiln needs are mounted under `root` and creates the `kiln`
/// parent group in each.
pub(crate) fn prepare(root: &Path) -> Result<(), RuntimeError> {
    for controller in CONTROLLERS {
        let base = root.join(controller);
        if !base.join("cgroup.procs").is_file() {
            return Err(RuntimeError::CgroupUnavailable {
                controller,
                path: base,
            });
        }
        let parent = base.join(PARENT);
        fs::create_dir_all(&parent).ctx(|| format!("create cgroup {}", parent.display()))?;
    }
    Ok(())
}

impl MachineCgroups {
    /// The cgroups of machine `id` below the controllers mounted at `root`.
    pub(crate) fn new(root: &Path, id: &str) -> Self {
        Self {
            root: root.to_owned(),
            id: id.to_owned(),
        }
    }

    /// This machine's cgroup directory for `controller`.
    pub(crate) fn dir(&self, controller: &str) -> PathBuf {
        self.root.join(controller).join(PARENT).join(&self.id)
    }

    /// All of this machine's cgroup directories, in [`CONTROLLERS`] order.
    pub(crate) fn dirs(&self) -> Vec<PathBuf> {
        CONTROLLERS.iter().map(|c| self.dir(c)).collect()
    }

    /// Creates the cgroups (fresh: callers remove leftovers first) and writes the limits.
    pub(crate) fn create(&self, limits: Limits) -> Result<(), RuntimeError> {
        for dir in self.dirs() {
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(RuntimeError::io(format!("create {}", dir.display()), e)),
            }
        }
        let bytes = u64::from(limits.memory_mib) * 1024 * 1024;
        let memory = self.dir("memory");
        write(&memory.join("memory.limit_in_bytes"), bytes)?;
        // Memory+swap equal to memory: a machine cannot swap its way past its limit. The file
        // only exists when the kernel accounts swap.
        let memsw = memory.join("memory.memsw.limit_in_bytes");
        if memsw.exists() {
            write(&memsw, bytes)?;
        }
        write(
            &self.dir("pids").join("pids.max"),
            u64::from(limits.pids_max),
        )?;
        let cpu = self.dir("cpu");
        write(&cpu.join("cpu.shares"), 1024 * u64::from(limits.vcpus))?;
        // A hard ceiling of `vcpus` cores, like a VM with that many vCPUs.
        if cpu.join("cpu.cfs_quota_us").exists() {
            write(&cpu.join("cpu.cfs_period_us"), CFS_PERIOD_US)?;
            write(
                &cpu.join("cpu.cfs_quota_us"),
                CFS_PERIOD_US * u64::from(limits.vcpus),
            )?;
        }
        Ok(())
    }

    /// Host pids of every process in the machine (empty if its cgroup does not exist).
    pub(crate) fn pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for dir in self.dirs() {
            let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) else {
                continue;
            };
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// Whether `pid` belongs to this machine (guards against signalling a recycled pid).
    pub(crate) fn contains(&self, pid: i32) -> bool {
        let needle = format!("/{PARENT}/{}", self.id);
        fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .map(|text| {
                text.lines().any(|l| {
                    l.split(':').nth(2).is_some_and(|path| path == needle)
                        && l.split(':').nth(1).is_some_and(|c| c.contains("pids"))
                })
            })
            .unwrap_or(false)
    }

    /// How many of this machine's processes the OOM killer has killed. Zero when the machine
    /// has no cgroup (it is not running).
    pub(crate) fn oom_kills(&self) -> Result<u64, RuntimeError> {
        let memory = self.dir("memory");
        let control = memory.join("memory.oom_control");
        let text = match fs::read_to_string(&control) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(RuntimeError::io(format!("read {}", control.display()), e)),
        };
        if let Some(n) = parse_oom_kill(&text) {
            return Ok(n);
        }
        // Kernels before 4.13 lack the counter; the number of times the limit was hit is the
        // closest signal they offer.
        let failcnt = memory.join("memory.failcnt");
        let text = fs::read_to_string(&failcnt).ctx(|| format!("read {}", failcnt.display()))?;
        Ok(text.trim().parse().unwrap_or(0))
    }

    /// Removes the cgroups, waiting briefly for the kernel to release exiting processes.
    pub(crate) async fn remove(&self) -> Result<(), RuntimeError> {
        for dir in self.dirs() {
            let mut attempts = 0;
            loop {
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    // EBUSY while the last processes are being reaped.
                    Err(e) if attempts < 200 => {
                        tracing::trace!(dir = %dir.display(), error = %e, "cgroup busy; retrying");
                        attempts += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => {
                        return Err(RuntimeError::io(
                            format!("remove cgroup {}", dir.display()),
                            e,
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn write(path: &Path, value: u64) -> Result<(), RuntimeError> {
    fs::write(path, value.to_string()).ctx(|| format!("write {value} to {}", path.display()))
}

/// The `oom_kill N` line of `memory.oom_control`.
fn parse_oom_kill(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_kill_counter_is_parsed() {
        assert_eq!(
            parse_oom_kill("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n"),
            Some(3)
        );
        assert_eq!(parse_oom_kill("oom_kill_disable 0\nunder_oom 0\n"), None);
    }

    #[test]
    fn paths_follow_the_layout() {
        let cg = MachineCgroups::new(Path::new("/sys/fs/cgroup"), "sbx_1");
        assert_eq!(
            cg.dirs(),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/kiln/sbx_1"),
                PathBuf::from("/sys/fs/cgroup/pids/kiln/sbx_1"),
                PathBuf::from("/sys/fs/cgroup/cpu/kiln/sbx_1"),
            ]
        );
    }
}
