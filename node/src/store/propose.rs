//! Proposals: a stamped (or unstamped) command enters the leader's raft log,
//! and is answered when the entry at its index applies.
//!
//! Checked proposals wait in [`Store::queued`] while the raft loop drains
//! its inbox, and enter raft together, one `MsgPropose` per range with all
//! of that range's entries, in arrival order ([`Store::flush_proposals`]):
//! raft sends each follower one append for them instead of one per entry.
//! The queue is flushed before the loop handles anything else (a raft
//! message, a tick, an admin command…), so nothing that could change a
//! range's leadership or log runs between a proposal's checks and its
//! entry, and entries keep the order the proposals arrived in.

use prost::Message as _;
use raft::eraftpb::{Entry, Message, MessageType};
use raft::StateRole;
use strata_proto::errors;
use strata_proto::strata::{KvKind, RangeCommand};

use super::replica::{Proposal, Replica};
use super::{Reply, Store, PROPOSALS_MAX};
use crate::error::{NodeError, NodeResult};

/// A checked proposal waiting for [`Store::flush_proposals`].
pub(super) struct Queued {
    range_id: u64,
    data: Vec<u8>,
    rev: i64,
    reply: Reply,
    split: bool,
}

impl Store {
    /// Checks `cmd`, prepared (stamped) under the leadership of `term`, and
    /// queues it for the log (see the module doc).
    ///
    /// **Invariant:** a command is proposed only in the term it was stamped
    /// in. A stamp taken under an earlier leadership of this replica could
    /// be smaller than revisions another leader committed in between; it is
    /// refused unproposed (`NotLeader`: certainly not applied, so the router
    /// retries and the write is stamped afresh).
    pub(super) fn propose(&mut self, range_id: u64, term: u64, cmd: RangeCommand, reply: Reply) {
        let Some(r) = self.replicas.get_mut(&range_id) else {
            let _ = reply.send(Err(NodeError::RangeNotFound));
            return;
        };
        r.wake();
        if r.raw.raft.state != StateRole::Leader {
            crate::metrics::proposal_rejected("not_leader");
            let _ = reply.send(Err(NodeError::NotLeader));
            return;
        }
        if r.raw.raft.term != term {
            crate::metrics::proposal_rejected("stale_term");
            let _ = reply.send(Err(NodeError::NotLeader));
            return;
        }
        // Counts every range's queued proposals: a bound, and the queue is
        // at most one inbox drain long.
        if r.proposals.len() + self.queued.len() >= PROPOSALS_MAX {
            crate::metrics::proposal_rejected("busy");
            let _ = reply.send(Err(errors::too_many_requests().into()));
            return;
        }
        let rev = cmd.revision;
        if rev > 0 {
            // Pending from now: a read must not pass it while it is queued.
            r.pending_revs.insert(rev);
        }
        self.queued.push(Queued {
            range_id,
            data: cmd.encode_to_vec(),
            rev,
            reply,
            split: cmd.kind == KvKind::KvSplit as i32,
        });
    }

    /// Proposes every queued command: per range, one `MsgPropose` carrying
    /// its entries in arrival order.
    pub(super) fn flush_proposals(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let mut queued = std::mem::take(&mut self.queued);
        // Stable: each range's proposals keep their order.
        queued.sort_by_key(|q| q.range_id);
        let mut it = queued.into_iter().peekable();
        while let Some(q) = it.next() {
            let id = q.range_id;
            let mut batch = vec![q];
            while let Some(next) = it.next_if(|n| n.range_id == id) {
                batch.push(next);
            }
            self.propose_batch(batch);
        }
    }

    fn propose_batch(&mut self, batch: Vec<Queued>) {
        let range_id = batch[0].range_id;
        let Some(r) = self.replicas.get_mut(&range_id) else {
            for q in batch {
                let _ = q.reply.send(Err(NodeError::RangeNotFound));
            }
            return;
        };
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = r.raw.raft.id;
        let mut entries = Vec::with_capacity(batch.len());
        let mut rest = Vec::with_capacity(batch.len());
        let split = batch.iter().any(|q| q.split);
        for q in batch {
            entries.push(Entry {
                data: q.data.into(),
                ..Default::default()
            });
            rest.push((q.rev, q.reply));
        }
        m.set_entries(entries.into());
        let before = r.raw.raft.raft_log.last_index();
        if let Err(e) = r.raw.raft.step(m) {
            // Dropped before reaching the log (e.g. during a leader
            // transfer): certainly never applied, so the router may
            // send them again, to the new leader.
            tracing::debug!(range = range_id, "propose dropped: {e}");
            for (rev, reply) in rest {
                r.pending_revs.remove(&rev);
                crate::metrics::proposal_rejected("dropped");
                let _ = reply.send(Err(NodeError::NotLeader));
            }
            return;
        }
        // Raft appended them, in order, at the end of its log.
        let first = before + 1;
        debug_assert_eq!(r.raw.raft.raft_log.last_index(), before + rest.len() as u64);
        if split {
            r.bcast_commit_through(r.raw.raft.raft_log.last_index());
        }
        let term = r.raw.raft.term;
        // Kept proposals of an earlier leadership at this index or
        // above lost their entries (our log now ends below `first`);
        // dropping them keeps the queue in index order.
        while r.proposals.back().is_some_and(|p| p.index >= first) {
            let p = r.proposals.pop_back().expect("back");
            let _ = p.reply.send(Err(errors::leader_changed().into()));
        }
        for (i, (rev, reply)) in rest.into_iter().enumerate() {
            crate::metrics::PROPOSALS.inc();
            r.proposals.push_back(Proposal {
                index: first + i as u64,
                term,
                rev,
                reply,
            });
        }
    }
}

impl Replica {
    /// Answers the proposal the entry at `(index, term)` belongs to with
    /// `result`, and fails proposals whose entries another leader replaced.
    pub(super) fn answer_proposals(
        &mut self,
        index: u64,
        term: u64,
        mut result: NodeResult<Vec<u8>>,
    ) {
        while let Some(p) = self.proposals.front() {
            if p.index > index {
                break;
            }
            let p = self.proposals.pop_front().expect("front");
            self.pending_revs.remove(&p.rev);
            if p.index == index && p.term == term {
                let _ = p.reply.send(std::mem::replace(&mut result, Ok(Vec::new())));
            } else {
                let _ = p.reply.send(Err(errors::leader_changed().into()));
            }
        }
    }

    /// Fails every proposal at or below `index` (a snapshot covered them:
    /// their entries are never applied one by one here).
    pub(super) fn fail_proposals_through(&mut self, index: u64) {
        while self.proposals.front().is_some_and(|p| p.index <= index) {
            let p = self.proposals.pop_front().expect("front");
            let _ = p.reply.send(Err(errors::leader_changed().into()));
        }
    }

    /// On losing leadership: reads waiting here can no longer be confirmed.
    /// Pending proposals stay: each may still commit under the new leader (a
    /// leader transfer first brings the new leader up to date, so they
    /// usually do), and apply answers it when the entry at its index applies
    /// here — success if it is the proposal's own entry (same term), "leader
    /// changed" if another leader's entry replaced it. One whose client gave
    /// up is dropped by `tick`; one a snapshot skips over fails then.
    pub(super) fn step_down(&mut self) {
        for w in self.reads.drain(..) {
            let _ = w.reply.send(Err(errors::leader_changed().into()));
        }
        self.pending_revs.clear();
    }
}
