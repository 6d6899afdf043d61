//! The sorted keys of each bucket, in memory, so a listing page costs the keys on it rather than
//! a read of the bucket's whole directory.
//!
//! A bucket's keys are read from its directory by the first listing after the store opens, and
//! kept up to date by every write and delete after that. Each reports its key once its rename
//! is done, and the index then looks at whether the key's file is there, under its lock: of
//! racing writes and deletes of one key, the last report looks after the last rename, so the
//! set ends as the directory does whatever order the reports come in. Keys reported while that
//! first read runs are looked at again once it is done, so the read cannot undo them. A write
//! whose outcome is unknown (it failed after its rename, say) drops the bucket's keys, and the
//! next listing reads the directory again.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::{ListMarker, ListQuery};

#[derive(Default)]
pub(crate) struct KeyIndex {
    buckets: Mutex<HashMap<String, Keys>>,
    loads: AtomicU64,
}

impl std::fmt::Debug for KeyIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys themselves would be far too many to print.
        f.debug_struct("KeyIndex")
            .field("buckets", &self.lock().len())
            .finish_non_exhaustive()
    }
}

enum Keys {
    /// Being read from the directory by load `id`; the keys (and their files) changed since.
    Loading {
        id: u64,
        changed: Vec<(String, PathBuf)>,
    },
    Loaded(BTreeSet<String>),
}

/// Lists `key` if its file is there, and unlists it if not.
fn look(keys: &mut BTreeSet<String>, key: String, file: &Path) {
    // A name just renamed in or out: answered from the dentry cache.
    if std::fs::symlink_metadata(file).is_ok() {
        keys.insert(key);
    } else {
        keys.remove(&key);
    }
}

/// What [`KeyIndex::page`] found.
pub(crate) enum Lookup {
    Page(Page),
    /// The bucket's keys are not in memory: read them, then call [`KeyIndex::loaded`].
    Load(u64),
    /// Another listing is reading the bucket's keys: read them too, for this page only.
    ReadAlone,
}

/// The keys and rolled-up prefixes of one listing page; metadata is read for the keys after.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Page {
    pub(crate) keys: Vec<String>,
    pub(crate) common_prefixes: Vec<String>,
    pub(crate) next_marker: Option<ListMarker>,
}

impl KeyIndex {
    /// The object `key`, stored in `file`, was written or deleted.
    pub(crate) fn changed(&self, bucket: &str, key: &str, file: &Path) {
        match self.lock().get_mut(bucket) {
            None => {}
            Some(Keys::Loading { changed, .. }) => changed.push((key.to_owned(), file.to_owned())),
            Some(Keys::Loaded(keys)) => look(keys, key.to_owned(), file),
        }
    }

    /// Forgets what is known of the bucket: it was created, deleted, or a write's outcome is
    /// unknown. The next listing reads its directory.
    pub(crate) fn forget(&self, bucket: &str) {
        self.lock().remove(bucket);
    }

    /// The page `query` asks for, if the bucket's keys are in memory; otherwise what the caller
    /// is to do about it.
    pub(crate) fn page(&self, bucket: &str, query: &ListQuery<'_>) -> Lookup {
        let mut buckets = self.lock();
        match buckets.get(bucket) {
            Some(Keys::Loaded(keys)) => Lookup::Page(page_of(keys, query)),
            Some(Keys::Loading { .. }) => Lookup::ReadAlone,
            None => {
                let id = self.loads.fetch_add(1, Ordering::Relaxed);
                let changed = Vec::new();
                buckets.insert(bucket.to_owned(), Keys::Loading { id, changed });
                Lookup::Load(id)
            }
        }
    }

    /// Takes the keys load `id` read from the directory, looks again at the keys changed
    /// meanwhile, keeps them if this load is still the bucket's, and returns the page `query`
    /// asks for.
    pub(crate) fn loaded(
        &self,
        bucket: &str,
        id: u64,
        read: Vec<String>,
        query: &ListQuery<'_>,
    ) -> Page {
        let mut keys: BTreeSet<String> = read.into_iter().collect();
        let mut buckets = self.lock();
        match buckets.remove(bucket) {
            Some(Keys::Loading {
                id: current,
                changed,
            }) if current == id => {
                for (key, file) in changed {
                    look(&mut keys, key, &file);
                }
                let page = page_of(&keys, query);
                buckets.insert(bucket.to_owned(), Keys::Loaded(keys));
                page
            }
            other => {
                // Another load's, or forgotten meanwhile: answer from this read, keep theirs.
                if let Some(other) = other {
                    buckets.insert(bucket.to_owned(), other);
                }
                page_of(&keys, query)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Keys>> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One page of `keys` for `query`: keys under the prefix after the marker, rolled up by the
/// delimiter, at most `max_keys` keys and prefixes together.
pub(crate) fn page_of(keys: &BTreeSet<String>, query: &ListQuery<'_>) -> Page {
    let mut page = Page::default();
    let mut last_item: Option<ListMarker> = None;
    let mut from = start(query.prefix, query.after);
    'seek: loop {
        for key in keys.range::<str, _>((from.as_ref().map(String::as_str), Bound::Unbounded)) {
            if !key.starts_with(query.prefix) {
                break 'seek;
            }
            let skipped = match query.after {
                None => false,
                Some(ListMarker::Key(after)) => key <= after,
                Some(ListMarker::Prefix(after)) => key <= after || key.starts_with(after.as_str()),
            };
            if skipped {
                continue;
            }
            let rolled = query.delimiter.filter(|d| !d.is_empty()).and_then(|d| {
                let rest = &key[query.prefix.len()..];
                rest.find(d)
                    .map(|at| format!("{}{}", query.prefix, &rest[..at + d.len()]))
            });
            if let Some(common) = &rolled
                && page.common_prefixes.last() == Some(common)
            {
                continue;
            }
            if page.keys.len() + page.common_prefixes.len() >= query.max_keys {
                page.next_marker = last_item;
                break 'seek;
            }
            match rolled {
                Some(common) => {
                    last_item = Some(ListMarker::Prefix(common.clone()));
                    // The keys under a rolled-up prefix are skipped by seeking past them.
                    from = Bound::Excluded(past(&common));
                    page.common_prefixes.push(common);
                    continue 'seek;
                }
                None => {
                    last_item = Some(ListMarker::Key(key.clone()));
                    page.keys.push(key.clone());
                }
            }
        }
        break;
    }
    page
}

/// Where a page starts: the prefix, or the marker if it comes later.
fn start(prefix: &str, after: Option<&ListMarker>) -> Bound<String> {
    match after {
        Some(ListMarker::Key(after)) if after.as_str() >= prefix => Bound::Excluded(after.clone()),
        Some(ListMarker::Prefix(after)) if after.as_str() >= prefix => Bound::Excluded(past(after)),
        _ => Bound::Included(prefix.to_owned()),
    }
}

/// A string after almost every key that starts with `prefix`: keys whose next character is
/// U+10FFFF (a noncharacter) still follow it, and the skip by `starts_with` covers those.
fn past(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query<'a>(
        prefix: &'a str,
        delimiter: Option<&'a str>,
        after: Option<&'a ListMarker>,
        max_keys: usize,
    ) -> ListQuery<'a> {
        ListQuery {
            prefix,
            delimiter,
            after,
            max_keys,
        }
    }

    fn set(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| (*k).to_owned()).collect()
    }

    /// Every page of a listing, joined: keys and prefixes in order.
    fn walk(
        keys: &BTreeSet<String>,
        prefix: &str,
        delimiter: Option<&str>,
        max_keys: usize,
    ) -> Vec<String> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = page_of(keys, &query(prefix, delimiter, after.as_ref(), max_keys));
            assert!(page.keys.len() + page.common_prefixes.len() <= max_keys);
            // Keys and prefixes interleave in key order within a page.
            let mut items: Vec<String> = page
                .keys
                .iter()
                .chain(&page.common_prefixes)
                .cloned()
                .collect();
            items.sort();
            all.extend(items);
            match page.next_marker {
                Some(marker) => after = Some(marker),
                None => return all,
            }
        }
    }

    #[test]
    fn pages_walk_every_key_once_whatever_their_size() {
        let keys = set(&[
            "a",
            "a/1",
            "a/2",
            "a/\u{10FFFF}x",
            "b",
            "b/x/1",
            "b/x/2",
            "b/y",
            "c",
            "c\u{10FFFF}z",
            "d/",
        ]);
        let flat: Vec<String> = keys.iter().cloned().collect();
        for max in [1, 2, 3, 100] {
            assert_eq!(walk(&keys, "", None, max), flat, "max {max}");
            assert_eq!(
                walk(&keys, "", Some("/"), max),
                ["a", "a/", "b", "b/", "c", "c\u{10FFFF}z", "d/"],
                "max {max}"
            );
            assert_eq!(
                walk(&keys, "b/", Some("/"), max),
                ["b/x/", "b/y"],
                "max {max}"
            );
            assert_eq!(
                walk(&keys, "b/x/", None, max),
                ["b/x/1", "b/x/2"],
                "max {max}"
            );
            assert_eq!(walk(&keys, "zz", None, max), Vec::<String>::new());
        }
    }

    #[test]
    fn a_start_after_outside_the_prefix_is_honoured() {
        let keys = set(&["a/1", "b/1", "b/2", "c/1"]);
        let before = ListMarker::Key("a".into());
        let after = ListMarker::Key("b/1".into());
        let beyond = ListMarker::Key("z".into());
        assert_eq!(
            page_of(&keys, &query("b/", None, Some(&before), 10)).keys,
            ["b/1", "b/2"]
        );
        assert_eq!(
            page_of(&keys, &query("b/", None, Some(&after), 10)).keys,
            ["b/2"]
        );
        assert!(
            page_of(&keys, &query("b/", None, Some(&beyond), 10))
                .keys
                .is_empty()
        );
    }

    #[test]
    fn keys_follow_their_files_whatever_order_changes_are_reported_in() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = |key: &str| dir.path().join(key);
        let index = KeyIndex::default();
        let all = query("", None, None, 100);
        std::fs::write(file("gone"), b"")?;
        let Lookup::Load(id) = index.page("photos", &all) else {
            panic!("nothing is loaded yet");
        };
        // A second listing meanwhile reads for itself.
        assert!(matches!(index.page("photos", &all), Lookup::ReadAlone));
        // Written and deleted while the directory was being read, which saw the old state.
        std::fs::write(file("new"), b"")?;
        index.changed("photos", "new", &file("new"));
        std::fs::remove_file(file("gone"))?;
        index.changed("photos", "gone", &file("gone"));
        let page = index.loaded("photos", id, vec!["gone".into(), "old".into()], &all);
        assert_eq!(page.keys, ["new", "old"]);

        // A delete and a write of one key racing, the write's rename last but the delete's
        // report last: the key stays listed, as its file is there.
        std::fs::write(file("raced"), b"")?;
        index.changed("photos", "raced", &file("raced"));
        index.changed("photos", "raced", &file("raced"));
        let Lookup::Page(page) = index.page("photos", &all) else {
            panic!("the keys are loaded");
        };
        assert_eq!(page.keys, ["new", "old", "raced"]);
        std::fs::remove_file(file("raced"))?;
        index.changed("photos", "raced", &file("raced"));
        let Lookup::Page(page) = index.page("photos", &all) else {
            panic!("the keys are loaded");
        };
        assert_eq!(page.keys, ["new", "old"]);

        index.forget("photos");
        assert!(matches!(index.page("photos", &all), Lookup::Load(_)));
        Ok(())
    }

    #[test]
    fn a_load_overtaken_by_forget_is_not_kept() {
        let index = KeyIndex::default();
        let all = query("", None, None, 100);
        let Lookup::Load(id) = index.page("photos", &all) else {
            panic!("nothing is loaded yet");
        };
        index.forget("photos");
        let page = index.loaded("photos", id, vec!["stale".into()], &all);
        assert_eq!(
            page.keys,
            ["stale"],
            "the caller is answered from its own read"
        );
        assert!(matches!(index.page("photos", &all), Lookup::Load(_)));
    }
}
