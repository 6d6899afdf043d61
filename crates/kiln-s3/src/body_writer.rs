//! The writing stage of an upload: creates the temporary file, puts body blocks into it, and
//! publishes it under its object name.
//!
//! Whole 1 MiB runs go through a second descriptor opened with `O_DIRECT`, from an aligned
//! buffer straight to the device. That skips page-cache allocation, dirty tracking, writeback
//! and eviction: kernel work that would otherwise compete with the body's MD5, the stage that
//! bounds a PUT. The last partial run goes through the page cache with the trailer, when the
//! object is sealed. Where the filesystem refuses `O_DIRECT` (tmpfs) or a direct write, the
//! writer carries on through the page cache and starts writeback every MiB instead, so the
//! closing fsync still finds little to flush.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{ObjectStoreError, io_err};

/// Bytes per direct write, and per writeback hint on the page-cache path.
const RUN: usize = 1 << 20;
/// Direct I/O wants buffer, offset and length aligned to the device's logical block; 4 KiB
/// covers every common device.
const ALIGN: usize = 4096;

/// The writing stage's state. It owns the temporary file: dropping the writer before
/// [`BodyWriter::publish`] has renamed the file removes it. Because the stage drops its state
/// only after the step in hand, an abandoned upload cannot leave a file behind, even one its
/// first step was still creating.
pub(crate) struct BodyWriter {
    path: PathBuf,
    /// Created by the first step, on the blocking pool, so the request task never waits for it.
    file: Option<File>,
    direct: Direct,
    /// Bytes put into the file so far; the buffered run, if any, follows.
    offset: u64,
    /// Where the page-cache path last asked for writeback.
    written_back: u64,
    /// Set once the file carries its object name.
    published: bool,
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        if self.file.is_some() && !self.published {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

enum Direct {
    /// Not tried yet: opened with the file.
    Untried,
    On(DirectRun),
    Off,
}

/// The `O_DIRECT` descriptor and the aligned run being gathered for it.
struct DirectRun {
    file: File,
    /// `RUN + ALIGN` bytes; the run lives at `start..start + RUN`, aligned.
    buffer: Vec<u8>,
    start: usize,
    len: usize,
}

impl DirectRun {
    fn open(path: &Path) -> Option<DirectRun> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(path)
            .ok()?;
        let buffer = vec![0u8; RUN + ALIGN];
        let start = buffer.as_ptr().align_offset(ALIGN);
        (start < ALIGN).then_some(DirectRun {
            file,
            buffer,
            start,
            len: 0,
        })
    }

    fn gathered(&self) -> &[u8] {
        &self.buffer[self.start..self.start + self.len]
    }
}

impl BodyWriter {
    /// A writer that will create the temporary file `path` (which must not exist yet).
    pub(crate) fn new(path: PathBuf) -> BodyWriter {
        BodyWriter {
            path,
            file: None,
            direct: Direct::Untried,
            offset: 0,
            written_back: 0,
            published: false,
        }
    }

    /// The file, created (with its direct descriptor, if the filesystem allows one) on first use.
    fn file(&mut self) -> std::io::Result<&File> {
        if self.file.is_none() {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&self.path)?;
            self.file = Some(file);
            if matches!(self.direct, Direct::Untried) {
                self.direct = DirectRun::open(&self.path).map_or(Direct::Off, Direct::On);
            }
        }
        self.file
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the body file is missing"))
    }

    /// The stage's step: puts a block's chunks into the file (blocking).
    pub(crate) fn write<C: AsRef<[u8]>>(&mut self, chunks: &[C]) -> std::io::Result<()> {
        self.file()?;
        for chunk in chunks {
            self.append(chunk.as_ref())?;
        }
        Ok(())
    }

    fn append(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let Direct::On(run) = &mut self.direct else {
                return self.write_buffered(bytes);
            };
            let n = bytes.len().min(RUN - run.len);
            let at = run.start + run.len;
            run.buffer[at..at + n].copy_from_slice(&bytes[..n]);
            run.len += n;
            bytes = &bytes[n..];
            if run.len == RUN {
                self.flush_run()?;
            }
        }
        Ok(())
    }

    /// Writes the full aligned run directly; a refused direct write turns direct I/O off and
    /// goes through the page cache instead.
    fn flush_run(&mut self) -> std::io::Result<()> {
        let Direct::On(run) = &mut self.direct else {
            return Ok(());
        };
        match run.file.write_all_at(run.gathered(), self.offset) {
            Ok(()) => {
                self.offset += run.len as u64;
                self.written_back = self.offset;
                run.len = 0;
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
                let Direct::On(run) = std::mem::replace(&mut self.direct, Direct::Off) else {
                    return Ok(());
                };
                self.write_buffered(run.gathered())
            }
            Err(e) => Err(e),
        }
    }

    fn write_buffered(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let (offset, written_back) = (self.offset, self.written_back);
        let file = self.file()?;
        file.write_all_at(bytes, offset)?;
        let end = offset + bytes.len() as u64;
        if end - written_back >= RUN as u64 {
            start_writeback(file, written_back, end - written_back);
            self.written_back = end;
        }
        self.offset = end;
        Ok(())
    }

    /// Writes the gathered partial run and then `footer` through the page cache, fsyncs the
    /// file, and puts it under the name `target`: the body and footer are on disk before the
    /// name points at them (blocking; the caller makes the rename durable). A file that had
    /// the name is swapped out, not lost: it is answered, under the temporary name, for the
    /// caller to dispose of. Knowing exactly what was replaced matters for a multipart object,
    /// whose parts live in a directory of their own.
    pub(crate) fn publish(
        mut self,
        footer: &[u8],
        target: &Path,
    ) -> Result<Option<PathBuf>, ObjectStoreError> {
        self.seal(footer).map_err(io_err("write", &self.path))?;
        let replaced = swap_into_place(&self.path, target).map_err(io_err("rename", target))?;
        self.published = true;
        Ok(replaced.then(|| self.path.clone()))
    }

    fn seal(&mut self, footer: &[u8]) -> std::io::Result<()> {
        if let Direct::On(run) = std::mem::replace(&mut self.direct, Direct::Off) {
            self.write_buffered(run.gathered())?;
        }
        let offset = self.offset;
        let file = self.file()?;
        file.write_all_at(footer, offset)?;
        file.sync_all()
    }
}

/// Renames `from` to `to`, exchanging the two when `to` exists; answers whether it did.
/// Filesystems without `renameat2` flags get a plain rename (what it replaces is then
/// unlinked with it, and a multipart object's parts are left for the next start's sweep).
fn swap_into_place(from: &Path, to: &Path) -> std::io::Result<bool> {
    use nix::errno::Errno;
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    loop {
        match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => return Ok(true),
            Err(Errno::ENOENT) => {}
            Err(Errno::EINVAL) => return std::fs::rename(from, to).map(|()| false),
            Err(e) => return Err(e.into()),
        }
        // Nothing to exchange with; refusing to replace keeps a file published meanwhile.
        match renameat2(AT_FDCWD, from, AT_FDCWD, to, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(false),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Asks the kernel to start writing a just-written range back to disk without waiting for it,
/// as `dd oflag=nocache` does (pages already clean by then leave the cache: an upload is rarely
/// read back at once). Only a hint: the closing fsync is what makes the object durable.
fn start_writeback(file: &File, offset: u64, len: u64) {
    let _ = nix::fcntl::posix_fadvise(
        file,
        i64::try_from(offset).unwrap_or(i64::MAX),
        i64::try_from(len).unwrap_or(0),
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Writes `body` in `piece`-sized chunks and seals it with a short footer.
    fn write_in_pieces(dir: &std::path::Path, body: &[u8], piece: usize, direct: bool) -> Vec<u8> {
        let mut writer = BodyWriter::new(dir.join("body"));
        if !direct {
            writer.direct = Direct::Off;
        }
        for block in body.chunks(piece * 3) {
            let chunks: Vec<&[u8]> = block.chunks(piece).collect();
            writer.write(&chunks).expect("write");
        }
        let target = dir.join("object");
        if let Some(old) = writer.publish(b"FOOTER", &target).expect("publish") {
            std::fs::remove_file(old).expect("remove the replaced file");
        }
        std::fs::read(&target).expect("read back")
    }

    #[test]
    fn a_writer_dropped_before_publishing_leaves_no_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        drop(BodyWriter::new(dir.path().join("never-written")));
        let mut writer = BodyWriter::new(dir.path().join("half-written"));
        writer.write(&[body(RUN + 5)]).expect("write");
        assert!(dir.path().join("half-written").exists());
        drop(writer);
        assert_eq!(std::fs::read_dir(dir.path()).expect("list").count(), 0);
    }

    #[test]
    fn publishing_over_a_file_answers_the_file_it_replaced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let target = dir.path().join("object");
        let mut first = BodyWriter::new(dir.path().join(".tmp-1"));
        first.write(&[b"first"]).expect("write");
        assert_eq!(first.publish(b"", &target).expect("publish"), None);
        let mut second = BodyWriter::new(dir.path().join(".tmp-2"));
        second.write(&[b"second"]).expect("write");
        let replaced = second.publish(b"", &target).expect("publish");
        assert_eq!(replaced, Some(dir.path().join(".tmp-2")));
        assert_eq!(std::fs::read(&target).expect("read"), b"second");
        assert_eq!(
            std::fs::read(dir.path().join(".tmp-2")).expect("read"),
            b"first"
        );
    }

    #[test]
    fn bodies_of_every_shape_read_back_whole_followed_by_the_footer() {
        let dir = tempfile::tempdir().expect("temp dir");
        for direct in [true, false] {
            for (len, piece) in [
                (0, 1),
                (5, 2),
                (RUN, 4096),
                (RUN, 400 * 1024),
                (3 * RUN + 12_345, 65_536 + 7),
            ] {
                let body = body(len);
                let mut want = body.clone();
                want.extend_from_slice(b"FOOTER");
                let got = write_in_pieces(dir.path(), &body, piece, direct);
                assert!(
                    got == want,
                    "{len} bytes in {piece}-byte chunks, direct {direct}"
                );
            }
        }
    }
}
