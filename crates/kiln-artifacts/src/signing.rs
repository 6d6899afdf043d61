//! ed25519 signing with a key kept in a file, and verification against a public key.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Signer, VerifyingKey};
use rand::TryRngCore;

use crate::ArtifactError;
use crate::store::sync_dir;

/// Length of an ed25519 seed, the whole content of a key file.
const SEED_LEN: usize = 32;

/// An ed25519 key that signs what the platform vouches for (a release record, say).
///
/// Signatures and the public key are standard base64 (with padding): 88 and 44 characters.
/// Its `Debug` shows only the public key.
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    /// Loads the key whose 32-byte seed is at `path`, or creates one there: random, written
    /// with mode 0600 to a temporary file that is fsynced and then linked into place, so a
    /// crash never leaves a partial key. Concurrent creators agree on one key: the first link
    /// wins and the others load it. Missing parent directories are created.
    pub fn load_or_create(path: &Path) -> Result<Self, ArtifactError> {
        match Self::load(path) {
            Err(ArtifactError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            loaded => return loaded,
        }
        let parent = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        fs::create_dir_all(parent)
            .map_err(|source| ArtifactError::io("creating", parent, source))?;

        let mut seed = [0u8; SEED_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut seed)
            .map_err(ArtifactError::Random)?;
        // tempfile creates its files with mode 0600.
        let mut temp = tempfile::Builder::new()
            .prefix(".signing-key-")
            .tempfile_in(parent)
            .map_err(|source| ArtifactError::io("creating a temporary file in", parent, source))?;
        temp.write_all(&seed)
            .and_then(|()| temp.as_file().sync_all())
            .map_err(|source| ArtifactError::io("writing", temp.path(), source))?;
        let key = Self::from_seed(seed);
        match temp.persist_noclobber(path) {
            Ok(_) => {
                sync_dir(parent)?;
                Ok(key)
            }
            // Another process created it first: use theirs, so everyone signs with one key.
            Err(err) if err.error.kind() == io::ErrorKind::AlreadyExists => Self::load(path),
            Err(err) => Err(ArtifactError::io("renaming into", path, err.error)),
        }
    }

    /// The key with this seed (for tests and for keys held elsewhere).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    fn load(path: &Path) -> Result<Self, ArtifactError> {
        let mut file =
            File::open(path).map_err(|source| ArtifactError::io("opening", path, source))?;
        let len = file
            .metadata()
            .map_err(|source| ArtifactError::io("reading", path, source))?
            .len();
        if len != SEED_LEN as u64 {
            return Err(ArtifactError::BadKeyFile {
                path: path.to_owned(),
                len,
            });
        }
        let mut seed = [0u8; SEED_LEN];
        file.read_exact(&mut seed)
            .map_err(|source| ArtifactError::io("reading", path, source))?;
        Ok(Self::from_seed(seed))
    }

    /// Signs `msg`; the signature in base64.
    pub fn sign(&self, msg: &[u8]) -> String {
        BASE64.encode(self.key.sign(msg).to_bytes())
    }

    /// The public key in base64, for [`verify`].
    pub fn public_key(&self) -> String {
        BASE64.encode(self.key.verifying_key().to_bytes())
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

/// Checks that `signature` (base64) is `public_key`'s (base64) signature of `msg`.
///
/// Uses ed25519's strict verification, which refuses weak keys and malleable signatures, so
/// one message has one valid signature per key.
pub fn verify(public_key: &str, msg: &[u8], signature: &str) -> Result<(), ArtifactError> {
    let key: [u8; 32] = BASE64
        .decode(public_key)
        .map_err(|_| ArtifactError::BadPublicKey("not base64"))?
        .try_into()
        .map_err(|_| ArtifactError::BadPublicKey("not 32 bytes"))?;
    let key = VerifyingKey::from_bytes(&key)
        .map_err(|_| ArtifactError::BadPublicKey("not an ed25519 key"))?;
    let signature: [u8; 64] = BASE64
        .decode(signature)
        .map_err(|_| ArtifactError::BadSignature("not base64"))?
        .try_into()
        .map_err(|_| ArtifactError::BadSignature("not 64 bytes"))?;
    key.verify_strict(msg, &Signature::from_bytes(&signature))
        .map_err(|_| ArtifactError::BadSignature("it does not match the message and key"))
}
