//! One object, one file: the body, then a JSON trailer with the object's metadata, then the
//! trailer's length and a magic tag. Body and metadata are published together by a single
//! rename, so a reader sees the old object or the new one, never a mix or a partial body.
//!
//! The metadata goes last because the ETag (the body's MD5) is only known once the body has
//! streamed through; a header would need a second pass or a seek-and-patch.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::error::{ObjectStoreError, io_err};

/// The last bytes of every object file.
const MAGIC: &[u8; 8] = b"KILNOBJ1";
/// Trailer length (u32, little endian) + magic.
const FOOTER_LEN: u64 = 12;
/// Trailers are small; a bigger one means a damaged file.
const MAX_TRAILER: u32 = 1 << 20;
/// Body bytes are gathered into blocks this large before they are hashed and written: each
/// block costs two thread handoffs, which weigh more than the overlap smaller blocks would win.
const WRITE_BLOCK: usize = 1 << 20;

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
}

/// A temporary file being filled with a body; becomes visible only through [`publish`].
///
/// Body chunks are gathered into blocks; each block is hashed on one blocking thread and
/// written on another while the next block arrives from the network, so the socket, the hash
/// and the disk overlap. After each write the kernel is told to start writing the block back,
/// so the closing fsync finds little left to flush.
pub(crate) struct PendingFile {
    path: PathBuf,
    file: Arc<std::fs::File>,
    /// Chunks not yet handed to a write, and their total length.
    block: Vec<Bytes>,
    block_len: usize,
    /// The block being hashed and written: the hash state comes back from one, the write's
    /// outcome from the other.
    in_flight: Option<BlockInFlight>,
    /// The hash state while no block is in flight.
    md5: Option<Md5>,
    size: u64,
    /// Set once the publishing task owns the file; until then dropping the value removes it
    /// (a client that hangs up mid-upload drops the request future, and with it this).
    published: bool,
}

struct BlockInFlight {
    hash: tokio::task::JoinHandle<Md5>,
    write: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl PendingFile {
    /// Creates a hidden temporary file in `dir` (the directory it will be renamed within, so
    /// the rename is atomic and never crosses filesystems).
    pub(crate) async fn create(dir: &Path) -> Result<PendingFile, ObjectStoreError> {
        let path = dir.join(format!(".tmp-{}", crate::random_hex(16)));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(io_err("create", &path))?;
        Ok(PendingFile {
            path,
            file: Arc::new(file.into_std().await),
            block: Vec::new(),
            block_len: 0,
            in_flight: None,
            md5: Some(Md5::new()),
            size: 0,
            published: false,
        })
    }

    /// Appends body bytes.
    pub(crate) async fn write(&mut self, chunk: Bytes) -> Result<(), ObjectStoreError> {
        self.size += chunk.len() as u64;
        self.block_len += chunk.len();
        self.block.push(chunk);
        if self.block_len >= WRITE_BLOCK {
            self.write_block().await?;
        }
        Ok(())
    }

    /// Waits for the block in flight, then starts hashing and writing the gathered one.
    async fn write_block(&mut self) -> Result<(), ObjectStoreError> {
        let mut md5 = self.settle().await?;
        let chunks = Arc::new(std::mem::take(&mut self.block));
        let len = std::mem::take(&mut self.block_len) as u64;
        let offset = self.size - len;
        let hash = tokio::task::spawn_blocking({
            let chunks = Arc::clone(&chunks);
            move || {
                chunks.iter().for_each(|chunk| md5.update(chunk));
                md5
            }
        });
        let file = Arc::clone(&self.file);
        let write = tokio::task::spawn_blocking(move || {
            for chunk in chunks.iter() {
                (&*file).write_all(chunk)?;
            }
            start_writeback(&file, offset, len);
            Ok(())
        });
        self.in_flight = Some(BlockInFlight { hash, write });
        Ok(())
    }

    /// The hash state once no block is in flight.
    async fn settle(&mut self) -> Result<Md5, ObjectStoreError> {
        let Some(BlockInFlight { hash, write }) = self.in_flight.take() else {
            return self
                .md5
                .take()
                .ok_or_else(|| ObjectStoreError::Internal("an earlier write failed".into()));
        };
        let task_failed = |e: tokio::task::JoinError| {
            ObjectStoreError::Internal(format!("write task failed: {e}"))
        };
        let (md5, written) = tokio::join!(hash, write);
        written
            .map_err(task_failed)?
            .map_err(io_err("write", &self.path))?;
        md5.map_err(task_failed)
    }

    /// Bytes written so far.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Writes out everything gathered and answers the body's MD5.
    pub(crate) async fn digest(&mut self) -> Result<[u8; 16], ObjectStoreError> {
        if self.block_len > 0 {
            self.write_block().await?;
        }
        let md5 = self.settle().await?;
        let digest = md5.clone().finalize().into();
        self.md5 = Some(md5);
        Ok(digest)
    }

    /// Appends the trailer, fsyncs, then renames the file to `target` and fsyncs the
    /// directory so the rename itself survives a crash.
    pub(crate) async fn publish(
        mut self,
        meta: &ObjectMeta,
        target: &Path,
    ) -> Result<(), ObjectStoreError> {
        self.digest().await?;
        let trailer = serde_json::to_vec(meta).map_err(|e| ObjectStoreError::Corrupt {
            path: target.to_path_buf(),
            reason: format!("metadata does not serialise: {e}"),
        })?;
        let len = u32::try_from(trailer.len())
            .ok()
            .filter(|len| *len <= MAX_TRAILER)
            .ok_or_else(|| ObjectStoreError::Corrupt {
                path: target.to_path_buf(),
                reason: "metadata larger than 1 MiB".into(),
            })?;
        let file = Arc::clone(&self.file);
        let path = self.path.clone();
        let target = target.to_path_buf();
        // From here the task below owns the temporary file: it runs to the end even if the
        // upload's future is dropped, and removes the file itself if it fails before the rename.
        self.published = true;
        tokio::task::spawn_blocking(move || {
            let mut footer = trailer;
            footer.extend_from_slice(&len.to_le_bytes());
            footer.extend_from_slice(MAGIC);
            if let Err(e) = seal_and_rename(&file, &footer, &path, &target) {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
            sync_dir_now(target.parent().unwrap_or(Path::new(".")))
        })
        .await
        .map_err(|e| ObjectStoreError::Internal(format!("publish task failed: {e}")))?
    }
}

/// Appends the footer to the temporary file at `path`, fsyncs it and renames it to `target`.
fn seal_and_rename(
    file: &std::fs::File,
    footer: &[u8],
    path: &Path,
    target: &Path,
) -> Result<(), ObjectStoreError> {
    let mut file = file;
    file.write_all(footer).map_err(io_err("write", path))?;
    file.sync_all().map_err(io_err("fsync", path))?;
    std::fs::rename(path, target).map_err(io_err("rename", target))
}

/// Asks the kernel to start writing a just-written range back to disk without waiting for it,
/// as `dd oflag=nocache` does (pages already clean by then leave the cache: an upload is rarely
/// read back at once). Only a hint: the closing fsync is what makes the object durable.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    let _ = nix::fcntl::posix_fadvise(
        file,
        i64::try_from(offset).unwrap_or(i64::MAX),
        i64::try_from(len).unwrap_or(0),
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// Fsyncs a directory, making renames and removals in it durable.
pub(crate) async fn sync_dir(dir: &Path) -> Result<(), ObjectStoreError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || sync_dir_now(&dir))
        .await
        .map_err(|e| ObjectStoreError::Internal(format!("fsync task failed: {e}")))?
}

/// [`sync_dir`] from a blocking context.
fn sync_dir_now(dir: &Path) -> Result<(), ObjectStoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
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
    if meta.size + u64::from(len) + FOOTER_LEN != total {
        return Err(corrupt("body length does not match the trailer"));
    }
    Ok(meta)
}

/// Opens an object file and reads its metadata; `Ok(None)` when there is no such file.
pub(crate) async fn open(
    path: &Path,
) -> Result<Option<(std::fs::File, ObjectMeta)>, ObjectStoreError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let meta = read_meta(&mut file, &path)?;
        Ok(Some((file, meta)))
    })
    .await
    .map_err(|e| ObjectStoreError::Internal(format!("open task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64) -> ObjectMeta {
        ObjectMeta {
            key: "k".into(),
            size,
            etag: "e".into(),
            content_type: Some("text/plain".into()),
            metadata: BTreeMap::from([("a".into(), "b".into())]),
            last_modified_ms: 1,
            parts: None,
        }
    }

    #[tokio::test]
    async fn a_published_file_reads_back_its_meta_and_body() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut pending = PendingFile::create(dir.path()).await.expect("create");
        pending
            .write(Bytes::from_static(b"hello "))
            .await
            .expect("write");
        pending
            .write(Bytes::from_static(b"world"))
            .await
            .expect("write");
        assert_eq!(pending.size(), 11);
        let target = dir.path().join("obj");
        pending.publish(&meta(11), &target).await.expect("publish");
        let (mut file, read) = open(&target).await.expect("open").expect("exists");
        assert_eq!(read, meta(11));
        let mut body = vec![0; 11];
        file.seek(SeekFrom::Start(0)).expect("seek");
        file.read_exact(&mut body).expect("read");
        assert_eq!(&body, b"hello world");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("obj")],
            "no temp file left"
        );
    }

    #[tokio::test]
    async fn an_abandoned_write_leaves_no_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut pending = PendingFile::create(dir.path()).await.expect("create");
        pending
            .write(Bytes::from_static(b"half an upload"))
            .await
            .expect("write");
        drop(pending);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
    }

    #[tokio::test]
    async fn a_truncated_file_is_reported_damaged_not_served() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut pending = PendingFile::create(dir.path()).await.expect("create");
        pending
            .write(Bytes::from_static(b"0123456789"))
            .await
            .expect("write");
        let target = dir.path().join("obj");
        pending.publish(&meta(10), &target).await.expect("publish");
        let bytes = std::fs::read(&target).expect("read");
        std::fs::write(&target, &bytes[3..]).expect("truncate");
        assert!(matches!(
            open(&target).await,
            Err(ObjectStoreError::Corrupt { .. })
        ));
        assert!(
            open(&dir.path().join("missing"))
                .await
                .expect("open")
                .is_none()
        );
    }
}
