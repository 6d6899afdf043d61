//! A body on its way to becoming an object file: streamed into a hidden temporary file and
//! made visible only by [`PendingFile::publish`].
//!
//! Each body runs a small pipeline. The request task gathers network chunks into blocks and
//! hands every block to two [`Stage`]s on the blocking pool, one hashing and one writing. The
//! network, the MD5 and the disk therefore overlap without waiting on each other block by
//! block, and a full queue holds the socket back instead of filling memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::body_writer::BodyWriter;
use crate::error::{ObjectStoreError, io_err};
use crate::md5::Md5;
use crate::object_file::{ObjectMeta, footer, retire, sync_dir_now};
use crate::stage::Stage;

/// Chunks are handed to the stages in blocks at least this large: small enough that the
/// hash starts while a body still streams in, large enough that hand-offs cost little.
const BLOCK: usize = 256 << 10;
/// Blocks queued per stage: the memory one upload may hold ahead of its slowest stage.
const QUEUED_BLOCKS: usize = 16;

type Block = Arc<Vec<Bytes>>;

/// Whether a body's MD5 is computed as it streams in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hashing {
    /// Needed for an ETag or a `Content-MD5` check.
    Md5,
    /// The caller knows the ETag already (a completed multipart upload).
    Skip,
}

/// A temporary file being filled with a body; becomes visible only through [`publish`].
/// Dropping it unpublished (a client that hangs up mid-upload drops the request future, and
/// with it this) removes the file: the writer owns it.
///
/// [`publish`]: PendingFile::publish
pub(crate) struct PendingFile {
    path: PathBuf,
    /// Chunks not yet handed to the stages, and their total length.
    block: Vec<Bytes>,
    block_len: usize,
    /// Both `None` once [`PendingFile::finish`] has run; the hasher also without hashing.
    hasher: Option<Stage<Md5, Block>>,
    writer: Option<Stage<BodyWriter, Block>>,
    /// The writer once every block has been through it, for [`PendingFile::publish`].
    written: Option<BodyWriter>,
    /// The body's MD5, once [`PendingFile::finish`] has run.
    digest: Option<[u8; 16]>,
    size: u64,
}

impl PendingFile {
    /// A body for a hidden temporary file in `dir` (the directory it will be renamed within,
    /// so the rename is atomic and never crosses filesystems). The writing stage creates the
    /// file, so the first bytes are hashed while that happens.
    pub(crate) fn new(dir: &Path, hashing: Hashing) -> PendingFile {
        let path = dir.join(format!(".tmp-{}", crate::random_hex(16)));
        let writer = BodyWriter::new(path.clone());
        PendingFile {
            path,
            block: Vec::new(),
            block_len: 0,
            hasher: (hashing == Hashing::Md5)
                .then(|| Stage::new(Md5::new(), hash_block, QUEUED_BLOCKS)),
            writer: Some(Stage::new(writer, write_block, QUEUED_BLOCKS)),
            written: None,
            digest: None,
            size: 0,
        }
    }

    /// Appends body bytes.
    pub(crate) async fn write(&mut self, chunk: Bytes) -> Result<(), ObjectStoreError> {
        let first = self.size == 0;
        self.size += chunk.len() as u64;
        self.block_len += chunk.len();
        self.block.push(chunk);
        // The first chunk goes at once: the hash, which bounds a PUT, starts with the body.
        if first || self.block_len >= BLOCK {
            self.hand_off().await?;
        }
        Ok(())
    }

    /// Hands the gathered chunks to the stages, waiting while either is a full queue behind.
    async fn hand_off(&mut self) -> Result<(), ObjectStoreError> {
        let block: Block = Arc::new(std::mem::take(&mut self.block));
        self.block_len = 0;
        let writer = self.writer.as_mut().ok_or_else(finished)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.push(Arc::clone(&block)).await.map_err(hash_failed)?;
        }
        writer
            .push(block)
            .await
            .map_err(io_err("write", &self.path))
    }

    /// Bytes written so far.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Hands over what is left, waits for the stages, and answers the body's MD5 (`None`
    /// without [`Hashing::Md5`]). Once it has answered, the whole body is with the writer.
    pub(crate) async fn finish(&mut self) -> Result<Option<[u8; 16]>, ObjectStoreError> {
        if self.writer.is_none() {
            return Ok(self.digest);
        }
        if self.block_len > 0 {
            self.hand_off().await?;
        }
        let writer = self.writer.take().ok_or_else(finished)?;
        let hashed = async {
            match self.hasher.take() {
                Some(hasher) => hasher.finish().await.map(Some),
                None => Ok(None),
            }
        };
        let (md5, written) = tokio::join!(hashed, writer.finish());
        self.written = Some(written.map_err(io_err("write", &self.path))?);
        self.digest = match md5.map_err(hash_failed)? {
            Some(md5) => Some(
                md5.finish()
                    .map_err(|e| hash_failed(std::io::Error::other(e)))?,
            ),
            None => None,
        };
        Ok(self.digest)
    }

    /// [`PendingFile::finish`] for a body created with [`Hashing::Md5`]: its MD5.
    pub(crate) async fn md5(&mut self) -> Result<[u8; 16], ObjectStoreError> {
        self.finish()
            .await?
            .ok_or_else(|| ObjectStoreError::Internal("the body was not hashed".into()))
    }

    /// Appends the trailer, fsyncs, then renames the file to `target` and fsyncs the
    /// directory so the rename itself survives a crash. What `target` named before is then
    /// disposed of, with the parts directory of a multipart object.
    pub(crate) async fn publish(
        mut self,
        meta: &ObjectMeta,
        target: &Path,
    ) -> Result<(), ObjectStoreError> {
        self.finish().await?;
        let footer = footer(meta, target)?;
        let written = self.written.take().ok_or_else(finished)?;
        let target = target.to_path_buf();
        // The task owns the file from here: it runs to the end even if the upload's future is
        // dropped, and the writer removes the file if it fails before the rename.
        let replaced = tokio::task::spawn_blocking(move || {
            let replaced = written.publish(&footer, &target)?;
            sync_dir_now(target.parent().unwrap_or(Path::new(".")))?;
            Ok::<_, ObjectStoreError>(replaced)
        })
        .await
        .map_err(|e| ObjectStoreError::Internal(format!("publish task failed: {e}")))??;
        if let Some(replaced) = replaced {
            // The new object is durable; disposing of the old one need not delay the answer.
            // Nothing is lost if it fails: the next start sweeps temporary files and parts.
            tokio::task::spawn_blocking(move || {
                if let Err(e) = retire(&replaced) {
                    tracing::warn!(error = %e, "could not dispose of a replaced object file");
                }
            });
        }
        Ok(())
    }
}

fn finished() -> ObjectStoreError {
    ObjectStoreError::Internal("the body was already finished".into())
}

fn hash_failed(e: std::io::Error) -> ObjectStoreError {
    ObjectStoreError::Internal(format!("hashing the body failed: {e}"))
}

/// The hashing step.
fn hash_block(md5: &mut Md5, block: &Block) -> std::io::Result<()> {
    block.iter().for_each(|chunk| md5.update(chunk));
    Ok(())
}

/// The writing step.
fn write_block(writer: &mut BodyWriter, block: &Block) -> std::io::Result<()> {
    writer.write(block)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom};

    use super::*;
    use crate::object_file::{Purpose, open, test_meta};

    #[tokio::test]
    async fn a_published_file_reads_back_its_meta_and_body() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut pending = PendingFile::new(dir.path(), Hashing::Md5);
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
        pending
            .publish(&test_meta(11), &target)
            .await
            .expect("publish");
        let (mut file, read) = open(&target, Purpose::Meta)
            .await
            .expect("open")
            .expect("exists");
        assert_eq!(read, test_meta(11));
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
        let files = || std::fs::read_dir(dir.path()).expect("list").count();
        let mut pending = PendingFile::new(dir.path(), Hashing::Md5);
        for _ in 0..8 {
            let block = Bytes::from(vec![7u8; BLOCK]);
            pending.write(block).await.expect("write");
        }
        // The writer creates the file on the blocking pool, and removes it the same way.
        wait_for(|| files() == 1).await;
        drop(pending);
        wait_for(|| files() == 0).await;
    }

    async fn wait_for(done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}
