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
        // snapshot it is generating or sending (`snapshot`), and after what
        // a follower has (`peers`); see `LogBound`.
        let (mut snapshot, mut peers) = (None, None);
        if r.raw.raft.state == StateRole::Leader {
            let prs = r.raw.raft.prs();
            let floor = storage.snapshot_floor();
            let generated = floor.filter(|f| prs.iter().any(|(_, p)| p.matched < *f));
            snapshot = (prs.iter())
                .filter(|(_, p)| p.state == ProgressState::Snapshot)
                .map(|(_, p)| p.pending_snapshot)
                .chain(generated)
                .min();
            // Followers the leader heard from lately; and, for a while after
            // a snapshot, every follower: the one catching up after it may
            // have just answered in Probe state, and check-quorum clears
            // `recent_active` every election timeout.
            peers = (prs.iter())
                .filter(|(_, p)| p.state != ProgressState::Snapshot)
                .filter(|(_, p)| floor.is_some() || p.recent_active)
                .map(|(_, p)| p.matched)
                .min();
        }
        let truncated = storage.truncated_index();
        let held = Held { snapshot, peers };
        if let Some(to) = bound.truncate_to(applied, truncated, storage.log_size(), held) {
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
    /// `held`: what peers still need. Without it, a range taking big writes
    /// truncates past each snapshot before it is installed, and its new
    /// replica never catches up.
    pub fn truncate_to(
        self,
        applied: u64,
        truncated: u64,
        size: (u64, u64),
        held: Held,
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
        let hard = bytes > self.bytes.saturating_mul(HARD_BYTES_FACTOR)
            || behind > self.entries.max(1).saturating_mul(HARD_ENTRIES_FACTOR);
        let peers = held.peers.filter(|_| !hard);
        let to = [Some(applied - keep), held.snapshot, peers]
            .into_iter()
            .flatten()
            .min()
            .expect("one");
        (to > truncated).then_some(to)
    }
}

/// Entries peers still need: the log is not truncated past them.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Held {
    /// A snapshot is being generated or sent at this index, or was and its
    /// peer has not caught up after it yet. Bounded in time, not in size
    /// (see `RaftStorage::snapshot_floor`): truncated past, the peer needs
    /// another snapshot, which takes as long again.
    pub snapshot: Option<u64>,
    /// An active follower has the log only up to here. Held until the log
    /// holds [`HARD_ENTRIES_FACTOR`] times the entry bound or
    /// [`HARD_BYTES_FACTOR`] times the byte bound; past that, such a
    /// follower gets a snapshot instead.
    pub peers: Option<u64>,
}

/// How far past its bounds a log grows for followers that are behind: the
/// byte bound keeps a caught-up range's log small; a follower catching up
/// after a snapshot of a big range taking big writes is hundreds of MiB
/// behind (5000 entries of 64 KiB, the entry bound, are 320 MiB), and
/// truncated past, it needs snapshot after snapshot.
const HARD_ENTRIES_FACTOR: u64 = 8;
const HARD_BYTES_FACTOR: u64 = 64;

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
    use super::{Held, LogBound};

    fn peers(at: u64) -> Held {
        Held {
            peers: Some(at),
            ..Held::default()
        }
    }

    const BOUND: LogBound = LogBound {
        entries: 100,
        bytes: 1 << 20,
    };

    #[test]
    fn small_entries_are_bounded_by_count() {
        // 200 entries of 100 bytes: not yet twice the count.
        assert_eq!(
            BOUND.truncate_to(200, 0, (200, 20_000), Held::default()),
            None
        );
        // 201 behind: truncate, keeping 100.
        assert_eq!(
            BOUND.truncate_to(201, 0, (201, 20_100), Held::default()),
            Some(101)
        );
        assert_eq!(
            BOUND.truncate_to(1201, 1000, (201, 20_100), Held::default()),
            Some(1101)
        );
    }

    #[test]
    fn big_entries_are_bounded_by_bytes() {
        // 40 entries of 64 KiB: 2.5 MiB, over twice the byte bound although
        // far under the count: keep 1 MiB of them (16 entries).
        let size = (40, 40 * 65_536);
        assert_eq!(BOUND.truncate_to(40, 0, size, Held::default()), Some(24));
        // Under twice the bytes: nothing yet.
        assert_eq!(
            BOUND.truncate_to(30, 0, (30, 30 * 65_536), Held::default()),
            None
        );
        // Unapplied entries are never dropped: with only 10 applied, keep
        // 16 of them means nothing to do.
        assert_eq!(BOUND.truncate_to(10, 0, size, Held::default()), None);
    }

    #[test]
    fn what_peers_need_stays_up_to_a_hard_bound() {
        let size = (40, 40 * 65_536);
        // A follower needs the entries after 10: only up to 10 goes.
        assert_eq!(BOUND.truncate_to(40, 0, size, peers(10)), Some(10));
        // Nothing, when it needs everything there is.
        assert_eq!(BOUND.truncate_to(40, 10, size, peers(10)), None);
        assert_eq!(BOUND.truncate_to(40, 10, size, peers(3)), None);
        // Past 64 times the bound in bytes (or 8 times in entries), it
        // goes anyway.
        let huge = (1100, 1100 * 65_536);
        assert_eq!(BOUND.truncate_to(1100, 0, huge, peers(10)), Some(1084));
        let many = (1000, 1000);
        assert_eq!(BOUND.truncate_to(1000, 0, many, peers(10)), Some(900));
        assert_eq!(BOUND.truncate_to(500, 0, (500, 500), peers(10)), Some(10));
        // A snapshot on its way holds the log whatever its size.
        let snapshot = Held {
            snapshot: Some(10),
            peers: Some(150),
        };
        assert_eq!(BOUND.truncate_to(1100, 0, huge, snapshot), Some(10));
        assert_eq!(BOUND.truncate_to(1100, 10, huge, snapshot), None);
    }

    #[test]
    fn one_huge_entry_keeps_one() {
        assert_eq!(
            BOUND.truncate_to(5, 0, (5, 5 << 20), Held::default()),
            Some(4)
        );
        assert_eq!(BOUND.truncate_to(0, 0, (0, 0), Held::default()), None);
    }
}
