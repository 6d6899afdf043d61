//! Kiln's disk backend for buckets: `<root>/buckets/<bucket>/objects/<file>` per object
//! ([`crate::object_file`]) and `<root>/buckets/<bucket>/uploads/<id>/` per multipart upload.
//! Every write goes to a hidden temporary file in the directory it is published in, is
//! fsynced and renamed into place; temporary files left by a crash are never listed or served
//! and are swept when the store opens.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use crate::error::{ObjectStoreError, io_err};
use crate::names::{file_name_to_key, is_hashed_name, key_to_file_name, validate_bucket_name};
use crate::object_file::{self, ObjectMeta, Purpose, sync_dir};
use crate::pending::{Hashing, PendingFile};

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
    file: std::fs::File,
}

/// Bytes read per step when streaming an object out.
const READ_BLOCK: u64 = 1 << 20;

impl OpenObject {
    /// Streams `range` of the body (the whole body when `None`) in 1 MiB blocks, reading the
    /// next block on a blocking thread while the current one goes out on the socket.
    pub fn into_stream(
        self,
        range: Option<Range<u64>>,
    ) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static, ObjectStoreError> {
        let range = range.unwrap_or(0..self.meta.size);
        let file = Arc::new(self.file);
        let first = read_block(&file, range.start, range.end, ReadAhead::WholeRange);
        let state = (file, range.start, range.end, first);
        Ok(futures::stream::unfold(
            state,
            |(file, offset, end, in_flight)| async move {
                let (len, handle) = in_flight?;
                let block = match handle.await {
                    Ok(result) => result,
                    Err(e) => Err(std::io::Error::other(e)),
                };
                let next = offset + len;
                let following = if block.is_ok() {
                    read_block(&file, next, end, ReadAhead::Kernel)
                } else {
                    None
                };
                Some((block, (file, next, end, following)))
            },
        ))
    }
}

type BlockRead = (u64, tokio::task::JoinHandle<std::io::Result<Bytes>>);

/// Whether a block read first asks the kernel to read the rest of the range ahead.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadAhead {
    /// The first block: the whole range is requested at once, so a cold object streams at
    /// disk speed (for cached pages this is a no-op; only a hint, so failure changes nothing).
    WholeRange,
    /// Later blocks: the request is in flight already.
    Kernel,
}

/// Starts reading the block at `offset` (up to `end`); `None` past the end.
fn read_block(
    file: &Arc<std::fs::File>,
    offset: u64,
    end: u64,
    read_ahead: ReadAhead,
) -> Option<BlockRead> {
    if offset >= end {
        return None;
    }
    let len = (end - offset).min(READ_BLOCK);
    let file = Arc::clone(file);
    let handle = tokio::task::spawn_blocking(move || {
        if read_ahead == ReadAhead::WholeRange {
            let _ = nix::fcntl::posix_fadvise(
                &*file,
                i64::try_from(offset).unwrap_or(i64::MAX),
                i64::try_from(end - offset).unwrap_or(0),
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
            );
        }
        // `read_to_end` fills the spare capacity without zeroing it first.
        let mut buf = Vec::with_capacity(len as usize);
        (&*file).seek(SeekFrom::Start(offset))?;
        (&*file).take(len).read_to_end(&mut buf)?;
        if buf.len() as u64 != len {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(Bytes::from(buf))
    });
    Some((len, handle))
}

/// The buckets and objects of one node.
#[derive(Clone, Debug)]
pub struct ObjectStore {
    root: PathBuf,
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
        let store = ObjectStore { root };
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

    /// The objects directory of an existing bucket.
    async fn objects_dir(&self, bucket: &str) -> Result<PathBuf, ObjectStoreError> {
        if validate_bucket_name(bucket).is_err() {
            return Err(ObjectStoreError::NoSuchBucket(bucket.to_owned()));
        }
        let dir = self.bucket_dir(bucket).join("objects");
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
        let dir = self.objects_dir(bucket).await?;
        let mut pending = PendingFile::new(&dir, Hashing::Md5);
        fill(&mut pending, body).await?;
        publish_object(pending, &dir, key, options).await
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
        let (file, source_meta) = match object_file::open(&source_path, Purpose::Body).await? {
            Some((file, meta)) if meta.key == source => (file, meta),
            _ => return Err(ObjectStoreError::NoSuchKey(source.to_owned())),
        };
        let mut pending = PendingFile::new(&dir, Hashing::Md5);
        // The open handle is read, so a source replaced meanwhile is copied whole, old or new.
        copy_body(file, &source_path, source_meta.size, &mut pending).await?;
        let options = replace.unwrap_or(PutOptions {
            content_type: source_meta.content_type,
            metadata: source_meta.metadata,
            content_md5: None,
        });
        publish_object(pending, &dir, target, options).await
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
        let dir = self.objects_dir(bucket).await?;
        match object_file::open(&dir.join(key_to_file_name(key)), purpose).await? {
            Some((file, meta)) if meta.key == key => Ok(OpenObject { meta, file }),
            _ => Err(ObjectStoreError::NoSuchKey(key.to_owned())),
        }
    }

    /// Deletes an object; deleting a missing key succeeds, as in S3.
    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), ObjectStoreError> {
        let dir = self.objects_dir(bucket).await?;
        let path = dir.join(key_to_file_name(key));
        match tokio::fs::remove_file(&path).await {
            Ok(()) => sync_dir(&dir).await,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// One page of the bucket's keys in order, rolled up by the delimiter.
    ///
    /// Every call reads the bucket's directory; object metadata is read only for the
    /// objects on the page.
    pub async fn list_objects(
        &self,
        bucket: &str,
        query: ListQuery<'_>,
    ) -> Result<Listing, ObjectStoreError> {
        let dir = self.objects_dir(bucket).await?;
        let keys = all_keys(&dir).await?;
        let mut listing = Listing::default();
        let mut page_keys = Vec::new();
        let mut last_item: Option<ListMarker> = None;
        for key in keys.iter() {
            if !key.starts_with(query.prefix) {
                continue;
            }
            let skipped = match query.after {
                None => false,
                Some(ListMarker::Key(after)) => key <= after,
                Some(ListMarker::Prefix(after)) => key <= after || key.starts_with(after.as_str()),
            };
            if skipped {
                continue;
            }
            let rolled = query.delimiter.filter(|d| !d.is_empty()).and_then(|d| {
                let rest = &key[query.prefix.len()..];
                rest.find(d)
                    .map(|at| format!("{}{}", query.prefix, &rest[..at + d.len()]))
            });
            if let Some(common) = &rolled
                && listing.common_prefixes.last() == Some(common)
            {
                continue;
            }
            if page_keys.len() + listing.common_prefixes.len() >= query.max_keys {
                listing.next_marker = last_item;
                break;
            }
            match rolled {
                Some(common) => {
                    last_item = Some(ListMarker::Prefix(common.clone()));
                    listing.common_prefixes.push(common);
                }
                None => {
                    last_item = Some(ListMarker::Key(key.clone()));
                    page_keys.push(key.clone());
                }
            }
        }
        for key in page_keys {
            match object_file::open(&dir.join(key_to_file_name(&key)), Purpose::Meta).await? {
                Some((_, meta)) => listing.objects.push(meta),
                // Deleted since the directory was read.
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
        let Some((mut file, meta)) = object_file::open(&dir.join("upload"), Purpose::Body).await?
        else {
            return Err(ObjectStoreError::NoSuchUpload(upload_id.to_owned()));
        };
        let mut json = vec![0; meta.size as usize];
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_exact(&mut json))
            .map_err(io_err("read", &dir))?;
        let info: UploadInfo =
            serde_json::from_slice(&json).map_err(|e| ObjectStoreError::Corrupt {
                path: dir.clone(),
                reason: e.to_string(),
            })?;
        if info.key != key {
            return Err(ObjectStoreError::NoSuchUpload(upload_id.to_owned()));
        }
        Ok(info)
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
        };
        pending.publish(&meta, &dir.join(part_file(number))).await?;
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
    /// every part but the last at least 5 MiB) and removes the upload. The object is
    /// published by one rename, like a single PUT.
    pub async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        wanted: &[(i32, String)],
    ) -> Result<ObjectMeta, ObjectStoreError> {
        let info = self.upload_info(bucket, key, upload_id).await?;
        let upload_dir = self.upload_dir(bucket, upload_id)?;
        // Check every part before writing anything; each is opened again to be copied and
        // checked again then, so a part the client replaces meanwhile is refused, not mixed in.
        let mut chosen = Vec::with_capacity(wanted.len());
        for (i, (number, etag)) in wanted.iter().enumerate() {
            if i > 0 && wanted[i - 1].0 >= *number {
                return Err(ObjectStoreError::InvalidPartOrder);
            }
            let (_, part) = open_part(&upload_dir, *number, etag, Purpose::Meta).await?;
            if i + 1 < wanted.len() && part.size < MIN_PART_SIZE {
                return Err(ObjectStoreError::EntityTooSmall(*number));
            }
            chosen.push((*number, part.etag));
        }
        if chosen.is_empty() {
            return Err(ObjectStoreError::InvalidPart(0));
        }
        let dir = self.objects_dir(bucket).await?;
        let mut pending = PendingFile::new(&dir, Hashing::Skip);
        let mut md5s = Md5::new();
        for (number, etag) in &chosen {
            let (file, part) = open_part(&upload_dir, *number, etag, Purpose::Body).await?;
            let path = upload_dir.join(part_file(*number));
            copy_body(file, &path, part.size, &mut pending).await?;
            let raw = hex::decode(etag).map_err(|e| ObjectStoreError::Corrupt {
                path,
                reason: format!("part ETag: {e}"),
            })?;
            md5s.update(&raw);
        }
        let meta = ObjectMeta {
            key: key.to_owned(),
            size: pending.size(),
            etag: format!("{}-{}", hex::encode(md5s.finalize()), chosen.len()),
            content_type: info.options.content_type,
            metadata: info.options.metadata,
            last_modified_ms: now_ms(),
            parts: u32::try_from(chosen.len()).ok(),
        };
        pending
            .publish(&meta, &dir.join(key_to_file_name(key)))
            .await?;
        let _ = tokio::fs::remove_dir_all(&upload_dir).await;
        Ok(meta)
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
}

fn part_file(number: i32) -> String {
    format!("part-{number:05}")
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
    match object_file::open(&upload_dir.join(part_file(number)), purpose).await? {
        Some((file, part)) if part.etag == etag.trim_matches('"') => Ok((file, part)),
        _ => Err(ObjectStoreError::InvalidPart(number)),
    }
}

/// Appends the first `size` bytes of an open object or part file (`path` names it in errors)
/// to the pending object.
async fn copy_body(
    file: std::fs::File,
    path: &Path,
    size: u64,
    pending: &mut PendingFile,
) -> Result<(), ObjectStoreError> {
    let mut file = file;
    // Reading the metadata moved the offset; lseek itself never waits on the disk.
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("seek", path))?;
    let file = tokio::fs::File::from_std(file);
    let mut body = tokio_util::io::ReaderStream::with_capacity(
        tokio::io::AsyncReadExt::take(file, size),
        1 << 20,
    );
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(io_err("read", path))?;
        pending.write(chunk).await?;
    }
    Ok(())
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
    use super::*;

    const DAY: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

    fn body(bytes: &'static [u8]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        futures::stream::iter([Ok(Bytes::from_static(bytes))])
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
