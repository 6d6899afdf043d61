//! Packing and unpacking real trees in temporary directories.

use std::fs::{self, File, FileTimes, Permissions};
use std::io::Read;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kiln_archive::{ArchiveError, PackOptions, PackStats, pack, unpack};
use tar::{Archive, EntryType, Header};

const LONG_NAME: &str =
    "a-directory-name-that-is-long-enough-to-need-a-gnu-long-name-entry-in-the-tar-header-really";

/// One step of building a tree.
type Step = Box<dyn Fn(&Path)>;

/// Builds the sample tree, creating its entries in `order` (forwards or backwards) so that two
/// copies differ in creation order, inode numbers and directory listing order.
fn sample_tree(root: &Path, reverse: bool) {
    let mut steps: Vec<Step> = vec![
        Box::new(|r| write(r, "README.md", b"# hello\n", 0o644)),
        Box::new(|r| write(r, "bin/run.sh", b"#!/bin/sh\necho hi\n", 0o755)),
        Box::new(|r| write(r, "src/main.rs", b"fn main() {}\n", 0o644)),
        Box::new(|r| write(r, "src/lib/util.rs", b"pub fn f() {}\n", 0o644)),
        Box::new(|r| write(r, "src/a.txt", b"a\n", 0o644)),
        Box::new(|r| write(r, "src.txt", b"sorts between src and src/\n", 0o644)),
        Box::new(|r| write(r, "empty.bin", b"", 0o644)),
        Box::new(|r| {
            write(
                r,
                &format!("{LONG_NAME}/{LONG_NAME}/deep.txt"),
                b"deep\n",
                0o644,
            )
        }),
        Box::new(|r| fs::create_dir_all(r.join("empty-dir")).expect("mkdir")),
        Box::new(|r| symlink("src/main.rs", r.join("link-to-main")).expect("symlink")),
        Box::new(|r| symlink("../outside/target", r.join("dangling")).expect("symlink")),
        Box::new(|r| {
            let target = format!("./{}/x", "t".repeat(150));
            symlink(target, r.join("long-link")).expect("symlink")
        }),
    ];
    if reverse {
        steps.reverse();
    }
    fs::create_dir_all(root).expect("mkdir");
    for step in steps {
        step(root);
    }
}

fn write(root: &Path, rel: &str, contents: &[u8], mode: u32) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
    fs::write(&path, contents).expect("write");
    fs::set_permissions(&path, Permissions::from_mode(mode)).expect("chmod");
}

fn pack_bytes(dir: &Path, opts: &PackOptions) -> (Vec<u8>, PackStats) {
    let mut out = Vec::new();
    let stats = pack(dir, &mut out, opts).expect("pack");
    (out, stats)
}

fn entry_names(tar: &[u8]) -> Vec<String> {
    let mut archive = Archive::new(tar);
    archive
        .entries()
        .expect("entries")
        .map(|e| String::from_utf8_lossy(&e.expect("entry").path_bytes()).into_owned())
        .collect()
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

#[test]
fn same_tree_gives_same_bytes_whatever_its_history() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    sample_tree(&a, false);
    sample_tree(&b, true);

    // The copy differs in every way pack must ignore: mtimes, non-exec permission bits
    // beyond the exec bit, and (as root) owners.
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    for rel in ["README.md", "src/main.rs", "bin/run.sh", "empty.bin"] {
        let file = File::options().write(true).open(b.join(rel)).expect("open");
        file.set_times(FileTimes::new().set_modified(old).set_accessed(old))
            .expect("set times");
    }
    fs::set_permissions(b.join("README.md"), Permissions::from_mode(0o600)).expect("chmod");
    fs::set_permissions(b.join("bin/run.sh"), Permissions::from_mode(0o700)).expect("chmod");
    fs::set_permissions(b.join("src"), Permissions::from_mode(0o700)).expect("chmod");
    if is_root() {
        std::os::unix::fs::chown(b.join("src/main.rs"), Some(1234), Some(4321)).expect("chown");
        std::os::unix::fs::lchown(b.join("link-to-main"), Some(1234), Some(4321)).expect("lchown");
    } else {
        eprintln!("not root: owners of the copy are not changed");
    }

    let opts = PackOptions::default();
    let (first, stats) = pack_bytes(&a, &opts);
    let (second, _) = pack_bytes(&a, &opts);
    let (copy, copy_stats) = pack_bytes(&b, &opts);
    assert_eq!(first, second, "packing twice gives the same bytes");
    assert_eq!(
        first, copy,
        "a copy with another history gives the same bytes"
    );
    assert_eq!(stats, copy_stats);
    assert_eq!(
        stats,
        PackStats {
            files: 8,
            dirs: 6,
            symlinks: 3,
            bytes: 8 + 18 + 13 + 14 + 2 + 27 + 5,
        }
    );

    let names = entry_names(&first);
    let mut sorted = names.clone();
    // Sorted by path, so a directory's trailing slash does not count: `src`, `src.txt`,
    // `src/a.txt`.
    sorted.sort_by(|x, y| {
        let key = |s: &String| s.trim_end_matches('/').as_bytes().to_vec();
        key(x).cmp(&key(y))
    });
    assert_eq!(names, sorted, "entries are in byte order");
    let src = names.iter().position(|n| n == "src/").expect("src/");
    assert_eq!(names[src + 1], "src.txt");
    assert!(names.contains(&"src/".to_owned()));
    assert!(names.contains(&format!("{LONG_NAME}/{LONG_NAME}/deep.txt")));

    // Every header is pinned.
    let mut archive = Archive::new(&first[..]);
    for entry in archive.entries().expect("entries") {
        let entry = entry.expect("entry");
        let header = entry.header();
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        assert_eq!(header.mtime().expect("mtime"), 0, "{name}");
        assert_eq!(header.uid().expect("uid"), 0, "{name}");
        assert_eq!(header.gid().expect("gid"), 0, "{name}");
        assert_eq!(header.username_bytes(), Some(&b""[..]), "{name}");
        assert_eq!(header.groupname_bytes(), Some(&b""[..]), "{name}");
        let mode = header.mode().expect("mode");
        match header.entry_type() {
            EntryType::Directory => assert_eq!(mode, 0o755, "{name}"),
            EntryType::Regular if name == "bin/run.sh" => assert_eq!(mode, 0o755),
            EntryType::Regular => assert_eq!(mode, 0o644, "{name}"),
            EntryType::Symlink => {}
            other => panic!("unexpected entry type {other:?} for {name}"),
        }
    }
}

#[test]
fn ignore_file_with_negation_dir_patterns_and_anchors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    write(
        root,
        ".kilnignore",
        b"# build output\nnode_modules/\n*.log\n!keep.log\n/build\n",
        0o644,
    );
    for rel in [
        "node_modules/left/index.js",
        "sub/node_modules/dep.js",
        "a.log",
        "keep.log",
        "sub/b.log",
        "sub/keep.log",
        "build/out.js",
        "sub/build/out.js",
        "src/app.js",
    ] {
        write(root, rel, b"x", 0o644);
    }
    // A *file* named node_modules is not matched by the directory-only pattern.
    write(root, "lib/node_modules", b"file", 0o644);
    // A socket is skipped whatever the rules say.
    let _listener =
        std::os::unix::net::UnixListener::bind(root.join("app.sock")).expect("bind socket");

    let (tar, _) = pack_bytes(root, &PackOptions::default());
    assert_eq!(
        entry_names(&tar),
        [
            ".kilnignore",
            "keep.log",
            "lib/",
            "lib/node_modules",
            "src/",
            "src/app.js",
            "sub/",
            "sub/build/",
            "sub/build/out.js",
            "sub/keep.log",
        ]
    );

    // Without rules everything but the socket is packed.
    let (all, stats) = pack_bytes(root, &PackOptions { ignore_file: None });
    assert!(entry_names(&all).contains(&"node_modules/left/index.js".to_owned()));
    assert_eq!(stats.files, 11);
}

#[test]
fn ignore_file_ignoring_itself_is_still_packed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(tmp.path(), ".kilnignore", b".*\n", 0o644);
    write(tmp.path(), ".env", b"SECRET=1", 0o644);
    write(tmp.path(), "app.js", b"x", 0o644);
    let (tar, _) = pack_bytes(tmp.path(), &PackOptions::default());
    assert_eq!(entry_names(&tar), [".kilnignore", "app.js"]);
}

#[test]
fn bad_ignore_file_name_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for name in ["", "..", "a/b"] {
        let err = pack(
            tmp.path(),
            Vec::new(),
            &PackOptions {
                ignore_file: Some(name.to_owned()),
            },
        )
        .expect_err("refused");
        assert!(
            matches!(err, ArchiveError::BadIgnoreFileName { .. }),
            "{err}"
        );
    }
}

#[test]
fn symlinked_ignore_file_is_not_followed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tmp.path().join("outside-rules");
    fs::write(&outside, "*.js\n").expect("write");
    let root = tmp.path().join("tree");
    write(&root, "app.js", b"x", 0o644);
    symlink(&outside, root.join(".kilnignore")).expect("symlink");
    let (tar, stats) = pack_bytes(&root, &PackOptions::default());
    assert_eq!(entry_names(&tar), [".kilnignore", "app.js"]);
    assert_eq!(stats.symlinks, 1);
}

#[test]
fn round_trip_keeps_contents_exec_bits_and_symlinks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    sample_tree(&src, false);
    fs::create_dir(&dst).expect("mkdir");

    let (tar, stats) = pack_bytes(&src, &PackOptions::default());
    let unpacked = unpack(&tar[..], &dst).expect("unpack");
    assert_eq!(unpacked, stats);

    for rel in [
        "README.md",
        "bin/run.sh",
        "src/main.rs",
        "src/lib/util.rs",
        "empty.bin",
    ] {
        assert_eq!(read(&src.join(rel)), read(&dst.join(rel)), "{rel}");
    }
    let deep = format!("{LONG_NAME}/{LONG_NAME}/deep.txt");
    assert_eq!(read(&dst.join(&deep)), b"deep\n");
    assert_eq!(mode(&dst.join("bin/run.sh")), 0o755);
    assert_eq!(mode(&dst.join("README.md")), 0o644);
    assert!(dst.join("empty-dir").is_dir());
    for link in ["link-to-main", "dangling", "long-link"] {
        assert_eq!(
            fs::read_link(dst.join(link)).expect("readlink"),
            fs::read_link(src.join(link)).expect("readlink"),
            "{link}"
        );
    }
    // The long target is kept byte for byte, leading `./` included.
    let long = fs::read_link(dst.join("long-link")).expect("readlink");
    assert!(long.to_string_lossy().starts_with("./tttt"), "{long:?}");

    // And the unpacked tree packs to the same archive.
    let (again, _) = pack_bytes(&dst, &PackOptions::default());
    assert_eq!(again, tar);
}

fn read(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    File::open(path)
        .expect("open")
        .read_to_end(&mut out)
        .expect("read");
    out
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

/// A tar entry written with raw header bytes, so that paths tar's builder refuses can be made.
fn raw_entry(out: &mut Vec<u8>, kind: EntryType, name: &[u8], link: &[u8], data: &[u8]) {
    let mut header = Header::new_gnu();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_cksum();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    out.resize(out.len() + 1024, 0);
    out
}

/// A scratch area: `dest` to unpack into, inside `outside`, which must stay untouched.
struct Scratch {
    _tmp: tempfile::TempDir,
    outside: PathBuf,
    dest: PathBuf,
}

fn scratch() -> Scratch {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tmp.path().join("outside");
    let dest = outside.join("dest");
    fs::create_dir_all(&dest).expect("mkdir");
    Scratch {
        _tmp: tmp,
        outside,
        dest,
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn absolute_path_is_refused() {
    let s = scratch();
    let evil = s.outside.join("evil");
    let mut tar = Vec::new();
    raw_entry(
        &mut tar,
        EntryType::Regular,
        evil.to_str().expect("utf-8").as_bytes(),
        b"",
        b"pwned",
    );
    let err = unpack(&finish(tar)[..], &s.dest).expect_err("refused");
    assert!(
        matches!(
            err,
            ArchiveError::UnsafePath {
                reason: "absolute path",
                ..
            }
        ),
        "{err}"
    );
    assert!(!evil.exists());
    assert_eq!(listing(&s.outside), ["dest"]);
}

#[test]
fn parent_components_are_refused() {
    for name in [&b"../evil"[..], b"ok/../../evil", b"./../evil"] {
        let s = scratch();
        let mut tar = Vec::new();
        raw_entry(&mut tar, EntryType::Regular, name, b"", b"pwned");
        let err = unpack(&finish(tar)[..], &s.dest).expect_err("refused");
        assert!(matches!(err, ArchiveError::UnsafePath { .. }), "{err}");
        assert_eq!(listing(&s.outside), ["dest"]);
        assert!(listing(&s.dest).is_empty());
    }
}

#[test]
fn parent_components_in_a_gnu_long_name_are_refused() {
    let s = scratch();
    let long = format!("{}/../../../evil", "d".repeat(120));
    let mut tar = Vec::new();
    let mut data = long.into_bytes();
    data.push(0);
    raw_entry(
        &mut tar,
        EntryType::GNULongName,
        b"././@LongLink",
        b"",
        &data,
    );
    raw_entry(&mut tar, EntryType::Regular, b"harmless", b"", b"pwned");
    let err = unpack(&finish(tar)[..], &s.dest).expect_err("refused");
    assert!(matches!(err, ArchiveError::UnsafePath { .. }), "{err}");
    assert_eq!(listing(&s.outside), ["dest"]);
}

#[test]
fn writing_through_a_symlink_is_refused() {
    let s = scratch();
    let target = s.outside.to_str().expect("utf-8").as_bytes().to_vec();
    for (link_target, file) in [
        (&target[..], &b"link/pwned"[..]),
        (b"..", b"link/pwned"),
        (b".", b"link/../../pwned"),
    ] {
        let mut tar = Vec::new();
        raw_entry(&mut tar, EntryType::Symlink, b"link", link_target, b"");
        raw_entry(&mut tar, EntryType::Regular, file, b"", b"pwned");
        let err = unpack(&finish(tar)[..], &s.dest).expect_err("refused");
        assert!(
            matches!(
                err,
                ArchiveError::ThroughSymlink { .. } | ArchiveError::UnsafePath { .. }
            ),
            "{err}"
        );
        assert_eq!(listing(&s.outside), ["dest"]);
        // The symlink itself is in dest, and harmless there.
        assert_eq!(listing(&s.dest), ["link"]);
        fs::remove_file(s.dest.join("link")).expect("rm");
    }
}

#[test]
fn file_replacing_a_symlink_does_not_write_through_it() {
    let s = scratch();
    let victim = s.outside.join("victim");
    fs::write(&victim, "original").expect("write");
    let mut tar = Vec::new();
    raw_entry(
        &mut tar,
        EntryType::Symlink,
        b"f",
        victim.to_str().expect("utf-8").as_bytes(),
        b"",
    );
    raw_entry(&mut tar, EntryType::Regular, b"f", b"", b"replaced");
    unpack(&finish(tar)[..], &s.dest).expect("unpack");
    assert_eq!(fs::read_to_string(&victim).expect("read"), "original");
    assert_eq!(
        fs::read_to_string(s.dest.join("f")).expect("read"),
        "replaced"
    );
    assert!(
        !fs::symlink_metadata(s.dest.join("f"))
            .expect("stat")
            .file_type()
            .is_symlink()
    );
}

#[test]
fn hard_links_and_devices_are_refused() {
    for kind in [
        EntryType::Link,
        EntryType::Char,
        EntryType::Block,
        EntryType::Fifo,
    ] {
        let s = scratch();
        let mut tar = Vec::new();
        raw_entry(&mut tar, kind, b"x", b"/etc/passwd", b"");
        let err = unpack(&finish(tar)[..], &s.dest).expect_err("refused");
        assert!(
            matches!(err, ArchiveError::UnsupportedEntry { .. }),
            "{err}"
        );
        assert!(listing(&s.dest).is_empty());
    }
}

#[test]
fn unpack_needs_an_existing_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = unpack(&finish(Vec::new())[..], &tmp.path().join("missing")).expect_err("refused");
    assert!(matches!(err, ArchiveError::Read { .. }), "{err}");
}

#[test]
fn truncated_archive_is_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    write(&src, "big.bin", &vec![7u8; 100_000], 0o644);
    let (tar, _) = pack_bytes(&src, &PackOptions::default());
    let dst = tmp.path().join("dst");
    fs::create_dir(&dst).expect("mkdir");
    let err = unpack(&tar[..50_000], &dst).expect_err("refused");
    assert!(matches!(err, ArchiveError::Input(_)), "{err}");
}
