//! Small helpers every driver uses for its state directory: JSON state files written
//! atomically and readable only by root, and the machine-id rules.

use std::{fs, io::ErrorKind, os::unix::fs::OpenOptionsExt, path::Path};

use serde::Serialize;

use crate::error::{IoContext, RuntimeError};

/// Reads a JSON state file; a missing file is `None`.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Option<T>, RuntimeError> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| RuntimeError::CorruptState {
                    path: path.to_owned(),
                    source,
                })
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RuntimeError::io(format!("read {}", path.display()), e)),
    }
}

/// Writes via a temporary file and rename, so a crash never leaves half a state file. The file
/// is readable by root only: state files may carry a machine's environment.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).expect("state types serialise");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .ctx(|| format!("create {}", tmp.display()))?;
    file.write_all(&bytes)
        .ctx(|| format!("write {}", tmp.display()))?;
    drop(file);
    fs::rename(&tmp, path).ctx(|| format!("rename {} to {}", tmp.display(), path.display()))
}

/// Machine ids become directory, cgroup and namespace names, so only a safe alphabet passes.
pub(crate) fn validate_id(id: &str) -> Result<(), RuntimeError> {
    let bad = |reason| {
        Err(RuntimeError::InvalidMachineId {
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() || id.len() > 64 {
        return bad("must be 1 to 64 characters long");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return bad("may contain only ASCII letters, digits, '_' and '-'");
    }
    if id.starts_with('-') {
        return bad("must not start with '-'");
    }
    Ok(())
}

/// Names of machine directories in the state directory.
pub(crate) fn machine_ids(dir: &Path) -> Result<Vec<String>, RuntimeError> {
    let entries = fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))?;
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.ctx(|| format!("list {}", dir.display()))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if validate_id(&name).is_ok() && entry.path().is_dir() {
            ids.push(name);
        }
    }
    ids.sort();
    Ok(ids)
}
