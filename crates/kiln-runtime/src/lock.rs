//! Advisory file locks (flock) that serialise work between Kiln processes sharing a directory:
//! two control planes building the same image, or allocating addresses from the same state.

use std::{fs::OpenOptions, path::Path};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{IoContext, RuntimeError};

/// An exclusive lock, released when dropped (the kernel also releases it if the process dies).
#[derive(Debug)]
pub(crate) struct FileLock {
    _lock: Flock<std::fs::File>,
}

/// Takes an exclusive lock on `path` (created if missing), waiting on a blocking thread so the
/// async runtime keeps running while another process holds it.
pub(crate) async fn exclusive(path: &Path) -> Result<FileLock, RuntimeError> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || exclusive_blocking(&path))
        .await
        .map_err(|e| RuntimeError::io("wait for a lock-taking thread", std::io::Error::other(e)))?
}

/// The blocking form of [`exclusive`].
pub(crate) fn exclusive_blocking(path: &Path) -> Result<FileLock, RuntimeError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ctx(|| format!("open lock file {}", path.display()))?;
    let lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .ctx(|| format!("lock {}", path.display()))?;
    Ok(FileLock { _lock: lock })
}
