//! **Stale replicas**: a replica removed from its range while its node did
//! not hear of it (cut off, down, or merely behind when the leader stopped
//! sending to it) never applies its own removal, so nothing destroys it. It
//! serves nothing useful, keeps its data on disk, and — worse — its span
//! keeps out the snapshot of any range that now owns part of it (an
//! initialized replica never overlaps another, `catchup.rs`): after its range
//! split, the node cannot be given the new range, and re-replication onto it
//! stalls for good.
//!
//! Placement knows every range's current descriptor. The node asks about
//! the replicas it hosts — all of them in the periodic full report, and at
//! once the one whose span just kept a snapshot out (`suspects`) — and
//! placement answers with the descriptors that do not list the node
//! (`HeartbeatResponse.not_listed`). The node destroys its replica only if
//! that descriptor is at least as new in membership as its own (`conf_ver`)
//! and lacks its peer: membership changes are one history per range, so a
//! later membership without the peer means the peer was removed. A
//! descriptor older than the replica's (placement not told yet of the change
//! that added it) changes nothing.

use std::collections::BTreeSet;
use std::sync::Arc;

use parking_lot::Mutex;
use strata_proto::strata::RangeDescriptor;

use super::Store;

/// Replicas whose removal the node asks placement about on its next
/// heartbeat (shared with the heartbeat task; bounded by the replicas here).
pub type Suspects = Arc<Mutex<BTreeSet<u64>>>;

impl Store {
    /// The replicas to ask placement about (see the module doc).
    pub fn suspects(&self) -> Suspects {
        self.suspects.clone()
    }

    /// Placement's descriptor of a range hosted here does not list this
    /// node: destroys the replica if it was removed (see the module doc).
    pub(super) fn on_not_listed(&mut self, desc: RangeDescriptor) {
        let Some(r) = self.replicas.get(&desc.id) else {
            return;
        };
        let mine = r.shared.epoch().conf_ver;
        let theirs = desc.epoch.unwrap_or_default().conf_ver;
        let listed = desc.peers.iter().any(|p| p.id == r.shared.peer_id);
        if listed || theirs < mine || !r.initialized || r.install.is_some() {
            return;
        }
        tracing::info!(
            range = desc.id,
            peer = r.shared.peer_id,
            conf_ver = mine,
            current_conf_ver = theirs,
            "destroying a stale replica: removed from its range while this node did not hear"
        );
        if let Err(e) = self.destroy(desc.id) {
            tracing::warn!(range = desc.id, "cannot destroy a stale replica: {e:#}");
        }
    }

    /// A snapshot for another range was refused because `range_id`'s
    /// replica here covers part of it: ask placement whether that replica
    /// is still a member of its range.
    pub(super) fn suspect(&self, range_id: u64) {
        self.suspects.lock().insert(range_id);
    }
}
