//! Errors of the object store's disk backend.

use std::path::PathBuf;

/// What went wrong in the object store.
#[derive(Debug, thiserror::Error)]
pub enum ObjectStoreError {
    /// The bucket does not exist on this node.
    #[error("bucket `{0}` does not exist")]
    NoSuchBucket(String),
    /// A bucket of that name already exists.
    #[error("bucket `{0}` already exists")]
    BucketExists(String),
    /// The bucket name breaks S3's naming rules.
    #[error("invalid bucket name `{name}`: {reason}")]
    InvalidBucketName {
        /// The name given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// No object under that key.
    #[error("no object under key `{0}`")]
    NoSuchKey(String),
    /// The multipart upload id is unknown (completed, aborted or never created).
    #[error("no multipart upload `{0}`")]
    NoSuchUpload(String),
    /// A completed upload named a part that was not uploaded or whose ETag differs.
    #[error("part {0} was not uploaded or its ETag does not match")]
    InvalidPart(i32),
    /// Parts of a completed upload were not in ascending order.
    #[error("parts must be listed in ascending order of part number")]
    InvalidPartOrder,
    /// A part other than the last was smaller than S3's 5 MiB minimum.
    #[error("part {0} is smaller than the 5 MiB minimum for all but the last part")]
    EntityTooSmall(i32),
    /// The body did not match the Content-MD5 the client sent.
    #[error("the body does not match Content-MD5")]
    BadDigest,
    /// A stored object file is damaged.
    #[error("object file {path} is damaged: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The request body stream failed.
    #[error("reading the request body failed: {0}")]
    Body(String),
    /// Something in the store itself failed (a worker task, serialising a record).
    #[error("object store failure: {0}")]
    Internal(String),
    /// A filesystem operation failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Attaches the action and path to an I/O error.
pub(crate) fn io_err(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> ObjectStoreError {
    let path = path.to_path_buf();
    move |source| ObjectStoreError::Io {
        action,
        path,
        source,
    }
}
