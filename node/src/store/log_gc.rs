//! Raft log GC: entries well behind the applied index are dropped, so the
//! log stays bounded in entries and in bytes; a follower that still needs
//! them gets a snapshot.
//!
//! The byte bound matters for big values: 5000 entries of 64 KiB values
//! would keep 320 MiB of log per replica beside the data itself (TiKV bounds
//! its raft log by size as well, `raft-log-gc-size-limit`).
//!
//! Also, no log that applied anything starts at index 1 (see
//! [`truncate_index_one`]): a peer with an empty log is always sent a
//! snapshot, never the log from its beginning.

use raft::{ProgressState, StateRole};

use super::Store;
use crate::engine::RaftStorage;
use crate::storage::{Engine, WriteBatch};

impl Store {
    /// Keeps the log bounded: entries well behind the applied index go; a
    /// follower that still needs them gets a snapshot instead.
    pub(super) fn gc_log(&mut self, range_id: u64) -> anyhow::Result<()> {
        let Some(r) = self.replicas.get_mut(&range_id) else {
            return Ok(());
        };
        let applied = r.raw.raft.raft_log.applied;
        let storage = r.raw.store();
        storage.compact_entry_cache(applied);
        let bound = LogBound {
            entries: self.log_keep_entries,
            bytes: self.log_keep_bytes,
        };
        // A leader keeps what its peers still need: the entries after a
        // snapshot it is generating or sending, and after what an active
        // follower has (see `LogBound`).
        let floor = (r.raw.raft.state == StateRole::Leader)
            .then(|| {
                let prs = r.raw.raft.prs();
                let snapshot = storage
                    .snapshot_floor()
                    .filter(|f| prs.iter().any(|(_, p)| p.matched < *f));
                (prs.iter())
                    .filter_map(|(_, p)| match p.state {
                        ProgressState::Snapshot => Some(p.pending_snapshot),
                        ProgressState::Replicate if p.recent_active => Some(p.matched),
                        _ => None,
                    })
                    .chain(snapshot)
                    .min()
            })
            .flatten();
        let truncated = storage.truncated_index();
        if let Some(to) = bound.truncate_to(applied, truncated, storage.log_size(), floor) {
            let mut wb = WriteBatch::default();
            storage.stage_truncate(&mut wb, to)?;
            self.db.write(&wb, false)?;
        } else {
            truncate_index_one(&*self.db, r.raw.store(), applied)?;
        }
        Ok(())
    }
}

/// How much log a replica keeps behind its applied index.
#[derive(Clone, Copy, Debug)]
pub(super) struct LogBound {
    /// Entries kept; the log is truncated once it holds twice this.
    pub entries: u64,
    /// Bytes of entry data kept; the log is truncated once it holds twice
    /// this, keeping about this much (at the entries' average size).
    pub bytes: u64,
}

impl LogBound {
    /// The index to truncate the log up to (inclusive), if it is time to:
    /// `applied` is the replica's applied index, `truncated` the log's
    /// truncated index, `size` the (entries, bytes) since that truncation.
    ///
    /// `floor`: peers still need the entries after it (a snapshot on its
    /// way, an active follower behind). The log is not truncated past it
    /// until it holds [`HARD_FACTOR`] times the bound, in entries or bytes;
    /// past that, such a peer gets a snapshot instead. Without the floor, a
    /// range taking big writes truncates past each snapshot before it is
    /// installed, and its new replica never catches up.
    pub fn truncate_to(
        self,
        applied: u64,
        truncated: u64,
        size: (u64, u64),
        floor: Option<u64>,
    ) -> Option<u64> {
        let (entries, bytes) = size;
        let mut keep = self.entries.max(1);
        let too_big = bytes > self.bytes.saturating_mul(2);
        if too_big {
            let avg = (bytes / entries.max(1)).max(1);
            keep = keep.min((self.bytes / avg).max(1));
        }
        let behind = applied.saturating_sub(truncated);
        if !(behind > keep.saturating_mul(2) || (too_big && behind > keep)) {
            return None;
        }
        let hard = bytes > self.bytes.saturating_mul(HARD_FACTOR)
            || behind > self.entries.max(1).saturating_mul(HARD_FACTOR);
        let to = match floor {
            Some(f) if !hard => (applied - keep).min(f),
            _ => applied - keep,
        };
        (to > truncated).then_some(to)
    }
}

/// How far past its bound a log grows for peers that still need it.
const HARD_FACTOR: u64 = 8;

/// Drops entry 1 of a log that applied it. A peer with an empty log (an
/// uninitialized replica, see `catchup.rs`) must get a snapshot: replayed
/// from index 1, the log of a range created by a split lacks what the range
/// inherited, and would land on whatever stale copy of the span its node
/// holds. Split children created now start past index 1 anyway
/// (`SPLIT_INIT_INDEX`); this covers the first range and children whose
/// logs began at index 1 before that.
pub(super) fn truncate_index_one(
    db: &dyn Engine,
    storage: &RaftStorage,
    applied: u64,
) -> anyhow::Result<()> {
    if storage.truncated_index() == 0 && applied >= 1 {
        let mut wb = WriteBatch::default();
        storage.stage_truncate(&mut wb, 1)?;
        db.write(&wb, false)?;
    }
    Ok(())
}

/// Raft log entries kept behind the applied index before truncation, by
/// default.
pub(super) const LOG_KEEP_ENTRIES: u64 = 5000;

/// Bytes of log entries kept behind the applied index, by default: the log
/// is truncated once it holds twice this.
pub(super) const LOG_KEEP_BYTES: u64 = 16 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::LogBound;

    const BOUND: LogBound = LogBound {
        entries: 100,
        bytes: 1 << 20,
    };

    #[test]
    fn small_entries_are_bounded_by_count() {
        // 200 entries of 100 bytes: not yet twice the count.
        assert_eq!(BOUND.truncate_to(200, 0, (200, 20_000), None), None);
        // 201 behind: truncate, keeping 100.
        assert_eq!(BOUND.truncate_to(201, 0, (201, 20_100), None), Some(101));
        assert_eq!(
            BOUND.truncate_to(1201, 1000, (201, 20_100), None),
            Some(1101)
        );
    }

    #[test]
    fn big_entries_are_bounded_by_bytes() {
        // 40 entries of 64 KiB: 2.5 MiB, over twice the byte bound although
        // far under the count: keep 1 MiB of them (16 entries).
        let size = (40, 40 * 65_536);
        assert_eq!(BOUND.truncate_to(40, 0, size, None), Some(24));
        // Under twice the bytes: nothing yet.
        assert_eq!(BOUND.truncate_to(30, 0, (30, 30 * 65_536), None), None);
        // Unapplied entries are never dropped: with only 10 applied, keep
        // 16 of them means nothing to do.
        assert_eq!(BOUND.truncate_to(10, 0, size, None), None);
    }

    #[test]
    fn what_peers_need_stays_up_to_a_hard_bound() {
        let size = (40, 40 * 65_536);
        // A peer needs the entries after 10: only up to 10 goes.
        assert_eq!(BOUND.truncate_to(40, 0, size, Some(10)), Some(10));
        // Nothing, when it needs everything there is.
        assert_eq!(BOUND.truncate_to(40, 10, size, Some(10)), None);
        assert_eq!(BOUND.truncate_to(40, 10, size, Some(3)), None);
        // Past eight times the bound in bytes (or entries), it goes anyway.
        let huge = (200, 200 * 65_536);
        assert_eq!(BOUND.truncate_to(200, 0, huge, Some(10)), Some(184));
        assert_eq!(
            BOUND.truncate_to(1000, 0, (1000, 1000), Some(10)),
            Some(900)
        );
        assert_eq!(BOUND.truncate_to(500, 0, (500, 500), Some(10)), Some(10));
    }

    #[test]
    fn one_huge_entry_keeps_one() {
        assert_eq!(BOUND.truncate_to(5, 0, (5, 5 << 20), None), Some(4));
        assert_eq!(BOUND.truncate_to(0, 0, (0, 0), None), None);
    }
}
