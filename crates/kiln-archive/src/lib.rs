//! Deterministic tar of a directory tree, and a safe unpack: the same files always give the
//! same bytes.
//!
//! [`pack`] walks a tree without following symlinks, sorts every entry by its relative path
//! (byte order) and writes GNU tar headers with every field that varies between machines pinned:
//! mtime 0, uid/gid 0, empty user and group names, mode 0o755 or 0o644. Two trees with the same
//! names, contents, exec bits and symlink targets therefore give the same archive, byte for
//! byte, whatever order they were created in and whoever owns them. That is what lets an
//! artifact's digest stand for its contents, and lets the guest agent and the control plane
//! agree on a digest without talking.
//!
//! [`unpack`] is the inverse for archives that may come from anywhere: it refuses absolute
//! paths, `..` and any entry whose path passes through a symlink, and writes only files,
//! directories and symlinks, so nothing lands outside the destination.
//!
//! This crate is linked into the guest agent, so it depends on no other Kiln crate and keeps
//! its dependencies to `tar` and the gitignore matcher of `ignore`.

#![forbid(unsafe_code)]

mod error;
mod pack;
mod unpack;

pub use error::ArchiveError;
pub use pack::pack;
pub use unpack::unpack;

/// Name of the ignore file [`PackOptions::default`] reads from the root of a tree.
pub const DEFAULT_IGNORE_FILE: &str = ".kilnignore";

/// How [`pack`] chooses what goes into an archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackOptions {
    /// Name of a file at the root of the tree holding gitignore-style patterns (`node_modules/`,
    /// `*.log`, `!keep.log`, `/build`) for paths to leave out. The file itself is always packed
    /// so that unpacking and packing again gives the same archive. It is read only if it is a
    /// regular file: a symlink in its place is packed as a symlink and never followed. `None`
    /// packs everything. Defaults to [`DEFAULT_IGNORE_FILE`].
    pub ignore_file: Option<String>,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            ignore_file: Some(DEFAULT_IGNORE_FILE.to_owned()),
        }
    }
}

/// What [`pack`] wrote or [`unpack`] created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PackStats {
    /// Regular files.
    pub files: u64,
    /// Directories, not counting the root.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Bytes of file contents (not of the archive).
    pub bytes: u64,
}
