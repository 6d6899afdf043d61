//! Unpacking a tar into a directory without letting any entry land outside it.

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::Archive;

use crate::{ArchiveError, PackStats};

/// Mode of directories and of files with any exec bit, as [`pack`](crate::pack) writes them.
const EXEC_MODE: u32 = 0o755;
/// Mode of every other file.
const FILE_MODE: u32 = 0o644;

/// Unpacks a tar into `dest`, which must exist, and returns what it created.
///
/// Archives may come from anywhere, so every entry is checked first: absolute paths, `..`
/// components and paths that pass through a symlink already in `dest` (including one the
/// archive itself created) are refused, as are entries other than files, directories and
/// symlinks (hard links, devices, fifos, sparse files). Symlinks are created with their target
/// unchanged; they are harmless as long as nothing is written through them. Modes are
/// normalised as [`pack`](crate::pack) writes them (0o755 for directories and files with any
/// exec bit, else 0o644); owners and mtimes are not restored. A file or symlink already at an
/// entry's path is replaced; a directory is kept.
///
/// On error, entries before the failing one stay unpacked: unpack into a fresh directory and
/// remove it if this fails.
pub fn unpack(input: impl Read, dest: &Path) -> Result<PackStats, ArchiveError> {
    let meta = fs::metadata(dest).map_err(|source| read_error(dest, source))?;
    if !meta.is_dir() {
        return Err(ArchiveError::NotADirectory {
            path: dest.to_owned(),
        });
    }
    let mut archive = Archive::new(input);
    let mut stats = PackStats::default();
    let mut buf = vec![0u8; 64 * 1024];
    for entry in archive.entries().map_err(ArchiveError::Input)? {
        let mut entry = entry.map_err(ArchiveError::Input)?;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            // Metadata for the whole archive (GNU tar's `--format=pax` writes one); nothing to
            // create.
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let names = components(&raw, &shown)?;
        let Some((last, parents)) = names.split_last() else {
            // `./`, the root itself, which exists already.
            if kind.is_dir() {
                continue;
            }
            return Err(unsafe_path(&shown, "empty path"));
        };
        if !(kind.is_file() || kind.is_contiguous() || kind.is_dir() || kind.is_symlink()) {
            return Err(ArchiveError::UnsupportedEntry {
                path: shown,
                kind: char::from(kind.as_byte()),
            });
        }
        let parent = make_parents(dest, parents, &shown)?;
        let target = parent.join(last);

        if kind.is_dir() {
            make_dir(&target, &shown)?;
            stats.dirs += 1;
        } else if kind.is_symlink() {
            let link = entry
                .link_name_bytes()
                .ok_or_else(|| unsafe_path(&shown, "symlink without a target"))?
                .into_owned();
            clear(&target, &shown)?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                .map_err(|source| write_error(&target, source))?;
            stats.symlinks += 1;
        } else {
            let mode = if entry.header().mode().map_err(ArchiveError::Input)? & 0o111 != 0 {
                EXEC_MODE
            } else {
                FILE_MODE
            };
            clear(&target, &shown)?;
            // create_new (O_EXCL) refuses to open through a symlink that appeared at the final
            // component after `clear`.
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&target)
                .map_err(|source| write_error(&target, source))?;
            stats.bytes += copy(&mut entry, &mut file, &mut buf, &target)?;
            // The umask may have cleared bits that `mode` asked for.
            file.set_permissions(Permissions::from_mode(mode))
                .map_err(|source| write_error(&target, source))?;
            stats.files += 1;
        }
    }
    Ok(stats)
}

/// Splits an entry's path into plain names, refusing anything that could leave `dest`.
fn components<'a>(raw: &'a [u8], shown: &str) -> Result<Vec<&'a OsStr>, ArchiveError> {
    if raw.is_empty() {
        return Err(unsafe_path(shown, "empty path"));
    }
    if raw.starts_with(b"/") {
        return Err(unsafe_path(shown, "absolute path"));
    }
    let mut names = Vec::new();
    for part in raw.split(|byte| *byte == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(unsafe_path(shown, "`..` component")),
            name => names.push(OsStr::from_bytes(name)),
        }
    }
    Ok(names)
}

/// Makes sure every parent of an entry is a real directory inside `dest`, creating missing
/// ones, and returns the innermost.
fn make_parents(dest: &Path, parents: &[&OsStr], shown: &str) -> Result<PathBuf, ArchiveError> {
    let mut dir = dest.to_path_buf();
    for name in parents {
        dir.push(name);
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ArchiveError::ThroughSymlink {
                    path: shown.to_owned(),
                    link: dir,
                });
            }
            Ok(_) => {
                return Err(ArchiveError::Conflict {
                    path: shown.to_owned(),
                    existing: dir,
                });
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .mode(EXEC_MODE)
                    .create(&dir)
                    .map_err(|source| write_error(&dir, source))?;
            }
            Err(source) => return Err(read_error(&dir, source)),
        }
    }
    Ok(dir)
}

/// Creates a directory entry, replacing a file or symlink in its way (never following it).
fn make_dir(target: &Path, shown: &str) -> Result<(), ArchiveError> {
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            clear(target, shown)?;
            create_dir(target)?;
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => create_dir(target)?,
        Err(source) => return Err(read_error(target, source)),
    }
    // The umask may have cleared bits, and an existing directory may have had other ones.
    fs::set_permissions(target, Permissions::from_mode(EXEC_MODE))
        .map_err(|source| write_error(target, source))
}

fn create_dir(target: &Path) -> Result<(), ArchiveError> {
    DirBuilder::new()
        .mode(EXEC_MODE)
        .create(target)
        .map_err(|source| write_error(target, source))
}

/// Removes a file or symlink (the link itself) where an entry goes; a directory there is a
/// conflict rather than something to delete recursively.
fn clear(target: &Path, shown: &str) -> Result<(), ArchiveError> {
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => Err(ArchiveError::Conflict {
            path: shown.to_owned(),
            existing: target.to_owned(),
        }),
        Ok(_) => fs::remove_file(target).map_err(|source| write_error(target, source)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(read_error(target, source)),
    }
}

/// Copies an entry's contents, telling the archive's read errors from the file's write errors.
fn copy(
    entry: &mut impl Read,
    file: &mut File,
    buf: &mut [u8],
    target: &Path,
) -> Result<u64, ArchiveError> {
    let mut total = 0u64;
    loop {
        let n = match entry.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(ArchiveError::Input(err)),
        };
        file.write_all(&buf[..n])
            .map_err(|source| write_error(target, source))?;
        total += n as u64;
    }
}

fn unsafe_path(shown: &str, reason: &'static str) -> ArchiveError {
    ArchiveError::UnsafePath {
        path: shown.to_owned(),
        reason,
    }
}

fn read_error(path: &Path, source: io::Error) -> ArchiveError {
    ArchiveError::Read {
        path: path.to_owned(),
        source,
    }
}

fn write_error(path: &Path, source: io::Error) -> ArchiveError {
    ArchiveError::Write {
        path: path.to_owned(),
        source,
    }
}
