//! Per-bucket key pairs: every bucket has its own access key id and secret, and a key opens
//! only its own bucket. The control plane owns the keys (sealed in its store) and loads them
//! into a [`KeyRing`]; the S3 front end only looks them up.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rand::Rng;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{S3Result, s3_error};

/// A bucket's key pair.
#[derive(Clone, PartialEq, Eq)]
pub struct BucketKey {
    /// The bucket the key opens.
    pub bucket: String,
    /// Public half, e.g. `KILN3F…` (20 characters, like AWS's).
    pub access_key_id: String,
    /// Secret half (40 characters).
    pub secret_access_key: String,
}

impl std::fmt::Debug for BucketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketKey")
            .field("bucket", &self.bucket)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl BucketKey {
    /// A fresh random key pair for `bucket`.
    pub fn generate(bucket: &str) -> BucketKey {
        const ID_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        const SECRET_CHARS: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut rng = rand::rng();
        let mut pick = |alphabet: &[u8], n: usize| -> String {
            (0..n)
                .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
                .collect()
        };
        BucketKey {
            bucket: bucket.to_owned(),
            access_key_id: format!("KILN{}", pick(ID_CHARS, 16)),
            secret_access_key: pick(SECRET_CHARS, 40),
        }
    }
}

/// Access key id → key pair, shared by the S3 front ends of a node.
#[derive(Clone, Default, Debug)]
pub struct KeyRing {
    keys: Arc<RwLock<HashMap<String, BucketKey>>>,
}

impl KeyRing {
    /// Adds or replaces a key.
    pub fn insert(&self, key: BucketKey) {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        keys.insert(key.access_key_id.clone(), key);
    }

    /// Removes every key of a bucket.
    pub fn remove_bucket(&self, bucket: &str) {
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        keys.retain(|_, k| k.bucket != bucket);
    }

    /// The key with this access key id.
    pub fn get(&self, access_key_id: &str) -> Option<BucketKey> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.get(access_key_id).cloned()
    }
}

#[async_trait::async_trait]
impl S3Auth for KeyRing {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.get(access_key) {
            Some(key) => Ok(SecretKey::from(key.secret_access_key)),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}

/// Lets a signed request through only to the bucket its key belongs to.
#[derive(Clone, Debug)]
pub(crate) struct BucketAccess {
    pub(crate) keys: KeyRing,
}

#[async_trait::async_trait]
impl S3Access for BucketAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(credentials) = cx.credentials() else {
            return Err(s3_error!(AccessDenied, "Signature is required"));
        };
        let Some(key) = self.keys.get(&credentials.access_key) else {
            return Err(s3_error!(InvalidAccessKeyId));
        };
        match cx.s3_path() {
            // ListBuckets answers with the key's own bucket only.
            S3Path::Root => Ok(()),
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. }
                if bucket.as_ref() == key.bucket =>
            {
                Ok(())
            }
            _ => Err(s3_error!(
                AccessDenied,
                "This key belongs to another bucket"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_look_like_aws_keys_and_differ() {
        let a = BucketKey::generate("one");
        let b = BucketKey::generate("one");
        assert_eq!(a.access_key_id.len(), 20);
        assert!(a.access_key_id.starts_with("KILN"));
        assert_eq!(a.secret_access_key.len(), 40);
        assert_ne!(a.access_key_id, b.access_key_id);
        assert_ne!(a.secret_access_key, b.secret_access_key);
        assert!(!format!("{a:?}").contains(&a.secret_access_key));
    }

    #[test]
    fn a_ring_forgets_a_deleted_bucket() {
        let ring = KeyRing::default();
        let key = BucketKey::generate("one");
        ring.insert(key.clone());
        assert_eq!(ring.get(&key.access_key_id), Some(key.clone()));
        ring.remove_bucket("one");
        assert_eq!(ring.get(&key.access_key_id), None);
    }
}
