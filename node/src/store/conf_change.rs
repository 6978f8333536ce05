//! Membership: `Admin` requests from placement become ConfChangeV2 proposals
//! (add learner, remove peer) or leader transfers; applied conf changes
//! update the descriptor; a replica removed from its range deletes its data
//! and raft state; the leader promotes learners once they caught up.

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry};
use raft::StateRole;
use strata_proto::errors;
use strata_proto::strata::{AdminKind, Peer, RangeDescriptor};
use tonic::Status;

use super::replica::Replica;
use super::{desc_range, meta, Store};
use crate::engine::RaftStorage;
use crate::error::{NodeError, NodeResult};
use crate::storage::{Cf, WriteBatch};

/// A membership change of one peer.
pub(super) fn single_change(t: ConfChangeType, peer_id: u64) -> ConfChangeV2 {
    let mut c = ConfChangeSingle::default();
    c.set_change_type(t);
    c.node_id = peer_id;
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![c].into());
    cc
}

impl Store {
    pub(super) fn admin(&mut self, range_id: u64, kind: AdminKind, peer: Peer) -> NodeResult<()> {
        let Some(r) = self.replicas.get_mut(&range_id) else {
            return Err(NodeError::RangeNotFound);
        };
        if r.raw.raft.state != StateRole::Leader {
            return Err(NodeError::NotLeader);
        }
        let change = |t: ConfChangeType| single_change(t, peer.id);
        if matches!(kind, AdminKind::AddLearner | AdminKind::RemovePeer) {
            // One membership change at a time, each checked against the
            // membership the ones before it left: placement may ask again
            // before the first one applied (it did, under load, and the
            // range got two peers on one node, one of them never served).
            let raft = &r.raw.raft;
            if raft.pending_conf_index > raft.raft_log.applied {
                return Err(Status::unavailable(
                    "strata: a membership change of this range is still in progress",
                )
                .into());
            }
        }
        if kind == AdminKind::AddLearner {
            let desc = r.shared.desc.read();
            if let Some(p) = desc
                .peers
                .iter()
                .find(|p| p.node_id == peer.node_id || p.id == peer.id)
            {
                return Err(Status::failed_precondition(format!(
                    "strata: node {} already has a replica of range {range_id} (peer {})",
                    p.node_id, p.id
                ))
                .into());
            }
        }
        let cc = match kind {
            AdminKind::TransferLeader => {
                r.raw.transfer_leader(peer.id);
                return Ok(());
            }
            AdminKind::AddLearner => {
                // The new replica must start from a snapshot of the range's
                // data (a split range's log does not hold all of it): drop the
                // applied log so the leader sends one.
                let applied = r.raw.raft.raft_log.applied;
                let mut wb = WriteBatch::default();
                r.raw
                    .store()
                    .stage_truncate(&mut wb, applied)
                    .map_err(|e| NodeError::from(Status::internal(e.to_string())))?;
                self.db
                    .write(&wb, true)
                    .map_err(|e| NodeError::from(Status::internal(e.to_string())))?;
                change(ConfChangeType::AddLearnerNode)
            }
            AdminKind::RemovePeer => change(ConfChangeType::RemoveNode),
            AdminKind::AdminNone => {
                return Err(Status::invalid_argument("strata: no admin kind").into())
            }
            // Handled by the service (`service/admin.rs`), never sent here.
            AdminKind::Split => {
                return Err(Status::invalid_argument("strata: split is not a store admin").into())
            }
        };
        r.raw
            .propose_conf_change(peer.encode_to_vec(), cc)
            .map_err(|e| Status::unavailable(format!("strata: conf change refused: {e}")).into())
    }

    /// Applies a membership change; returns whether this replica was removed.
    pub(super) fn apply_conf_change(
        &mut self,
        range_id: u64,
        e: &Entry,
        wb: &mut WriteBatch,
    ) -> anyhow::Result<bool> {
        let r = self.replicas.get_mut(&range_id).expect("replica");
        let cc = match ConfChangeV2::parse_from_bytes(&e.data) {
            Ok(cc) => cc,
            Err(err) => {
                // Deterministic on every replica: the entry changes nothing.
                tracing::error!(
                    range = range_id,
                    index = e.index,
                    "undecodable conf change: {err}"
                );
                crate::metrics::BAD_ENTRIES.inc();
                return Ok(false);
            }
        };
        let cs = match r.raw.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(err) => {
                tracing::warn!(range = range_id, "conf change not applied: {err}");
                return Ok(false);
            }
        };
        r.raw.store().stage_conf_state(wb, &cs)?;
        let peer = Peer::decode(&e.context[..]).unwrap_or_default();
        let mut desc = r.shared.desc.read().clone();
        let mut removed_self = false;
        for c in cc.get_changes() {
            match c.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    let learner = c.get_change_type() == ConfChangeType::AddLearnerNode;
                    let node_id = desc
                        .peers
                        .iter()
                        .find(|p| p.id == c.node_id)
                        .map(|p| p.node_id)
                        .unwrap_or(peer.node_id);
                    desc.peers.retain(|p| p.id != c.node_id);
                    desc.peers.push(Peer {
                        id: c.node_id,
                        node_id,
                        learner,
                    });
                }
                ConfChangeType::RemoveNode => {
                    desc.peers.retain(|p| p.id != c.node_id);
                    if c.node_id == r.shared.peer_id {
                        removed_self = true;
                    }
                }
            }
        }
        let mut epoch = desc.epoch.unwrap_or_default();
        epoch.conf_ver += 1;
        desc.epoch = Some(epoch);
        wb.put(Cf::Meta, meta::desc_key(range_id), desc.encode_to_vec());
        tracing::info!(range = range_id, conf_ver = epoch.conf_ver, peers = ?desc.peers, "membership changed");
        *r.shared.desc.write() = desc;
        Ok(removed_self)
    }

    /// Deletes a replica that was removed from its range.
    pub(super) fn destroy(&mut self, range_id: u64) -> anyhow::Result<()> {
        let Some(r) = self.replicas.remove(&range_id) else {
            return Ok(());
        };
        // Its data goes (see `crate::apply::latest`).
        self.latest.clear();
        self.ranges.remove(&range_id);
        let conf_ver = r.shared.epoch().conf_ver;
        self.destroyed.insert(range_id, conf_ver);
        let mut r = r;
        r.step_down();
        for p in r.proposals.drain(..) {
            let _ = p.reply.send(Err(errors::leader_changed().into()));
        }
        let desc = self
            .db
            .get(Cf::Meta, &meta::desc_key(range_id))?
            .and_then(|b| RangeDescriptor::decode(&b[..]).ok());
        let mut wb = WriteBatch::default();
        RaftStorage::open(self.db.clone(), range_id, &[])?.stage_destroy(&mut wb);
        // An uninitialized replica holds no data: its span may be another
        // replica's (see `catchup.rs`).
        if let Some(d) = desc.filter(|_| r.initialized) {
            crate::snapshot::stage::delete_data(&*self.db, &mut wb, &desc_range(&d))?;
        }
        for k in meta::all_keys(range_id) {
            wb.delete(Cf::Meta, k);
        }
        crate::lease::Revoked::of(&*self.db, range_id).stage_delete_all(&mut wb)?;
        self.db.write(&wb, true)?;
        tracing::info!(range = range_id, "replica removed from this node");
        Ok(())
    }
}

/// On the leader: a learner whose log caught up with the commit index is
/// promoted to voter (one membership change at a time).
pub(super) fn promote_caught_up_learners(r: &mut Replica) {
    if r.raw.raft.state != StateRole::Leader {
        return;
    }
    let committed = r.raw.raft.raft_log.committed;
    if r.raw.raft.pending_conf_index > r.raw.raft.raft_log.applied {
        return; // a membership change is still in flight
    }
    let learners: Vec<u64> = r.raw.raft.prs().conf().learners().iter().copied().collect();
    for id in learners {
        let caught_up = r
            .raw
            .raft
            .prs()
            .get(id)
            .is_some_and(|p| p.matched >= committed);
        if !caught_up {
            continue;
        }
        let node_id = r
            .shared
            .desc
            .read()
            .peers
            .iter()
            .find(|p| p.id == id)
            .map_or(0, |p| p.node_id);
        let cc = single_change(ConfChangeType::AddNode, id);
        let ctx = Peer {
            id,
            node_id,
            learner: false,
        }
        .encode_to_vec();
        if r.raw.propose_conf_change(ctx, cc).is_ok() {
            tracing::info!(peer = id, "promoting caught-up learner");
        }
        return;
    }
}
