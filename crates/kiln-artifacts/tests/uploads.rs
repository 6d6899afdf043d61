//! Chunked, resumable uploads on real files, across a restart of the store.

use std::fs;
use std::path::Path;

use bytes::Bytes;
use kiln_artifacts::{ArtifactError, ArtifactStore, Digest, StoreOptions};

const PART: u64 = 1000;
/// Four parts: three whole ones and a remainder of 500.
const SIZE: usize = 3500;
const MAX: u64 = 1 << 20;

async fn store(root: &Path) -> ArtifactStore {
    ArtifactStore::open_with(root, StoreOptions { part_size: PART })
        .await
        .expect("open")
}

fn payload() -> Vec<u8> {
    (0..SIZE).map(|i| (i * 7 % 251) as u8).collect()
}

fn part(data: &[u8], n: u32) -> Bytes {
    let start = (n as usize - 1) * PART as usize;
    let end = (start + PART as usize).min(data.len());
    Bytes::copy_from_slice(&data[start..end])
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn parts_in_any_order_complete_to_the_declared_digest() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store(tmp.path()).await;
    let data = payload();
    let digest = Digest::of(&data);

    let info = store
        .create_upload(SIZE as u64, digest, MAX)
        .await
        .expect("create");
    assert_eq!(info.part_size, PART);
    assert_eq!(info.parts, 4);
    assert_eq!(info.id.len(), 32);
    for n in [3, 1, 4, 2] {
        let stored = store
            .put_part(&info.id, n, part(&data, n))
            .await
            .expect("put part");
        assert_eq!(stored.number, n);
        assert_eq!(stored.digest, Digest::of(&part(&data, n)));
    }
    let status = store.upload_status(&info.id).await.expect("status");
    assert_eq!(status.received, [1, 2, 3, 4]);
    assert!(status.missing().is_empty());

    assert_eq!(
        store.complete_upload(&info.id).await.expect("complete"),
        digest
    );
    assert!(store.exists(&digest).await);
    assert_eq!(store.size(&digest).await.expect("size"), SIZE as u64);
    store.verify(&digest).await.expect("verify");
    // The upload is gone, and so are its parts.
    assert!(matches!(
        store.upload_status(&info.id).await,
        Err(ArtifactError::UnknownUpload { .. })
    ));
    assert_eq!(count(&tmp.path().join("uploads")), 0);
    assert_eq!(count(&tmp.path().join("tmp")), 0);
}

#[tokio::test]
async fn parts_of_the_wrong_size_or_number_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store(tmp.path()).await;
    let data = payload();
    let info = store
        .create_upload(SIZE as u64, Digest::of(&data), MAX)
        .await
        .expect("create");

    let short = Bytes::copy_from_slice(&data[..999]);
    match store.put_part(&info.id, 1, short).await {
        Err(ArtifactError::BadPart {
            part: 1,
            expected: 1000,
            got: 999,
        }) => {}
        other => panic!("expected BadPart, got {other:?}"),
    }
    // The last part is exactly the remainder, not a whole part.
    let whole = Bytes::copy_from_slice(&data[..1000]);
    match store.put_part(&info.id, 4, whole).await {
        Err(ArtifactError::BadPart {
            part: 4,
            expected: 500,
            got: 1000,
        }) => {}
        other => panic!("expected BadPart, got {other:?}"),
    }
    for n in [0, 5] {
        match store.put_part(&info.id, n, part(&data, 1)).await {
            Err(ArtifactError::BadPartNumber { part, parts: 4 }) => assert_eq!(part, n),
            other => panic!("expected BadPartNumber, got {other:?}"),
        }
    }
    let status = store.upload_status(&info.id).await.expect("status");
    assert!(status.received.is_empty(), "nothing refused was kept");
}

#[tokio::test]
async fn a_part_sent_again_replaces_the_first() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store(tmp.path()).await;
    let data = payload();
    let digest = Digest::of(&data);
    let info = store
        .create_upload(SIZE as u64, digest, MAX)
        .await
        .expect("create");
    for n in 1..=4 {
        store
            .put_part(&info.id, n, part(&data, n))
            .await
            .expect("put");
    }
    // A garbled part 2 of the right size, then the good one again.
    store
        .put_part(&info.id, 2, Bytes::from(vec![0u8; PART as usize]))
        .await
        .expect("put garbled");
    store
        .put_part(&info.id, 2, part(&data, 2))
        .await
        .expect("re-put");
    assert_eq!(
        store.complete_upload(&info.id).await.expect("complete"),
        digest
    );
}

#[tokio::test]
async fn an_interrupted_upload_resumes_after_a_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = payload();
    let digest = Digest::of(&data);
    let id = {
        let store = store(tmp.path()).await;
        let info = store
            .create_upload(SIZE as u64, digest, MAX)
            .await
            .expect("create");
        store
            .put_part(&info.id, 1, part(&data, 1))
            .await
            .expect("put");
        store
            .put_part(&info.id, 3, part(&data, 3))
            .await
            .expect("put");
        info.id
        // The store is dropped here, as in a restart of the control plane.
    };

    // Reopened with another part size: the upload keeps its own.
    let store = ArtifactStore::open(tmp.path()).await.expect("reopen");
    let status = store.upload_status(&id).await.expect("status");
    assert_eq!(status.size, SIZE as u64);
    assert_eq!(status.digest, digest);
    assert_eq!(status.part_size, PART);
    assert_eq!(status.parts, 4);
    assert_eq!(status.received, [1, 3]);
    for n in status.missing() {
        store
            .put_part(&id, n, part(&data, n))
            .await
            .expect("put the rest");
    }
    assert_eq!(store.complete_upload(&id).await.expect("complete"), digest);
    assert_eq!(
        fs::read(tmp.path().join("objects/sha256").join(digest.hex())).expect("read"),
        data
    );
}

#[tokio::test]
async fn completing_with_missing_parts_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store(tmp.path()).await;
    let data = payload();
    let info = store
        .create_upload(SIZE as u64, Digest::of(&data), MAX)
        .await
        .expect("create");
    store
        .put_part(&info.id, 1, part(&data, 1))
        .await
        .expect("put");
    store
        .put_part(&info.id, 3, part(&data, 3))
        .await
        .expect("put");
    match store.complete_upload(&info.id).await {
        Err(ArtifactError::MissingParts(missing)) => assert_eq!(missing, [2, 4]),
        other => panic!("expected MissingParts, got {other:?}"),
    }
}

#[tokio::test]
async fn a_digest_mismatch_stores_nothing_and_keeps_the_parts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store(tmp.path()).await;
    let data = payload();
    let digest = Digest::of(&data);
    let info = store
        .create_upload(SIZE as u64, digest, MAX)
        .await
        .expect("create");
    let mut wrong = data.clone();
    wrong[1500] ^= 0xff;
    for n in 1..=4 {
        store
            .put_part(&info.id, n, part(&wrong, n))
            .await
            .expect("put");
    }
    match store.complete_upload(&info.id).await {
        Err(ArtifactError::DigestMismatch { declared, actual }) => {
            assert_eq!(declared, digest);
            assert_eq!(actual, Digest::of(&wrong));
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert_eq!(
        count(&tmp.path().join("objects/sha256")),
        0,
        "nothing stored"
    );
    assert_eq!(
        count(&tmp.path().join("tmp")),
        0,
        "no temporary object left"
    );
    let status = store.upload_status(&info.id).await.expect("still there");
    assert_eq!(status.received, [1, 2, 3, 4]);

    // The client re-sends the bad part and completes.
    store
        .put_part(&info.id, 2, part(&data, 2))
        .await
        .expect("fix");
    assert_eq!(
        store.complete_upload(&info.id).await.expect("complete"),
        digest
    );
}

#[tokio::test]
async fn too_large_uploads_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store(tmp.path()).await;
    match store.create_upload(10_000, Digest::of(b""), 9_999).await {
        Err(ArtifactError::TooLarge {
            size: 10_000,
            max: 9_999,
        }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(count(&tmp.path().join("uploads")), 0);
}

#[tokio::test]
async fn malformed_and_unknown_ids_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store(tmp.path()).await;
    let unknown = "0123456789abcdef0123456789abcdef";
    for id in [
        "",
        "..",
        "../../etc",
        "0123456789ABCDEF0123456789ABCDEF",
        "0123456789abcdef0123456789abcde/",
        unknown,
    ] {
        for err in [
            store.upload_status(id).await.expect_err("status"),
            store
                .put_part(id, 1, Bytes::from_static(b"x"))
                .await
                .expect_err("put"),
            store.complete_upload(id).await.expect_err("complete"),
            store.abort_upload(id).await.expect_err("abort"),
        ] {
            assert!(
                matches!(err, ArtifactError::UnknownUpload { .. }),
                "{id:?}: {err}"
            );
        }
    }
}

#[tokio::test]
async fn an_aborted_upload_is_gone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store(tmp.path()).await;
    let data = payload();
    let info = store
        .create_upload(SIZE as u64, Digest::of(&data), MAX)
        .await
        .expect("create");
    store
        .put_part(&info.id, 1, part(&data, 1))
        .await
        .expect("put");
    store.abort_upload(&info.id).await.expect("abort");
    assert!(matches!(
        store.put_part(&info.id, 2, part(&data, 2)).await,
        Err(ArtifactError::UnknownUpload { .. })
    ));
    assert_eq!(count(&tmp.path().join("uploads")), 0);
    assert_eq!(count(&tmp.path().join("tmp")), 0);
}

#[tokio::test]
async fn empty_and_already_stored_payloads_complete() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store(tmp.path()).await;

    let empty = Digest::of(b"");
    let info = store.create_upload(0, empty, MAX).await.expect("create");
    assert_eq!(info.parts, 0);
    assert_eq!(
        store.complete_upload(&info.id).await.expect("complete"),
        empty
    );
    assert_eq!(store.size(&empty).await.expect("size"), 0);

    let data = payload();
    let (digest, _) = store.put_stream(&data[..]).await.expect("put");
    let info = store
        .create_upload(SIZE as u64, digest, MAX)
        .await
        .expect("create");
    for n in 1..=info.parts {
        store
            .put_part(&info.id, n, part(&data, n))
            .await
            .expect("put part");
    }
    assert_eq!(
        store.complete_upload(&info.id).await.expect("complete"),
        digest
    );
    assert_eq!(count(&tmp.path().join("objects/sha256")), 2);
}
