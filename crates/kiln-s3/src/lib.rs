//! Kiln's S3-compatible object store: the `s3s` crate speaks the protocol and checks SigV4;
//! under it sits Kiln's own disk backend ([`ObjectStore`]) that publishes every object with
//! one atomic rename, and a [`KeyRing`] of per-bucket key pairs, each opening only its bucket.
#![deny(unsafe_code)]

mod api;
mod body_writer;
mod error;
mod host;
mod key_index;
mod keys;
mod mapped;
pub mod md5;
mod names;
mod object_file;
mod pending;
mod presign;
mod readers;
mod sendfile;
mod server;
mod stage;
mod store;

pub use error::ObjectStoreError;
pub use host::VirtualHosts;
pub use keys::{BucketKey, KeyRing};
pub use names::validate_bucket_name;
pub use object_file::{ObjectMeta, Segments};
pub use presign::{MAX_EXPIRY, MIN_EXPIRY, PresignError, PresignMethod, presign};
pub use server::S3Endpoint;
pub use store::{
    ListQuery, Listing, MIN_PART_SIZE, ObjectStore, OpenObject, PartInfo, PutOptions, UploadInfo,
};

/// The region every Kiln bucket reports; SigV4 needs one, and clients default to it.
pub const REGION: &str = "us-east-1";

/// `n` random bytes as lowercase hex (temporary names, upload ids).
pub(crate) fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand::Rng::fill(&mut rand::rng(), bytes.as_mut_slice());
    hex::encode(bytes)
}
