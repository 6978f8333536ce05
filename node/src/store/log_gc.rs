//! Raft log GC: entries well behind the applied index are dropped, so the
//! log stays bounded; a follower that still needs them gets a snapshot.
//!
//! Also, no log that applied anything starts at index 1 (see
//! [`truncate_index_one`]): a peer with an empty log is always sent a
//! snapshot, never the log from its beginning.

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
        let keep = self.log_keep_entries.max(1);
        if applied
            > r.raw
                .store()
                .truncated_index()
                .saturating_add(keep.saturating_mul(2))
        {
            let mut wb = WriteBatch::default();
            r.raw.store().stage_truncate(&mut wb, applied - keep)?;
            self.db.write(&wb, false)?;
        } else {
            truncate_index_one(&*self.db, r.raw.store(), applied)?;
        }
        Ok(())
    }
}

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
