//! The latest version of recently written keys, for the apply path.
//!
//! Every Put reads its key's current version first (its create revision and
//! version number carry over, and its event carries the previous value). In
//! RocksDB that read is an iterator seek through the memtable's skiplist and
//! every level: a third of a leader's raft thread under a put load. etcd
//! keeps an index of every key in memory for the same reason. Here a node's
//! raft thread keeps the versions its apply wrote last, within a byte budget,
//! and a write finds its key's current version there first.
//!
//! **Why it is right.** Only the raft thread reads or changes it, and only
//! for writes it applies (client reads never look at it). A version enters
//! it once the batch that wrote it is in the engine (`Store::flush_applied`),
//! and a write reads a key only after every earlier pending write of that
//! key is written (`Pending::keys`), so an entry is always the key's newest
//! version in the engine. Everything else that changes a range's data —
//! snapshot installs and the data they replace, a replica destroyed,
//! compaction, ingest, lease revocation and cross-range txn commands (which
//! write outside the recorded path) — clears it whole first: those are rare,
//! and a cleared cache only costs seeks. An entry newer than the revision a
//! read asks for is not used (the read goes to the engine).
//!
//! Bounded: [`BUDGET_BYTES`] of keys and values, values above
//! [`MAX_VALUE_BYTES`] never kept; past the budget it starts over empty.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use foldhash::fast::RandomState;
use strata_proto::strata::MvccValue;

use crate::mvcc::Version;

/// What the cache may hold, keys and values and a per-entry overhead.
pub const BUDGET_BYTES: usize = 64 << 20;
/// Bigger values are read from the engine (they would crowd out the rest).
pub const MAX_VALUE_BYTES: usize = 4096;
/// Bookkeeping per entry (map slot, allocations' headers), roughly.
const ENTRY_OVERHEAD: usize = 96;

#[derive(Default)]
pub struct Latest {
    /// Key → (mod revision, value) of its newest version; a tombstone says
    /// the key is deleted.
    map: HashMap<Vec<u8>, (i64, MvccValue), RandomState>,
    bytes: usize,
}

fn cost(key: &[u8], value: &MvccValue) -> usize {
    key.len() + value.value.len() + ENTRY_OVERHEAD
}

impl Latest {
    /// `key`'s newest version if it is known and at or below `rev`:
    /// `Some(None)` when that version is a deletion; `None` when unknown
    /// (read the engine).
    pub fn get(&self, key: &[u8], rev: i64) -> Option<Option<Version>> {
        let (mod_revision, value) = self.map.get(key)?;
        if *mod_revision > rev {
            return None;
        }
        Some((!value.tombstone).then(|| Version {
            key: key.to_vec(),
            mod_revision: *mod_revision,
            value: value.clone(),
        }))
    }

    /// `key`'s newest version is now `value` at `mod_revision` (written).
    pub fn record(&mut self, key: Vec<u8>, mod_revision: i64, value: MvccValue) {
        let c = cost(&key, &value);
        let keep = value.value.len() <= MAX_VALUE_BYTES;
        // One hash of the key on the usual paths (replace, add).
        let key = match self.map.entry(key) {
            Entry::Occupied(mut e) => {
                self.bytes -= cost(e.key(), &e.get().1);
                if keep && self.bytes + c <= BUDGET_BYTES {
                    self.bytes += c;
                    *e.get_mut() = (mod_revision, value);
                    return;
                }
                e.remove_entry().0
            }
            Entry::Vacant(e) => {
                if keep && self.bytes + c <= BUDGET_BYTES {
                    self.bytes += c;
                    e.insert((mod_revision, value));
                    return;
                }
                e.into_key()
            }
        };
        if !keep {
            return;
        }
        self.clear();
        self.bytes = c;
        self.map.insert(key, (mod_revision, value));
    }

    /// Forgets everything (the engine changed outside the recorded path).
    pub fn clear(&mut self) {
        self.map.clear();
        self.map.shrink_to(1024);
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(v: &[u8], tombstone: bool) -> MvccValue {
        MvccValue {
            value: v.to_vec(),
            create_revision: 1,
            version: 1,
            lease: 0,
            tombstone,
            op: 0,
        }
    }

    #[test]
    fn newest_versions_deletions_and_revisions() {
        let mut l = Latest::default();
        assert_eq!(l.get(b"a", 10), None, "unknown");
        l.record(b"a".to_vec(), 5, val(b"x", false));
        let v = l.get(b"a", 5).unwrap().unwrap();
        assert_eq!(
            (v.key, v.mod_revision, v.value.value),
            (b"a".to_vec(), 5, b"x".to_vec())
        );
        assert_eq!(l.get(b"a", 4), None, "newer than asked: the engine answers");
        l.record(b"a".to_vec(), 7, val(b"", true));
        assert_eq!(l.get(b"a", 9), Some(None), "deleted");
        assert_eq!(l.map.len(), 1);
        l.clear();
        assert_eq!(l.get(b"a", 9), None);
    }

    #[test]
    fn bounded_by_bytes_and_value_size() {
        let mut l = Latest::default();
        l.record(b"a".to_vec(), 2, val(b"x", false));
        // A big value is not kept, and the key's older entry goes with it.
        l.record(b"a".to_vec(), 3, val(&vec![7; MAX_VALUE_BYTES + 1], false));
        assert_eq!(l.get(b"a", 3), None);
        let value = vec![1u8; MAX_VALUE_BYTES];
        let per = cost(b"k00000000", &val(&value, false));
        let fits = BUDGET_BYTES / per;
        for i in 0..fits + 10 {
            l.record(format!("k{i:08}").into_bytes(), 4, val(&value, false));
            assert!(l.bytes <= BUDGET_BYTES);
        }
        assert!(l.map.len() < fits, "started over past the budget");
        assert!(l.get(format!("k{:08}", fits + 9).as_bytes(), 4).is_some());
        // Replacing an entry accounts its old size.
        let before = l.bytes;
        l.record(
            format!("k{:08}", fits + 9).into_bytes(),
            5,
            val(&value, false),
        );
        assert_eq!(l.bytes, before);
        // Replacing an entry past the budget starts over with the new entry.
        let small = val(b"", false);
        let small_cost = cost(b"f00000000", &small);
        for i in 0.. {
            if l.bytes + per - small_cost > BUDGET_BYTES {
                break;
            }
            l.record(format!("f{i:08}").into_bytes(), 6, small.clone());
        }
        let key = b"f00000000".to_vec();
        assert!(l.get(&key, 6).is_some());
        l.record(key.clone(), 7, val(&value, false));
        assert_eq!(l.get(&key, 7).unwrap().unwrap().mod_revision, 7);
        assert_eq!(l.bytes, per, "only it is left");
        assert_eq!(l.get(b"f00000001", 7), None);
    }
}
