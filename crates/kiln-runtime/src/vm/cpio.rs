//! A writer for the `newc` cpio format, the one the Linux kernel unpacks as an initramfs.
//!
//! Hand-written because the kernel needs very little of cpio (directories, regular files,
//! symbolic links, device nodes; no hard links, no checksums) and the format is a fixed
//! 110-byte ASCII header per entry; the crates that exist mostly read archives.

/// The kind of an archive entry, with what the header needs for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    CharDevice { major: u32, minor: u32 },
}

/// An in-memory newc archive, written entry by entry and closed with [`Cpio::finish`].
#[derive(Debug, Default)]
pub(crate) struct Cpio {
    out: Vec<u8>,
    next_ino: u32,
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Cpio {
        Cpio {
            out: Vec::new(),
            next_ino: 1,
        }
    }

    /// A directory; `path` is relative (`bin`, `lib/modules`).
    pub fn dir(&mut self, path: &str, mode: u32) {
        self.entry(path, Kind::Dir, mode, b"");
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, Kind::File, mode, data);
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, Kind::Symlink, 0o777, target.as_bytes());
    }

    /// A character device node.
    pub fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.entry(path, Kind::CharDevice { major, minor }, mode, b"");
    }

    /// Ends the archive with its trailer and returns the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, 0, 0, 0);
        self.out
    }

    fn entry(&mut self, path: &str, kind: Kind, perm: u32, data: &[u8]) {
        let (type_bits, rdev) = match kind {
            Kind::Dir => (0o040000, (0, 0)),
            Kind::File => (0o100000, (0, 0)),
            Kind::Symlink => (0o120000, (0, 0)),
            Kind::CharDevice { major, minor } => (0o020000, (major, minor)),
        };
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if kind == Kind::Dir { 2 } else { 1 };
        let size = u32::try_from(data.len()).expect("initramfs entries are far below 4 GiB");
        self.header(
            path.trim_start_matches('/'),
            ino,
            type_bits | (perm & 0o7777),
            nlink,
            size,
            rdev.0 << 16 | rdev.1,
        );
        self.out.extend_from_slice(data);
        self.pad();
    }

    /// Writes one header and the NUL-terminated name, padded to four bytes. `rdev` packs
    /// major (high 16 bits) and minor.
    fn header(&mut self, name: &str, ino: u32, mode: u32, nlink: u32, size: u32, rdev: u32) {
        let namesize = u32::try_from(name.len() + 1).expect("short names");
        let fields = [
            ino,
            mode,
            0, // uid: root
            0, // gid: root
            nlink,
            0, // mtime: fixed, so equal inputs give equal archives
            size,
            0, // devmajor
            0, // devminor
            rdev >> 16,
            rdev & 0xffff,
            namesize,
            0, // check: unused by newc
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archive is checked with the real `cpio` program, which must list exactly what was
    /// written.
    #[test]
    fn archives_are_read_by_cpio() {
        let mut cpio = Cpio::new();
        cpio.dir("bin", 0o755);
        cpio.file("bin/hello", 0o755, b"#!/bin/sh\necho hi\n");
        cpio.symlink("bin/sh", "busybox");
        cpio.char_device("dev/console", 0o600, 5, 1);
        cpio.file("odd", 0o600, b"12345");
        let bytes = cpio.finish();
        assert_eq!(bytes.len() % 4, 0);
        let header = std::str::from_utf8(&bytes[..6]).expect("ascii");
        assert_eq!(header, "070701");
        if !crate::spawn::on_path("cpio") {
            eprintln!("skipped the cpio cross-check: cpio is not installed");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, &bytes).expect("write");
        let out = crate::spawn::command("sh")
            .arg("-c")
            .arg(format!("cpio -itv < {}", archive.display()))
            .output()
            .expect("run cpio");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        for (needle, line_start) in [
            ("bin", "drwxr-xr-x"),
            ("bin/hello", "-rwxr-xr-x"),
            ("bin/sh -> busybox", "lrwxrwxrwx"),
            ("dev/console", "crw-------"),
            ("odd", "-rw-------"),
        ] {
            assert!(
                listing
                    .lines()
                    .any(|l| l.starts_with(line_start) && l.ends_with(needle)),
                "{needle} missing from:\n{listing}"
            );
        }
    }
}
