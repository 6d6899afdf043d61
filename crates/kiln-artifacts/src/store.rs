//! The store itself: opening a root, writing objects atomically, reading them back.

use std::fs::{self, File, Permissions, TryLockError};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use tempfile::NamedTempFile;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;

use crate::digest::{Hasher, HashingReader, HashingWriter};
use crate::pipeline::{self, CHANNEL_DEPTH, Chunk, Compressor, READ_CHUNK_LEN};
use crate::{ArtifactError, Digest, PackOptions, PackStats};

/// Size of upload parts unless [`StoreOptions::part_size`] says otherwise: large enough that
/// the per-request overhead is small, small enough that a failed request costs little.
pub const DEFAULT_PART_SIZE: u64 = 8 * 1024 * 1024;

/// Buffer of the writer into a temporary object: few large writes instead of many small ones.
const WRITE_BUFFER_LEN: usize = 256 * 1024;

/// Objects are immutable: read-only files guard against a stray write in place.
const OBJECT_MODE: u32 = 0o444;

/// Prefix of temporary entries that are being deleted and may be removed by anyone.
pub(crate) const TRASH_PREFIX: &str = "trash-";

/// How to open an [`ArtifactStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Size of the parts of new chunked uploads; each upload keeps the size it was created
    /// with, so changing this does not disturb uploads in flight. Defaults to
    /// [`DEFAULT_PART_SIZE`].
    pub part_size: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            part_size: DEFAULT_PART_SIZE,
        }
    }
}

/// A content-addressed store of artifacts in a directory on local disk.
///
/// Layout under `root`: `objects/sha256/<hex>` (complete objects, read-only, named by the
/// digest of their bytes), `tmp/` (writes in progress, each file locked by its writer),
/// `uploads/<id>/` (chunked uploads: `upload.json` and `part-<n>` files). Cheap to clone;
/// clones share the same root. Several stores, even in several processes, may share a root:
/// every change is a rename, and the sweep of `tmp/` skips entries a live writer holds.
#[derive(Clone)]
pub struct ArtifactStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore")
            .field("root", &self.inner.root)
            .field("part_size", &self.inner.part_size)
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) objects: PathBuf,
    pub(crate) tmp: PathBuf,
    pub(crate) uploads: PathBuf,
    pub(crate) part_size: u64,
}

impl ArtifactStore {
    /// Opens (creating if needed) the store at `root` with [`StoreOptions::default`].
    pub async fn open(root: impl Into<PathBuf>) -> Result<Self, ArtifactError> {
        Self::open_with(root, StoreOptions::default()).await
    }

    /// Opens (creating if needed) the store at `root`, and removes the temporary files of
    /// writes that crashed.
    pub async fn open_with(
        root: impl Into<PathBuf>,
        options: StoreOptions,
    ) -> Result<Self, ArtifactError> {
        if options.part_size == 0 {
            return Err(ArtifactError::BadPartSize);
        }
        let root = root.into();
        let inner = Inner {
            objects: root.join("objects").join("sha256"),
            tmp: root.join("tmp"),
            uploads: root.join("uploads"),
            root,
            part_size: options.part_size,
        };
        let inner = blocking(move || {
            for dir in [&inner.objects, &inner.tmp, &inner.uploads] {
                fs::create_dir_all(dir)
                    .map_err(|source| ArtifactError::io("creating", dir, source))?;
            }
            inner.sweep_tmp()?;
            Ok(inner)
        })
        .await?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Stores the bytes of `input` as they are, hashing them on the way, and returns their
    /// digest and length. If `input` fails or this future is dropped, nothing is stored.
    pub async fn put_stream<R: AsyncRead + Unpin>(
        &self,
        input: R,
    ) -> Result<(Digest, u64), ArtifactError> {
        let (digest, size, ()) = self
            .put_fed(input, |rx, out, path| pipeline::drain(rx, out, path))
            .await?;
        Ok((digest, size))
    }

    /// Compresses a plain tar stream (the guest agent's pack of a workspace) and stores it.
    /// For a tar written by [`kiln_archive::pack`] this stores the same bytes, under the same
    /// digest, as [`put_dir`](Self::put_dir) of the same tree. The tar is not inspected here;
    /// [`unpack_to`](Self::unpack_to) checks every entry.
    pub async fn put_tar_stream<R: AsyncRead + Unpin>(
        &self,
        tar: R,
    ) -> Result<(Digest, u64), ArtifactError> {
        let (digest, size, ()) = self
            .put_fed(tar, |rx, out, path| {
                let mut compressor = Compressor::new(out)
                    .map_err(|source| ArtifactError::io("compressing into", path, source))?;
                pipeline::drain(rx, &mut compressor, path)?;
                compressor
                    .finish()
                    .map_err(|source| ArtifactError::io("compressing into", path, source))?;
                Ok(())
            })
            .await?;
        Ok((digest, size))
    }

    /// Packs `dir` with [`kiln_archive::pack`], compresses it and stores it; returns the
    /// digest, the stored (compressed) size and what the archive holds.
    pub async fn put_dir(
        &self,
        dir: &Path,
        opts: &PackOptions,
    ) -> Result<(Digest, u64, PackStats), ArtifactError> {
        let inner = self.inner.clone();
        let dir = dir.to_owned();
        let opts = opts.clone();
        blocking(move || {
            inner.write_object(None, |out, _| pipeline::pack_compressed(&dir, out, &opts))
        })
        .await
    }

    /// Whether an object with this digest is stored.
    pub async fn exists(&self, digest: &Digest) -> bool {
        tokio::fs::metadata(self.inner.object_path(digest))
            .await
            .is_ok_and(|meta| meta.is_file())
    }

    /// The stored size of an object.
    pub async fn size(&self, digest: &Digest) -> Result<u64, ArtifactError> {
        let path = self.inner.object_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(meta.len()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                Err(ArtifactError::NotFound { digest: *digest })
            }
            Err(source) => Err(ArtifactError::io("reading", path, source)),
        }
    }

    /// Opens an object's bytes. The reader re-hashes what it reads and fails at the end,
    /// instead of reporting a clean end, if the object on disk is corrupt.
    pub async fn reader(&self, digest: &Digest) -> Result<ObjectReader, ArtifactError> {
        let inner = self.inner.clone();
        let digest = *digest;
        let file = blocking(move || inner.open_object(&digest)).await?;
        Ok(ObjectReader {
            file: tokio::fs::File::from_std(file),
            hasher: Some(Hasher::default()),
            digest,
        })
    }

    /// Re-hashes an object on disk; [`ArtifactError::Corrupt`] if its bytes changed.
    pub async fn verify(&self, digest: &Digest) -> Result<(), ArtifactError> {
        let inner = self.inner.clone();
        let digest = *digest;
        blocking(move || inner.verify_object(&digest)).await
    }

    /// Decompresses a directory artifact and unpacks it into `dest` (which must exist) with
    /// [`kiln_archive::unpack`], checking the object's digest on the way. On error `dest` may
    /// hold part of the tree: unpack into a fresh directory and discard it on failure.
    pub async fn unpack_to(
        &self,
        digest: &Digest,
        dest: &Path,
    ) -> Result<PackStats, ArtifactError> {
        let inner = self.inner.clone();
        let digest = *digest;
        let dest = dest.to_owned();
        blocking(move || inner.unpack_object(&digest, &dest)).await
    }

    /// The decompressed tar of a directory artifact, as a stream of chunks. The object's
    /// digest is checked as it is read: a corrupt object ends the stream with an error rather
    /// than a clean end.
    pub async fn tar_stream(&self, digest: &Digest) -> Result<TarStream, ArtifactError> {
        let inner = self.inner.clone();
        let digest = *digest;
        let file = {
            let inner = inner.clone();
            blocking(move || inner.open_object(&digest)).await?
        };
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        // Detached: it stops when the stream is dropped, as its next send fails.
        drop(tokio::task::spawn_blocking(move || {
            inner.stream_tar(file, &digest, &tx)
        }));
        Ok(TarStream(ReceiverStream::new(rx)))
    }

    /// The decompressed tar of a directory artifact, as an [`AsyncRead`]; see
    /// [`tar_stream`](Self::tar_stream).
    pub async fn tar_reader(
        &self,
        digest: &Digest,
    ) -> Result<impl AsyncRead + Send + Unpin + 'static, ArtifactError> {
        Ok(tokio_util::io::StreamReader::new(
            self.tar_stream(digest).await?,
        ))
    }

    /// Runs `write` on a blocking thread with what `input` sends, into a new object.
    async fn put_fed<R, T, F>(&self, input: R, write: F) -> Result<(Digest, u64, T), ArtifactError>
    where
        R: AsyncRead + Unpin,
        T: Send + 'static,
        F: FnOnce(&mut mpsc::Receiver<Chunk>, &mut dyn Write, &Path) -> Result<T, ArtifactError>
            + Send
            + 'static,
    {
        let (tx, mut rx) = mpsc::channel(CHANNEL_DEPTH);
        let inner = self.inner.clone();
        let writer = tokio::task::spawn_blocking(move || {
            inner.write_object(None, |out, path| write(&mut rx, out, path))
        });
        let fed = pipeline::feed(input, tx).await;
        // Wait for the writer even when the input failed, so its temporary file is gone
        // before this returns.
        let written = joined(writer.await);
        fed?;
        written
    }
}

impl Inner {
    pub(crate) fn object_path(&self, digest: &Digest) -> PathBuf {
        self.objects.join(digest.hex())
    }

    /// A new temporary file in `tmp/`, locked for as long as it is open so that a sweep by
    /// another store on this root leaves it alone.
    pub(crate) fn temp_file(&self, prefix: &str) -> Result<NamedTempFile, ArtifactError> {
        let temp = tempfile::Builder::new()
            .prefix(prefix)
            .tempfile_in(&self.tmp)
            .map_err(|source| {
                ArtifactError::io("creating a temporary file in", &self.tmp, source)
            })?;
        temp.as_file()
            .lock()
            .map_err(|source| ArtifactError::io("locking", temp.path(), source))?;
        Ok(temp)
    }

    /// Writes a new object through `fill` (given the writer and the temporary path), hashing
    /// it, and stores it unless an identical object already is. With `declared`, an object
    /// that hashes to anything else is refused and nothing is stored.
    pub(crate) fn write_object<T>(
        &self,
        declared: Option<Digest>,
        fill: impl FnOnce(&mut dyn Write, &Path) -> Result<T, ArtifactError>,
    ) -> Result<(Digest, u64, T), ArtifactError> {
        // Dropping `temp` on any early return removes the file.
        let temp = self.temp_file("obj-")?;
        let mut out =
            HashingWriter::new(BufWriter::with_capacity(WRITE_BUFFER_LEN, temp.as_file()));
        let value = fill(&mut out, temp.path())?;
        let (digest, size, buffered) = out.finish();
        buffered
            .into_inner()
            .map_err(|err| ArtifactError::io("writing", temp.path(), err.into_error()))?;
        if let Some(declared) = declared
            && declared != digest
        {
            return Err(ArtifactError::DigestMismatch {
                declared,
                actual: digest,
            });
        }
        self.commit(temp, &digest, size)?;
        Ok((digest, size, value))
    }

    /// Makes a complete temporary object visible under its digest: fsync, then rename, then
    /// fsync the directory so the rename survives a power cut.
    fn commit(&self, temp: NamedTempFile, digest: &Digest, size: u64) -> Result<(), ArtifactError> {
        let path = self.object_path(digest);
        // Stored once. The size check lets a damaged copy (truncated by a failing disk) be
        // replaced by a good one.
        if fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_file() && meta.len() == size) {
            return Ok(());
        }
        let file = temp.as_file();
        file.set_permissions(Permissions::from_mode(OBJECT_MODE))
            .map_err(|source| ArtifactError::io("protecting", temp.path(), source))?;
        file.sync_all()
            .map_err(|source| ArtifactError::io("syncing", temp.path(), source))?;
        temp.persist(&path)
            .map_err(|err| ArtifactError::io("renaming into", &path, err.error))?;
        sync_dir(&self.objects)
    }

    pub(crate) fn open_object(&self, digest: &Digest) -> Result<File, ArtifactError> {
        let path = self.object_path(digest);
        File::open(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                ArtifactError::NotFound { digest: *digest }
            } else {
                ArtifactError::io("opening", path, source)
            }
        })
    }

    fn verify_object(&self, digest: &Digest) -> Result<(), ArtifactError> {
        let file = self.open_object(digest)?;
        let actual = HashingReader::new(file)
            .finish()
            .map_err(|source| ArtifactError::io("reading", self.object_path(digest), source))?;
        check(digest, actual)
    }

    fn unpack_object(&self, digest: &Digest, dest: &Path) -> Result<PackStats, ArtifactError> {
        let path = self.object_path(digest);
        let file = self.open_object(digest)?;
        let mut hashing = HashingReader::new(file);
        let unpacked = (|| {
            let mut decoder = zstd::stream::read::Decoder::new(&mut hashing)
                .map_err(|source| ArtifactError::io("decompressing", &path, source))?;
            let stats = kiln_archive::unpack(&mut decoder, dest)?;
            // The tar ends before the frame does; read on so the whole object is hashed.
            io::copy(&mut decoder, &mut io::sink())
                .map_err(|source| ArtifactError::io("decompressing", &path, source))?;
            Ok(stats)
        })();
        match unpacked {
            Ok(stats) => {
                let actual = hashing
                    .finish()
                    .map_err(|source| ArtifactError::io("reading", &path, source))?;
                check(digest, actual)?;
                Ok(stats)
            }
            // Corruption explains a decoding error better than the error itself.
            Err(err) => Err(self.verify_object(digest).err().unwrap_or(err)),
        }
    }

    /// Decompresses an object into `tx` chunk by chunk, ending with an error instead of a
    /// clean end if its digest does not match.
    fn stream_tar(&self, file: File, digest: &Digest, tx: &mpsc::Sender<io::Result<Bytes>>) {
        let mut hashing = HashingReader::new(file);
        let streamed = (|| -> io::Result<bool> {
            let mut decoder = zstd::stream::read::Decoder::new(&mut hashing)?;
            loop {
                let mut chunk = BytesMut::zeroed(READ_CHUNK_LEN);
                let n = match decoder.read(&mut chunk) {
                    Ok(n) => n,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => return Err(err),
                };
                if n == 0 {
                    return Ok(true);
                }
                chunk.truncate(n);
                if tx.blocking_send(Ok(chunk.freeze())).is_err() {
                    // The reader went away; nobody is left to tell.
                    return Ok(false);
                }
            }
        })();
        let failure = match streamed {
            Ok(false) => return,
            Ok(true) => match hashing.finish() {
                Ok(actual) => check(digest, actual).err(),
                Err(source) => Some(ArtifactError::io(
                    "reading",
                    self.object_path(digest),
                    source,
                )),
            },
            Err(source) => Some(self.verify_object(digest).err().unwrap_or_else(|| {
                ArtifactError::io("decompressing", self.object_path(digest), source)
            })),
        };
        if let Some(err) = failure {
            let _ = tx.blocking_send(Err(io::Error::new(io::ErrorKind::InvalidData, err)));
        }
    }

    /// Removes what crashed writes left in `tmp/`. Entries a live writer holds a lock on are
    /// in use by another store on this root and are left alone.
    fn sweep_tmp(&self) -> Result<(), ArtifactError> {
        let entries = fs::read_dir(&self.tmp)
            .map_err(|source| ArtifactError::io("listing", &self.tmp, source))?;
        for entry in entries {
            let entry = entry.map_err(|source| ArtifactError::io("listing", &self.tmp, source))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(|source| ArtifactError::io("inspecting", &path, source))?;
            let trash = entry
                .file_name()
                .as_encoded_bytes()
                .starts_with(TRASH_PREFIX.as_bytes());
            if !trash && (kind.is_file() || kind.is_dir()) {
                let handle = match File::open(&path) {
                    Ok(handle) => handle,
                    Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(ArtifactError::io("opening", &path, source)),
                };
                match handle.try_lock() {
                    Ok(()) => {}
                    Err(TryLockError::WouldBlock) => continue,
                    Err(TryLockError::Error(source)) => {
                        return Err(ArtifactError::io("locking", &path, source));
                    }
                }
            }
            remove_all(&path, kind.is_dir())?;
        }
        Ok(())
    }
}

/// Removes a file or a directory tree; already gone is fine, as another store may be
/// removing the same trash.
pub(crate) fn remove_all(path: &Path, is_dir: bool) -> Result<(), ArtifactError> {
    let removed = if is_dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match removed {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            Err(ArtifactError::io("removing", path, err))
        }
        _ => Ok(()),
    }
}

/// Makes renames into `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ArtifactError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|source| ArtifactError::io("syncing", dir, source))
}

fn check(expected: &Digest, actual: Digest) -> Result<(), ArtifactError> {
    if *expected == actual {
        Ok(())
    } else {
        Err(ArtifactError::Corrupt {
            expected: *expected,
            actual,
        })
    }
}

/// Runs blocking filesystem work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ArtifactError> + Send + 'static,
) -> Result<T, ArtifactError> {
    joined(tokio::task::spawn_blocking(work).await)
}

fn joined<T>(
    result: Result<Result<T, ArtifactError>, tokio::task::JoinError>,
) -> Result<T, ArtifactError> {
    match result {
        Ok(result) => result,
        // A panic in blocking work is a bug; let it surface where it would have without the
        // thread hop.
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => Err(ArtifactError::Shutdown),
    }
}

/// An object's bytes, checked against its digest as they are read: if the object on disk is
/// corrupt, the read that would report its end fails with [`io::ErrorKind::InvalidData`].
pub struct ObjectReader {
    file: tokio::fs::File,
    /// `None` once the end was reached and checked.
    hasher: Option<Hasher>,
    digest: Digest,
}

impl AsyncRead for ObjectReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        ready!(Pin::new(&mut this.file).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            if let Some(hasher) = &mut this.hasher {
                hasher.update(read);
            }
        } else if had_room && let Some(hasher) = this.hasher.take() {
            check(&this.digest, hasher.finish())
                .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
        }
        Poll::Ready(Ok(()))
    }
}

/// The decompressed tar of a directory artifact, chunk by chunk; see
/// [`ArtifactStore::tar_stream`].
pub struct TarStream(ReceiverStream<io::Result<Bytes>>);

impl Stream for TarStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx)
    }
}
