//! Object bodies mapped into memory rather than read into buffers, so a GET hands the
//! page cache's own pages to the socket: one copy of every byte (into the socket) instead
//! of two (into a buffer, then into the socket), which is most of what a large GET costs.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{Advice, Mmap, MmapOptions};

/// A read-only mapping of a stretch of an object file or part file.
#[derive(Clone)]
pub(crate) struct Mapped(Arc<Mmap>);

/// What keeps a mapping alive for as long as a [`Bytes`] cut from it lives.
struct Owner(Arc<Mmap>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Mapped {
    /// Maps bytes `start..end` (a non-empty stretch) of `file` (blocking). A file shorter
    /// than `end` (damaged) is an error here rather than a fault when the bytes are read.
    pub(crate) fn new(file: &std::fs::File, start: u64, end: u64) -> std::io::Result<Mapped> {
        if file.metadata()?.len() < end {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let len = usize::try_from(end - start).map_err(std::io::Error::other)?;
        // SAFETY: a mapping is undefined behaviour only if the file changes or shrinks under
        // it. The store never writes a published file: a PUT writes a new file and renames
        // it over the old name, a delete unlinks, and a completed upload's parts are frozen;
        // an unlinked file stays whole for as long as it is mapped. Only someone editing the
        // data dir by hand could change one.
        #[allow(unsafe_code)]
        let map = unsafe { MmapOptions::new().offset(start).len(len).map(file)? };
        Ok(Mapped(Arc::new(map)))
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The bytes of `range`, their pages brought into memory first (blocking: this may wait
    /// for the disk), so the socket write that copies them never stalls an async worker on
    /// a page fault.
    pub(crate) fn block(&self, range: Range<usize>) -> Bytes {
        // Only a hint (kernels before 5.14 lack it): the write then faults the pages in.
        let _ = self
            .0
            .advise_range(Advice::PopulateRead, range.start, range.len());
        Bytes::from_owner(Owner(Arc::clone(&self.0))).slice(range)
    }
}
