//! The error of packing and unpacking.

use std::io;
use std::path::PathBuf;

/// Why [`pack`](crate::pack) or [`unpack`](crate::unpack) failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file or directory of the tree could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// The path that failed.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file, directory or symlink could not be created while unpacking.
    #[error("writing {}", path.display())]
    Write {
        /// The path that failed.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing the archive to its output failed.
    #[error("writing the archive")]
    Output(#[source] io::Error),
    /// Reading the archive failed, or it is not a well-formed tar.
    #[error("reading the archive")]
    Input(#[source] io::Error),
    /// The root to pack, or the destination to unpack into, is not a directory.
    #[error("{} is not a directory", path.display())]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// [`PackOptions::ignore_file`](crate::PackOptions::ignore_file) is not a plain file name.
    #[error("ignore file name {name:?} must be a single file name")]
    BadIgnoreFileName {
        /// The name given.
        name: String,
    },
    /// A line of the ignore file is not a valid pattern.
    #[error("bad pattern on line {line} of {}", path.display())]
    IgnorePattern {
        /// The ignore file.
        path: PathBuf,
        /// The line, counted from 1.
        line: usize,
        /// The cause.
        #[source]
        source: ignore::Error,
    },
    /// The patterns of the ignore file could not be compiled together.
    #[error("compiling the patterns of {}", path.display())]
    IgnoreRules {
        /// The ignore file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: ignore::Error,
    },
    /// A file was replaced, shrunk or swapped for something else while it was being packed;
    /// packing again gives a consistent archive.
    #[error("{} changed while it was being packed", path.display())]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// An archive entry's path is absolute, has a `..` component or is otherwise unsafe.
    #[error("unsafe path {path:?} in the archive: {reason}")]
    UnsafePath {
        /// The entry's path, lossily decoded.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An archive entry's path passes through a symlink, which could lead out of the
    /// destination.
    #[error("archive entry {path:?} would be written through the symlink {}", link.display())]
    ThroughSymlink {
        /// The entry's path, lossily decoded.
        path: String,
        /// The symlink in the destination.
        link: PathBuf,
    },
    /// An archive entry's path needs a directory where the destination has something else.
    #[error("archive entry {path:?} conflicts with {}", existing.display())]
    Conflict {
        /// The entry's path, lossily decoded.
        path: String,
        /// What is in the way.
        existing: PathBuf,
    },
    /// An archive entry is neither a file, a directory nor a symlink (a hard link, a device,
    /// a fifo, a sparse file, ...).
    #[error(
        "archive entry {path:?} has unsupported type {kind:?}; only files, directories and symlinks are allowed"
    )]
    UnsupportedEntry {
        /// The entry's path, lossily decoded.
        path: String,
        /// The tar type flag.
        kind: char,
    },
}
