//! The byte pipelines shared by the store's writers: deterministic compression, and feeding an
//! async input to a blocking writer.

use std::io::{self, Write};
use std::path::Path;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::digest::HashingWriter;
use crate::{ArtifactError, Digest, PackOptions, PackStats};

/// zstd level of directory artifacts: zstd's default, a good speed/size balance.
const ZSTD_LEVEL: i32 = 3;

/// Size of the blocks the compressor is fed. zstd's output depends on how its input is split
/// across calls; feeding fixed blocks makes it depend on the tar bytes alone, so a tar packed
/// here and one streamed in arbitrary chunks by the guest agent compress identically.
const BLOCK_LEN: usize = 128 * 1024;

/// Bytes read from an async input per message to the blocking writer.
pub(crate) const READ_CHUNK_LEN: usize = 256 * 1024;

/// Messages in flight between an async input and its blocking writer: enough to keep both
/// busy, few enough to bound memory at a few MiB.
pub(crate) const CHANNEL_DEPTH: usize = 8;

/// Packs `dir` (with [`PackOptions::default`], as the guest agent packs a workspace) into
/// `out` as a compressed artifact, exactly the bytes [`ArtifactStore::put_dir`] would store,
/// and returns their digest and length.
///
/// The CLI uses this to pack a local directory before uploading it in parts.
///
/// [`ArtifactStore::put_dir`]: crate::ArtifactStore::put_dir
pub fn pack_dir_to(dir: &Path, out: impl Write) -> Result<(Digest, u64), ArtifactError> {
    let mut hashing = HashingWriter::new(out);
    pack_compressed(dir, &mut hashing, &PackOptions::default())?;
    let (digest, len, mut out) = hashing.finish();
    out.flush().map_err(|source| ArtifactError::Io {
        action: "writing the packed artifact of",
        path: dir.to_owned(),
        source,
    })?;
    Ok((digest, len))
}

/// Packs `dir` and compresses the tar into `out`.
pub(crate) fn pack_compressed(
    dir: &Path,
    out: impl Write,
    opts: &PackOptions,
) -> Result<PackStats, ArtifactError> {
    let mut compressor = Compressor::new(out).map_err(compress_error)?;
    let stats = kiln_archive::pack(dir, &mut compressor, opts)?;
    compressor.finish().map_err(compress_error)?;
    Ok(stats)
}

fn compress_error(source: io::Error) -> ArtifactError {
    ArtifactError::Archive(kiln_archive::ArchiveError::Output(source))
}

/// zstd at [`ZSTD_LEVEL`] on one thread (worker threads would make the output depend on
/// scheduling), fed in [`BLOCK_LEN`] blocks whatever the writes it receives.
pub(crate) struct Compressor<W: Write> {
    encoder: zstd::stream::write::Encoder<'static, W>,
    block: Vec<u8>,
}

impl<W: Write> Compressor<W> {
    pub(crate) fn new(out: W) -> io::Result<Self> {
        let mut encoder = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
        // A frame checksum lets a decoder catch corruption the digest check would only report
        // after the whole artifact was read.
        encoder.include_checksum(true)?;
        Ok(Self {
            encoder,
            block: Vec::with_capacity(BLOCK_LEN),
        })
    }

    /// Compresses what is buffered, ends the frame and returns the output.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        if !self.block.is_empty() {
            self.encoder.write_all(&self.block)?;
        }
        self.encoder.finish()
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let len = buf.len();
        while !buf.is_empty() {
            if self.block.is_empty() && buf.len() >= BLOCK_LEN {
                // Whole blocks straight from the caller's buffer, saving a copy.
                self.encoder.write_all(&buf[..BLOCK_LEN])?;
                buf = &buf[BLOCK_LEN..];
                continue;
            }
            let take = (BLOCK_LEN - self.block.len()).min(buf.len());
            self.block.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.block.len() == BLOCK_LEN {
                self.encoder.write_all(&self.block)?;
                self.block.clear();
            }
        }
        Ok(len)
    }

    /// Does nothing: a zstd flush ends a block early and would make the output depend on when
    /// the caller flushed. [`Compressor::finish`] writes everything.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What an async input sends its blocking writer. The explicit end tells a complete input
/// from one whose sender went away (an error or a cancelled request), which must not be
/// stored.
pub(crate) enum Chunk {
    Data(Bytes),
    End,
}

/// Reads `input` to its end into `tx`, then sends [`Chunk::End`]. A closed channel means the
/// writer failed; its error is the one to report, so that is not an error here.
pub(crate) async fn feed<R: AsyncRead + Unpin>(
    mut input: R,
    tx: mpsc::Sender<Chunk>,
) -> Result<(), ArtifactError> {
    loop {
        let mut buf = BytesMut::with_capacity(READ_CHUNK_LEN);
        let n = input
            .read_buf(&mut buf)
            .await
            .map_err(ArtifactError::Input)?;
        let chunk = if n == 0 {
            Chunk::End
        } else {
            Chunk::Data(buf.freeze())
        };
        let end = matches!(chunk, Chunk::End);
        if tx.send(chunk).await.is_err() || end {
            return Ok(());
        }
    }
}

/// Writes what [`feed`] sends into `out` (which writes to `path`) until its end, on a blocking
/// thread.
pub(crate) fn drain(
    rx: &mut mpsc::Receiver<Chunk>,
    out: &mut dyn Write,
    path: &Path,
) -> Result<(), ArtifactError> {
    loop {
        match rx.blocking_recv() {
            Some(Chunk::Data(bytes)) => out
                .write_all(&bytes)
                .map_err(|source| ArtifactError::io("writing", path, source))?,
            Some(Chunk::End) => return Ok(()),
            None => {
                return Err(ArtifactError::Input(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the input stopped before its end",
                )));
            }
        }
    }
}
