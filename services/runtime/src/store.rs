//! Local state in RocksDB: a cache of what the topics say, never the source of truth.
//!
//! Every change a record causes is written in one [`Batch`] together with the position of that
//! record (`offset/<topic>/<partition>`), so the state and the position it reflects never disagree,
//! even after `kill -9`. Delete the directory and the service rebuilds from the topics. Values are
//! JSON: readable with `ldb`, and internal to one service, so they need no schema contract.

use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

const OFFSET_PREFIX: &str = "offset/";

/// Keys of a service's own progress that the topics do not determine (the fire audit's cursors):
/// a rebuild starts them afresh, so they are left out of [`Store::digest`], as positions are.
pub const LOCAL_PREFIX: &str = "local/";

/// Whether a key is the service's progress rather than state folded from the topics.
pub fn is_progress(key: &[u8]) -> bool {
    key.starts_with(OFFSET_PREFIX.as_bytes()) || key.starts_with(LOCAL_PREFIX.as_bytes())
}

/// Why the store failed. RocksDB errors mean the disk or the directory is broken: stop the service.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("RocksDB: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt value under key {key:?}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// A RocksDB database shared by a service's tasks.
#[derive(Clone)]
pub struct Store {
    db: Arc<rocksdb::DB>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        Ok(Store {
            db: Arc::new(rocksdb::DB::open(&options, path)?),
        })
    }

    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        match self.db.get_pinned(key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => decode(key, &bytes).map(Some),
        }
    }

    /// [`Store::get`], where a value this release cannot read back (a job definition naming a
    /// time zone it no longer knows) is logged and taken as absent: one record must not stop a
    /// service. The caller treats it as a definition not read yet.
    pub fn get_readable<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        readable(self.get(key))
    }

    /// [`Store::scan`], leaving out (and logging) the values this release cannot read back, as
    /// [`Store::get_readable`] does.
    pub fn scan_readable<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let mut out = Vec::new();
        for item in self.within(prefix, rocksdb::IteratorMode::Start) {
            let (key, value) = item?;
            let key = String::from_utf8_lossy(&key).into_owned();
            if let Some(value) = readable(decode(&key, &value).map(Some))? {
                out.push((key, value));
            }
        }
        Ok(out)
    }

    /// Whether the store holds `key`, without decoding its value.
    pub fn contains(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.db.get_pinned(key.as_bytes())?.is_some())
    }

    /// All `(key, value)` pairs whose key starts with `prefix`, in key order.
    pub fn scan<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>, StoreError> {
        collect_prefix(
            self.within(prefix, rocksdb::IteratorMode::Start),
            usize::MAX,
        )
    }

    /// An iterator over the keys starting with `prefix` only, from where `mode` says (`Start` is
    /// the prefix's first key, `End` its last). The bounds matter: an iterator steps over deleted keys one by one,
    /// and without them it would step over every deleted key after the prefix (finished runs'
    /// index entries, say) looking for a live one, a cost that grows with the history.
    fn within(&self, prefix: &str, mode: rocksdb::IteratorMode) -> rocksdb::DBIterator<'_> {
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_range(rocksdb::PrefixRange(prefix.as_bytes()));
        self.db.iterator_opt(mode, options)
    }

    /// The keys starting with `prefix`, in key order, without reading their values: for callers
    /// that visit many entries one at a time and need not hold them all.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        for item in self.within(prefix, rocksdb::IteratorMode::Start) {
            let (key, _) = item?;
            keys.push(String::from_utf8_lossy(&key).into_owned());
        }
        Ok(keys)
    }

    /// Up to `limit` pairs with keys starting with `prefix`, last key first.
    pub fn scan_rev<T: DeserializeOwned>(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, T)>, StoreError> {
        collect_prefix(self.within(prefix, rocksdb::IteratorMode::End), limit)
    }

    /// Visits the keys starting with `prefix` and sorting before `before` (all of them when
    /// `None`), last key first, until `visit` returns false: for paging back through an index.
    pub fn visit_keys_rev(
        &self,
        prefix: &str,
        before: Option<&str>,
        mut visit: impl FnMut(&str) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mode = before.map_or(rocksdb::IteratorMode::End, |b| {
            rocksdb::IteratorMode::From(b.as_bytes(), rocksdb::Direction::Reverse)
        });
        for item in self.within(prefix, mode) {
            let (key, _) = item?;
            if before.is_some_and(|b| key.as_ref() >= b.as_bytes()) {
                continue;
            }
            if !visit(&String::from_utf8_lossy(&key))? {
                break;
            }
        }
        Ok(())
    }

    /// The offset of the next record to read from a topic partition, if this store has read any.
    pub fn next_offset(&self, topic: &str, partition: i32) -> Result<Option<i64>, StoreError> {
        self.get(&offset_key(topic, partition))
    }

    pub fn write(&self, batch: Batch) -> Result<(), StoreError> {
        self.db.write(batch.inner)?;
        Ok(())
    }

    /// A SHA-256 over every state key and value (positions excluded): two stores that folded the
    /// same records agree on it whatever order of restarts and rebuilds got them there.
    pub fn digest(&self) -> Result<String, StoreError> {
        let mut hasher = Sha256::new();
        for item in self.db.iterator(rocksdb::IteratorMode::Start) {
            let (key, value) = item?;
            if is_progress(&key) {
                continue;
            }
            hasher.update((key.len() as u64).to_le_bytes());
            hasher.update(&key);
            hasher.update((value.len() as u64).to_le_bytes());
            hasher.update(&value);
        }
        Ok(hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    /// Bytes the store holds: its SST files on disk and its memtables.
    pub fn size_bytes(&self) -> u64 {
        [
            "rocksdb.total-sst-files-size",
            "rocksdb.size-all-mem-tables",
        ]
        .iter()
        .filter_map(|property| self.db.property_int_value(*property).ok().flatten())
        .sum()
    }
}

/// Decodes the pairs an iterator over one prefix yields, up to `limit`.
fn collect_prefix<T: DeserializeOwned>(
    items: impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
    limit: usize,
) -> Result<Vec<(String, T)>, StoreError> {
    let mut out = Vec::new();
    for item in items.take(limit) {
        let (key, value) = item?;
        let key = String::from_utf8_lossy(&key).into_owned();
        let value = decode(&key, &value)?;
        out.push((key, value));
    }
    Ok(out)
}

/// A read whose value this release cannot decode, logged and taken as absent.
fn readable<T>(read: Result<Option<T>, StoreError>) -> Result<Option<T>, StoreError> {
    match read {
        Err(StoreError::Corrupt { key, reason }) => {
            tracing::error!(key, reason, "Stored value cannot be read by this release; taken as absent until it is written again.");
            Ok(None)
        }
        read => read,
    }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn offset_key(topic: &str, partition: i32) -> String {
    format!("{OFFSET_PREFIX}{topic}/{partition}")
}

/// Changes applied atomically by [`Store::write`]. A batch that folds many records reads its own
/// writes through [`Batch::get`], so a record sees what the records before it in the batch did.
#[derive(Default)]
pub struct Batch {
    inner: rocksdb::WriteBatch,
    /// The value each key will have once written (`None`: deleted).
    written: std::collections::HashMap<String, Option<Vec<u8>>>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put<T: Serialize>(&mut self, key: &str, value: &T) {
        // Serialising plain data structs to JSON cannot fail.
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        self.inner.put(key.as_bytes(), &bytes);
        self.written.insert(key.to_string(), Some(bytes));
    }

    pub fn delete(&mut self, key: &str) {
        self.inner.delete(key.as_bytes());
        self.written.insert(key.to_string(), None);
    }

    /// The value under `key` as it will be once this batch is written to `store`.
    pub fn get<T: DeserializeOwned>(
        &self,
        store: &Store,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.written.get(key) {
            None => store.get(key),
            Some(None) => Ok(None),
            Some(Some(bytes)) => decode(key, bytes).map(Some),
        }
    }

    /// Records that the record at `offset` has been applied: reading resumes after it.
    pub fn consumed(&mut self, topic: &str, partition: i32, offset: i64) {
        self.put(&offset_key(topic, partition), &(offset + 1));
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn batches_are_atomic_and_scans_follow_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = Batch::new();
        batch.put("run/b", &2);
        batch.put("run/a", &1);
        batch.put("job/x", &"x");
        batch.consumed("kairos.runs", 3, 41);
        store.write(batch).unwrap();
        let runs: Vec<(String, i32)> = store.scan("run/").unwrap();
        assert_eq!(runs, vec![("run/a".into(), 1), ("run/b".into(), 2)]);
        assert_eq!(store.keys("run/").unwrap(), ["run/a", "run/b"]);
        let rev: Vec<(String, i32)> = store.scan_rev("run/", 1).unwrap();
        assert_eq!(rev, vec![("run/b".into(), 2)]);
        assert_eq!(store.next_offset("kairos.runs", 3).unwrap(), Some(42));
        assert_eq!(store.next_offset("kairos.runs", 4).unwrap(), None);
    }

    /// Given a store holding values this release cannot read back among readable ones, when
    /// they are read as readable, then they are absent and the others are there.
    #[test]
    fn unreadable_values_are_taken_as_absent_by_readable_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = Batch::new();
        batch.put("job/a", &1);
        batch.put("job/b", &"written by another release");
        batch.put("job/c", &3);
        store.write(batch).unwrap();
        assert!(store.scan::<i32>("job/").is_err());
        let jobs: Vec<(String, i32)> = store.scan_readable("job/").unwrap();
        assert_eq!(jobs, vec![("job/a".into(), 1), ("job/c".into(), 3)]);
        assert_eq!(store.get_readable::<i32>("job/b").unwrap(), None);
        assert_eq!(store.get_readable::<i32>("job/c").unwrap(), Some(3));
    }

    /// Given a batch not yet written, when a key is read through it, then the read sees the
    /// batch's own puts and deletes over what the store holds.
    #[test]
    fn a_batch_reads_its_own_writes_over_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut written = Batch::new();
        written.put("run/a", &1);
        written.put("run/b", &2);
        store.write(written).unwrap();

        let mut batch = Batch::new();
        batch.put("run/a", &10);
        batch.delete("run/b");
        batch.put("run/c", &3);
        let read = |key| batch.get::<i32>(&store, key).unwrap();
        assert_eq!(
            [read("run/a"), read("run/b"), read("run/c"), read("run/d")],
            [Some(10), None, Some(3), None]
        );
        assert_eq!(
            store.get::<i32>("run/a").unwrap(),
            Some(1),
            "not written yet"
        );
        store.write(batch).unwrap();
        assert_eq!(store.get::<i32>("run/a").unwrap(), Some(10));
        assert_eq!(store.get::<i32>("run/b").unwrap(), None);
    }

    /// Given the index entries of many finished runs deleted after a live prefix, when the live
    /// prefix is scanned (forward or back), then the scan does not step over those deletions:
    /// scans of a job's runs cost the same whatever the history after them.
    #[test]
    fn prefix_scans_do_not_step_over_deleted_keys_outside_the_prefix() {
        use rocksdb::perf::{set_perf_stats, PerfContext, PerfMetric, PerfStatsLevel};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = Batch::new();
        batch.put("active/a/run", &());
        (0..1000).for_each(|i| batch.put(&format!("active/b/{i:04}"), &()));
        store.write(batch).unwrap();
        let mut batch = Batch::new();
        (0..1000).for_each(|i| batch.delete(&format!("active/b/{i:04}")));
        store.write(batch).unwrap();

        set_perf_stats(PerfStatsLevel::EnableCount);
        let mut perf = PerfContext::default();
        perf.reset();
        let forward: Vec<(String, ())> = store.scan("active/a/").unwrap();
        let keys = store.keys("active/a/").unwrap();
        let back: Vec<(String, ())> = store.scan_rev("active/a/", 10).unwrap();
        let skipped = perf.metric(PerfMetric::InternalDeleteSkippedCount);
        set_perf_stats(PerfStatsLevel::Disable);

        assert_eq!(forward, vec![("active/a/run".to_string(), ())]);
        assert_eq!(keys, ["active/a/run"]);
        assert_eq!(back, forward);
        assert_eq!(skipped, 0, "stepped over {skipped} deleted keys");
    }

    /// The store behaves like a sorted map (the model) under any sequence of puts and deletes, and
    /// the digest depends on the state only, not on positions.
    #[test]
    fn store_matches_an_in_memory_model() {
        use proptest::prelude::*;
        let mut runner =
            proptest::test_runner::TestRunner::new(proptest::test_runner::Config::with_cases(32));
        let ops = proptest::collection::vec((0u8..3, 0u8..8, any::<u16>()), 0..60);
        runner
            .run(&ops, |ops| {
                let dir = tempfile::tempdir().unwrap();
                let store = Store::open(dir.path()).unwrap();
                let mut model = BTreeMap::new();
                for (op, key, value) in ops {
                    let key = format!("k/{key}");
                    let mut batch = Batch::new();
                    match op {
                        0 | 1 => {
                            batch.put(&key, &value);
                            model.insert(key, value);
                        }
                        _ => {
                            batch.delete(&key);
                            model.remove(&key);
                        }
                    }
                    batch.consumed("t", 0, i64::from(value));
                    store.write(batch).unwrap();
                }
                let stored: BTreeMap<String, u16> = store.scan("k/").unwrap().into_iter().collect();
                prop_assert_eq!(&stored, &model);
                let other_dir = tempfile::tempdir().unwrap();
                let other = Store::open(other_dir.path()).unwrap();
                let mut batch = Batch::new();
                model.iter().for_each(|(k, v)| batch.put(k, v));
                other.write(batch).unwrap();
                prop_assert_eq!(store.digest().unwrap(), other.digest().unwrap());
                Ok(())
            })
            .unwrap();
    }
}
