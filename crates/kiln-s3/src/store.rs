//! Kiln's disk backend for buckets: `<root>/buckets/<bucket>/objects/<file>` per object
//! ([`crate::object_file`]) and `<root>/buckets/<bucket>/uploads/<id>/` per multipart upload.
//! Every write goes to a hidden temporary file in the directory it is published in, is
//! fsynced and renamed into place; temporary files left by a crash are never listed or served
//! and are swept when the store opens.
//!
//! Completing an upload moves its directory beside the object files as `.parts-<id>`, where
//! the object's body stays. When the object is replaced or deleted that directory is renamed
//! `.retired-<id>-<unix secs>`: a GET still streaming it holds the directory open and reads
//! on, and the hourly sweep removes it once it has been retired for an hour and no GET is
//! reading it ([`crate::readers`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::error::{ObjectStoreError, io_err};
use crate::key_index::{self, KeyIndex, Lookup};
use crate::mapped::Mapped;
use crate::names::{file_name_to_key, is_hashed_name, key_to_file_name, validate_bucket_name};
use crate::object_file::{
    self, ObjectMeta, Purpose, Segments, part_file_name, retire, segments_dir_name, sync_dir,
};
use crate::pending::{Hashing, PendingFile};
use crate::readers::{Readers, Reading};

/// S3's minimum size of every part but the last.
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// S3's highest part number.
pub const MAX_PART_NUMBER: i32 = 10_000;

/// What a client gives besides the body when it writes an object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutOptions {
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// The MD5 the client says the body has (from `Content-MD5`), checked before publishing.
    #[serde(skip)]
    pub content_md5: Option<[u8; 16]>,
}

/// One page of a listing.
#[derive(Debug, Default)]
pub struct Listing {
    /// Objects, in key order.
    pub objects: Vec<ObjectMeta>,
    /// Key prefixes rolled up by the delimiter, in order.
    pub common_prefixes: Vec<String>,
    /// Where the next page starts, when this one was cut short.
    pub next_marker: Option<ListMarker>,
}

/// Where a listing resumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListMarker {
    /// After this key (a client's `StartAfter`, or the last object of a page).
    Key(String),
    /// After every key under this prefix, which an earlier page rolled up.
    Prefix(String),
}

/// A listing request.
#[derive(Debug, Default)]
pub struct ListQuery<'a> {
    /// Only keys starting with this.
    pub prefix: &'a str,
    /// Rolls keys up to the first occurrence of this after the prefix.
    pub delimiter: Option<&'a str>,
    /// Only keys after this.
    pub after: Option<&'a ListMarker>,
    /// At most this many objects and prefixes together.
    pub max_keys: usize,
}

/// A multipart upload in progress.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadInfo {
    /// The key the object will have.
    pub key: String,
    /// Options given at creation.
    pub options: PutOptions,
    /// When it was created, ms since the epoch.
    pub initiated_ms: i64,
}

/// One uploaded part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartInfo {
    /// Its number (1..=10000).
    pub number: i32,
    /// Its size.
    pub size: u64,
    /// Its ETag (hex MD5, no quotes).
    pub etag: String,
    /// When it was written.
    pub last_modified_ms: i64,
}

/// An object opened for reading.
pub struct OpenObject {
    /// Its metadata.
    pub meta: ObjectMeta,
    body: Body,
}

/// Where an open object's bytes are.
enum Body {
    /// Already read: a small object, read as it was opened.
    Small(Bytes),
    /// In the object's own file.
    Whole(std::fs::File),
    /// In the part files of a multipart object's directory, held open so that a replace or
    /// delete meanwhile does not take them away; parts are opened as the stream reaches them
    /// (an object may have 10,000).
    Parts {
        dir: Arc<std::fs::File>,
        parts: Vec<(i32, u64)>,
        /// Keeps the sweep off the parts until the body's stream is dropped.
        reading: Reading,
    },
    /// Not opened (HEAD, listings).
    Unread,
}

/// Bodies (or ranges) up to this size are read into memory in one step: for them, mapping the
/// file and reading ahead costs more than the copy, and the answer's head and body then leave
/// in one write.
const SMALL_BODY: u64 = 64 << 10;
/// Bytes read into the page cache per step when streaming an object out.
const READ_BLOCK: usize = 1 << 20;
/// Blocks read ahead of the socket at most (they cost no memory of ours: the pages are the
/// page cache's).
const BLOCKS_AHEAD: usize = 4;

impl OpenObject {
    /// Streams `range` of the body (the whole body when `None`) in 1 MiB blocks mapped from
    /// its files, reading the next blocks into the page cache on blocking threads while the
    /// current one goes out on the socket.
    pub fn into_stream(
        self,
        range: Option<Range<u64>>,
    ) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static, ObjectStoreError> {
        use futures::future::Either;
        let range = range.unwrap_or(0..self.meta.size);
        let mut reading = None;
        let pieces = match self.body {
            Body::Small(bytes) => {
                let len = bytes.len() as u64;
                let (from, to) = (range.start.min(len), range.end.min(len));
                let slice = bytes.slice(from as usize..to.max(from) as usize);
                return Ok(Either::Left(futures::stream::iter([Ok(slice)])));
            }
            Body::Whole(file) => vec![(Piece::Open(file), 0, self.meta.size)],
            Body::Parts {
                dir,
                parts,
                reading: guard,
            } => {
                reading = Some(guard);
                let mut pieces = Vec::new();
                let mut start = 0;
                for (number, size) in parts {
                    let end = start + size;
                    pieces.push((Piece::Part(Arc::clone(&dir), number), start, end));
                    start = end;
                }
                pieces
            }
            Body::Unread => {
                return Err(ObjectStoreError::Internal(
                    "the object was opened without its body".into(),
                ));
            }
        };
        let mut stretches = pieces.into_iter().filter_map(move |(piece, start, end)| {
            let (from, to) = (range.start.max(start), range.end.min(end));
            (from < to).then(|| (piece, from - start, to - start))
        });
        let first = stretches
            .next()
            .map(|(piece, from, to)| stream_piece(piece, from, to));
        let stream = futures::stream::iter(first).flatten().chain(
            futures::stream::iter(stretches)
                .flat_map(|(piece, from, to)| stream_piece(piece, from, to)),
        );
        // The guard lives as long as the stream.
        Ok(Either::Right(stream.inspect(move |_| {
            let _ = &reading;
        })))
    }
}

/// A file holding a stretch of a body.
enum Piece {
    Open(std::fs::File),
    /// Part `number` of a multipart object, in the directory given.
    Part(Arc<std::fs::File>, i32),
}

/// Opens part `number` in a multipart object's directory (blocking).
fn open_part_at(dir: &std::fs::File, number: i32) -> std::io::Result<std::fs::File> {
    let fd = nix::fcntl::openat(
        dir,
        part_file_name(number).as_str(),
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    Ok(std::fs::File::from(fd))
}

/// Streams bytes `start..end` of a piece. An open file is mapped and its first block read at
/// once (a stretch of at most [`SMALL_BODY`] is read outright), before the answer's head goes
/// out; a part is opened (on the blocking pool) only once the stream reaches it.
fn stream_piece(
    piece: Piece,
    start: u64,
    end: u64,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    use futures::future::Either;
    match piece {
        Piece::Open(file) => Either::Left(read_range(file, start, end)),
        Piece::Part(dir, number) => {
            let opened = tokio::task::spawn_blocking(move || open_part_at(&dir, number));
            Either::Right(futures::stream::once(opened).flat_map(move |opened| {
                match opened.unwrap_or_else(|e| Err(std::io::Error::other(e))) {
                    Ok(file) => Either::Left(read_range(file, start, end)),
                    Err(e) => Either::Right(futures::stream::iter([Err(e)])),
                }
            }))
        }
    }
}

/// Streams bytes `start..end` of a file as slices of a mapping of them, each handed out once
/// [`read_ahead`] has read its pages into the page cache, for the connection to send from
/// there ([`crate::sendfile`]). A stretch of at most [`SMALL_BODY`] bytes is read into memory
/// instead.
fn read_range(
    file: std::fs::File,
    start: u64,
    end: u64,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    use futures::future::Either;
    if end - start <= SMALL_BODY {
        let read = tokio::task::spawn_blocking(move || read_small(&file, start, end));
        return Either::Left(futures::stream::once(async move {
            read.await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
        }));
    }
    let file = Arc::new(file);
    let (cached, ready) = tokio::sync::mpsc::channel(BLOCKS_AHEAD);
    tokio::spawn(read_ahead(Arc::clone(&file), start, end, cached));
    let mapped = tokio::task::spawn_blocking(move || Mapped::new(file, start, end));
    let opened = async move {
        match mapped
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        {
            Ok(mapped) => Either::Left(cached_blocks(mapped, ready)),
            Err(e) => Either::Right(futures::stream::iter([Err(e)])),
        }
    };
    Either::Right(futures::stream::once(opened).flatten())
}

/// Reads bytes `start..end` of `file`, a stretch of at most [`SMALL_BODY`] (blocking).
fn read_small(file: &std::fs::File, start: u64, end: u64) -> std::io::Result<Bytes> {
    use std::os::unix::fs::FileExt;
    let len = usize::try_from(end - start).map_err(std::io::Error::other)?;
    let mut bytes = vec![0; len];
    file.read_exact_at(&mut bytes, start)?;
    Ok(Bytes::from(bytes))
}

/// Reads bytes `start..end` of `file` into the page cache block after block, in order, the
/// way a plain sequential read does (so the kernel's read-ahead keeps the disk busy ahead
/// of it), and reports each block on `cached`: at most [`BLOCKS_AHEAD`] ahead of the stream,
/// stopping at the first error or when the stream is dropped.
async fn read_ahead(
    file: Arc<std::fs::File>,
    start: u64,
    end: u64,
    cached: tokio::sync::mpsc::Sender<std::io::Result<()>>,
) {
    let mut at = start;
    while at < end {
        let Ok(permit) = cached.reserve().await else {
            return;
        };
        let len = (end - at).min(READ_BLOCK as u64);
        let file = Arc::clone(&file);
        let read = tokio::task::spawn_blocking(move || read_into_cache(&file, at, len))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let failed = read.is_err();
        permit.send(read);
        if failed {
            return;
        }
        at += len;
    }
}

/// Reads `len` bytes of `file` at `offset` into the page cache without copying them
/// anywhere, by sending them to `/dev/null` (blocking: this waits for the disk).
fn read_into_cache(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    static NULL: std::sync::LazyLock<std::io::Result<std::fs::File>> =
        std::sync::LazyLock::new(|| std::fs::OpenOptions::new().write(true).open("/dev/null"));
    let null = NULL
        .as_ref()
        .map_err(|e| std::io::Error::new(e.kind(), format!("open /dev/null: {e}")))?;
    let mut at = i64::try_from(offset).map_err(std::io::Error::other)?;
    let end = at + i64::try_from(len).map_err(std::io::Error::other)?;
    while at < end {
        let want = usize::try_from(end - at).map_err(std::io::Error::other)?;
        match nix::sys::sendfile::sendfile64(null, file, Some(&mut at), want) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            // Then the pages come in as the bytes are sent or read.
            Err(e) if crate::sendfile::cannot_splice(&e.into()) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The blocks of a mapping, each handed out once [`read_ahead`] reports it read.
fn cached_blocks(
    mapped: Mapped,
    ready: tokio::sync::mpsc::Receiver<std::io::Result<()>>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::unfold((0, ready, mapped), |(at, mut ready, mapped)| async move {
        let len = mapped.len();
        if at >= len {
            return None;
        }
        let block = match ready.recv().await {
            Some(Ok(())) => Ok(mapped.slice(at..(at + READ_BLOCK).min(len))),
            Some(Err(e)) => Err(e),
            None => Err(std::io::Error::other("reading ahead stopped")),
        };
        // After an error the stream ends.
        let next = if block.is_ok() { at + READ_BLOCK } else { len };
        Some((block, (next, ready, mapped)))
    })
}

/// The buckets and objects of one node.
#[derive(Clone, Debug)]
pub struct ObjectStore {
    root: PathBuf,
    /// Shared by every clone: they are one store.
    keys: Arc<KeyIndex>,
    /// The multipart bodies being read, shared by every clone too.
    readers: Readers,
}

impl ObjectStore {
    /// Opens (creating if needed) the store under `root`, sweeping temporary files and
    /// half-deleted buckets a crash may have left.
    pub async fn open(root: impl Into<PathBuf>) -> Result<ObjectStore, ObjectStoreError> {
        let root = root.into();
        for dir in [root.join("buckets"), root.join("trash")] {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(io_err("create", &dir))?;
        }
        let store = ObjectStore {
            root,
            keys: Arc::default(),
            readers: Readers::default(),
        };
        store.sweep().await?;
        Ok(store)
    }

    async fn sweep(&self) -> Result<(), ObjectStoreError> {
        let trash = self.root.join("trash");
        let _ = tokio::fs::remove_dir_all(&trash).await;
        tokio::fs::create_dir_all(&trash)
            .await
            .map_err(io_err("create", &trash))?;
        for bucket in self.bucket_names().await? {
            let dir = self.bucket_dir(&bucket);
            remove_temp_files(&dir.join("objects")).await?;
            self.remove_unused_parts(&bucket).await?;
            remove_retired_parts(
                &dir.join("objects"),
                std::time::Duration::ZERO,
                &self.readers,
            )
            .await?;
            let uploads = dir.join("uploads");
            let mut entries = tokio::fs::read_dir(&uploads)
                .await
                .map_err(io_err("list", &uploads))?;
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(io_err("list", &uploads))?
            {
                remove_temp_files(&entry.path()).await?;
            }
        }
        Ok(())
    }

    fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.root.join("buckets").join(bucket)
    }

    /// Where a bucket's objects directory is, for a valid name; whether it exists is
    /// [`ObjectStore::objects_dir`]'s question.
    fn objects_path(&self, bucket: &str) -> Result<PathBuf, ObjectStoreError> {
        validate_bucket_name(bucket)
            .map(|()| self.bucket_dir(bucket).join("objects"))
            .map_err(|_| ObjectStoreError::NoSuchBucket(bucket.to_owned()))
    }

    /// The objects directory of an existing bucket.
    async fn objects_dir(&self, bucket: &str) -> Result<PathBuf, ObjectStoreError> {
        let dir = self.objects_path(bucket)?;
        match tokio::fs::metadata(&dir).await {
            Ok(m) if m.is_dir() => Ok(dir),
            _ => Err(ObjectStoreError::NoSuchBucket(bucket.to_owned())),
        }
    }

    /// Names of all buckets.
    pub async fn bucket_names(&self) -> Result<Vec<String>, ObjectStoreError> {
        let dir = self.root.join("buckets");
        let mut names = Vec::new();
        let mut entries = tokio::fs::read_dir(&dir)
            .await
            .map_err(io_err("list", &dir))?;
        while let Some(entry) = entries.next_entry().await.map_err(io_err("list", &dir))? {
            if let Some(name) = entry.file_name().to_str()
                && validate_bucket_name(name).is_ok()
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Whether a bucket exists.
    pub async fn bucket_exists(&self, bucket: &str) -> bool {
        self.objects_dir(bucket).await.is_ok()
    }

    /// Creates a bucket. Its directories are made under a temporary name and renamed, so a
    /// bucket exists whole or not at all.
    pub async fn create_bucket(&self, bucket: &str) -> Result<(), ObjectStoreError> {
        validate_bucket_name(bucket)?;
        let target = self.bucket_dir(bucket);
        if tokio::fs::metadata(&target).await.is_ok() {
            return Err(ObjectStoreError::BucketExists(bucket.to_owned()));
        }
        let staging = self
            .root
            .join("trash")
            .join(format!("new-{bucket}-{}", crate::random_hex(8)));
        for sub in ["objects", "uploads"] {
            let dir = staging.join(sub);
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(io_err("create", &dir))?;
        }
        tokio::fs::rename(&staging, &target)
            .await
            .map_err(io_err("rename", &target))?;
        self.keys.forget(bucket);
        sync_dir(&self.root.join("buckets")).await
    }

    /// Deletes a bucket and every object in it. It disappears at once (one rename into the
    /// trash); the files are then removed, or swept at the next open after a crash.
    pub async fn delete_bucket(&self, bucket: &str) -> Result<(), ObjectStoreError> {
        self.objects_dir(bucket).await?;
        let doomed = self
            .root
            .join("trash")
            .join(format!("del-{bucket}-{}", crate::random_hex(8)));
        tokio::fs::rename(self.bucket_dir(bucket), &doomed)
            .await
            .map_err(io_err("rename", &doomed))?;
        self.keys.forget(bucket);
        sync_dir(&self.root.join("buckets")).await?;
        tokio::fs::remove_dir_all(&doomed)
            .await
            .map_err(io_err("remove", &doomed))
    }

    /// Writes an object from a body stream; it becomes visible only once complete and durable.
    pub async fn put_object<S, E>(
        &self,
        bucket: &str,
        key: &str,
        body: S,
        options: PutOptions,
    ) -> Result<ObjectMeta, ObjectStoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let dir = self.objects_path(bucket)?;
        let mut pending = PendingFile::new(&dir, Hashing::Md5);
        // The bucket is looked up while the body starts streaming: a missing one ends both.
        tokio::try_join!(self.objects_dir(bucket), fill(&mut pending, body))?;
        let published = publish_object(pending, &dir, key, options).await;
        self.note_write(bucket, &dir, key, &published);
        published
    }

    /// Tells the key index how a write of `key` in `dir` ended.
    fn note_write<T>(
        &self,
        bucket: &str,
        dir: &Path,
        key: &str,
        outcome: &Result<T, ObjectStoreError>,
    ) {
        match outcome {
            Ok(_) => self
                .keys
                .changed(bucket, key, &dir.join(key_to_file_name(key))),
            // Refused before anything was published: nothing changed.
            Err(ObjectStoreError::BadDigest | ObjectStoreError::NoSuchBucket(_)) => {}
            // It may have failed after its rename, so the key may be there or not.
            Err(_) => self.keys.forget(bucket),
        }
    }

    /// Copies an object within its bucket into a new, independently published object: the
    /// body always, type and user metadata from the source unless `replace` gives new ones.
    pub async fn copy_object(
        &self,
        bucket: &str,
        source: &str,
        target: &str,
        replace: Option<PutOptions>,
    ) -> Result<ObjectMeta, ObjectStoreError> {
        let dir = self.objects_dir(bucket).await?;
        let source_path = dir.join(key_to_file_name(source));
        let opened = self.open_object(bucket, source, Purpose::Body).await?;
        let source_meta = opened.meta.clone();
        let mut pending = PendingFile::new(&dir, Hashing::Md5);
        // The open handles are read, so a source replaced meanwhile is copied whole, old or new.
        let mut body = std::pin::pin!(opened.into_stream(None)?);
        while let Some(chunk) = body.next().await {
            pending
                .write(chunk.map_err(io_err("read", &source_path))?)
                .await?;
        }
        let options = replace.unwrap_or(PutOptions {
            content_type: source_meta.content_type,
            metadata: source_meta.metadata,
            content_md5: None,
        });
        let published = publish_object(pending, &dir, target, options).await;
        self.note_write(bucket, &dir, target, &published);
        published
    }

    /// Opens an object for reading.
    pub async fn get_object(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<OpenObject, ObjectStoreError> {
        self.open_object(bucket, key, Purpose::Body).await
    }

    /// An object's metadata.
    pub async fn head_object(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<ObjectMeta, ObjectStoreError> {
        Ok(self.open_object(bucket, key, Purpose::Meta).await?.meta)
    }

    async fn open_object(
        &self,
        bucket: &str,
        key: &str,
        purpose: Purpose,
    ) -> Result<OpenObject, ObjectStoreError> {
        // Whether the bucket exists is asked only when the object is not found: a hit costs
        // one trip to the blocking pool, which for a small object is most of its cost.
        let dir = self.objects_path(bucket)?;
        let path = dir.join(key_to_file_name(key));
        // A multipart object replaced between reading its file and opening its parts has had
        // its parts retired; reading the file again finds what replaced it.
        for _ in 0..3 {
            let opened = match purpose {
                Purpose::Meta => object_file::open(&path, purpose)
                    .await?
                    .map(|(file, meta)| (file, meta, None)),
                Purpose::Body => object_file::open_body(&path, SMALL_BODY).await?,
            };
            let (file, meta, small) = match opened {
                Some(opened) if opened.1.key == key => opened,
                _ => {
                    self.objects_dir(bucket).await?;
                    return Err(ObjectStoreError::NoSuchKey(key.to_owned()));
                }
            };
            let body = match (&meta.segments, purpose, small) {
                (_, Purpose::Meta, _) => Body::Unread,
                (None, Purpose::Body, Some(bytes)) => Body::Small(bytes),
                (None, Purpose::Body, None) => Body::Whole(file),
                (Some(segments), Purpose::Body, _) => {
                    let parts_dir = dir.join(segments_dir_name(&segments.upload));
                    let reading = self.readers.enter(&segments.upload);
                    match tokio::fs::File::open(&parts_dir).await {
                        Ok(opened) => Body::Parts {
                            dir: Arc::new(opened.into_std().await),
                            parts: segments.parts.clone(),
                            reading,
                        },
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err("open", &parts_dir)(e)),
                    }
                }
            };
            return Ok(OpenObject { meta, body });
        }
        Err(ObjectStoreError::Corrupt {
            path,
            reason: "its parts directory is missing".into(),
        })
    }

    /// Deletes an object; deleting a missing key succeeds, as in S3.
    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), ObjectStoreError> {
        let dir = self.objects_dir(bucket).await?;
        let path = dir.join(key_to_file_name(key));
        // Unnamed first, so exactly the object deleted is disposed of, with its parts.
        let unnamed = dir.join(format!(".tmp-{}", crate::random_hex(16)));
        match tokio::fs::rename(&path, &unnamed).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("remove", &path)(e)),
        }
        self.keys.changed(bucket, key, &path);
        sync_dir(&dir).await?;
        tokio::task::spawn_blocking(move || retire(&unnamed))
            .await
            .map_err(|e| ObjectStoreError::Internal(format!("delete task failed: {e}")))?
    }

    /// One page of the bucket's keys in order, rolled up by the delimiter.
    ///
    /// The keys come from the key index, read from the bucket's directory by the first listing
    /// after the store opens; object metadata is read only for the objects on the page.
    pub async fn list_objects(
        &self,
        bucket: &str,
        query: ListQuery<'_>,
    ) -> Result<Listing, ObjectStoreError> {
        let dir = self.objects_dir(bucket).await?;
        let page = match self.keys.page(bucket, &query) {
            Lookup::Page(page) => page,
            Lookup::Load(id) => {
                let read = all_keys(&dir).await;
                match read {
                    Ok(read) => self.keys.loaded(bucket, id, read, &query),
                    Err(e) => {
                        self.keys.forget(bucket);
                        return Err(e);
                    }
                }
            }
            Lookup::ReadAlone => {
                let read: BTreeSet<String> = all_keys(&dir).await?.into_iter().collect();
                key_index::page_of(&read, &query)
            }
        };
        let mut listing = Listing {
            common_prefixes: page.common_prefixes,
            next_marker: page.next_marker,
            ..Listing::default()
        };
        for key in page.keys {
            match object_file::open(&dir.join(key_to_file_name(&key)), Purpose::Meta).await? {
                Some((_, meta)) => listing.objects.push(meta),
                // Deleted since the page was chosen.
                None => continue,
            }
        }
        Ok(listing)
    }

    fn upload_dir(&self, bucket: &str, upload_id: &str) -> Result<PathBuf, ObjectStoreError> {
        // Upload ids are ours (hex); anything else cannot name a directory.
        if upload_id.is_empty() || !upload_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ObjectStoreError::NoSuchUpload(upload_id.to_owned()));
        }
        Ok(self.bucket_dir(bucket).join("uploads").join(upload_id))
    }

    /// Starts a multipart upload; returns its id.
    pub async fn create_upload(
        &self,
        bucket: &str,
        key: &str,
        options: PutOptions,
    ) -> Result<String, ObjectStoreError> {
        self.objects_dir(bucket).await?;
        let id = crate::random_hex(16);
        let dir = self.upload_dir(bucket, &id)?;
        tokio::fs::create_dir(&dir)
            .await
            .map_err(io_err("create", &dir))?;
        let info = UploadInfo {
            key: key.to_owned(),
            options,
            initiated_ms: now_ms(),
        };
        let json =
            serde_json::to_vec(&info).map_err(|e| ObjectStoreError::Internal(e.to_string()))?;
        let mut pending = PendingFile::new(&dir, Hashing::Skip);
        pending.write(json.into()).await?;
        let meta = ObjectMeta {
            key: "upload.json".into(),
            size: pending.size(),
            etag: String::new(),
            content_type: None,
            metadata: BTreeMap::new(),
            last_modified_ms: info.initiated_ms,
            parts: None,
            segments: None,
        };
        pending.publish(&meta, &dir.join("upload")).await?;
        Ok(id)
    }

    /// The upload's record, checking it belongs to `key`.
    pub async fn upload_info(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<UploadInfo, ObjectStoreError> {
        self.objects_dir(bucket).await?;
        let dir = self.upload_dir(bucket, upload_id)?;
        match read_upload_info(&dir).await? {
            Some(info) if info.key == key => Ok(info),
            _ => Err(ObjectStoreError::NoSuchUpload(upload_id.to_owned())),
        }
    }

    /// Stores one part (atomically; a re-upload of the same number replaces it).
    pub async fn upload_part<S, E>(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        number: i32,
        body: S,
        content_md5: Option<[u8; 16]>,
    ) -> Result<PartInfo, ObjectStoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        self.upload_info(bucket, key, upload_id).await?;
        let dir = self.upload_dir(bucket, upload_id)?;
        let mut pending = PendingFile::new(&dir, Hashing::Md5);
        fill(&mut pending, body).await?;
        let md5 = pending.md5().await?;
        if content_md5.is_some_and(|want| want != md5) {
            return Err(ObjectStoreError::BadDigest);
        }
        let meta = ObjectMeta {
            key: format!("part-{number}"),
            size: pending.size(),
            etag: hex::encode(md5),
            content_type: None,
            metadata: BTreeMap::new(),
            last_modified_ms: now_ms(),
            parts: None,
            segments: None,
        };
        pending
            .publish(&meta, &dir.join(part_file_name(number)))
            .await?;
        Ok(PartInfo {
            number,
            size: meta.size,
            etag: meta.etag,
            last_modified_ms: meta.last_modified_ms,
        })
    }

    /// The parts uploaded so far, by number.
    pub async fn list_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<PartInfo>, ObjectStoreError> {
        self.upload_info(bucket, key, upload_id).await?;
        let dir = self.upload_dir(bucket, upload_id)?;
        let mut parts = Vec::new();
        let mut entries = tokio::fs::read_dir(&dir)
            .await
            .map_err(io_err("list", &dir))?;
        while let Some(entry) = entries.next_entry().await.map_err(io_err("list", &dir))? {
            let name = entry.file_name();
            let Some(number) = name
                .to_str()
                .and_then(|n| n.strip_prefix("part-"))
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            if let Some((_, meta)) = object_file::open(&entry.path(), Purpose::Meta).await? {
                parts.push(PartInfo {
                    number,
                    size: meta.size,
                    etag: meta.etag,
                    last_modified_ms: meta.last_modified_ms,
                });
            }
        }
        parts.sort_by_key(|p| p.number);
        Ok(parts)
    }

    /// Joins the named parts into the object (S3's rules: ascending numbers, matching ETags,
    /// every part but the last at least 5 MiB) and ends the upload. The parts are not copied:
    /// the upload's directory moves beside the object files and the object, published by one
    /// rename like a single PUT, lists them.
    pub async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        wanted: &[(i32, String)],
    ) -> Result<ObjectMeta, ObjectStoreError> {
        let info = self.upload_info(bucket, key, upload_id).await?;
        let upload_dir = self.upload_dir(bucket, upload_id)?;
        let dir = self.objects_dir(bucket).await?;
        let parts_dir = dir.join(segments_dir_name(upload_id));
        // Moving the directory first takes the upload from under concurrent part uploads and
        // completions (theirs fail): the parts checked below cannot change any more.
        match tokio::fs::rename(&upload_dir, &parts_dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ObjectStoreError::NoSuchUpload(upload_id.to_owned()));
            }
            Err(e) => return Err(io_err("rename", &upload_dir)(e)),
        }
        let prepared = async {
            let chosen = chosen_parts(&parts_dir, wanted).await?;
            remove_other_files(&parts_dir, &chosen).await?;
            // The directory's new name must be durable before an object names it.
            sync_dir(&dir).await?;
            let mut md5s = Md5::new();
            for (_, etag, _) in &chosen {
                let raw = hex::decode(etag).map_err(|e| ObjectStoreError::Corrupt {
                    path: parts_dir.clone(),
                    reason: format!("part ETag: {e}"),
                })?;
                md5s.update(&raw);
            }
            Ok(ObjectMeta {
                key: key.to_owned(),
                size: chosen.iter().map(|(_, _, size)| size).sum(),
                etag: format!("{}-{}", hex::encode(md5s.finalize()), chosen.len()),
                content_type: info.options.content_type,
                metadata: info.options.metadata,
                last_modified_ms: now_ms(),
                parts: u32::try_from(chosen.len()).ok(),
                segments: Some(Segments {
                    upload: upload_id.to_owned(),
                    parts: chosen.iter().map(|(n, _, size)| (*n, *size)).collect(),
                }),
            })
        };
        // On failure the upload goes back, for the client to complete it again (what was
        // removed were parts it did not name).
        let meta = match prepared.await {
            Ok(meta) => meta,
            Err(e) => {
                let _ = tokio::fs::rename(&parts_dir, &upload_dir).await;
                return Err(e);
            }
        };
        let target = dir.join(key_to_file_name(key));
        let published = PendingFile::new(&dir, Hashing::Skip)
            .publish(&meta, &target)
            .await;
        self.note_write(bucket, &dir, key, &published);
        if let Err(e) = published {
            // A publish can fail after its rename (a failed directory fsync): the parts then
            // belong to the object.
            if !self
                .names_parts(bucket, key, upload_id)
                .await
                .unwrap_or(true)
            {
                let _ = tokio::fs::rename(&parts_dir, &upload_dir).await;
            }
            return Err(e);
        }
        Ok(meta)
    }

    /// Whether the object `key` is the multipart object whose parts are upload `upload`'s.
    async fn names_parts(
        &self,
        bucket: &str,
        key: &str,
        upload: &str,
    ) -> Result<bool, ObjectStoreError> {
        match self.open_object(bucket, key, Purpose::Meta).await {
            Ok(object) => Ok(object
                .meta
                .segments
                .is_some_and(|segments| segments.upload == upload)),
            Err(ObjectStoreError::NoSuchKey(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Drops an upload and its parts.
    pub async fn abort_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(), ObjectStoreError> {
        self.upload_info(bucket, key, upload_id).await?;
        let dir = self.upload_dir(bucket, upload_id)?;
        tokio::fs::remove_dir_all(&dir)
            .await
            .map_err(io_err("remove", &dir))
    }

    /// Aborts every multipart upload that has received nothing for `idle` (its directory
    /// unchanged), as an S3 lifecycle rule would: a client that starts an upload and goes away
    /// would otherwise keep its parts on disk for ever. Answers how many were aborted.
    pub async fn abort_idle_uploads(
        &self,
        idle: std::time::Duration,
    ) -> Result<usize, ObjectStoreError> {
        let mut aborted = 0;
        for bucket in self.bucket_names().await? {
            let uploads = self.bucket_dir(&bucket).join("uploads");
            let Ok(mut entries) = tokio::fs::read_dir(&uploads).await else {
                continue; // deleted meanwhile
            };
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(io_err("list", &uploads))?
            {
                let idle_for = entry
                    .metadata()
                    .await
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|modified| modified.elapsed().ok());
                if idle_for.is_some_and(|idle_for| idle_for >= idle) {
                    let dir = entry.path();
                    tokio::fs::remove_dir_all(&dir)
                        .await
                        .map_err(io_err("remove", &dir))?;
                    aborted += 1;
                }
            }
        }
        Ok(aborted)
    }

    /// Removes the parts of multipart objects replaced or deleted at least `grace` ago that no
    /// GET is reading.
    pub async fn remove_retired_parts(
        &self,
        grace: std::time::Duration,
    ) -> Result<(), ObjectStoreError> {
        for bucket in self.bucket_names().await? {
            let objects = self.bucket_dir(&bucket).join("objects");
            remove_retired_parts(&objects, grace, &self.readers).await?;
        }
        Ok(())
    }

    /// Removes the parts directories of a bucket that no object names: left by a crash
    /// between completing an upload and publishing its object, or between replacing a
    /// multipart object and retiring its parts.
    async fn remove_unused_parts(&self, bucket: &str) -> Result<(), ObjectStoreError> {
        let dir = self.bucket_dir(bucket).join("objects");
        for (name, path) in hidden_entries(&dir).await? {
            let Some(upload) = name.strip_prefix(".parts-") else {
                continue;
            };
            // Without a readable record the owner is unknown: left alone, and said.
            let info = match read_upload_info(&path).await {
                Ok(Some(info)) => info,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "parts directory without a readable record");
                    continue;
                }
            };
            // An object that cannot be read may still name them: kept then.
            if !self
                .names_parts(bucket, &info.key, upload)
                .await
                .unwrap_or(true)
            {
                tokio::fs::remove_dir_all(&path)
                    .await
                    .map_err(io_err("remove", &path))?;
            }
        }
        Ok(())
    }
}

/// The parts an upload's completion names, checked against S3's rules, as (number, ETag,
/// size).
async fn chosen_parts(
    upload_dir: &Path,
    wanted: &[(i32, String)],
) -> Result<Vec<(i32, String, u64)>, ObjectStoreError> {
    let mut chosen = Vec::with_capacity(wanted.len());
    for (i, (number, etag)) in wanted.iter().enumerate() {
        if i > 0 && wanted[i - 1].0 >= *number {
            return Err(ObjectStoreError::InvalidPartOrder);
        }
        let (_, part) = open_part(upload_dir, *number, etag, Purpose::Meta).await?;
        if i + 1 < wanted.len() && part.size < MIN_PART_SIZE {
            return Err(ObjectStoreError::EntityTooSmall(*number));
        }
        chosen.push((*number, part.etag, part.size));
    }
    if chosen.is_empty() {
        return Err(ObjectStoreError::InvalidPart(0));
    }
    Ok(chosen)
}

/// Removes the parts a completion did not name (and temporary files of part uploads cut
/// off by it) from a completed upload's directory; its record stays, naming the key.
async fn remove_other_files(
    dir: &Path,
    chosen: &[(i32, String, u64)],
) -> Result<(), ObjectStoreError> {
    let keep: Vec<String> = chosen.iter().map(|(n, _, _)| part_file_name(*n)).collect();
    let mut entries = tokio::fs::read_dir(dir)
        .await
        .map_err(io_err("list", dir))?;
    while let Some(entry) = entries.next_entry().await.map_err(io_err("list", dir))? {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name != "upload" && !keep.iter().any(|k| *k == name) {
            let path = entry.path();
            tokio::fs::remove_file(&path)
                .await
                .map_err(io_err("remove", &path))?;
        }
    }
    Ok(())
}

/// An upload's record from its directory; `None` when there is none.
async fn read_upload_info(dir: &Path) -> Result<Option<UploadInfo>, ObjectStoreError> {
    let Some((mut file, meta)) = object_file::open(&dir.join("upload"), Purpose::Body).await?
    else {
        return Ok(None);
    };
    let mut json = vec![0; meta.size as usize];
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_exact(&mut json))
        .map_err(io_err("read", dir))?;
    serde_json::from_slice(&json)
        .map(Some)
        .map_err(|e| ObjectStoreError::Corrupt {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })
}

/// The names beginning with `.` in a directory, with their paths.
async fn hidden_entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, ObjectStoreError> {
    let mut hidden = Vec::new();
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(hidden),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    while let Some(entry) = entries.next_entry().await.map_err(io_err("list", dir))? {
        if let Some(name) = entry.file_name().to_str()
            && name.starts_with('.')
        {
            hidden.push((name.to_owned(), entry.path()));
        }
    }
    Ok(hidden)
}

/// Removes the `.retired-<id>-<unix secs>` directories of an objects directory retired at
/// least `grace` ago whose upload no GET is reading.
async fn remove_retired_parts(
    dir: &Path,
    grace: std::time::Duration,
    readers: &Readers,
) -> Result<(), ObjectStoreError> {
    let now = chrono::Utc::now().timestamp();
    for (name, path) in hidden_entries(dir).await? {
        let Some((upload, retired_at)) = name
            .strip_prefix(".retired-")
            .and_then(|rest| rest.rsplit_once('-'))
            .and_then(|(upload, secs)| Some((upload, secs.parse::<i64>().ok()?)))
        else {
            continue;
        };
        if now - retired_at >= grace.as_secs() as i64 && !readers.busy(upload) {
            tokio::fs::remove_dir_all(&path)
                .await
                .map_err(io_err("remove", &path))?;
        }
    }
    Ok(())
}

/// Streams a body into a pending file.
async fn fill<S, E>(pending: &mut PendingFile, mut body: S) -> Result<(), ObjectStoreError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ObjectStoreError::Body(e.to_string()))?;
        pending.write(chunk).await?;
    }
    Ok(())
}

/// Publishes a filled pending file as the object `key` of the objects directory `dir`,
/// after checking the `Content-MD5` a client gave.
async fn publish_object(
    mut pending: PendingFile,
    dir: &Path,
    key: &str,
    options: PutOptions,
) -> Result<ObjectMeta, ObjectStoreError> {
    let md5 = pending.md5().await?;
    if options.content_md5.is_some_and(|want| want != md5) {
        return Err(ObjectStoreError::BadDigest);
    }
    let meta = ObjectMeta {
        key: key.to_owned(),
        size: pending.size(),
        etag: hex::encode(md5),
        content_type: options.content_type,
        metadata: options.metadata,
        last_modified_ms: now_ms(),
        parts: None,
        segments: None,
    };
    pending
        .publish(&meta, &dir.join(key_to_file_name(key)))
        .await?;
    Ok(meta)
}

/// Opens part `number` of an upload, if it is there with the ETag the client named.
async fn open_part(
    upload_dir: &Path,
    number: i32,
    etag: &str,
    purpose: Purpose,
) -> Result<(std::fs::File, ObjectMeta), ObjectStoreError> {
    match object_file::open(&upload_dir.join(part_file_name(number)), purpose).await? {
        Some((file, part)) if part.etag == etag.trim_matches('"') => Ok((file, part)),
        _ => Err(ObjectStoreError::InvalidPart(number)),
    }
}

/// All keys in an objects directory, sorted.
async fn all_keys(dir: &Path) -> Result<Vec<String>, ObjectStoreError> {
    let mut keys = Vec::new();
    let mut entries = tokio::fs::read_dir(dir)
        .await
        .map_err(io_err("list", dir))?;
    while let Some(entry) = entries.next_entry().await.map_err(io_err("list", dir))? {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(key) = file_name_to_key(name) {
            keys.push(key);
        } else if is_hashed_name(name)
            && let Some((_, meta)) = object_file::open(&entry.path(), Purpose::Meta).await?
        {
            keys.push(meta.key);
        }
    }
    keys.sort();
    Ok(keys)
}

/// Removes `.tmp-*` files a crash left in `dir`.
async fn remove_temp_files(dir: &Path) -> Result<(), ObjectStoreError> {
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    while let Some(entry) = entries.next_entry().await.map_err(io_err("list", dir))? {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(".tmp-"))
        {
            let path = entry.path();
            tokio::fs::remove_file(&path)
                .await
                .map_err(io_err("remove", &path))?;
        }
    }
    Ok(())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    const DAY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

    fn body(bytes: &'static [u8]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures::stream::iter([Ok(Bytes::from_static(bytes))])
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    fn owned(bytes: Vec<u8>) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures::stream::iter([Ok(Bytes::from(bytes))])
    }

    async fn read_all(object: OpenObject, range: Option<Range<u64>>) -> Vec<u8> {
        let mut stream = std::pin::pin!(object.into_stream(range).expect("stream"));
        let mut got = Vec::new();
        while let Some(chunk) = stream.next().await {
            got.extend_from_slice(&chunk.expect("chunk"));
        }
        got
    }

    /// Uploads `parts` as a multipart upload of `key` and completes it; answers the upload id.
    async fn multipart(store: &ObjectStore, key: &str, parts: &[Vec<u8>]) -> String {
        let id = store
            .create_upload("mpu", key, PutOptions::default())
            .await
            .expect("create upload");
        let mut wanted = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let number = i as i32 + 1;
            let info = store
                .upload_part("mpu", key, &id, number, owned(part.clone()), None)
                .await
                .expect("part");
            wanted.push((number, info.etag));
        }
        store
            .complete_upload("mpu", key, &id, &wanted)
            .await
            .expect("complete");
        id
    }

    /// A store in a temporary directory, with the bucket `mpu`.
    async fn store_with_bucket() -> (tempfile::TempDir, ObjectStore) {
        let root = tempfile::tempdir().expect("temp dir");
        let store = ObjectStore::open(root.path()).await.expect("open");
        store.create_bucket("mpu").await.expect("bucket");
        (root, store)
    }

    /// Hidden names in the bucket's objects directory, sorted.
    fn hidden(root: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(root.join("buckets/mpu/objects"))
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    async fn listed(store: &ObjectStore) -> Vec<String> {
        let query = ListQuery {
            max_keys: 1000,
            ..ListQuery::default()
        };
        let listing = store.list_objects("mpu", query).await.expect("list");
        listing.objects.into_iter().map(|meta| meta.key).collect()
    }

    #[tokio::test]
    async fn listings_follow_every_write_after_the_first_and_survive_a_reopen() {
        let (root, store) = store_with_bucket().await;
        let long = "k/".repeat(200); // stored under a hashed file name
        for key in ["a", long.as_str()] {
            let options = PutOptions::default();
            store
                .put_object("mpu", key, body(b"x"), options)
                .await
                .expect("put");
        }
        assert_eq!(listed(&store).await, ["a", long.as_str()]);

        // After the keys are in memory: a put, a delete, a copy, a refused put, a multipart.
        let options = PutOptions::default();
        store
            .put_object("mpu", "b", body(b"y"), options)
            .await
            .expect("put");
        store.delete_object("mpu", "a").await.expect("delete");
        store
            .copy_object("mpu", "b", "c", None)
            .await
            .expect("copy");
        let wrong_digest = PutOptions {
            content_md5: Some([0; 16]),
            ..PutOptions::default()
        };
        let refused = store
            .put_object("mpu", "refused", body(b"z"), wrong_digest)
            .await;
        assert!(matches!(refused, Err(ObjectStoreError::BadDigest)));
        multipart(&store, "d", &[pattern(1000, 1)]).await;
        let now = ["b", "c", "d", long.as_str()];
        assert_eq!(listed(&store).await, now);

        // A clone is the same store; a reopened one reads the directory again.
        assert_eq!(listed(&store.clone()).await, now);
        drop(store);
        let store = ObjectStore::open(root.path()).await.expect("reopen");
        assert_eq!(listed(&store).await, now);

        // A bucket deleted and made again starts empty.
        store.delete_bucket("mpu").await.expect("delete bucket");
        store.create_bucket("mpu").await.expect("bucket again");
        assert!(listed(&store).await.is_empty());
    }

    #[tokio::test]
    async fn a_completed_upload_is_not_copied_and_reads_back_whole_and_in_ranges() {
        let (root, store) = store_with_bucket().await;
        let parts = [
            pattern(MIN_PART_SIZE as usize, 1),
            pattern(MIN_PART_SIZE as usize + 3, 2),
            pattern(1000, 3),
        ];
        let whole = parts.concat();
        let id = multipart(&store, "big", &parts).await;

        let object_file = root.path().join("buckets/mpu/objects/big");
        let stored = std::fs::metadata(&object_file).expect("object file").len();
        assert!(
            stored < 4096,
            "the object file holds {stored} bytes: a copy"
        );
        assert_eq!(hidden(root.path()), vec![format!(".parts-{id}")]);

        let object = store.get_object("mpu", "big").await.expect("get");
        assert_eq!(object.meta.size, whole.len() as u64);
        assert!(read_all(object, None).await == whole, "whole body");
        let boundary = MIN_PART_SIZE;
        for range in [
            0..10,
            boundary - 5..boundary + 5,
            boundary - 1..whole.len() as u64,
            2 * boundary + 3..2 * boundary + 700,
        ] {
            let object = store.get_object("mpu", "big").await.expect("get");
            let want = &whole[range.start as usize..range.end as usize];
            assert!(
                read_all(object, Some(range.clone())).await == want,
                "{range:?}"
            );
        }

        store
            .copy_object("mpu", "big", "copy", None)
            .await
            .expect("copy");
        let copy = store.get_object("mpu", "copy").await.expect("get copy");
        assert!(read_all(copy, None).await == whole, "the copy's body");
    }

    #[tokio::test]
    async fn bodies_on_either_side_of_the_small_size_read_back_whole_and_in_ranges() {
        let (_root, store) = store_with_bucket().await;
        let small = SMALL_BODY as usize;
        for (key, len) in [("small", small), ("mapped", small + 1)] {
            let bytes = pattern(len, 9);
            store
                .put_object("mpu", key, owned(bytes.clone()), PutOptions::default())
                .await
                .expect("put");
            let object = store.get_object("mpu", key).await.expect("get");
            let chunks: Vec<Bytes> = object
                .into_stream(None)
                .expect("stream")
                .try_collect()
                .await
                .expect("read");
            assert_eq!(chunks.concat(), bytes, "{key}: whole body");
            assert_eq!(
                chunks.len(),
                1,
                "{key}: one piece (read into memory, or one mapped block)"
            );
            for range in [0..1, len as u64 - 7..len as u64, 100..len as u64 - 100] {
                let object = store.get_object("mpu", key).await.expect("get");
                let want = &bytes[range.start as usize..range.end as usize];
                assert!(
                    read_all(object, Some(range.clone())).await == want,
                    "{key}: {range:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_part_file_cut_short_fails_the_stream_instead_of_the_process() {
        let (root, store) = store_with_bucket().await;
        let parts = [pattern(MIN_PART_SIZE as usize, 1), pattern(1000, 2)];
        let id = multipart(&store, "cut", &parts).await;
        let part = root
            .path()
            .join(format!("buckets/mpu/objects/.parts-{id}"))
            .join(part_file_name(2));
        std::fs::File::options()
            .write(true)
            .open(&part)
            .and_then(|file| file.set_len(10))
            .expect("cut the part short");

        let object = store.get_object("mpu", "cut").await.expect("get");
        let mut stream = std::pin::pin!(object.into_stream(None).expect("stream"));
        let mut got = 0;
        let failure = loop {
            match stream.next().await {
                Some(Ok(chunk)) => got += chunk.len(),
                Some(Err(e)) => break e,
                None => panic!("the stream ended without an error after {got} bytes"),
            }
        };
        assert_eq!(
            got, MIN_PART_SIZE as usize,
            "the whole first part comes first"
        );
        assert_eq!(failure.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_replaced_multipart_object_retires_its_parts_and_a_reader_reads_on() {
        let (root, store) = store_with_bucket().await;
        let parts = [pattern(MIN_PART_SIZE as usize, 4), pattern(10, 5)];
        multipart(&store, "obj", &parts).await;
        let reading = store.get_object("mpu", "obj").await.expect("get");

        store
            .put_object(
                "mpu",
                "obj",
                owned(b"small".to_vec()),
                PutOptions::default(),
            )
            .await
            .expect("replace");
        // A PUT disposes of what it replaced after answering.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while hidden(root.path())
            .iter()
            .any(|n| !n.starts_with(".retired-"))
        {
            assert!(std::time::Instant::now() < deadline, "never retired");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let names = hidden(root.path());
        assert!(
            names.len() == 1 && names[0].starts_with(".retired-"),
            "{names:?}"
        );
        assert!(read_all(reading, None).await == parts.concat());
        let object = store.get_object("mpu", "obj").await.expect("get");
        assert_eq!(read_all(object, None).await, b"small");

        store
            .remove_retired_parts(std::time::Duration::from_secs(3600))
            .await
            .expect("sweep");
        assert_eq!(hidden(root.path()).len(), 1, "kept within the grace period");
        store
            .remove_retired_parts(std::time::Duration::ZERO)
            .await
            .expect("sweep");
        assert!(hidden(root.path()).is_empty());

        multipart(&store, "obj", &parts).await;
        store.delete_object("mpu", "obj").await.expect("delete");
        let names = hidden(root.path());
        assert!(
            names.len() == 1 && names[0].starts_with(".retired-"),
            "{names:?}"
        );
        assert!(matches!(
            store.get_object("mpu", "obj").await,
            Err(ObjectStoreError::NoSuchKey(_))
        ));
    }

    #[tokio::test]
    async fn the_sweep_leaves_retired_parts_alone_while_a_get_reads_them() {
        let (root, store) = store_with_bucket().await;
        let parts = [pattern(MIN_PART_SIZE as usize, 6), pattern(3000, 7)];
        multipart(&store, "obj", &parts).await;
        let object = store.get_object("mpu", "obj").await.expect("get");
        let mut stream = Box::pin(object.into_stream(None).expect("stream"));
        // The first part is being read; the second is not open yet.
        let first = stream.next().await.expect("a chunk").expect("read");
        store.delete_object("mpu", "obj").await.expect("delete");

        store
            .remove_retired_parts(std::time::Duration::ZERO)
            .await
            .expect("sweep");
        let names = hidden(root.path());
        assert!(
            names.len() == 1 && names[0].starts_with(".retired-"),
            "kept while read: {names:?}"
        );
        let mut got = first.to_vec();
        while let Some(chunk) = stream.next().await {
            got.extend_from_slice(&chunk.expect("the rest, second part included"));
        }
        assert!(got == parts.concat(), "the whole body");

        drop(stream);
        store
            .remove_retired_parts(std::time::Duration::ZERO)
            .await
            .expect("sweep");
        assert!(hidden(root.path()).is_empty(), "gone once the GET is done");
    }

    #[tokio::test]
    async fn a_refused_completion_gives_the_upload_back() {
        let (_root, store) = store_with_bucket().await;
        let id = store
            .create_upload("mpu", "k", PutOptions::default())
            .await
            .expect("create upload");
        let part = store
            .upload_part("mpu", "k", &id, 1, body(b"only part"), None)
            .await
            .expect("part");
        let wrong = vec![(1, "0".repeat(32))];
        assert!(matches!(
            store.complete_upload("mpu", "k", &id, &wrong).await,
            Err(ObjectStoreError::InvalidPart(1))
        ));
        assert_eq!(
            store
                .list_parts("mpu", "k", &id)
                .await
                .expect("parts")
                .len(),
            1
        );
        store
            .complete_upload("mpu", "k", &id, &[(1, part.etag)])
            .await
            .expect("complete");
        let object = store.get_object("mpu", "k").await.expect("get");
        assert_eq!(read_all(object, None).await, b"only part");
    }

    #[tokio::test]
    async fn parts_that_no_object_names_are_removed_when_the_store_opens() {
        let (root, store) = store_with_bucket().await;
        let live = multipart(&store, "live", &[b"kept".to_vec()]).await;
        // A crash between moving an upload's directory and publishing its object.
        let orphan = store
            .create_upload("mpu", "never", PutOptions::default())
            .await
            .expect("create upload");
        store
            .upload_part("mpu", "never", &orphan, 1, body(b"lost"), None)
            .await
            .expect("part");
        let objects = root.path().join("buckets/mpu/objects");
        std::fs::rename(
            store.upload_dir("mpu", &orphan).expect("dir"),
            objects.join(format!(".parts-{orphan}")),
        )
        .expect("move");
        // And one whose object was replaced by a plain PUT before its parts were retired.
        let replaced = multipart(&store, "replaced", &[b"old".to_vec()]).await;
        let parts = objects.join(format!(".parts-{replaced}"));
        let aside = root.path().join("aside");
        std::fs::rename(&parts, &aside).expect("set aside");
        store
            .put_object("mpu", "replaced", body(b"new"), PutOptions::default())
            .await
            .expect("replace");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while hidden(root.path()).iter().any(|n| n.starts_with(".tmp-")) {
            assert!(std::time::Instant::now() < deadline, "never disposed of");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        std::fs::rename(&aside, &parts).expect("put back");
        // And one whose record is damaged: its owner is unknown, so it stays.
        std::fs::create_dir(objects.join(".parts-damaged")).expect("mkdir");
        std::fs::write(objects.join(".parts-damaged/upload"), b"not a record").expect("write");

        let store = ObjectStore::open(root.path()).await.expect("reopen");
        let mut kept = vec![format!(".parts-{live}"), ".parts-damaged".to_owned()];
        kept.sort();
        assert_eq!(hidden(root.path()), kept);
        let object = store.get_object("mpu", "live").await.expect("get");
        assert_eq!(read_all(object, None).await, b"kept");
        let object = store.get_object("mpu", "replaced").await.expect("get");
        assert_eq!(read_all(object, None).await, b"new");
    }

    #[tokio::test]
    async fn only_uploads_idle_for_longer_than_the_limit_are_aborted() {
        let root = tempfile::tempdir().expect("temp dir");
        let store = ObjectStore::open(root.path()).await.expect("open");
        store.create_bucket("uploads").await.expect("bucket");
        let mut ids = Vec::new();
        for key in ["stale", "active"] {
            let id = store
                .create_upload("uploads", key, PutOptions::default())
                .await
                .expect("create upload");
            store
                .upload_part("uploads", key, &id, 1, body(b"part"), None)
                .await
                .expect("part");
            ids.push(id);
        }
        let stale_dir = store.upload_dir("uploads", &ids[0]).expect("dir");
        std::fs::File::open(&stale_dir)
            .and_then(|dir| dir.set_modified(std::time::SystemTime::now() - 8 * DAY))
            .expect("age the upload");

        assert_eq!(store.abort_idle_uploads(7 * DAY).await.expect("sweep"), 1);
        assert!(matches!(
            store.list_parts("uploads", "stale", &ids[0]).await,
            Err(ObjectStoreError::NoSuchUpload(_))
        ));
        let parts = store
            .list_parts("uploads", "active", &ids[1])
            .await
            .expect("the active upload is kept");
        assert_eq!(parts.len(), 1);
        assert_eq!(store.abort_idle_uploads(7 * DAY).await.expect("sweep"), 0);
    }
}
