//! Pinning worker threads to CPUs (see [`crate::EdgeConfig::pin_workers`]).

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;
use tracing::warn;

/// The CPUs this process may run on, in order; empty if they cannot be read.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
        Err(e) => {
            warn!(error = %e, "cannot read the CPUs this process may use; workers stay unpinned");
            Vec::new()
        }
    }
}

/// Keeps the calling thread on `cpu`. A failure leaves it free to move, which only costs speed.
pub(crate) fn pin_current_thread(cpu: usize) {
    let mut set = CpuSet::new();
    let pinned = set
        .set(cpu)
        .and_then(|()| sched_setaffinity(Pid::from_raw(0), &set));
    if let Err(e) = pinned {
        warn!(cpu, error = %e, "cannot pin an edge worker; it stays unpinned");
    }
}
