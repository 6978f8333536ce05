//! Quiescence: an idle range stops ticking (no heartbeats, no elections).
//!
//! An idle leader whose followers have the whole log stops ticking and tells
//! them to stop too — after the heartbeats of the same tick went out, and a
//! quiesced follower is not woken by a plain heartbeat it already agrees with
//! (otherwise followers tick alone and elect a new leader). Any append, vote,
//! request or admin wakes a range; placement reporting the leader's node down
//! wakes its followers.

use raft::eraftpb::{Message as RaftMessage, MessageType};
use raft::StateRole;
use strata_proto::strata::RaftEnvelope;

use super::replica::Replica;
use super::Store;

impl Replica {
    pub(super) fn wake(&mut self) {
        self.quiesced = false;
        self.idle_ticks = 0;
    }

    /// An idle leader: nothing proposed, read or changing, and every replica
    /// has the whole log applied-and-acknowledged.
    pub(super) fn can_quiesce(&self) -> bool {
        let raft = &self.raw.raft;
        let last = raft.raft_log.last_index();
        raft.state == StateRole::Leader
            && self.proposals.is_empty()
            && self.reads.is_empty()
            && raft.lead_transferee.is_none()
            && raft.pending_conf_index <= raft.raft_log.applied
            && raft.raft_log.committed == last
            && raft.raft_log.applied == last
            && raft.prs().iter().all(|(_, p)| p.matched == last)
    }

    /// Counts an idle tick; returns true when the range just quiesced.
    pub(super) fn idle_tick(&mut self, quiesce_after_ticks: u32) -> bool {
        if quiesce_after_ticks > 0 && self.can_quiesce() {
            self.idle_ticks += 1;
            if self.idle_ticks >= quiesce_after_ticks {
                self.quiesced = true;
                self.raw.store().drop_entry_cache();
                return true;
            }
        } else {
            self.idle_ticks = 0;
        }
        false
    }

    /// A leader's "quiesce" message: follow it only when in step with it.
    pub(super) fn on_quiesce(&mut self, env: &RaftEnvelope) {
        let raft = &self.raw.raft;
        if raft.state == StateRole::Follower
            && raft.leader_id == env.from_peer
            && raft.term == env.term
            && raft.raft_log.last_index() == env.index
            && raft.raft_log.committed == env.index
        {
            self.quiesced = true;
            self.raw.store().drop_entry_cache();
        }
    }

    /// Wakes the range for any message but late acknowledgements and a
    /// plain heartbeat of the leader a quiesced follower already agrees with
    /// (one sent just before the leader quiesced): the follower answers it
    /// but keeps still, as the leader does.
    pub(super) fn wake_for(&mut self, msg: &RaftMessage) {
        let raft = &self.raw.raft;
        let stale_heartbeat = self.quiesced
            && msg.get_msg_type() == MessageType::MsgHeartbeat
            && msg.from == raft.leader_id
            && msg.term == raft.term
            && msg.commit <= raft.raft_log.committed
            && msg.context.is_empty();
        let ack = matches!(
            msg.get_msg_type(),
            MessageType::MsgHeartbeatResponse | MessageType::MsgAppendResponse
        );
        if !stale_heartbeat && !ack {
            self.wake();
        }
    }
}

impl Store {
    /// A quiesced follower would never notice its leader died: wake it when
    /// placement reports the leader's node down.
    pub(super) fn nodes_down(&mut self, down: &[u64]) {
        for (id, r) in self.replicas.iter_mut().filter(|(_, r)| r.quiesced) {
            let leader = r.raw.raft.leader_id;
            let node = r
                .shared
                .desc
                .read()
                .peers
                .iter()
                .find(|p| p.id == leader)
                .map(|p| p.node_id);
            if node.is_none_or(|n| down.contains(&n)) {
                r.wake();
                self.touched.insert(*id);
            }
        }
    }

    /// Tells every other replica of an idle range to stop ticking.
    pub(super) fn send_quiesce(&self, range_id: u64) {
        let Some(r) = self.replicas.get(&range_id) else {
            return;
        };
        let desc = r.shared.desc.read();
        for p in desc.peers.iter().filter(|p| p.id != r.shared.peer_id) {
            self.transport.send(
                p.node_id,
                RaftEnvelope {
                    range_id,
                    epoch: desc.epoch,
                    from_peer: r.shared.peer_id,
                    to_peer: p.id,
                    message: Vec::new(),
                    from_node: self.node_id,
                    quiesce: true,
                    term: r.raw.raft.term,
                    index: r.raw.raft.raft_log.last_index(),
                },
            );
        }
    }
}
