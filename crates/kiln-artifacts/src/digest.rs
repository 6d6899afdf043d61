//! `sha256:<hex>`, the name of an artifact.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// The SHA-256 of an artifact's bytes, written `sha256:` and 64 lowercase hex digits.
///
/// Parsing is strict (no uppercase, no other algorithm, no surrounding space), so one artifact
/// has exactly one spelling and digests compare as strings too.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The algorithm prefix of the written form.
    pub const PREFIX: &'static str = "sha256:";

    /// A digest from its 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits, without the prefix (the object's file name).
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Why a string is not a [`Digest`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseDigestError {
    /// It does not start with `sha256:`.
    #[error("a digest starts with `sha256:`")]
    MissingPrefix,
    /// The hex part has the wrong length.
    #[error("a digest has 64 hex digits after `sha256:`, not {0}")]
    Length(usize),
    /// The hex part has a character other than `0-9a-f`.
    #[error("a digest's hex digits are lowercase `0-9a-f`")]
    NotLowercaseHex,
}

impl FromStr for Digest {
    type Err = ParseDigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .strip_prefix(Self::PREFIX)
            .ok_or(ParseDigestError::MissingPrefix)?;
        if hex.len() != 64 {
            return Err(ParseDigestError::Length(hex.len()));
        }
        // hex::decode accepts uppercase too; one spelling per digest is the point.
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ParseDigestError::NotLowercaseHex);
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex, &mut bytes).map_err(|_| ParseDigestError::NotLowercaseHex)?;
        Ok(Self(bytes))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Hashes and counts everything written through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The digest and length of what was written, and the inner writer (not flushed).
    pub(crate) fn finish(self) -> (Digest, u64, W) {
        (Digest(self.hasher.finalize().into()), self.len, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes everything read through it.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// Reads what is left, then returns the digest of everything read.
    pub(crate) fn finish(mut self) -> io::Result<Digest> {
        // Large reads: this is how whole objects are verified.
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match self.read(&mut buf) {
                Ok(0) => return Ok(Digest(self.hasher.finalize().into())),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// An incremental SHA-256 for async readers.
#[derive(Default)]
pub(crate) struct Hasher(Sha256);

impl Hasher {
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub(crate) fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_the_same_text() {
        let digest: Digest = EMPTY.parse().expect("valid");
        assert_eq!(digest.to_string(), EMPTY);
        assert_eq!(digest, Digest::of(b""));
        assert_eq!(digest.hex(), &EMPTY[7..]);
    }

    #[test]
    fn malformed_digests_are_refused() {
        let upper = EMPTY.replace('e', "E");
        let long = format!("{EMPTY}0");
        let cases: &[(&str, ParseDigestError)] = &[
            ("", ParseDigestError::MissingPrefix),
            (&EMPTY[7..], ParseDigestError::MissingPrefix),
            (
                "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                ParseDigestError::MissingPrefix,
            ),
            (
                "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                ParseDigestError::MissingPrefix,
            ),
            (
                " sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                ParseDigestError::MissingPrefix,
            ),
            ("sha256:", ParseDigestError::Length(0)),
            ("sha256:abc", ParseDigestError::Length(3)),
            (&long, ParseDigestError::Length(65)),
            (&upper, ParseDigestError::NotLowercaseHex),
            (
                "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                ParseDigestError::NotLowercaseHex,
            ),
            (
                "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85 ",
                ParseDigestError::NotLowercaseHex,
            ),
            (
                "sha256:+3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                ParseDigestError::NotLowercaseHex,
            ),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Digest>().as_ref(), Err(want), "{text:?}");
        }
        // Multi-byte characters must not be mistaken for hex digits by a length check.
        let wide = format!("sha256:{}", "é".repeat(32));
        assert_eq!(
            wide.parse::<Digest>(),
            Err(ParseDigestError::NotLowercaseHex)
        );
    }

    #[test]
    fn serde_uses_the_text_form() {
        let digest = Digest::of(b"");
        let json = serde_json::to_string(&digest).expect("serialize");
        assert_eq!(json, format!("\"{EMPTY}\""));
        let back: Digest = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, digest);
        let err = serde_json::from_str::<Digest>("\"sha256:nope\"").expect_err("refused");
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }
}
