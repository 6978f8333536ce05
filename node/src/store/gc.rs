//! **Stale replicas**: a replica removed from its range while its node did
//! not hear of it (cut off, down, or merely behind when the leader stopped
//! sending to it) never applies its own removal, so nothing destroys it. It
//! serves nothing useful, keeps its data on disk, and — worse — its span
//! keeps out the snapshot of any range that now owns part of it (an
//! initialized replica never overlaps another, `catchup.rs`): after its range
//! split, the node cannot be given the new range, and re-replication onto it
//! stalls for good.
//!
//! The same happens when the node is later added to that range again: the
//! range's leader sends to the node's new peer, which the old replica (whose
//! peer id differs) ignores, and placement, told by the node that it hosts
//! the range, never has it create the new one.
//!
//! Placement knows every range's current descriptor. The node asks about
//! the replicas it hosts — all of them in the periodic full report (placement
//! answers for those whose descriptor does not list the node), and at once
//! about one whose span just kept a snapshot out or whose range sent to a
//! newer peer of this node (`suspects`; placement answers with the
//! descriptor either way) — in `HeartbeatResponse.checked`. The node
//! destroys its replica only if that descriptor is at least as new in
//! membership as its own (`conf_ver`) and lacks its peer: membership changes
//! are one history per range, so a later membership without the peer means
//! the peer was removed. A descriptor older than the replica's (placement
//! not told yet of the change that added it) changes nothing. If the
//! descriptor lists this node under a new peer, that replica is created
//! right away (uninitialized, as any added replica; `catchup.rs`).

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

    /// Placement's current descriptor of a range hosted here: destroys the
    /// replica if it was removed, and creates this node's new peer if the
    /// descriptor lists one (see the module doc).
    pub(super) fn on_checked(&mut self, desc: RangeDescriptor) {
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
            return;
        }
        self.on_create(desc);
    }

    /// `range_id`'s replica here kept a snapshot of another range out, or
    /// its range sent to a newer peer of this node: ask placement whether
    /// that replica is still a member of its range.
    pub(super) fn suspect(&self, range_id: u64) {
        self.suspects.lock().insert(range_id);
    }
}
