//! One object, one file: the body, then a JSON trailer with the object's metadata, then the
//! trailer's length and a magic tag. Body and metadata are published together by a single
//! rename, so a reader sees the old object or the new one, never a mix or a partial body.
//!
//! The metadata goes last because the ETag (the body's MD5) is only known once the body has
//! streamed through; a header would need a second pass or a seek-and-patch.
//!
//! A completed multipart object is the exception: its body stays in the part files of its
//! upload, whose directory moves beside the object files as `.parts-<upload id>`, and its
//! file holds only the trailer, which lists them ([`Segments`]). Completing an upload thus
//! costs a rename whatever its size, instead of a second copy of every byte.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{ObjectStoreError, io_err};

/// The last bytes of every object file.
const MAGIC: &[u8; 8] = b"KILNOBJ1";
/// Trailer length (u32, little endian) + magic.
const FOOTER_LEN: u64 = 12;
/// Trailers are small; a bigger one means a damaged file.
const MAX_TRAILER: u32 = 1 << 20;

/// What is stored about an object besides its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// The full object key.
    pub key: String,
    /// Body length in bytes.
    pub size: u64,
    /// The ETag without quotes: hex MD5, or `hex-N` for a multipart object.
    pub etag: String,
    /// `Content-Type` given at upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// User metadata (`x-amz-meta-*`), names in lowercase.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// When the object was written, milliseconds since the Unix epoch.
    pub last_modified_ms: i64,
    /// Number of parts for a multipart object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u32>,
    /// Where the body is when it is not in the object's own file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<Segments>,
}

/// The body of a completed multipart object: its upload's parts, in order, left where they
/// were written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segments {
    /// The upload's id, which names the directory holding the parts.
    pub upload: String,
    /// Part numbers with their body sizes, in body order.
    pub parts: Vec<(i32, u64)>,
}

impl ObjectMeta {
    /// Body bytes in the object's own file.
    fn stored_len(&self) -> u64 {
        if self.segments.is_some() {
            0
        } else {
            self.size
        }
    }
}

/// The directory, beside the object files, holding the parts of completed upload `upload`.
pub(crate) fn segments_dir_name(upload: &str) -> String {
    format!(".parts-{upload}")
}

/// The file name of part `number` within an upload's directory.
pub(crate) fn part_file_name(number: i32) -> String {
    format!("part-{number:05}")
}

/// The bytes that follow an object's body: its metadata as JSON, the JSON's length and the
/// magic tag. `target` names the object in errors.
pub(crate) fn footer(meta: &ObjectMeta, target: &Path) -> Result<Vec<u8>, ObjectStoreError> {
    let corrupt = |reason: String| ObjectStoreError::Corrupt {
        path: target.to_path_buf(),
        reason,
    };
    let mut footer = serde_json::to_vec(meta)
        .map_err(|e| corrupt(format!("metadata does not serialise: {e}")))?;
    let len = u32::try_from(footer.len())
        .ok()
        .filter(|len| *len <= MAX_TRAILER)
        .ok_or_else(|| corrupt("metadata larger than 1 MiB".into()))?;
    footer.extend_from_slice(&len.to_le_bytes());
    footer.extend_from_slice(MAGIC);
    Ok(footer)
}

/// Reads the trailer of an object file (blocking; call from a blocking context).
pub(crate) fn read_meta(
    file: &mut std::fs::File,
    path: &Path,
) -> Result<ObjectMeta, ObjectStoreError> {
    let corrupt = |reason: &str| ObjectStoreError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    let total = file.metadata().map_err(io_err("stat", path))?.len();
    if total < FOOTER_LEN {
        return Err(corrupt("shorter than its footer"));
    }
    let mut footer = [0u8; FOOTER_LEN as usize];
    file.seek(SeekFrom::Start(total - FOOTER_LEN))
        .map_err(io_err("seek", path))?;
    file.read_exact(&mut footer).map_err(io_err("read", path))?;
    if &footer[4..] != MAGIC {
        return Err(corrupt("missing its magic tag"));
    }
    let len = u32::from_le_bytes([footer[0], footer[1], footer[2], footer[3]]);
    if len > MAX_TRAILER || u64::from(len) + FOOTER_LEN > total {
        return Err(corrupt("trailer length out of range"));
    }
    let mut trailer = vec![0u8; len as usize];
    file.seek(SeekFrom::Start(total - FOOTER_LEN - u64::from(len)))
        .map_err(io_err("seek", path))?;
    file.read_exact(&mut trailer)
        .map_err(io_err("read", path))?;
    let meta: ObjectMeta =
        serde_json::from_slice(&trailer).map_err(|e| corrupt(&format!("trailer: {e}")))?;
    if meta.stored_len() + u64::from(len) + FOOTER_LEN != total {
        return Err(corrupt("body length does not match the trailer"));
    }
    if let Some(segments) = &meta.segments
        && segments.parts.iter().map(|(_, size)| size).sum::<u64>() != meta.size
    {
        return Err(corrupt("part sizes do not add up to the object's size"));
    }
    Ok(meta)
}

/// Files up to this size are read ahead whole when opened for their body.
const READ_AHEAD_WHOLE: u64 = 8 << 20;

/// What an object file is opened for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Its metadata only (HEAD, listings).
    Meta,
    /// Its body too. A small file is then read ahead whole before its trailer is read, so a
    /// cold object costs one trip to the disk instead of one for the trailer and one for the
    /// body; a larger body gets its read-ahead when it is streamed.
    Body,
}

/// Opens an object file and reads its metadata; `Ok(None)` when there is no such file.
pub(crate) async fn open(
    path: &Path,
    purpose: Purpose,
) -> Result<Option<(std::fs::File, ObjectMeta)>, ObjectStoreError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || open_blocking(&path, purpose))
        .await
        .map_err(|e| ObjectStoreError::Internal(format!("open task failed: {e}")))?
}

/// Opens an object file for its body and, when the body is all in this file and at most
/// `small` bytes, reads it too, in the same trip to the blocking pool: for a small object the
/// trips, not the bytes, are the cost.
pub(crate) async fn open_body(
    path: &Path,
    small: u64,
) -> Result<Option<(std::fs::File, ObjectMeta, Option<Bytes>)>, ObjectStoreError> {
    use std::os::unix::fs::FileExt;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let Some((file, meta)) = open_blocking(&path, Purpose::Body)? else {
            return Ok(None);
        };
        if meta.segments.is_some() || meta.size > small {
            return Ok(Some((file, meta, None)));
        }
        // The body comes first in the file, before the trailer.
        let mut body = vec![0; usize::try_from(meta.size).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut body, 0)
            .map_err(io_err("read", &path))?;
        Ok(Some((file, meta, Some(Bytes::from(body)))))
    })
    .await
    .map_err(|e| ObjectStoreError::Internal(format!("open task failed: {e}")))?
}

fn open_blocking(
    path: &Path,
    purpose: Purpose,
) -> Result<Option<(std::fs::File, ObjectMeta)>, ObjectStoreError> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    if purpose == Purpose::Body && file.metadata().is_ok_and(|m| m.len() <= READ_AHEAD_WHOLE) {
        // Only a hint: failure changes nothing but speed.
        let _ = nix::fcntl::posix_fadvise(
            &file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        );
    }
    let meta = read_meta(&mut file, path)?;
    Ok(Some((file, meta)))
}

/// Disposes of an object file that a publish or a delete has just unnamed (renamed to a
/// temporary name), with the parts directory its body lives in, if any (blocking). The
/// parts are renamed `.retired-<id>-<unix secs>` rather than removed: a GET streaming them
/// holds the directory open and reads on; the store's sweep removes them later. The parts
/// go first, so a crash in between leaves a temporary file that the next start sweeps, never
/// a file naming parts that are gone.
pub(crate) fn retire(unnamed: &Path) -> Result<(), ObjectStoreError> {
    let segments = std::fs::File::open(unnamed)
        .map_err(io_err("open", unnamed))
        .and_then(|mut file| read_meta(&mut file, unnamed))
        .ok()
        .and_then(|meta| meta.segments);
    if let Some(segments) = segments {
        let dir = unnamed.parent().unwrap_or(Path::new("."));
        let parts = dir.join(segments_dir_name(&segments.upload));
        let retired = dir.join(format!(
            ".retired-{}-{}",
            segments.upload,
            chrono::Utc::now().timestamp()
        ));
        match std::fs::rename(&parts, &retired) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("rename", &parts)(e)),
        }
    }
    std::fs::remove_file(unnamed).map_err(io_err("remove", unnamed))
}

/// Fsyncs a directory, making renames and removals in it durable.
pub(crate) async fn sync_dir(dir: &Path) -> Result<(), ObjectStoreError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || sync_dir_now(&dir))
        .await
        .map_err(|e| ObjectStoreError::Internal(format!("fsync task failed: {e}")))?
}

/// [`sync_dir`] from a blocking context.
pub(crate) fn sync_dir_now(dir: &Path) -> Result<(), ObjectStoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

/// Metadata for a test object of `size` bytes.
#[cfg(test)]
pub(crate) fn test_meta(size: u64) -> ObjectMeta {
    ObjectMeta {
        key: "k".into(),
        size,
        etag: "e".into(),
        content_type: Some("text/plain".into()),
        metadata: BTreeMap::from([("a".into(), "b".into())]),
        last_modified_ms: 1,
        parts: None,
        segments: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pending::{Hashing, PendingFile};
    use bytes::Bytes;

    #[tokio::test]
    async fn a_truncated_file_is_reported_damaged_not_served() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut pending = PendingFile::new(dir.path(), Hashing::Md5);
        pending
            .write(Bytes::from_static(b"0123456789"))
            .await
            .expect("write");
        let target = dir.path().join("obj");
        pending
            .publish(&test_meta(10), &target)
            .await
            .expect("publish");
        let bytes = std::fs::read(&target).expect("read");
        std::fs::write(&target, &bytes[3..]).expect("truncate");
        assert!(matches!(
            open(&target, Purpose::Meta).await,
            Err(ObjectStoreError::Corrupt { .. })
        ));
        assert!(
            open(&dir.path().join("missing"), Purpose::Meta)
                .await
                .expect("open")
                .is_none()
        );
    }
}
