//! The entry cache: a replica's newest log entries, in memory.
//!
//! raft-rs reads the log through `Storage::entries` and `Storage::term` on
//! every round: the committed entries to apply, the entries of each
//! `MsgAppend`, the term of a commit candidate or of the entry before an
//! append. From RocksDB each is an iterator seek (or a get) in the `raft`
//! column family and a decode of the whole entry, on the raft thread. The
//! cache holds what was just written, so those reads are served from
//! memory. (It is not what makes a put's apply cost: with one range and
//! 1000 clients, a follower's raft thread spends about a fifth of its time
//! in the MVCC read of the key's previous version and a seventh inserting
//! the apply batch into the memtable.)
//!
//! It mirrors the log exactly where it holds an entry: filled only with
//! entries once they are written (`RaftStorage::on_persisted`), cut where a
//! new leader's entries replace a tail, emptied by a snapshot, trimmed by
//! truncation. It is bounded: entries more than [`KEEP_APPLIED`] behind
//! the applied index go, so do the oldest past [`MAX_BYTES`], and a quiesced
//! replica drops it all; a lookup it cannot serve goes to the engine.

use std::collections::VecDeque;

use protobuf::Message as _;
use raft::eraftpb::Entry;

/// Applied entries kept (for followers a little behind the leader).
pub const KEEP_APPLIED: u64 = 32;
/// Bytes of entry data one replica's cache holds at most (one entry more
/// when a single entry is bigger).
pub const MAX_BYTES: usize = 1 << 20;

#[derive(Default, Clone, Debug)]
pub struct EntryCache {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl EntryCache {
    /// `ents` (consecutive) were just written to the log: they replace any
    /// cached entry at or after the first's index; when they do not follow
    /// what is cached, the cache starts over with them.
    pub fn append(&mut self, ents: &[Entry]) {
        let Some(first) = ents.first() else {
            return;
        };
        while self.entries.back().is_some_and(|e| e.index >= first.index) {
            self.pop_back();
        }
        if self
            .entries
            .back()
            .is_some_and(|e| e.index + 1 != first.index)
        {
            self.clear();
        }
        for e in ents {
            self.bytes += e.data.len();
            self.entries.push_back(e.clone());
        }
        while self.bytes > MAX_BYTES && self.entries.len() > 1 {
            self.pop_front();
        }
    }

    /// Drops the entries up to and including `index`.
    pub fn compact_to(&mut self, index: u64) {
        while self.entries.front().is_some_and(|e| e.index <= index) {
            self.pop_front();
        }
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The term of the entry at `index`, if cached.
    pub fn term(&self, index: u64) -> Option<u64> {
        self.get(index).map(|e| e.term)
    }

    /// Entries `[low, high)` when all are cached, cut after the first once
    /// their encoded size passes `max_size` (as raft-rs's `limit_size`).
    pub fn slice(&self, low: u64, high: u64, max_size: u64) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.index;
        let last = self.entries.back()?.index;
        if low < first || high > last + 1 || low >= high {
            return None;
        }
        let mut out = Vec::new();
        let mut size = 0u64;
        for e in self
            .entries
            .range((low - first) as usize..(high - first) as usize)
        {
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e.clone());
        }
        Some(out)
    }

    fn get(&self, index: u64) -> Option<&Entry> {
        let first = self.entries.front()?.index;
        let at = index.checked_sub(first)?;
        self.entries.get(usize::try_from(at).ok()?)
    }

    fn pop_back(&mut self) {
        if let Some(e) = self.entries.pop_back() {
            self.bytes -= e.data.len();
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= e.data.len();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, bytes: usize) -> Entry {
        Entry {
            index,
            term,
            data: vec![0; bytes].into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_overwrite_replaces_the_tail_and_a_gap_starts_over() {
        let mut c = EntryCache::default();
        c.append(&(1..=5).map(|i| entry(i, 1, 10)).collect::<Vec<_>>());
        c.append(&[entry(3, 2, 10)]);
        assert_eq!(c.len(), 3);
        assert_eq!((c.term(2), c.term(3), c.term(4)), (Some(1), Some(2), None));
        c.append(&[entry(9, 2, 10)]);
        assert_eq!((c.len(), c.term(3), c.term(9)), (1, None, Some(2)));
    }

    #[test]
    fn it_is_bounded_in_bytes_and_serves_only_whole_slices() {
        let mut c = EntryCache::default();
        let big = MAX_BYTES / 4;
        c.append(&(1..=8).map(|i| entry(i, 1, big)).collect::<Vec<_>>());
        // 8 quarters of the bound: the oldest 4 went.
        assert_eq!(c.len(), 4);
        assert_eq!(c.slice(4, 9, u64::MAX), None, "entry 4 is not cached");
        let got = c.slice(5, 9, u64::MAX).unwrap();
        assert_eq!(
            got.iter().map(|e| e.index).collect::<Vec<_>>(),
            [5, 6, 7, 8]
        );
        assert_eq!(c.slice(5, 10, u64::MAX), None, "entry 9 is not in the log");
        // max_size cuts after the first entry, never before it.
        assert_eq!(c.slice(5, 9, 0).unwrap().len(), 1);
        // One entry bigger than the bound is still kept.
        c.append(&[entry(9, 1, 2 * MAX_BYTES)]);
        assert_eq!((c.len(), c.term(9)), (1, Some(1)));
        c.compact_to(9);
        assert_eq!(c.len(), 0);
    }
}
