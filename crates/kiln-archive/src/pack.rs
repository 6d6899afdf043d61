//! Packing a directory tree into a deterministic tar.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use tar::{Builder, EntryType, Header};

use crate::{ArchiveError, PackOptions, PackStats};

/// Mode of directories and of files with any exec bit.
const EXEC_MODE: u32 = 0o755;
/// Mode of every other file.
const FILE_MODE: u32 = 0o644;
/// Symlink permissions mean nothing on Linux; 0o777 is what the kernel reports and GNU tar
/// records.
const SYMLINK_MODE: u32 = 0o777;
/// Bytes of a tar header's link-name field; longer targets need a GNU long-link entry.
const LINK_NAME_LEN: usize = 100;

/// Writes a tar (uncompressed) of `dir` to `out` and returns what it holds.
///
/// Entries are sorted by path (byte order); paths are relative and `/`-separated, with a
/// trailing `/` on directories; the root itself has no entry. Every header has mtime 0,
/// uid/gid 0 and empty user and group names; directories and files with any exec bit get mode
/// 0o755, other files 0o644. Symlinks are stored as symlinks with their target unchanged, and
/// never followed, so nothing outside the tree is read. Devices, fifos and sockets are
/// skipped. Paths matched by [`PackOptions::ignore_file`] are left out; as in git, a file
/// under an excluded directory cannot be re-included.
///
/// On error the output holds a truncated archive without its end-of-archive marker, so a
/// reader cannot mistake it for a complete one.
pub fn pack(dir: &Path, out: impl Write, opts: &PackOptions) -> Result<PackStats, ArchiveError> {
    let meta = fs::metadata(dir).map_err(|source| read_error(dir, source))?;
    if !meta.is_dir() {
        return Err(ArchiveError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let rules = Rules::load(dir, opts)?;
    let mut items = walk(dir, &rules)?;
    // Byte order of the whole relative path: independent of the order in which the
    // filesystem lists a directory, which follows creation order and hashing.
    items.sort_unstable_by(|a, b| {
        a.rel
            .as_os_str()
            .as_bytes()
            .cmp(b.rel.as_os_str().as_bytes())
    });
    write_archive(dir, &items, out)
}

/// What a walked path is; for files, the identity seen while walking, so that a file swapped
/// for something else before it is read is noticed.
enum Kind {
    Dir,
    File { seen: Identity },
    Symlink,
}

/// Device and inode: what makes a file the same file.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

struct Item {
    rel: PathBuf,
    kind: Kind,
}

/// The ignore patterns of a tree.
struct Rules {
    matcher: Option<Gitignore>,
    /// The ignore file's own name, kept whatever the patterns say: an unpacked tree must pack
    /// to the same archive again.
    keep: Option<OsString>,
}

impl Rules {
    fn none() -> Self {
        Self {
            matcher: None,
            keep: None,
        }
    }

    fn load(dir: &Path, opts: &PackOptions) -> Result<Self, ArchiveError> {
        let Some(name) = opts.ignore_file.as_deref() else {
            return Ok(Self::none());
        };
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(ArchiveError::BadIgnoreFileName {
                name: name.to_owned(),
            });
        }
        let path = dir.join(name);
        let seen = match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => Identity::of(&meta),
            // A symlink (or anything else) in its place is packed like any other entry; reading
            // through it could read outside the tree.
            Ok(_) => return Ok(Self::none()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Self::none()),
            Err(source) => return Err(read_error(&path, source)),
        };
        let mut file = open_regular(&path, seen)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text)
            .map_err(|source| read_error(&path, source))?;

        // Root "." makes the matcher take our relative paths as they are, without trying to
        // strip a root prefix from them.
        let mut builder = GitignoreBuilder::new(".");
        for (index, line) in String::from_utf8_lossy(&text).lines().enumerate() {
            builder
                .add_line(None, line)
                .map_err(|source| ArchiveError::IgnorePattern {
                    path: path.clone(),
                    line: index + 1,
                    source,
                })?;
        }
        let matcher = builder
            .build()
            .map_err(|source| ArchiveError::IgnoreRules {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            matcher: Some(matcher),
            keep: Some(name.into()),
        })
    }

    fn excludes(&self, rel: &Path, is_dir: bool) -> bool {
        let Some(matcher) = &self.matcher else {
            return false;
        };
        if self.keep.as_deref() == Some(rel.as_os_str()) {
            return false;
        }
        matcher.matched(rel, is_dir).is_ignore()
    }
}

/// Lists every path of the tree that is not excluded, without following symlinks. Excluded
/// directories are not entered at all.
fn walk(root: &Path, rules: &Rules) -> Result<Vec<Item>, ArchiveError> {
    let mut items = Vec::new();
    // (relative path, identity seen when it was listed); the root is taken as it is.
    let mut pending: Vec<(PathBuf, Option<Identity>)> = vec![(PathBuf::new(), None)];
    while let Some((rel_dir, seen)) = pending.pop() {
        let abs_dir = root.join(&rel_dir);
        if let Some(seen) = seen {
            // A directory swapped for a symlink since it was listed would lead read_dir out of
            // the tree.
            let meta =
                fs::symlink_metadata(&abs_dir).map_err(|source| read_error(&abs_dir, source))?;
            if !meta.is_dir() || Identity::of(&meta) != seen {
                return Err(ArchiveError::Changed { path: abs_dir });
            }
        }
        let entries = fs::read_dir(&abs_dir).map_err(|source| read_error(&abs_dir, source))?;
        for entry in entries {
            let entry = entry.map_err(|source| read_error(&abs_dir, source))?;
            let rel = rel_dir.join(entry.file_name());
            // DirEntry::metadata is an lstat: it does not follow symlinks. Its inode, unlike
            // the directory listing's, matches what fstat reports later even on overlayfs.
            let meta = entry
                .metadata()
                .map_err(|source| read_error(&root.join(&rel), source))?;
            let file_type = meta.file_type();
            let kind = if file_type.is_dir() {
                Kind::Dir
            } else if file_type.is_file() {
                Kind::File {
                    seen: Identity::of(&meta),
                }
            } else if file_type.is_symlink() {
                Kind::Symlink
            } else {
                // Devices, fifos and sockets have no meaning in another machine.
                continue;
            };
            if rules.excludes(&rel, file_type.is_dir()) {
                continue;
            }
            if let Kind::Dir = kind {
                pending.push((rel.clone(), Some(Identity::of(&meta))));
            }
            items.push(Item { rel, kind });
        }
    }
    Ok(items)
}

fn write_archive(root: &Path, items: &[Item], out: impl Write) -> Result<PackStats, ArchiveError> {
    let mut builder = Builder::new(Fuse {
        inner: out,
        blown: false,
    });
    let mut stats = PackStats::default();
    for item in items {
        if let Err(err) = append_item(&mut builder, root, item, &mut stats) {
            // The builder writes the end-of-archive marker when dropped; a blown fuse keeps
            // that from making a truncated archive look complete.
            builder.get_mut().blown = true;
            return Err(err);
        }
    }
    let mut out = builder.into_inner().map_err(ArchiveError::Output)?;
    out.flush().map_err(ArchiveError::Output)?;
    Ok(stats)
}

fn append_item<W: Write>(
    builder: &mut Builder<W>,
    root: &Path,
    item: &Item,
    stats: &mut PackStats,
) -> Result<(), ArchiveError> {
    let abs = root.join(&item.rel);
    match item.kind {
        Kind::Dir => {
            let mut header = header(EntryType::Directory, EXEC_MODE, 0);
            // A trailing slash marks a directory, as GNU tar writes it.
            let mut name = item.rel.clone().into_os_string();
            name.push("/");
            builder
                .append_data(&mut header, Path::new(&name), io::empty())
                .map_err(ArchiveError::Output)?;
            stats.dirs += 1;
        }
        Kind::File { seen } => {
            let file = open_regular(&abs, seen)?;
            let meta = file.metadata().map_err(|source| read_error(&abs, source))?;
            let size = meta.len();
            let mode = if meta.mode() & 0o111 != 0 {
                EXEC_MODE
            } else {
                FILE_MODE
            };
            let mut header = header(EntryType::Regular, mode, size);
            let mut data = ExactReader {
                file,
                remaining: size,
                failure: None,
            };
            if let Err(err) = builder.append_data(&mut header, &item.rel, &mut data) {
                return Err(match data.failure.take() {
                    Some(Failure::Shrunk) => ArchiveError::Changed { path: abs },
                    Some(Failure::Io(source)) => read_error(&abs, source),
                    None => ArchiveError::Output(err),
                });
            }
            stats.files += 1;
            stats.bytes += size;
        }
        Kind::Symlink => {
            let target = fs::read_link(&abs).map_err(|source| read_error(&abs, source))?;
            let target = target.as_os_str().as_bytes();
            let mut header = header(EntryType::Symlink, SYMLINK_MODE, 0);
            // The target is stored byte for byte; tar's `set_link_name` would normalise it
            // (`./a` becomes `a`), and only for short targets.
            let short = if target.len() > LINK_NAME_LEN {
                let long = long_link_header(target.len());
                builder
                    .append(&long, target.chain(&[0u8][..]))
                    .map_err(ArchiveError::Output)?;
                &target[..LINK_NAME_LEN]
            } else {
                target
            };
            header
                .set_link_name_literal(short)
                .map_err(ArchiveError::Output)?;
            builder
                .append_data(&mut header, &item.rel, io::empty())
                .map_err(ArchiveError::Output)?;
            stats.symlinks += 1;
        }
    }
    Ok(())
}

/// A GNU header with every field that could vary between machines pinned.
fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

/// The GNU `././@LongLink` entry of type `K` that carries a link target longer than the
/// header's field, built the way tar's own long-name entries are.
fn long_link_header(len: usize) -> Header {
    let mut header = header(EntryType::GNULongLink, FILE_MODE, len as u64 + 1);
    header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    header.set_cksum();
    header
}

/// Opens a file seen as a regular file with identity `seen`, refusing it if it has since been
/// swapped for anything else (a symlink out of the tree, say).
fn open_regular(path: &Path, seen: Identity) -> Result<File, ArchiveError> {
    let file = File::open(path).map_err(|source| read_error(path, source))?;
    let meta = file.metadata().map_err(|source| read_error(path, source))?;
    if !meta.is_file() || Identity::of(&meta) != seen {
        return Err(ArchiveError::Changed {
            path: path.to_owned(),
        });
    }
    Ok(file)
}

fn read_error(path: &Path, source: io::Error) -> ArchiveError {
    ArchiveError::Read {
        path: path.to_owned(),
        source,
    }
}

enum Failure {
    Shrunk,
    Io(io::Error),
}

/// Yields exactly the size written in the header. tar copies whatever a reader gives and pads
/// after it, so a file that shrank while being read would otherwise corrupt the archive; it
/// also records its own failures, which tar cannot tell apart from the output's.
struct ExactReader {
    file: File,
    remaining: u64,
    failure: Option<Failure>,
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        match self.file.read(&mut buf[..max]) {
            Ok(0) => {
                self.failure = Some(Failure::Shrunk);
                Err(io::ErrorKind::UnexpectedEof.into())
            }
            Ok(n) => {
                self.remaining -= n as u64;
                Ok(n)
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => Err(err),
            Err(err) => {
                let kind = err.kind();
                self.failure = Some(Failure::Io(err));
                Err(kind.into())
            }
        }
    }
}

/// The archive's output, which swallows writes once blown.
struct Fuse<W> {
    inner: W,
    blown: bool,
}

impl<W: Write> Write for Fuse<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.blown {
            return Err(io::Error::other("archive abandoned after an error"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.blown {
            return Ok(());
        }
        self.inner.flush()
    }
}
