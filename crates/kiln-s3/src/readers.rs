//! The multipart bodies being read, by upload id. A replaced or deleted multipart object's
//! parts are retired, not removed, and a GET opens each part only when its stream reaches it;
//! the sweep that removes retired parts leaves alone those a GET is still reading, however long
//! that GET takes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Shared by every clone of the store.
#[derive(Clone, Debug, Default)]
pub(crate) struct Readers(Arc<Mutex<HashMap<String, usize>>>);

impl Readers {
    /// Counts a reader of `upload`'s parts until the returned guard drops.
    pub(crate) fn enter(&self, upload: &str) -> Reading {
        *self.counts().entry(upload.to_owned()).or_default() += 1;
        Reading {
            readers: self.clone(),
            upload: upload.to_owned(),
        }
    }

    /// Whether a GET is reading `upload`'s parts.
    pub(crate) fn busy(&self, upload: &str) -> bool {
        self.counts().contains_key(upload)
    }

    fn counts(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        // A count is never left half-changed, so a poisoned map is still right.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One reader of an upload's parts.
#[derive(Debug)]
pub(crate) struct Reading {
    readers: Readers,
    upload: String,
}

impl Drop for Reading {
    fn drop(&mut self) {
        let mut counts = self.readers.counts();
        if let Some(count) = counts.get_mut(&self.upload) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.upload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_is_busy_while_any_reader_holds_it() {
        let readers = Readers::default();
        let first = readers.enter("u1");
        let second = readers.clone().enter("u1");
        assert!(readers.busy("u1"));
        assert!(!readers.busy("u2"));
        drop(first);
        assert!(readers.busy("u1"), "one reader is left");
        drop(second);
        assert!(!readers.busy("u1"));
        assert!(readers.0.lock().expect("lock").is_empty(), "nothing kept");
    }
}
