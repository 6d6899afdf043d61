//! MD5, the digest behind ETags and `Content-MD5`, from the system's libcrypto.
//!
//! Every PUT hashes its whole body in one stream that cannot be split, so a single upload can
//! go no faster than MD5 itself. libcrypto's assembly is about a fifth faster than the
//! pure-Rust digest, which remains the fallback where libcrypto refuses MD5 (FIPS mode).
//! Short inputs (key names, the ETags of parts) go to the pure-Rust digest directly.

use openssl::hash::{Hasher, MessageDigest};

/// An MD5 computation in progress.
pub struct Md5(Engine);

enum Engine {
    Crypto(Hasher),
    Rust(::md5::Md5),
    /// libcrypto failed midway; the state is lost and the digest cannot be answered.
    Failed(openssl::error::ErrorStack),
}

impl Default for Md5 {
    fn default() -> Self {
        Md5::new()
    }
}

impl Md5 {
    /// Starts a digest.
    pub fn new() -> Md5 {
        Md5(match Hasher::new(MessageDigest::md5()) {
            Ok(hasher) => Engine::Crypto(hasher),
            Err(_) => Engine::Rust(::md5::Digest::new()),
        })
    }

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.0 {
            Engine::Crypto(hasher) => {
                if let Err(e) = hasher.update(bytes) {
                    self.0 = Engine::Failed(e);
                }
            }
            Engine::Rust(md5) => ::md5::Digest::update(md5, bytes),
            Engine::Failed(_) => {}
        }
    }

    /// The digest of everything added.
    pub fn finish(self) -> Result<[u8; 16], openssl::error::ErrorStack> {
        match self.0 {
            Engine::Crypto(mut hasher) => {
                let digest = hasher.finish()?;
                let mut out = [0; 16];
                out.copy_from_slice(&digest);
                Ok(out)
            }
            Engine::Rust(md5) => Ok(::md5::Digest::finalize(md5).into()),
            Engine::Failed(e) => Err(e),
        }
    }
}

/// The MD5 of `bytes`.
pub fn digest(bytes: &[u8]) -> Result<[u8; 16], openssl::error::ErrorStack> {
    let mut md5 = Md5::new();
    md5.update(bytes);
    md5.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_engines_agree_with_the_reference_digests() {
        // RFC 1321, appendix A.5.
        let cases: [(&[u8], &str); 3] = [
            (b"", "d41d8cd98f00b204e9800998ecf8427e"),
            (b"abc", "900150983cd24fb0d6963f7d28e17f72"),
            (
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(hex::encode(digest(input).expect("digest")), want);
            let mut rust = Md5(Engine::Rust(::md5::Digest::new()));
            rust.update(input);
            assert_eq!(hex::encode(rust.finish().expect("digest")), want);
        }
    }

    #[test]
    fn a_digest_fed_in_pieces_matches_one_fed_whole() {
        let body: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
        let mut pieces = Md5::new();
        body.chunks(4093).for_each(|chunk| pieces.update(chunk));
        assert_eq!(
            pieces.finish().expect("digest"),
            digest(&body).expect("digest")
        );
    }
}
