//! Secrets at rest: app secret values are sealed with ChaCha20-Poly1305 under a key that
//! lives only in the data dir (0600), so a copy of the metadata store alone reveals nothing.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

/// Prefix of sealed values, naming the scheme so it can change later.
const SEALED_PREFIX: &str = "sealed:v1:";

/// Seals and opens secret values.
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

/// Why a secret could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key file could not be read or written.
    #[error("secrets key {path}: {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold 32 bytes.
    #[error("secrets key {0} is not 32 bytes: restore it from a backup")]
    BadKey(String),
    /// The sealed value is damaged or was sealed under another key.
    #[error("a sealed value cannot be opened: it was damaged or sealed under another key")]
    Open,
}

impl Sealer {
    /// Loads the key at `path`, creating it (random, 0600) on first use.
    pub fn load_or_create(path: &Path) -> Result<Sealer, SealError> {
        let shown = || path.display().to_string();
        let key = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = vec![0u8; 32];
                rand::rng().fill_bytes(&mut key);
                crate::write_private_file(path, &key).map_err(|source| SealError::KeyFile {
                    path: shown(),
                    source,
                })?;
                key
            }
            Err(source) => {
                return Err(SealError::KeyFile {
                    path: shown(),
                    source,
                });
            }
        };
        let key: [u8; 32] = key.try_into().map_err(|_| SealError::BadKey(shown()))?;
        Ok(Sealer {
            cipher: ChaCha20Poly1305::new(&Key::from(key)),
        })
    }

    /// Seals `plain` with a fresh random nonce.
    pub fn seal(&self, plain: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(&Nonce::from(nonce), plain.as_bytes())
            .expect("ChaCha20-Poly1305 encryption of an in-memory value cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{SEALED_PREFIX}{}", STANDARD.encode(out))
    }

    /// Opens a value made by [`Sealer::seal`].
    pub fn open(&self, sealed: &str) -> Result<String, SealError> {
        let bytes = sealed
            .strip_prefix(SEALED_PREFIX)
            .and_then(|b64| STANDARD.decode(b64).ok())
            .filter(|b| b.len() > 12)
            .ok_or(SealError::Open)?;
        let nonce: [u8; 12] = bytes[..12].try_into().map_err(|_| SealError::Open)?;
        let plain = self
            .cipher
            .decrypt(&Nonce::from(nonce), &bytes[12..])
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain).map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sealer = Sealer::load_or_create(&dir.path().join("k")).expect("key");
        let sealed = sealer.seal("s3cr3t");
        assert!(!sealed.contains("s3cr3t"));
        assert_ne!(sealed, sealer.seal("s3cr3t"), "fresh nonce every time");
        assert_eq!(sealer.open(&sealed).expect("opens"), "s3cr3t");
        let again = Sealer::load_or_create(&dir.path().join("k")).expect("same key");
        assert_eq!(again.open(&sealed).expect("opens after reload"), "s3cr3t");
        let other = Sealer::load_or_create(&dir.path().join("other")).expect("key");
        assert!(other.open(&sealed).is_err());
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push('A');
        assert!(sealer.open(&tampered).is_err() || tampered == sealed);
    }
}
