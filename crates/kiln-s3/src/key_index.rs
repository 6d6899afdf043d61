//! The sorted keys of each bucket, in memory, so a listing page costs the keys on it rather than
//! a read of the bucket's whole directory.
//!
//! A bucket's keys are read from its directory by the first listing after the store opens, and
//! kept up to date by every write and delete after that. Changes made while that first read
//! runs are recorded and applied on top of what it found, so none is lost whichever way the two
//! interleave; a change reported after its file operation can only repeat what the read saw.
//! A write whose outcome is unknown (it failed after its rename, say) drops the bucket's keys,
//! and the next listing reads the directory again.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
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
    /// Being read from the directory by load `id`; changes since it began.
    Loading {
        id: u64,
        changes: Vec<Change>,
    },
    Loaded(BTreeSet<String>),
}

enum Change {
    Put(String),
    Delete(String),
}

impl Change {
    fn apply(self, keys: &mut BTreeSet<String>) {
        match self {
            Change::Put(key) => {
                keys.insert(key);
            }
            Change::Delete(key) => {
                keys.remove(&key);
            }
        }
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
    /// An object was written under `key`.
    pub(crate) fn put(&self, bucket: &str, key: &str) {
        self.change(bucket, Change::Put(key.to_owned()));
    }

    /// The object under `key` was deleted.
    pub(crate) fn delete(&self, bucket: &str, key: &str) {
        self.change(bucket, Change::Delete(key.to_owned()));
    }

    /// Forgets what is known of the bucket: it was created, deleted, or a write's outcome is
    /// unknown. The next listing reads its directory.
    pub(crate) fn forget(&self, bucket: &str) {
        self.lock().remove(bucket);
    }

    fn change(&self, bucket: &str, change: Change) {
        match self.lock().get_mut(bucket) {
            None => {}
            Some(Keys::Loading { changes, .. }) => changes.push(change),
            Some(Keys::Loaded(keys)) => change.apply(keys),
        }
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
                let changes = Vec::new();
                buckets.insert(bucket.to_owned(), Keys::Loading { id, changes });
                Lookup::Load(id)
            }
        }
    }

    /// Takes the keys load `id` read from the directory, applies the changes made meanwhile,
    /// keeps them if this load is still the bucket's, and returns the page `query` asks for.
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
                changes,
            }) if current == id => {
                for change in changes {
                    change.apply(&mut keys);
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
    fn changes_during_a_load_are_kept_and_later_ones_applied() {
        let index = KeyIndex::default();
        let all = query("", None, None, 100);
        let Lookup::Load(id) = index.page("photos", &all) else {
            panic!("nothing is loaded yet");
        };
        // A second listing meanwhile reads for itself.
        assert!(matches!(index.page("photos", &all), Lookup::ReadAlone));
        // Written and deleted while the directory was being read, which saw neither.
        index.put("photos", "new");
        index.delete("photos", "gone");
        let page = index.loaded("photos", id, vec!["gone".into(), "old".into()], &all);
        assert_eq!(page.keys, ["new", "old"]);

        index.put("photos", "newer");
        index.delete("photos", "old");
        let Lookup::Page(page) = index.page("photos", &all) else {
            panic!("the keys are loaded");
        };
        assert_eq!(page.keys, ["new", "newer"]);

        index.forget("photos");
        assert!(matches!(index.page("photos", &all), Lookup::Load(_)));
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
