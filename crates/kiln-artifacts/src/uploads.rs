//! Chunked, resumable uploads whose state lives on disk, so they survive a restart of either
//! side.
//!
//! An upload is a directory `uploads/<id>/` holding `upload.json` (size, declared digest, part
//! size, part count) and one `part-<n>` file per part received. Every file appears by rename,
//! so a part is either wholly there or absent; the directory itself is built in `tmp/` and
//! renamed into place, so an upload either exists with its state or not at all.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::store::{Inner, TRASH_PREFIX, blocking, remove_all, sync_dir};
use crate::{ArtifactError, ArtifactStore, Digest};

/// The state file of an upload.
const STATE_FILE: &str = "upload.json";
/// Prefix of part files: `part-1`, `part-2`, ...
const PART_PREFIX: &str = "part-";

/// A new upload, as [`ArtifactStore::create_upload`] returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadInfo {
    /// The upload's id: 32 lowercase hex digits.
    pub id: String,
    /// Size of every part but the last, which holds the remainder.
    pub part_size: u64,
    /// How many parts to send, numbered from 1 (0 for an empty payload).
    pub parts: u32,
}

/// One part stored by [`ArtifactStore::put_part`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// The part's number, from 1.
    pub number: u32,
    /// Its size.
    pub size: u64,
    /// The digest of its bytes, for a client that wants to check what arrived.
    pub digest: Digest,
}

/// Where an upload stands, so a client can resume by sending only the missing parts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadStatus {
    /// The declared size of the whole payload.
    pub size: u64,
    /// The declared digest of the whole payload.
    pub digest: Digest,
    /// Size of every part but the last.
    pub part_size: u64,
    /// How many parts there are.
    pub parts: u32,
    /// The parts received so far, in ascending order.
    pub received: Vec<u32>,
}

impl UploadStatus {
    /// The parts still to send, in ascending order.
    pub fn missing(&self) -> Vec<u32> {
        missing(self.parts, &self.received)
    }
}

/// `upload.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadState {
    size: u64,
    digest: Digest,
    part_size: u64,
    parts: u32,
}

impl UploadState {
    /// The exact size of part `n` (1-based, in range).
    fn part_len(&self, n: u32) -> u64 {
        if n == self.parts {
            self.size - u64::from(self.parts - 1) * self.part_size
        } else {
            self.part_size
        }
    }
}

impl ArtifactStore {
    /// Starts a chunked upload of `size` bytes that must hash to `digest`, refusing with
    /// [`ArtifactError::TooLarge`] anything above `max_size`.
    pub async fn create_upload(
        &self,
        size: u64,
        digest: Digest,
        max_size: u64,
    ) -> Result<UploadInfo, ArtifactError> {
        if size > max_size {
            return Err(ArtifactError::TooLarge {
                size,
                max: max_size,
            });
        }
        let part_size = self.inner.part_size;
        let parts =
            u32::try_from(size.div_ceil(part_size)).map_err(|_| ArtifactError::TooLarge {
                size,
                max: u64::from(u32::MAX) * part_size,
            })?;
        let state = UploadState {
            size,
            digest,
            part_size,
            parts,
        };
        // 128 random bits: unguessable, so one client cannot stumble on another's upload.
        let id = format!("{:032x}", rand::random::<u128>());
        let inner = self.inner.clone();
        let upload_id = id.clone();
        blocking(move || inner.create_upload_dir(&upload_id, &state)).await?;
        Ok(UploadInfo {
            id,
            part_size,
            parts,
        })
    }

    /// Stores part `n` (1-based) of an upload. Every part is exactly the part size except the
    /// last, which is the remainder ([`ArtifactError::BadPart`] otherwise). Sending a part
    /// again replaces it, so retries are harmless.
    pub async fn put_part(
        &self,
        id: &str,
        n: u32,
        bytes: Bytes,
    ) -> Result<PartInfo, ArtifactError> {
        let dir = self.inner.upload_dir(id)?;
        let inner = self.inner.clone();
        let id = id.to_owned();
        blocking(move || {
            let state = inner.read_state(&id, &dir)?;
            if n == 0 || n > state.parts {
                return Err(ArtifactError::BadPartNumber {
                    part: n,
                    parts: state.parts,
                });
            }
            let expected = state.part_len(n);
            if bytes.len() as u64 != expected {
                return Err(ArtifactError::BadPart {
                    part: n,
                    expected,
                    got: bytes.len() as u64,
                });
            }
            let temp = inner.temp_file(PART_PREFIX)?;
            let mut file = temp.as_file();
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(|source| ArtifactError::io("writing", temp.path(), source))?;
            let path = dir.join(format!("{PART_PREFIX}{n}"));
            temp.persist(&path).map_err(|err| {
                if err.error.kind() == io::ErrorKind::NotFound {
                    // Completed or aborted meanwhile.
                    ArtifactError::UnknownUpload { id: id.clone() }
                } else {
                    ArtifactError::io("renaming into", &path, err.error)
                }
            })?;
            sync_dir(&dir)?;
            Ok(PartInfo {
                number: n,
                size: expected,
                digest: Digest::of(&bytes),
            })
        })
        .await
    }

    /// The declared size and digest of an upload and the parts received so far.
    pub async fn upload_status(&self, id: &str) -> Result<UploadStatus, ArtifactError> {
        let dir = self.inner.upload_dir(id)?;
        let inner = self.inner.clone();
        let id = id.to_owned();
        blocking(move || {
            let state = inner.read_state(&id, &dir)?;
            let received = received_parts(&dir, &state)?.into_iter().collect();
            Ok(UploadStatus {
                size: state.size,
                digest: state.digest,
                part_size: state.part_size,
                parts: state.parts,
                received,
            })
        })
        .await
    }

    /// Joins the parts, hashing them, and stores the result if it hashes to the declared
    /// digest; then forgets the upload. On [`ArtifactError::MissingParts`] or
    /// [`ArtifactError::DigestMismatch`] nothing is stored and the parts are kept, so the
    /// client can send the missing or wrong parts and complete again.
    pub async fn complete_upload(&self, id: &str) -> Result<Digest, ArtifactError> {
        let dir = self.inner.upload_dir(id)?;
        let inner = self.inner.clone();
        let id = id.to_owned();
        blocking(move || {
            let state = inner.read_state(&id, &dir)?;
            let received = received_parts(&dir, &state)?;
            let missing = missing(state.parts, &received.iter().copied().collect::<Vec<_>>());
            if !missing.is_empty() {
                return Err(ArtifactError::MissingParts(missing));
            }
            let (digest, _, ()) = inner.write_object(Some(state.digest), |out, _| {
                for n in 1..=state.parts {
                    let path = dir.join(format!("{PART_PREFIX}{n}"));
                    let mut part = File::open(&path).map_err(|source| {
                        if source.kind() == io::ErrorKind::NotFound {
                            ArtifactError::UnknownUpload { id: id.clone() }
                        } else {
                            ArtifactError::io("opening", &path, source)
                        }
                    })?;
                    let copied = io::copy(&mut part, out)
                        .map_err(|source| ArtifactError::io("joining", &path, source))?;
                    if copied != state.part_len(n) {
                        // Only a part changed on disk behind our back gets here.
                        return Err(ArtifactError::BadPart {
                            part: n,
                            expected: state.part_len(n),
                            got: copied,
                        });
                    }
                }
                Ok(())
            })?;
            // The object is durable before the upload goes: a crash in between leaves an
            // upload whose completion is simply done again.
            inner.remove_upload(&id, &dir)?;
            Ok(digest)
        })
        .await
    }

    /// Abandons an upload and deletes its parts.
    pub async fn abort_upload(&self, id: &str) -> Result<(), ArtifactError> {
        let dir = self.inner.upload_dir(id)?;
        let inner = self.inner.clone();
        let id = id.to_owned();
        blocking(move || inner.remove_upload(&id, &dir)).await
    }
}

impl Inner {
    /// The directory of upload `id`, refusing ids that are not what
    /// [`ArtifactStore::create_upload`] makes (and so could name another path).
    fn upload_dir(&self, id: &str) -> Result<PathBuf, ArtifactError> {
        let well_formed =
            id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !well_formed {
            return Err(ArtifactError::UnknownUpload { id: id.to_owned() });
        }
        Ok(self.uploads.join(id))
    }

    fn create_upload_dir(&self, id: &str, state: &UploadState) -> Result<(), ArtifactError> {
        let staging = tempfile::Builder::new()
            .prefix("upload-")
            .tempdir_in(&self.tmp)
            .map_err(|source| ArtifactError::io("creating a directory in", &self.tmp, source))?;
        // Held until the rename, so a sweep by another store on this root leaves it alone.
        let lock = File::open(staging.path())
            .and_then(|handle| handle.lock().map(|()| handle))
            .map_err(|source| ArtifactError::io("locking", staging.path(), source))?;
        let state_path = staging.path().join(STATE_FILE);
        let json = serde_json::to_vec(state).map_err(|source| ArtifactError::BadUploadState {
            path: state_path.clone(),
            source,
        })?;
        let mut file = File::create_new(&state_path)
            .map_err(|source| ArtifactError::io("creating", &state_path, source))?;
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .map_err(|source| ArtifactError::io("writing", &state_path, source))?;
        sync_dir(staging.path())?;
        let dir = self.uploads.join(id);
        fs::rename(staging.path(), &dir)
            .map_err(|source| ArtifactError::io("renaming into", &dir, source))?;
        // Renamed away: nothing left for the guard to delete.
        let _ = staging.keep();
        drop(lock);
        sync_dir(&self.uploads)
    }

    fn read_state(&self, id: &str, dir: &Path) -> Result<UploadState, ArtifactError> {
        let path = dir.join(STATE_FILE);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(ArtifactError::UnknownUpload { id: id.to_owned() });
            }
            Err(source) => return Err(ArtifactError::io("reading", &path, source)),
        };
        let state: UploadState =
            serde_json::from_slice(&text).map_err(|source| ArtifactError::BadUploadState {
                path: path.clone(),
                source,
            })?;
        // The file is ours, but a damaged one must not turn into an arithmetic panic.
        let consistent =
            state.part_size > 0 && u64::from(state.parts) == state.size.div_ceil(state.part_size);
        if !consistent {
            return Err(ArtifactError::BadUploadState {
                path,
                source: serde::de::Error::custom("parts do not match size and part size"),
            });
        }
        Ok(state)
    }

    /// Takes an upload out of `uploads/` in one rename, then deletes it at leisure: a crash
    /// mid-delete leaves trash in `tmp/` for the next sweep, never half an upload.
    fn remove_upload(&self, id: &str, dir: &Path) -> Result<(), ArtifactError> {
        let trash = self
            .tmp
            .join(format!("{TRASH_PREFIX}{id}-{:016x}", rand::random::<u64>()));
        match fs::rename(dir, &trash) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(ArtifactError::UnknownUpload { id: id.to_owned() });
            }
            Err(source) => return Err(ArtifactError::io("removing", dir, source)),
        }
        sync_dir(&self.uploads)?;
        remove_all(&trash, true)
    }
}

/// The parts of an upload present on disk with their exact size.
fn received_parts(dir: &Path, state: &UploadState) -> Result<BTreeSet<u32>, ArtifactError> {
    let mut received = BTreeSet::new();
    let entries = fs::read_dir(dir).map_err(|source| ArtifactError::io("listing", dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| ArtifactError::io("listing", dir, source))?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|name| name.strip_prefix(PART_PREFIX))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if n == 0 || n > state.parts {
            continue;
        }
        let meta = entry
            .metadata()
            .map_err(|source| ArtifactError::io("inspecting", entry.path(), source))?;
        if meta.is_file() && meta.len() == state.part_len(n) {
            received.insert(n);
        }
    }
    Ok(received)
}

fn missing(parts: u32, received: &[u32]) -> Vec<u32> {
    (1..=parts).filter(|n| !received.contains(n)).collect()
}
