//! Object bodies mapped into memory rather than read into buffers. A GET hands slices of
//! a mapping to hyper as its body; the connection's writer ([`crate::sendfile`]) finds each
//! slice's file here and has the kernel send it straight from the page cache, so no byte
//! of a body is copied in user space.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::sync::{Arc, LazyLock, RwLock};

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions};

/// A read-only mapping of a stretch of an object file or part file.
#[derive(Clone)]
pub(crate) struct Mapped(Arc<Region>);

/// A mapping, listed in [`LIVE`] for as long as it exists.
struct Region(Mmap);

/// A stretch of a file: what a slice of a live mapping shows.
pub(crate) struct FileSpan {
    pub(crate) file: Arc<File>,
    pub(crate) offset: u64,
}

/// The live mappings by start address: their length and the file stretch they show.
type Live = BTreeMap<usize, (usize, FileSpan)>;
static LIVE: LazyLock<RwLock<Live>> = LazyLock::new(Default::default);

impl Drop for Region {
    fn drop(&mut self) {
        // Unlisted before it is unmapped, so no later mapping at this address is mistaken
        // for it.
        LIVE.write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&(self.0.as_ptr() as usize));
    }
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.0.0
    }
}

impl Mapped {
    /// Maps bytes `start..end` (a non-empty stretch) of `file` (blocking). A file shorter
    /// than `end` (damaged) is an error here rather than a fault when the bytes are read.
    pub(crate) fn new(file: Arc<File>, start: u64, end: u64) -> std::io::Result<Mapped> {
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
        let map = unsafe { MmapOptions::new().offset(start).len(len).map(&*file)? };
        let span = FileSpan {
            file,
            offset: start,
        };
        LIVE.write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(map.as_ptr() as usize, (len, span));
        Ok(Mapped(Arc::new(Region(map))))
    }

    pub(crate) fn len(&self) -> usize {
        self.0.0.len()
    }

    /// The bytes of `range`: a view of the mapping, which the connection sends from the
    /// page cache; read through the mapping only where nothing recognises it.
    pub(crate) fn slice(&self, range: Range<usize>) -> Bytes {
        Bytes::from_owner(self.clone()).slice(range)
    }
}

/// The file stretch `bytes` shows, if they lie wholly within a live mapping.
pub(crate) fn file_span(bytes: &[u8]) -> Option<FileSpan> {
    if bytes.is_empty() {
        return None;
    }
    let at = bytes.as_ptr() as usize;
    let live = LIVE.read().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (&start, (len, span)) = live.range(..=at).next_back()?;
    (at + bytes.len() <= start + len).then(|| FileSpan {
        file: Arc::clone(&span.file),
        offset: span.offset + (at - start) as u64,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file_of(len: usize) -> std::io::Result<Arc<File>> {
        let mut file = tempfile::tempfile()?;
        file.write_all(&vec![7; len])?;
        Ok(Arc::new(file))
    }

    #[test]
    fn a_slice_of_a_mapping_shows_where_in_its_file_it_lies() -> std::io::Result<()> {
        // An offset off the page size: the mapping starts before it, the slice does not.
        let mapped = Mapped::new(file_of(10_000)?, 4_097, 9_000)?;
        let bytes = mapped.slice(100..200);
        let span = file_span(&bytes).expect("a slice of a live mapping");
        assert_eq!(span.offset, 4_197);
        assert!(file_span(&mapped.slice(0..mapped.len())).is_some());
        assert!(file_span(&bytes[..0]).is_none(), "nothing to send");
        assert!(file_span(&[7; 100]).is_none(), "memory of our own");
        Ok(())
    }

    #[test]
    fn a_file_shorter_than_its_record_is_refused_before_mapping() -> std::io::Result<()> {
        let refused = Mapped::new(file_of(100)?, 0, 200).err();
        assert_eq!(
            refused.map(|e| e.kind()),
            Some(std::io::ErrorKind::UnexpectedEof)
        );
        Ok(())
    }
}
