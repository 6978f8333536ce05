//! Raft log GC: entries well behind the applied index are dropped, so the
//! log stays bounded; a follower that still needs them gets a snapshot.

use super::Store;
use crate::storage::WriteBatch;

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
        }
        Ok(())
    }
}

/// Raft log entries kept behind the applied index before truncation, by
/// default.
pub(super) const LOG_KEEP_ENTRIES: u64 = 5000;
