//! The error of the artifact store and of signing.

use std::io;
use std::path::PathBuf;

use crate::{Digest, ParseDigestError};

/// Why an artifact operation failed.
///
/// The variants a caller can cause (and an API should map to a 4xx) are [`TooLarge`],
/// [`UnknownUpload`], [`BadPartNumber`], [`BadPart`], [`MissingParts`], [`DigestMismatch`],
/// [`NotFound`], [`InvalidDigest`], [`BadPublicKey`] and [`BadSignature`]; the rest are the
/// server's own trouble.
///
/// [`TooLarge`]: ArtifactError::TooLarge
/// [`UnknownUpload`]: ArtifactError::UnknownUpload
/// [`BadPartNumber`]: ArtifactError::BadPartNumber
/// [`BadPart`]: ArtifactError::BadPart
/// [`MissingParts`]: ArtifactError::MissingParts
/// [`DigestMismatch`]: ArtifactError::DigestMismatch
/// [`NotFound`]: ArtifactError::NotFound
/// [`InvalidDigest`]: ArtifactError::InvalidDigest
/// [`BadPublicKey`]: ArtifactError::BadPublicKey
/// [`BadSignature`]: ArtifactError::BadSignature
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// A filesystem operation of the store failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done ("writing", "renaming", ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading the caller's input stream failed, or it ended early.
    #[error("reading the input stream")]
    Input(#[source] io::Error),
    /// Packing a directory or unpacking an artifact failed.
    #[error(transparent)]
    Archive(#[from] kiln_archive::ArchiveError),
    /// No object with this digest is stored.
    #[error("no artifact {digest} is stored")]
    NotFound {
        /// The digest asked for.
        digest: Digest,
    },
    /// The stored object's bytes no longer hash to its name: the disk corrupted it.
    #[error("artifact {expected} is corrupt: its bytes hash to {actual}")]
    Corrupt {
        /// The object's name.
        expected: Digest,
        /// What its bytes hash to now.
        actual: Digest,
    },
    /// A string is not a well-formed digest.
    #[error(transparent)]
    InvalidDigest(#[from] ParseDigestError),
    /// A declared upload is larger than allowed.
    #[error("{size} bytes is more than the limit of {max} bytes")]
    TooLarge {
        /// The declared size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// No upload has this id (it was never created, is malformed, or was completed or
    /// aborted).
    #[error("no upload {id:?}")]
    UnknownUpload {
        /// The id given.
        id: String,
    },
    /// A part number outside `1..=parts`.
    #[error("part {part} is out of range: the upload has parts 1 to {parts}")]
    BadPartNumber {
        /// The number given.
        part: u32,
        /// How many parts the upload has.
        parts: u32,
    },
    /// A part of the wrong size: every part is exactly the part size, the last one the
    /// remainder.
    #[error("part {part} must be {expected} bytes, got {got}")]
    BadPart {
        /// The part's number.
        part: u32,
        /// Its required size.
        expected: u64,
        /// The size received.
        got: u64,
    },
    /// Completing an upload before every part arrived.
    #[error("parts {0:?} have not been received")]
    MissingParts(Vec<u32>),
    /// The completed upload's bytes do not hash to the digest declared when it was created.
    #[error("the upload hashes to {actual}, not the declared {declared}")]
    DigestMismatch {
        /// The digest declared at creation.
        declared: Digest,
        /// What the parts hash to.
        actual: Digest,
    },
    /// [`StoreOptions::part_size`](crate::StoreOptions::part_size) is zero.
    #[error("the part size must be at least one byte")]
    BadPartSize,
    /// An upload's state file is unreadable.
    #[error("upload state {} is damaged", path.display())]
    BadUploadState {
        /// The state file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A signing key file does not hold a 32-byte seed.
    #[error("{} holds {len} bytes, not a 32-byte ed25519 seed", path.display())]
    BadKeyFile {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The operating system's random source failed.
    #[error("generating a key")]
    Random(#[source] rand::rand_core::OsError),
    /// A public key is not the base64 of a valid 32-byte ed25519 key.
    #[error("malformed public key: {0}")]
    BadPublicKey(&'static str),
    /// A signature is malformed or does not match the message and key.
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
    /// The runtime shut down while blocking work was queued.
    #[error("the runtime is shutting down")]
    Shutdown,
}

impl ArtifactError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
