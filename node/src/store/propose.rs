//! Proposals: a stamped (or unstamped) command enters the leader's raft log,
//! and is answered when the entry at its index applies.

use prost::Message as _;
use raft::StateRole;
use strata_proto::errors;
use strata_proto::strata::RangeCommand;

use super::replica::{Proposal, Replica};
use super::{Reply, Store, PROPOSALS_MAX};
use crate::error::{NodeError, NodeResult};

impl Store {
    /// Proposes `cmd`, prepared (stamped) under the leadership of `term`.
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
        if r.proposals.len() >= PROPOSALS_MAX {
            crate::metrics::proposal_rejected("busy");
            let _ = reply.send(Err(errors::too_many_requests().into()));
            return;
        }
        let rev = cmd.revision;
        if let Err(e) = r.raw.propose(vec![], cmd.encode_to_vec()) {
            // Dropped before reaching the log (e.g. during a leader
            // transfer): certainly never applied, so the router may
            // send it again, to the new leader.
            tracing::debug!(range = range_id, "propose dropped: {e}");
            crate::metrics::proposal_rejected("dropped");
            let _ = reply.send(Err(NodeError::NotLeader));
            return;
        }
        crate::metrics::PROPOSALS.inc();
        let index = r.raw.raft.raft_log.last_index();
        let term = r.raw.raft.term;
        if rev > 0 {
            r.pending_revs.insert(rev);
        }
        // Kept proposals of an earlier leadership at this index or
        // above lost their entries (our log now ends below `index`);
        // dropping them keeps the queue in index order.
        while r.proposals.back().is_some_and(|p| p.index >= index) {
            let p = r.proposals.pop_back().expect("back");
            let _ = p.reply.send(Err(errors::leader_changed().into()));
        }
        r.proposals.push_back(Proposal {
            index,
            term,
            rev,
            reply,
        });
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
