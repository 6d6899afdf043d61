//! Bucket names (S3's rules) and how object keys become file names.

use long_names::hash_name;

use crate::error::ObjectStoreError;

/// Checks a bucket name against S3's rules: 3–63 characters of lowercase letters, digits and
/// hyphens (dots are refused too: they break virtual-host addressing over TLS), starting and
/// ending with a letter or digit.
pub fn validate_bucket_name(name: &str) -> Result<(), ObjectStoreError> {
    let invalid = |reason| ObjectStoreError::InvalidBucketName {
        name: name.to_owned(),
        reason,
    };
    if !(3..=63).contains(&name.len()) {
        return Err(invalid("it must be 3 to 63 characters long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid(
            "it may contain only lowercase letters, digits and hyphens",
        ));
    }
    let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !edge_ok(name.bytes().next()) || !edge_ok(name.bytes().last()) {
        return Err(invalid("it must start and end with a letter or a digit"));
    }
    if name.starts_with("xn--") || name.ends_with("-s3alias") {
        return Err(invalid(
            "the prefix `xn--` and suffix `-s3alias` are reserved",
        ));
    }
    Ok(())
}

/// File names longer than this are replaced by a hash of the key (most filesystems stop at 255).
const MAX_PLAIN_NAME: usize = 200;

/// The file name an object key is stored under. Bytes other than letters, digits, `-`, `_`
/// and `.` are percent-encoded, so `/` and `..` never reach the filesystem; a leading `.` is
/// encoded too, keeping `.`-names free for temporary files. Long names become `~` + a hash
/// (`~` itself is always encoded, so the two forms never meet); the key is then read back
/// from the object's trailer.
pub(crate) fn key_to_file_name(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for (i, b) in key.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
        if plain {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.len() > MAX_PLAIN_NAME {
        format!("~{}", hash_name(key))
    } else {
        out
    }
}

/// The key of a plain (not hashed) file name; `None` for hashed names, temporary files and
/// names that are not ours.
pub(crate) fn file_name_to_key(name: &str) -> Option<String> {
    if name.starts_with('~') || name.starts_with('.') {
        return None;
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = name.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether a file name is a hashed one whose key lives in the trailer.
pub(crate) fn is_hashed_name(name: &str) -> bool {
    name.starts_with('~')
}

mod long_names {
    use md5::{Digest, Md5};

    /// A stable short name for a long key. MD5 is enough: this is a file name, not a
    /// security boundary, and the full key in the trailer is checked on read.
    pub(super) fn hash_name(key: &str) -> String {
        hex::encode(Md5::digest(key.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_s3_rules() {
        for ok in ["abc", "my-bucket-1", "0ab", &"a".repeat(63)] {
            assert!(validate_bucket_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            &"a".repeat(64),
            "My-Bucket",
            "a_b",
            "-abc",
            "abc-",
            "a.b.c",
            "xn--abc",
            "foo-s3alias",
        ] {
            assert!(validate_bucket_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_round_trip_through_file_names() {
        for key in [
            "a",
            "photos/2024/cat.jpg",
            "../../etc/passwd",
            ".hidden",
            "~h-abc",
            "ünïcode key with spaces",
            "a%2Fb",
        ] {
            let name = key_to_file_name(key);
            assert!(!name.contains('/'), "{name}");
            assert!(!name.starts_with('.'), "{name}");
            assert_eq!(file_name_to_key(&name).as_deref(), Some(key), "{name}");
        }
    }

    #[test]
    fn long_keys_are_hashed() {
        let key = "k/".repeat(300);
        let name = key_to_file_name(&key);
        assert!(is_hashed_name(&name));
        assert!(name.len() < 64);
        assert_eq!(file_name_to_key(&name), None);
    }
}
