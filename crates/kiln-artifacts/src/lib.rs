//! Content-addressed artifact store on local disk: atomic writes, chunked resumable uploads,
//! deterministic directory artifacts and ed25519 signing.
//!
//! An artifact is named by the SHA-256 of its bytes ([`Digest`], `sha256:<hex>`) and stored
//! once, at `root/objects/sha256/<hex>`. Every write goes to a temporary file under `root/tmp/`
//! and is renamed into place only after it was hashed and fsynced, so a crash at any moment
//! never leaves a partial object where a reader could see it; [`ArtifactStore::open`] sweeps
//! what crashed writers left behind.
//!
//! A directory artifact is a [`kiln_archive`] tar (deterministic: same files, same bytes),
//! compressed with zstd at level 3 on one thread, fed in fixed-size blocks so the compressed
//! bytes do not depend on how the tar arrived. Packing a tree here ([`ArtifactStore::put_dir`],
//! [`pack_dir_to`]) and compressing the tar the guest agent streams for the same tree
//! ([`ArtifactStore::put_tar_stream`]) therefore give the same digest.
//!
//! Large payloads arrive as chunked uploads ([`ArtifactStore::create_upload`]) whose state
//! lives on disk under `root/uploads/<id>/`, so a client resumes across restarts of either
//! side. [`SigningKey`] signs what the control plane vouches for (a release record, say);
//! [`verify`] checks such a signature against a public key.

#![forbid(unsafe_code)]

mod digest;
mod error;
mod pipeline;
mod signing;
mod store;
mod uploads;

pub use digest::{Digest, ParseDigestError};
pub use error::ArtifactError;
pub use kiln_archive::{PackOptions, PackStats};
pub use pipeline::pack_dir_to;
pub use signing::{SigningKey, verify};
pub use store::{ArtifactStore, DEFAULT_PART_SIZE, ObjectReader, StoreOptions, TarStream};
pub use uploads::{PartInfo, UploadInfo, UploadStatus};
