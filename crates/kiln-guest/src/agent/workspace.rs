//! The workspace: path confinement and the file operations of the protocol.
//!
//! Confinement works in two steps. [`WorkspacePath::parse`] checks a path lexically: it must be
//! relative and its `..` components must not climb above the root; what remains are plain
//! names, so no `..` ever reaches the kernel. Every lookup then goes through
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` from a descriptor of the workspace root,
//! so the kernel itself refuses any symbolic link that leads outside (absolute targets, or `..`
//! above the root). Checking `canonicalize()` and then opening the path would leave a window in
//! which a process in the machine swaps a directory for a symlink to `/proc/sys` and has the
//! root agent write there; resolving relative to descriptors closes that window.
//!
//! Operations that act on an entry itself (stat, delete, the rename that finishes an upload)
//! resolve only the parent directory this way and then act on the final name with
//! `AT_SYMLINK_NOFOLLOW`, so a final symlink is handled as a link and never followed.

use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, FcntlArg, OFlag, OpenHow, ResolveFlag, fcntl, open, openat, openat2};
use nix::sys::stat::{FileStat as RawStat, Mode, SFlag, fchmod, fstat, fstatat, mkdirat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, dup, fchown, fchownat, unlinkat};

use crate::error_chain;
use crate::protocol::{DirEntry, EntryKind, ErrorBody, ErrorKind, FileStat};

/// How often to retry a lookup the kernel aborted because of a concurrent rename.
const EAGAIN_RETRIES: usize = 8;

/// A path inside the workspace that passed the lexical checks: plain names only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspacePath {
    parts: Vec<String>,
}

impl WorkspacePath {
    /// The workspace root.
    pub fn root() -> WorkspacePath {
        WorkspacePath { parts: Vec::new() }
    }

    /// Checks `raw` lexically: it must be relative, free of NUL bytes, and its `..` components
    /// must not climb above the root. `""` and `"."` are the root.
    pub fn parse(raw: &str) -> Result<WorkspacePath, PathError> {
        if raw.contains('\0') {
            return Err(PathError::Nul);
        }
        if raw.starts_with('/') {
            return Err(PathError::Absolute(raw.to_owned()));
        }
        let mut parts: Vec<String> = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(PathError::Escapes(raw.to_owned()));
                    }
                }
                name => parts.push(name.to_owned()),
            }
        }
        Ok(WorkspacePath { parts })
    }

    /// Whether this is the workspace root.
    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    /// The path relative to the workspace, `.` for the root: what the kernel is given.
    fn relative(&self) -> String {
        if self.parts.is_empty() {
            ".".to_owned()
        } else {
            self.parts.join("/")
        }
    }

    /// The parent directory and the final name; `None` for the root.
    fn split_last(&self) -> Option<(WorkspacePath, &str)> {
        let (name, parent) = self.parts.split_last()?;
        Some((
            WorkspacePath {
                parts: parent.to_vec(),
            },
            name,
        ))
    }
}

impl fmt::Display for WorkspacePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.relative())
    }
}

/// Why a file operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The path starts with `/`.
    #[error("`{0}` is absolute; paths are relative to the workspace")]
    Absolute(String),
    /// The path's `..` components climb above the workspace root.
    #[error("`{0}` escapes the workspace")]
    Escapes(String),
    /// A symbolic link on the way leads outside the workspace.
    #[error("`{0}` leads outside the workspace through a symbolic link")]
    SymlinkEscape(String),
    /// Symbolic links on the way form a loop or a chain too long to follow.
    #[error("`{0}` has too many levels of symbolic links")]
    SymlinkLoop(String),
    /// The path contains a NUL byte.
    #[error("the path contains a NUL byte")]
    Nul,
    /// The operation cannot apply to the workspace root itself.
    #[error("the workspace root cannot be {0}")]
    Root(&'static str),
    /// Nothing exists at the path.
    #[error("`{0}`: no such file or directory")]
    NotFound(String),
    /// A directory is where a file was expected.
    #[error("`{0}` is a directory")]
    IsADirectory(String),
    /// Something other than a directory is where a directory was expected.
    #[error("`{0}` is not a directory")]
    NotADirectory(String),
    /// A FIFO, socket or device is where a regular file was expected.
    #[error("`{0}` is not a regular file")]
    NotAFile(String),
    /// A non-empty directory was to be deleted without `recursive`.
    #[error("`{0}` is a directory that is not empty; delete it with `recursive`")]
    NotEmpty(String),
    /// The operating system refused.
    #[error("`{path}`: {op} failed")]
    Io {
        /// The path concerned.
        path: String,
        /// What was being done.
        op: &'static str,
        /// The error from the operating system.
        #[source]
        source: io::Error,
    },
}

impl PathError {
    /// The protocol's class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PathError::Absolute(_)
            | PathError::Escapes(_)
            | PathError::SymlinkEscape(_)
            | PathError::SymlinkLoop(_)
            | PathError::Nul
            | PathError::Root(_) => ErrorKind::InvalidPath,
            PathError::NotFound(_) => ErrorKind::NotFound,
            PathError::IsADirectory(_) => ErrorKind::IsADirectory,
            PathError::NotADirectory(_) => ErrorKind::NotADirectory,
            PathError::NotAFile(_) => ErrorKind::InvalidRequest,
            PathError::NotEmpty(_) => ErrorKind::Conflict,
            PathError::Io { .. } => ErrorKind::Io,
        }
    }
}

impl From<PathError> for ErrorBody {
    fn from(err: PathError) -> ErrorBody {
        ErrorBody::new(err.kind(), error_chain(&err))
    }
}

/// Maps the errno of a lookup or operation on `path` to a [`PathError`].
fn classify(path: &WorkspacePath, op: &'static str, errno: Errno) -> PathError {
    let shown = path.to_string();
    match errno {
        Errno::ENOENT => PathError::NotFound(shown),
        Errno::ENOTDIR => PathError::NotADirectory(shown),
        Errno::EISDIR => PathError::IsADirectory(shown),
        // RESOLVE_BENEATH reports an attempt to leave the starting directory as EXDEV.
        Errno::EXDEV => PathError::SymlinkEscape(shown),
        Errno::ELOOP => PathError::SymlinkLoop(shown),
        other => PathError::Io {
            path: shown,
            op,
            source: other.into(),
        },
    }
}

/// The workspace root, held open, and the owner given to what the agent creates in it.
#[derive(Debug)]
pub struct Workspace {
    root: PathBuf,
    root_fd: OwnedFd,
    owner: Option<(Uid, Gid)>,
}

impl Workspace {
    /// Opens the workspace at `root`. Files and directories the agent creates are chowned to
    /// `owner` (the `--run-as` user, when the agent runs as root).
    ///
    /// Fails when `root` is not a directory, or when the kernel lacks `openat2` (Linux 5.6),
    /// without which the agent cannot confine paths safely.
    pub fn open(root: &Path, owner: Option<(u32, u32)>) -> io::Result<Workspace> {
        let root_fd = open(
            root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| {
            io::Error::new(
                io::Error::from(errno).kind(),
                format!("cannot open the workspace {}: {errno}", root.display()),
            )
        })?;
        let workspace = Workspace {
            root: root.canonicalize()?,
            root_fd,
            owner: owner.map(|(uid, gid)| (Uid::from_raw(uid), Gid::from_raw(gid))),
        };
        match workspace.resolve(&WorkspacePath::root(), OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(_) => Ok(workspace),
            Err(Errno::ENOSYS) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel lacks openat2 (Linux 5.6 or later is required to confine paths)",
            )),
            Err(errno) => Err(errno.into()),
        }
    }

    /// The workspace root's canonical path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens `path` beneath the root; symbolic links are followed only while they stay inside.
    fn resolve(&self, path: &WorkspacePath, flags: OFlag) -> nix::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let relative = path.relative();
        let mut tries = 0;
        loop {
            match openat2(&self.root_fd, relative.as_str(), how) {
                // The kernel gives up when a rename raced the lookup; it is safe to retry.
                Err(Errno::EAGAIN) if tries < EAGAIN_RETRIES => tries += 1,
                result => return result,
            }
        }
    }

    /// The parent directory of `path`, opened, and the final name.
    fn parent<'p>(&self, path: &'p WorkspacePath) -> Result<(OwnedFd, &'p str), PathError> {
        let (parent, name) = path.split_last().ok_or(PathError::Root("used here"))?;
        let fd = self
            .resolve(&parent, OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map_err(|errno| classify(&parent, "open", errno))?;
        Ok((fd, name))
    }

    /// The host-side path of the directory `path`, after checking that it is a directory inside
    /// the workspace; used as the working directory of commands.
    pub fn dir_path(&self, path: &WorkspacePath) -> Result<PathBuf, PathError> {
        self.resolve(path, OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map_err(|errno| classify(path, "open", errno))?;
        Ok(if path.is_root() {
            self.root.clone()
        } else {
            self.root.join(path.relative())
        })
    }

    /// Metadata of `path`, not following a final symbolic link.
    pub fn stat(&self, path: &WorkspacePath) -> Result<FileStat, PathError> {
        let raw = if path.is_root() {
            fstat(&self.root_fd).map_err(|errno| classify(path, "stat", errno))?
        } else {
            let (dir, name) = self.parent(path)?;
            fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|errno| classify(path, "stat", errno))?
        };
        let kind = kind_of(&raw);
        Ok(FileStat {
            path: if path.is_root() {
                String::new()
            } else {
                path.relative()
            },
            kind,
            size: size_of(&raw, kind),
            mode: raw.st_mode & 0o7777,
            modified_ms: raw.st_mtime * 1000 + raw.st_mtime_nsec / 1_000_000,
        })
    }

    /// The entries of the directory `path` (a final symlink to a directory inside the
    /// workspace is followed), sorted by name.
    pub fn list_dir(&self, path: &WorkspacePath) -> Result<Vec<DirEntry>, PathError> {
        let fd = self
            .resolve(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(|errno| classify(path, "open", errno))?;
        let io_err = |op, errno| classify(path, op, errno);
        let mut dir = Dir::from_fd(dup(&fd).map_err(|e| io_err("dup", e))?)
            .map_err(|e| io_err("opendir", e))?;
        let mut entries = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| io_err("readdir", e))?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let raw = match fstatat(&fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(raw) => raw,
                // Removed between readdir and stat: it is simply gone.
                Err(Errno::ENOENT) => continue,
                Err(errno) => return Err(io_err("stat", errno)),
            };
            let kind = kind_of(&raw);
            entries.push(DirEntry {
                name: name.to_string_lossy().into_owned(),
                kind,
                size: size_of(&raw, kind),
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Opens the regular file `path` for reading; returns it with its size.
    pub fn open_file(&self, path: &WorkspacePath) -> Result<(File, u64), PathError> {
        if path.is_root() {
            return Err(PathError::IsADirectory(path.to_string()));
        }
        // O_NONBLOCK so that opening a FIFO cannot hang the agent waiting for a writer; the
        // flag is cleared again once we know it is a regular file.
        let fd = self
            .resolve(path, OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY)
            .map_err(|errno| classify(path, "open", errno))?;
        let raw = fstat(&fd).map_err(|errno| classify(path, "stat", errno))?;
        match kind_of(&raw) {
            EntryKind::File => {}
            EntryKind::Dir => return Err(PathError::IsADirectory(path.to_string())),
            _ => return Err(PathError::NotAFile(path.to_string())),
        }
        fcntl(&fd, FcntlArg::F_SETFL(OFlag::empty()))
            .map_err(|errno| classify(path, "fcntl", errno))?;
        Ok((File::from(fd), u64::try_from(raw.st_size).unwrap_or(0)))
    }

    /// Prepares an upload to `path`: creates missing parent directories and an empty temporary
    /// file next to the target, which [`Upload::commit`] renames over it.
    pub fn begin_upload(&self, path: &WorkspacePath, mode: u32) -> Result<Upload, PathError> {
        let (parent, name) = path.split_last().ok_or(PathError::Root("written to"))?;
        let dir = self.create_dirs(&parent)?;
        match fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(raw) if kind_of(&raw) == EntryKind::Dir => {
                return Err(PathError::IsADirectory(path.to_string()));
            }
            Ok(_) | Err(Errno::ENOENT) => {}
            Err(errno) => return Err(classify(path, "stat", errno)),
        }
        let temp = format!(".upload-{:016x}.tmp", rand::random::<u64>());
        // O_EXCL | O_NOFOLLOW: the temporary name is ours alone, never an existing file or a
        // link planted by a process in the machine.
        let fd = openat(
            &dir,
            temp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|errno| classify(path, "create", errno))?;
        let file = File::from(fd);
        // Built before the fallible steps below so that a failure removes the temporary file.
        let mut upload = Upload {
            dir,
            temp,
            name: name.to_owned(),
            path: path.clone(),
            file: None,
            committed: false,
        };
        if let Some((uid, gid)) = self.owner {
            fchown(&file, Some(uid), Some(gid)).map_err(|errno| classify(path, "chown", errno))?;
        }
        // After chown, which may clear mode bits; fchmod is not subject to the umask.
        fchmod(&file, Mode::from_bits_truncate(mode))
            .map_err(|errno| classify(path, "chmod", errno))?;
        upload.file = Some(file);
        Ok(upload)
    }

    /// Opens the directory `path`, creating it and its missing ancestors.
    fn create_dirs(&self, path: &WorkspacePath) -> Result<OwnedFd, PathError> {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
        match self.resolve(path, flags) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(errno) => return Err(classify(path, "open", errno)),
        }
        let mut dir = self
            .resolve(&WorkspacePath::root(), flags)
            .map_err(|errno| classify(path, "open", errno))?;
        for depth in 1..=path.parts.len() {
            let prefix = WorkspacePath {
                parts: path.parts[..depth].to_vec(),
            };
            let name = path.parts[depth - 1].as_str();
            match self.resolve(&prefix, flags) {
                Ok(fd) => {
                    dir = fd;
                    continue;
                }
                Err(Errno::ENOENT) => {}
                Err(errno) => return Err(classify(&prefix, "open", errno)),
            }
            match mkdirat(&dir, name, Mode::from_bits_truncate(0o755)) {
                Ok(()) => {
                    if let Some((uid, gid)) = self.owner {
                        // NOFOLLOW: should the new directory be swapped for a link at once,
                        // the link is chowned, not its target.
                        fchownat(
                            &dir,
                            name,
                            Some(uid),
                            Some(gid),
                            AtFlags::AT_SYMLINK_NOFOLLOW,
                        )
                        .map_err(|errno| classify(&prefix, "chown", errno))?;
                    }
                }
                // Created concurrently, or a dangling link; the lookup below decides.
                Err(Errno::EEXIST) => {}
                Err(errno) => return Err(classify(&prefix, "mkdir", errno)),
            }
            dir = self
                .resolve(&prefix, flags)
                .map_err(|errno| classify(&prefix, "open", errno))?;
        }
        Ok(dir)
    }

    /// Removes `path`: a file or symbolic link (never its target), an empty directory, or with
    /// `recursive` a directory and everything in it.
    pub fn delete(&self, path: &WorkspacePath, recursive: bool) -> Result<(), PathError> {
        if path.is_root() {
            return Err(PathError::Root("deleted"));
        }
        let (dir, name) = self.parent(path)?;
        let raw = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|errno| classify(path, "stat", errno))?;
        let result = if kind_of(&raw) != EntryKind::Dir {
            unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir)
        } else if recursive {
            remove_tree(&dir, &cstring(name))
        } else {
            unlinkat(&dir, name, UnlinkatFlags::RemoveDir)
        };
        result.map_err(|errno| match errno {
            Errno::ENOTEMPTY | Errno::EEXIST => PathError::NotEmpty(path.to_string()),
            errno => classify(path, "delete", errno),
        })
    }
}

/// A file being uploaded: a temporary file in the target's directory. Dropped without
/// [`Upload::commit`], the temporary file is removed and the target is untouched.
#[derive(Debug)]
pub struct Upload {
    dir: OwnedFd,
    temp: String,
    name: String,
    path: WorkspacePath,
    file: Option<File>,
    committed: bool,
}

impl Upload {
    /// The temporary file to write the contents to; `None` once taken.
    pub fn take_file(&mut self) -> Option<File> {
        self.file.take()
    }

    /// Atomically replaces the target with the written temporary file. The caller flushes and
    /// syncs the file first.
    pub fn commit(mut self) -> Result<(), PathError> {
        nix::fcntl::renameat(&self.dir, self.temp.as_str(), &self.dir, self.name.as_str())
            .map_err(|errno| classify(&self.path, "rename", errno))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the name is random and hidden, and a leftover harms nobody.
            let _ = unlinkat(&self.dir, self.temp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Removes the directory `name` in `parent` and everything below it, never following a
/// symbolic link.
fn remove_tree(parent: &OwnedFd, name: &CString) -> nix::Result<()> {
    let fd = openat(
        parent,
        name.as_c_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // Collect first: removing entries while reading the directory may skip some.
    let children: Vec<CString> = Dir::from_fd(dup(&fd)?)?
        .into_iter()
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_owned())
        .filter(|child| child.as_c_str() != c"." && child.as_c_str() != c"..")
        .collect();
    for child in &children {
        let result = match fstatat(&fd, child.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(raw) if kind_of(&raw) == EntryKind::Dir => remove_tree(&fd, child),
            Ok(_) => unlinkat(&fd, child.as_c_str(), UnlinkatFlags::NoRemoveDir),
            Err(errno) => Err(errno),
        };
        match result {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(errno) => return Err(errno),
        }
    }
    unlinkat(parent, name.as_c_str(), UnlinkatFlags::RemoveDir)
}

fn cstring(name: &str) -> CString {
    // WorkspacePath::parse refuses NUL bytes, so a name never contains one.
    CString::new(name).expect("workspace path names contain no NUL byte")
}

fn kind_of(raw: &RawStat) -> EntryKind {
    let format = raw.st_mode & SFlag::S_IFMT.bits();
    if format == SFlag::S_IFREG.bits() {
        EntryKind::File
    } else if format == SFlag::S_IFDIR.bits() {
        EntryKind::Dir
    } else if format == SFlag::S_IFLNK.bits() {
        EntryKind::Symlink
    } else {
        EntryKind::Other
    }
}

fn size_of(raw: &RawStat, kind: EntryKind) -> u64 {
    match kind {
        EntryKind::File | EntryKind::Symlink => u64::try_from(raw.st_size).unwrap_or(0),
        EntryKind::Dir | EntryKind::Other => 0,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn paths_are_checked_lexically() {
        // (input, Ok(normalized) or Err(expected kind as text))
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("", Ok(".")),
            (".", Ok(".")),
            ("./", Ok(".")),
            ("a", Ok("a")),
            ("a/b/", Ok("a/b")),
            ("a//b", Ok("a/b")),
            ("a/./b", Ok("a/b")),
            ("a/../b", Ok("b")),
            ("a/..", Ok(".")),
            ("...", Ok("...")),
            (".hidden/x", Ok(".hidden/x")),
            ("..", Err("escapes")),
            ("../x", Err("escapes")),
            ("a/../../x", Err("escapes")),
            ("./../x", Err("escapes")),
            ("/etc/passwd", Err("absolute")),
            ("//x", Err("absolute")),
            ("/", Err("absolute")),
            ("a\0b", Err("nul")),
        ];
        for (input, want) in cases {
            let got = WorkspacePath::parse(input);
            match (want, &got) {
                (Ok(normalized), Ok(path)) => {
                    assert_eq!(&path.to_string(), normalized, "{input:?}")
                }
                (Err("escapes"), Err(PathError::Escapes(_)))
                | (Err("absolute"), Err(PathError::Absolute(_)))
                | (Err("nul"), Err(PathError::Nul)) => {}
                _ => panic!("{input:?}: want {want:?}, got {got:?}"),
            }
            if let Err(err) = &got {
                assert_eq!(err.kind(), ErrorKind::InvalidPath, "{input:?}");
            }
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        outside: PathBuf,
        workspace: Workspace,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("ws");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).expect("mkdir ws");
        std::fs::create_dir_all(&outside).expect("mkdir outside");
        std::fs::write(outside.join("secret"), "secret").expect("write secret");
        std::fs::create_dir_all(root.join("src")).expect("mkdir src");
        std::fs::write(root.join("src/main.rs"), "fn main() {}").expect("write main");
        symlink(&outside, root.join("abs-out")).expect("symlink");
        symlink("../outside", root.join("rel-out")).expect("symlink");
        symlink("src", root.join("src-link")).expect("symlink");
        symlink("src/main.rs", root.join("main-link")).expect("symlink");
        let workspace = Workspace::open(&root, None).expect("open workspace");
        Fixture {
            _dir: dir,
            outside,
            workspace,
        }
    }

    fn p(raw: &str) -> WorkspacePath {
        WorkspacePath::parse(raw).expect("lexically valid")
    }

    fn write(ws: &Workspace, path: &str, body: &[u8]) -> Result<(), PathError> {
        let mut upload = ws.begin_upload(&p(path), 0o644)?;
        let mut file = upload.take_file().expect("file");
        file.write_all(body).expect("write");
        drop(file);
        upload.commit()
    }

    #[test]
    fn symlinks_inside_are_followed_and_links_outside_are_refused() {
        let fx = fixture();
        let ws = &fx.workspace;

        let (mut file, size) = ws.open_file(&p("src-link/main.rs")).expect("inside link");
        let mut text = String::new();
        file.read_to_string(&mut text).expect("read");
        assert_eq!((text.as_str(), size), ("fn main() {}", 12));
        assert!(ws.open_file(&p("main-link")).is_ok());
        assert_eq!(ws.list_dir(&p("src-link")).expect("list").len(), 1);

        for path in ["abs-out/secret", "rel-out/secret"] {
            let err = ws.open_file(&p(path)).expect_err(path);
            assert!(
                matches!(err, PathError::SymlinkEscape(_)),
                "{path}: {err:?}"
            );
            let err = write(ws, path, b"x").expect_err(path);
            assert!(
                matches!(err, PathError::SymlinkEscape(_)),
                "{path}: {err:?}"
            );
            let err = write(ws, &format!("{path}/deeper"), b"x").expect_err(path);
            assert!(
                matches!(err, PathError::SymlinkEscape(_)),
                "{path}: {err:?}"
            );
            let err = ws.delete(&p(path), true).expect_err(path);
            assert!(
                matches!(err, PathError::SymlinkEscape(_)),
                "{path}: {err:?}"
            );
        }
        for path in ["abs-out", "rel-out"] {
            assert!(matches!(
                ws.list_dir(&p(path)),
                Err(PathError::SymlinkEscape(_))
            ));
            assert!(matches!(
                ws.dir_path(&p(path)),
                Err(PathError::SymlinkEscape(_))
            ));
            // The link itself can be described and replaced; the target stays untouched.
            assert_eq!(
                ws.stat(&p(path)).expect("stat link").kind,
                EntryKind::Symlink
            );
        }
        write(ws, "abs-out", b"now a file").expect("replace the link itself");
        assert_eq!(ws.stat(&p("abs-out")).expect("stat").kind, EntryKind::File);
        ws.delete(&p("rel-out"), true)
            .expect("delete the link itself");

        assert_eq!(
            std::fs::read_to_string(fx.outside.join("secret")).expect("secret"),
            "secret"
        );
        assert_eq!(std::fs::read_dir(&fx.outside).expect("outside").count(), 1);
    }

    #[test]
    fn uploads_create_directories_and_replace_atomically() {
        let fx = fixture();
        let ws = &fx.workspace;
        write(ws, "a/b/c.txt", b"one").expect("write");
        write(ws, "a/b/c.txt", b"two").expect("overwrite");
        let (mut file, _) = ws.open_file(&p("a/b/c.txt")).expect("open");
        let mut text = String::new();
        file.read_to_string(&mut text).expect("read");
        assert_eq!(text, "two");

        // An upload dropped before commit leaves neither the target nor a temporary file.
        let mut upload = ws.begin_upload(&p("a/b/d.txt"), 0o600).expect("begin");
        upload
            .take_file()
            .expect("file")
            .write_all(b"half")
            .expect("write");
        drop(upload);
        let names: Vec<String> = ws
            .list_dir(&p("a/b"))
            .expect("list")
            .into_iter()
            .map(|entry| entry.name)
            .collect();
        assert_eq!(names, ["c.txt"]);

        assert!(matches!(
            write(ws, "a/b", b"x"),
            Err(PathError::IsADirectory(_))
        ));
        assert!(matches!(
            write(ws, "a/b/c.txt/x", b"x"),
            Err(PathError::NotADirectory(_))
        ));
        assert!(matches!(write(ws, "", b"x"), Err(PathError::Root(_))));
    }

    #[test]
    fn stat_list_and_delete() {
        let fx = fixture();
        let ws = &fx.workspace;
        let stat = ws.stat(&p("src/main.rs")).expect("stat");
        assert_eq!(
            (stat.path.as_str(), stat.kind, stat.size),
            ("src/main.rs", EntryKind::File, 12)
        );
        assert_eq!(ws.stat(&p("")).expect("root").kind, EntryKind::Dir);

        let names: Vec<(String, EntryKind)> = ws
            .list_dir(&p(""))
            .expect("list")
            .into_iter()
            .map(|entry| (entry.name, entry.kind))
            .collect();
        assert_eq!(
            names,
            [
                ("abs-out".to_owned(), EntryKind::Symlink),
                ("main-link".to_owned(), EntryKind::Symlink),
                ("rel-out".to_owned(), EntryKind::Symlink),
                ("src".to_owned(), EntryKind::Dir),
                ("src-link".to_owned(), EntryKind::Symlink),
            ]
        );

        assert!(matches!(
            ws.delete(&p("src"), false),
            Err(PathError::NotEmpty(_))
        ));
        assert!(matches!(ws.delete(&p(""), true), Err(PathError::Root(_))));
        assert!(matches!(
            ws.delete(&p("nope"), false),
            Err(PathError::NotFound(_))
        ));
        assert!(matches!(
            ws.list_dir(&p("src/main.rs")),
            Err(PathError::NotADirectory(_))
        ));
        assert!(matches!(
            ws.open_file(&p("src")),
            Err(PathError::IsADirectory(_))
        ));
        ws.delete(&p("src"), true).expect("recursive delete");
        assert!(matches!(ws.stat(&p("src")), Err(PathError::NotFound(_))));
    }
}
