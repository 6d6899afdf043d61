//! The S3 operations, answered from the disk backend. s3s has already parsed the request,
//! checked its signature and run [`crate::keys::BucketAccess`]; this maps inputs to
//! [`ObjectStore`] calls and its errors to the S3 error codes clients expect.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, Bucket, CommonPrefix,
    CompleteMultipartUploadInput, CompleteMultipartUploadOutput, CopyObjectInput, CopyObjectOutput,
    CopyObjectResult, CopySource, CreateBucketInput, CreateBucketOutput,
    CreateMultipartUploadInput, CreateMultipartUploadOutput, DeleteBucketInput, DeleteBucketOutput,
    DeleteObjectInput, DeleteObjectOutput, DeleteObjectsInput, DeleteObjectsOutput, DeletedObject,
    ETag, EncodingType, GetBucketLocationInput, GetBucketLocationOutput, GetObjectInput,
    GetObjectOutput, HeadBucketInput, HeadBucketOutput, HeadObjectInput, HeadObjectOutput,
    ListBucketsInput, ListBucketsOutput, ListObjectsV2Input, ListObjectsV2Output, ListPartsInput,
    ListPartsOutput, Metadata, MetadataDirective, Object, Part, PutObjectInput, PutObjectOutput,
    StreamingBlob, Timestamp, UploadPartInput, UploadPartOutput,
};
use s3s::{S3, S3Error, S3Request, S3Response, S3Result, s3_error};

use crate::error::ObjectStoreError;
use crate::keys::KeyRing;
use crate::object_file::ObjectMeta;
use crate::store::{ListMarker, ListQuery, MAX_PART_NUMBER, ObjectStore, PutOptions};

/// S3's cap on keys per listing page.
const MAX_KEYS: i32 = 1000;

/// The S3 front of one node's object store.
#[derive(Clone, Debug)]
pub(crate) struct KilnS3 {
    pub(crate) store: ObjectStore,
    pub(crate) keys: KeyRing,
}

/// Maps a backend error to the S3 error a client expects; unexpected ones are logged once
/// here and answered as `InternalError` without detail.
fn s3_err(err: ObjectStoreError) -> S3Error {
    match err {
        ObjectStoreError::NoSuchBucket(_) => s3_error!(NoSuchBucket),
        ObjectStoreError::BucketExists(_) => s3_error!(BucketAlreadyExists),
        ObjectStoreError::InvalidBucketName { .. } => s3_error!(InvalidBucketName),
        ObjectStoreError::NoSuchKey(_) => s3_error!(NoSuchKey),
        ObjectStoreError::NoSuchUpload(_) => s3_error!(NoSuchUpload),
        ObjectStoreError::InvalidPart(_) => s3_error!(InvalidPart, "{err}"),
        ObjectStoreError::InvalidPartOrder => s3_error!(InvalidPartOrder),
        ObjectStoreError::EntityTooSmall(_) => s3_error!(EntityTooSmall, "{err}"),
        ObjectStoreError::BadDigest => s3_error!(BadDigest),
        ObjectStoreError::Body(_) => s3_error!(IncompleteBody, "{err}"),
        ObjectStoreError::Corrupt { .. }
        | ObjectStoreError::Io { .. }
        | ObjectStoreError::Internal(_) => {
            tracing::error!(error = %err, source = ?std::error::Error::source(&err), "object store failure");
            s3_error!(InternalError)
        }
    }
}

fn timestamp(ms: i64) -> Timestamp {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    Timestamp::from(at)
}

fn etag(value: &str) -> ETag {
    ETag::Strong(value.to_owned())
}

fn size(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn metadata(meta: &ObjectMeta) -> Option<Metadata> {
    (!meta.metadata.is_empty()).then(|| meta.metadata.clone().into_iter().collect())
}

fn put_options(
    content_type: Option<String>,
    user: Option<Metadata>,
    content_md5: Option<&str>,
) -> S3Result<PutOptions> {
    let content_md5 = match content_md5 {
        None => None,
        Some(b64) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
                .and_then(|raw| <[u8; 16]>::try_from(raw).ok())
                .ok_or_else(|| s3_error!(InvalidDigest))?;
            Some(raw)
        }
    };
    Ok(PutOptions {
        content_type,
        metadata: user
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.to_lowercase(), v))
            .collect::<BTreeMap<_, _>>(),
        content_md5,
    })
}

/// Percent-encodes for `encoding-type=url` listings (`/` kept, as S3 does).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A continuation token: the marker's kind (`k`ey or rolled-up `p`refix), then the marker.
fn encode_token(marker: &ListMarker) -> String {
    let raw = match marker {
        ListMarker::Key(key) => format!("k{key}"),
        ListMarker::Prefix(prefix) => format!("p{prefix}"),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_token(token: &str) -> S3Result<ListMarker> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok());
    match raw.as_ref().and_then(|raw| raw.split_at_checked(1)) {
        Some(("k", key)) => Ok(ListMarker::Key(key.to_owned())),
        Some(("p", prefix)) => Ok(ListMarker::Prefix(prefix.to_owned())),
        _ => Err(s3_error!(
            InvalidArgument,
            "The continuation token is not valid"
        )),
    }
}

#[async_trait::async_trait]
impl S3 for KilnS3 {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let own = req
            .credentials
            .as_ref()
            .and_then(|c| self.keys.get(&c.access_key))
            .map(|k| k.bucket);
        let mut buckets = Vec::new();
        if let Some(name) = own
            && self.store.bucket_exists(&name).await
        {
            buckets.push(Bucket {
                name: Some(name),
                ..Default::default()
            });
        }
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        _req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        Err(s3_error!(
            AccessDenied,
            "Buckets are created through the platform API (`kiln bucket create`)"
        ))
    }

    async fn delete_bucket(
        &self,
        _req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        Err(s3_error!(
            AccessDenied,
            "Buckets are deleted through the platform API (`kiln bucket delete`)"
        ))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        if !self.store.bucket_exists(&req.input.bucket).await {
            return Err(s3_error!(NoSuchBucket));
        }
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        if !self.store.bucket_exists(&req.input.bucket).await {
            return Err(s3_error!(NoSuchBucket));
        }
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        let options = put_options(
            input.content_type,
            input.metadata,
            input.content_md5.as_deref(),
        )?;
        let body = input.body.unwrap_or_else(|| {
            StreamingBlob::wrap(futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>())
        });
        let meta = self
            .store
            .put_object(&input.bucket, &input.key, body, options)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag(&meta.etag)),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        let CopySource::Bucket {
            bucket: source_bucket,
            key: source_key,
            version_id,
        } = &input.copy_source
        else {
            return Err(s3_error!(
                NotImplemented,
                "Copy sources must be bucket/key; access points are not supported"
            ));
        };
        if version_id.as_deref().is_some_and(|v| v != "null") {
            return Err(s3_error!(
                NotImplemented,
                "Buckets are not versioned; copy the current object without a versionId"
            ));
        }
        // The access check has seen only the target; a key pair opens its own bucket alone.
        if **source_bucket != *input.bucket {
            return Err(s3_error!(
                AccessDenied,
                "This key belongs to another bucket than the copy source"
            ));
        }
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        if **source_key == *input.key && !replace {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata"
            ));
        }
        let options = if replace {
            Some(put_options(input.content_type, input.metadata, None)?)
        } else {
            None
        };
        let meta = self
            .store
            .copy_object(&input.bucket, source_key, &input.key, options)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&meta.etag)),
                last_modified: Some(timestamp(meta.last_modified_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let object = self
            .store
            .get_object(&input.bucket, &input.key)
            .await
            .map_err(s3_err)?;
        let meta = object.meta.clone();
        let range = match &input.range {
            None => None,
            Some(range) => Some(
                range
                    .check(meta.size)
                    .map_err(|_| s3_error!(InvalidRange))?,
            ),
        };
        let content_range = range.as_ref().map(|r| {
            format!(
                "bytes {}-{}/{}",
                r.start,
                r.end.saturating_sub(1),
                meta.size
            )
        });
        let length = range.as_ref().map_or(meta.size, |r| r.end - r.start);
        let stream = object.into_stream(range).map_err(s3_err)?;
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(stream)),
            content_length: Some(size(length)),
            content_range,
            content_type: meta.content_type.clone(),
            e_tag: Some(etag(&meta.etag)),
            last_modified: Some(timestamp(meta.last_modified_ms)),
            metadata: metadata(&meta),
            accept_ranges: Some("bytes".into()),
            parts_count: meta.parts.and_then(|p| i32::try_from(p).ok()),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let meta = self
            .store
            .head_object(&req.input.bucket, &req.input.key)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(size(meta.size)),
            content_type: meta.content_type.clone(),
            e_tag: Some(etag(&meta.etag)),
            last_modified: Some(timestamp(meta.last_modified_ms)),
            metadata: metadata(&meta),
            accept_ranges: Some("bytes".into()),
            parts_count: meta.parts.and_then(|p| i32::try_from(p).ok()),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.store
            .delete_object(&req.input.bucket, &req.input.key)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        // As in S3: a key that fails is reported in the answer and the others still go; only
        // a missing bucket fails the whole request.
        let (mut deleted, mut failed) = (Vec::new(), Vec::new());
        for object in req.input.delete.objects {
            match self
                .store
                .delete_object(&req.input.bucket, &object.key)
                .await
            {
                Ok(()) => deleted.push(DeletedObject {
                    key: Some(object.key),
                    ..Default::default()
                }),
                Err(e @ ObjectStoreError::NoSuchBucket(_)) => return Err(s3_err(e)),
                Err(e) => {
                    let e = s3_err(e);
                    failed.push(s3s::dto::Error {
                        code: Some(e.code().as_str().to_owned()),
                        key: Some(object.key),
                        message: e.message().map(str::to_owned),
                        ..Default::default()
                    });
                }
            }
        }
        let quiet = req.input.delete.quiet.unwrap_or(false);
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: (!quiet).then_some(deleted),
            errors: (!failed.is_empty()).then_some(failed),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let max_keys = input.max_keys.unwrap_or(MAX_KEYS).clamp(0, MAX_KEYS);
        let after = match &input.continuation_token {
            Some(token) => Some(decode_token(token)?),
            None => input.start_after.clone().map(ListMarker::Key),
        };
        let prefix = input.prefix.clone().unwrap_or_default();
        let listing = self
            .store
            .list_objects(
                &input.bucket,
                ListQuery {
                    prefix: &prefix,
                    delimiter: input.delimiter.as_deref(),
                    after: after.as_ref(),
                    max_keys: usize::try_from(max_keys).unwrap_or(0),
                },
            )
            .await
            .map_err(s3_err)?;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let enc = |s: &str| if url { url_encode(s) } else { s.to_owned() };
        let key_count = listing.objects.len() + listing.common_prefixes.len();
        let contents: Vec<Object> = listing
            .objects
            .iter()
            .map(|meta| Object {
                key: Some(enc(&meta.key)),
                size: Some(size(meta.size)),
                e_tag: Some(etag(&meta.etag)),
                last_modified: Some(timestamp(meta.last_modified_ms)),
                ..Default::default()
            })
            .collect();
        let common_prefixes: Vec<CommonPrefix> = listing
            .common_prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(enc(p)),
            })
            .collect();
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket.clone()),
            prefix: Some(enc(&prefix)),
            delimiter: input.delimiter.as_deref().map(enc),
            max_keys: Some(max_keys),
            key_count: Some(i32::try_from(key_count).unwrap_or(i32::MAX)),
            continuation_token: input.continuation_token.clone(),
            start_after: input.start_after.as_deref().map(enc),
            is_truncated: Some(listing.next_marker.is_some()),
            next_continuation_token: listing.next_marker.as_ref().map(encode_token),
            contents: (!contents.is_empty()).then_some(contents),
            common_prefixes: (!common_prefixes.is_empty()).then_some(common_prefixes),
            encoding_type: input.encoding_type.clone(),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        let options = put_options(input.content_type, input.metadata, None)?;
        let upload_id = self
            .store
            .create_upload(&input.bucket, &input.key, options)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        if !(1..=MAX_PART_NUMBER).contains(&input.part_number) {
            return Err(s3_error!(
                InvalidArgument,
                "Part number must be between 1 and 10000"
            ));
        }
        let md5 = put_options(None, None, input.content_md5.as_deref())?.content_md5;
        let body = input.body.unwrap_or_else(|| {
            StreamingBlob::wrap(futures::stream::empty::<Result<bytes::Bytes, std::io::Error>>())
        });
        let part = self
            .store
            .upload_part(
                &input.bucket,
                &input.key,
                &input.upload_id,
                input.part_number,
                body,
                md5,
            )
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag(&part.etag)),
            ..Default::default()
        }))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        let marker = input.part_number_marker.unwrap_or(0);
        let max_parts = input.max_parts.unwrap_or(1000).clamp(1, 1000);
        let all = self
            .store
            .list_parts(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(s3_err)?;
        let rest: Vec<_> = all.into_iter().filter(|p| p.number > marker).collect();
        let truncated = rest.len() > max_parts as usize;
        let page: Vec<Part> = rest
            .into_iter()
            .take(max_parts as usize)
            .map(|p| Part {
                part_number: Some(p.number),
                size: Some(size(p.size)),
                e_tag: Some(etag(&p.etag)),
                last_modified: Some(timestamp(p.last_modified_ms)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max_parts),
            part_number_marker: Some(marker),
            is_truncated: Some(truncated),
            next_part_number_marker: page.last().and_then(|p| p.part_number),
            parts: Some(page),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let parts = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        let mut wanted = Vec::with_capacity(parts.len());
        for part in parts {
            let (Some(number), Some(tag)) = (part.part_number, part.e_tag) else {
                return Err(s3_error!(
                    MalformedXML,
                    "Every part needs a PartNumber and an ETag"
                ));
            };
            wanted.push((number, tag.value().to_owned()));
        }
        let meta = self
            .store
            .complete_upload(&input.bucket, &input.key, &input.upload_id, &wanted)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(etag(&meta.etag)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.store
            .abort_upload(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }
}
