//! Signing keys on disk and signature checks.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use kiln_artifacts::{ArtifactError, SigningKey, verify};

#[test]
fn a_created_key_is_private_and_loads_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("keys/release.key");
    let key = SigningKey::load_or_create(&path).expect("create");
    let meta = fs::metadata(&path).expect("stat");
    assert_eq!(meta.len(), 32);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Only the key file is left in its directory.
    assert_eq!(
        fs::read_dir(tmp.path().join("keys")).expect("list").count(),
        1
    );

    let again = SigningKey::load_or_create(&path).expect("load");
    assert_eq!(again.public_key(), key.public_key());
    assert!(!format!("{key:?}").contains(&format!("{:?}", fs::read(&path).expect("read"))));
}

#[test]
fn signatures_round_trip_and_tampering_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::load_or_create(&tmp.path().join("k")).expect("create");
    let public = key.public_key();
    let msg = b"release rel_1 sha256:abc";
    let signature = key.sign(msg);
    assert_eq!(signature.len(), 88);
    assert_eq!(public.len(), 44);
    verify(&public, msg, &signature).expect("valid");

    let err =
        verify(&public, b"release rel_1 sha256:abd", &signature).expect_err("tampered message");
    assert!(matches!(err, ArtifactError::BadSignature(_)), "{err}");

    // Flip one character of the signature, keeping it valid base64 of 64 bytes.
    let mut tampered = signature.clone().into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let err = verify(&public, msg, &tampered).expect_err("tampered signature");
    assert!(matches!(err, ArtifactError::BadSignature(_)), "{err}");

    let other = SigningKey::from_seed([9; 32]);
    let err = verify(&other.public_key(), msg, &signature).expect_err("another key");
    assert!(matches!(err, ArtifactError::BadSignature(_)), "{err}");

    for bad in ["", "not base64!", "AAAA"] {
        assert!(matches!(
            verify(bad, msg, &signature),
            Err(ArtifactError::BadPublicKey(_))
        ));
        assert!(matches!(
            verify(&public, msg, bad),
            Err(ArtifactError::BadSignature(_))
        ));
    }
}

#[test]
fn a_key_file_of_the_wrong_size_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("k");
    fs::write(&path, b"too short").expect("write");
    match SigningKey::load_or_create(&path) {
        Err(ArtifactError::BadKeyFile { len: 9, .. }) => {}
        other => panic!("expected BadKeyFile, got {other:?}"),
    }
    // It was not replaced by a new key.
    assert_eq!(fs::read(&path).expect("read"), b"too short");
}
