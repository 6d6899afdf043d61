//! The object store on real files: deduplication, determinism, crash leftovers, corruption,
//! and reading directory artifacts back.

use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use kiln_artifacts::{ArtifactError, ArtifactStore, Digest, PackOptions, pack_dir_to};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio_stream::StreamExt;

/// A small app tree; `reverse` creates the same entries in the opposite order.
fn make_tree(root: &Path, reverse: bool) {
    let mut files: Vec<(&str, Vec<u8>, u32)> = vec![
        ("package.json", b"{\"name\":\"app\"}\n".to_vec(), 0o644),
        (
            "bin/start",
            b"#!/bin/sh\nexec node server.js\n".to_vec(),
            0o755,
        ),
        ("server.js", b"console.log('hi')\n".repeat(500), 0o644),
        ("public/index.html", b"<h1>hi</h1>\n".to_vec(), 0o644),
        // Incompressible bytes, several zstd blocks' worth.
        ("public/blob.bin", pseudo_random(600_000, 7), 0o644),
        (
            "node_modules/dep/index.js",
            b"module.exports = 1\n".to_vec(),
            0o644,
        ),
        (".kilnignore", b"node_modules/\n*.log\n".to_vec(), 0o644),
        ("debug.log", b"noise\n".to_vec(), 0o644),
    ];
    if reverse {
        files.reverse();
    }
    fs::create_dir_all(root).expect("mkdir");
    for (rel, contents, mode) in files {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, contents).expect("write");
        fs::set_permissions(&path, Permissions::from_mode(mode)).expect("chmod");
    }
    symlink("server.js", root.join("main.js")).expect("symlink");
}

/// Deterministic incompressible bytes (xorshift), so tests need no RNG crate.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn object_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(root.join("objects/sha256"))
        .expect("objects dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

fn tmp_entries(root: &Path) -> Vec<String> {
    fs::read_dir(root.join("tmp"))
        .expect("tmp dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// Hands out its data in pieces of awkward, varying sizes, like a network stream.
struct Trickle {
    data: Bytes,
    step: usize,
    fail_at: Option<usize>,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(at) = self.fail_at
            && self.data.len() <= at
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "peer went away",
            )));
        }
        self.step = (self.step * 31 + 7) % 9973 + 1;
        let n = self.step.min(self.data.len()).min(buf.remaining());
        let piece = self.data.split_to(n);
        buf.put_slice(&piece);
        Poll::Ready(Ok(()))
    }
}

fn trickle(data: Vec<u8>) -> Trickle {
    Trickle {
        data: Bytes::from(data),
        step: 1,
        fail_at: None,
    }
}

#[tokio::test]
async fn identical_trees_are_stored_once_under_one_digest() {
    let tmp = tempfile::tempdir().expect("tempdir");
    make_tree(&tmp.path().join("a"), false);
    make_tree(&tmp.path().join("b"), true);
    let store = ArtifactStore::open(tmp.path().join("store"))
        .await
        .expect("open");

    let opts = PackOptions::default();
    let (first, size, stats) = store
        .put_dir(&tmp.path().join("a"), &opts)
        .await
        .expect("put a");
    let (second, size_b, _) = store
        .put_dir(&tmp.path().join("b"), &opts)
        .await
        .expect("put b");
    assert_eq!(first, second);
    assert_eq!(size, size_b);
    assert_eq!(object_files(store.root()).len(), 1);
    assert!(store.exists(&first).await);
    assert_eq!(store.size(&first).await.expect("size"), size);
    assert!(
        tmp_entries(store.root()).is_empty(),
        "no temporary file left"
    );
    // node_modules/ and *.log are ignored; .kilnignore itself is kept.
    assert_eq!(stats.files, 6);
    assert_eq!(stats.symlinks, 1);
    // Compressed: the repeated text shrinks, the random blob does not.
    assert!(size < stats.bytes, "{size} < {}", stats.bytes);
}

#[tokio::test]
async fn put_dir_put_tar_stream_and_pack_dir_to_give_the_same_bytes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree");
    make_tree(&tree, false);
    let store = ArtifactStore::open(tmp.path().join("store"))
        .await
        .expect("open");

    let (from_dir, size, _) = store
        .put_dir(&tree, &PackOptions::default())
        .await
        .expect("put_dir");

    // What the guest agent streams: the plain tar, arriving in uneven chunks.
    let mut tar = Vec::new();
    kiln_archive::pack(&tree, &mut tar, &PackOptions::default()).expect("pack");
    let other = ArtifactStore::open(tmp.path().join("other"))
        .await
        .expect("open");
    let (from_stream, stream_size) = other
        .put_tar_stream(trickle(tar.clone()))
        .await
        .expect("put_tar_stream");
    assert_eq!(from_stream, from_dir);
    assert_eq!(stream_size, size);

    // What the CLI packs locally before uploading.
    let mut packed = Vec::new();
    let (local, local_size) = pack_dir_to(&tree, &mut packed).expect("pack_dir_to");
    assert_eq!(local, from_dir);
    assert_eq!(local_size, packed.len() as u64);
    assert_eq!(Digest::of(&packed), from_dir);
    assert_eq!(
        fs::read(&object_files(store.root())[0]).expect("read"),
        packed
    );

    // And the decompressed tar is the archive itself.
    let mut back = Vec::new();
    store
        .tar_reader(&from_dir)
        .await
        .expect("tar_reader")
        .read_to_end(&mut back)
        .await
        .expect("read");
    assert_eq!(back, tar);
}

#[tokio::test]
async fn put_stream_stores_bytes_as_they_are() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::open(tmp.path()).await.expect("open");
    let data = pseudo_random(1_000_003, 3);
    let (digest, size) = store.put_stream(trickle(data.clone())).await.expect("put");
    assert_eq!(digest, Digest::of(&data));
    assert_eq!(size, data.len() as u64);
    let path = store.root().join("objects/sha256").join(digest.hex());
    assert_eq!(fs::read(&path).expect("read"), data);
    assert_eq!(
        fs::metadata(&path).expect("stat").permissions().mode() & 0o777,
        0o444
    );

    let mut back = Vec::new();
    store
        .reader(&digest)
        .await
        .expect("reader")
        .read_to_end(&mut back)
        .await
        .expect("read");
    assert_eq!(back, data);
    store.verify(&digest).await.expect("verify");

    // Storing it again changes nothing.
    let (again, _) = store.put_stream(&data[..]).await.expect("put again");
    assert_eq!(again, digest);
    assert_eq!(object_files(store.root()).len(), 1);
}

#[tokio::test]
async fn failed_input_stores_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::open(tmp.path()).await.expect("open");
    let input = Trickle {
        data: Bytes::from(pseudo_random(500_000, 5)),
        step: 1,
        fail_at: Some(200_000),
    };
    let err = store.put_stream(input).await.expect_err("input failed");
    assert!(matches!(err, ArtifactError::Input(_)), "{err}");
    assert!(object_files(store.root()).is_empty());
    assert!(tmp_entries(store.root()).is_empty());

    // Same for a tar stream that breaks off.
    let input = Trickle {
        data: Bytes::from(pseudo_random(500_000, 6)),
        step: 1,
        fail_at: Some(100_000),
    };
    let err = store.put_tar_stream(input).await.expect_err("input failed");
    assert!(matches!(err, ArtifactError::Input(_)), "{err}");
    assert!(object_files(store.root()).is_empty());
    assert!(tmp_entries(store.root()).is_empty());
}

#[tokio::test]
async fn crash_leftovers_are_never_objects_and_are_swept_on_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("store");
    let store = ArtifactStore::open(&root).await.expect("open");
    let data = b"half of an artifact".to_vec();
    let digest = Digest::of(&data);

    // What a writer killed mid-way leaves: a temporary file, a staging directory and a
    // half-deleted upload.
    fs::write(root.join("tmp/obj-crashed"), &data).expect("write");
    fs::create_dir_all(root.join("tmp/upload-crashed")).expect("mkdir");
    fs::write(root.join("tmp/upload-crashed/upload.json"), b"{").expect("write");
    fs::create_dir_all(root.join("tmp/trash-0123/sub")).expect("mkdir");
    assert!(
        !store.exists(&digest).await,
        "a temporary file is not an object"
    );
    assert!(matches!(
        store.size(&digest).await,
        Err(ArtifactError::NotFound { .. })
    ));

    // A write in progress in another store on the same root holds its file locked.
    let live = root.join("tmp/obj-live");
    let held = fs::File::create(&live).expect("create");
    held.lock().expect("lock");

    drop(store);
    let store = ArtifactStore::open(&root).await.expect("reopen");
    assert_eq!(tmp_entries(store.root()), ["obj-live"]);
    assert!(!store.exists(&digest).await);
    drop(held);
}

#[tokio::test]
async fn corruption_on_disk_is_detected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree");
    make_tree(&tree, false);
    let store = ArtifactStore::open(tmp.path().join("store"))
        .await
        .expect("open");
    let (digest, _, _) = store
        .put_dir(&tree, &PackOptions::default())
        .await
        .expect("put");
    store.verify(&digest).await.expect("intact");

    let path = store.root().join("objects/sha256").join(digest.hex());
    fs::set_permissions(&path, Permissions::from_mode(0o644)).expect("chmod");
    let mut bytes = fs::read(&path).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&path, &bytes).expect("write");

    match store.verify(&digest).await {
        Err(ArtifactError::Corrupt { expected, actual }) => {
            assert_eq!(expected, digest);
            assert_eq!(actual, Digest::of(&bytes));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    let mut sink = Vec::new();
    let err = store
        .reader(&digest)
        .await
        .expect("reader")
        .read_to_end(&mut sink)
        .await
        .expect_err("a corrupt object does not read to a clean end");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);

    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).expect("mkdir");
    let err = store.unpack_to(&digest, &dest).await.expect_err("corrupt");
    assert!(matches!(err, ArtifactError::Corrupt { .. }), "{err}");

    let mut stream = store.tar_stream(&digest).await.expect("tar_stream");
    let mut last = None;
    while let Some(item) = stream.next().await {
        last = Some(item);
    }
    let err = last.expect("something").expect_err("ends in an error");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn unpack_round_trip() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree");
    make_tree(&tree, false);
    let store = ArtifactStore::open(tmp.path().join("store"))
        .await
        .expect("open");
    let (digest, _, stats) = store
        .put_dir(&tree, &PackOptions::default())
        .await
        .expect("put");

    let dest = tmp.path().join("dest");
    fs::create_dir(&dest).expect("mkdir");
    let unpacked = store.unpack_to(&digest, &dest).await.expect("unpack");
    assert_eq!(unpacked, stats);
    for rel in [
        "package.json",
        "bin/start",
        "server.js",
        "public/blob.bin",
        ".kilnignore",
    ] {
        assert_eq!(
            fs::read(dest.join(rel)).expect("read"),
            fs::read(tree.join(rel)).expect("read"),
            "{rel}"
        );
    }
    assert!(!dest.join("node_modules").exists());
    assert!(!dest.join("debug.log").exists());
    assert_eq!(
        fs::metadata(dest.join("bin/start"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(
        fs::read_link(dest.join("main.js")).expect("readlink"),
        Path::new("server.js")
    );

    // The unpacked tree is the same artifact.
    let (again, _, _) = store
        .put_dir(&dest, &PackOptions::default())
        .await
        .expect("put again");
    assert_eq!(again, digest);
}

#[tokio::test]
async fn unknown_digests_are_not_found() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::open(tmp.path()).await.expect("open");
    let digest = Digest::of(b"never stored");
    assert!(!store.exists(&digest).await);
    assert!(matches!(
        store.size(&digest).await,
        Err(ArtifactError::NotFound { .. })
    ));
    assert!(matches!(
        store.verify(&digest).await,
        Err(ArtifactError::NotFound { .. })
    ));
    assert!(matches!(
        store.reader(&digest).await,
        Err(ArtifactError::NotFound { .. })
    ));
    assert!(matches!(
        store.tar_stream(&digest).await,
        Err(ArtifactError::NotFound { .. })
    ));
    let err = store
        .unpack_to(&digest, tmp.path())
        .await
        .expect_err("missing");
    assert!(matches!(err, ArtifactError::NotFound { .. }), "{err}");
}
