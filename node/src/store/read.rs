//! Read barriers: a linearizable read at revision R waits until this replica
//! is leader, has applied everything up to a quorum-confirmed read index
//! (raft ReadIndex), and no write stamped `<= R` is still unapplied.

use std::time::{Duration, Instant};

use raft::{ReadState, StateRole};
use strata_proto::errors;
use tokio::sync::oneshot;

use super::replica::{ReadWaiter, Replica};
use super::{Store, READ_DEADLINE};
use crate::error::{NodeError, NodeResult};

impl Store {
    pub(super) fn read_barrier(
        &mut self,
        range_id: u64,
        read_rev: i64,
        reply: oneshot::Sender<NodeResult<()>>,
        new_reads: &mut Vec<u64>,
    ) {
        let Some(r) = self.replicas.get_mut(&range_id) else {
            let _ = reply.send(Err(NodeError::RangeNotFound));
            return;
        };
        r.wake();
        if r.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(NodeError::NotLeader));
            return;
        }
        r.reads.push(ReadWaiter {
            read_rev,
            ctx: 0,
            asked: Instant::now(),
            index: None,
            deadline: Instant::now() + READ_DEADLINE,
            reply,
        });
        new_reads.push(range_id);
    }

    /// Asks raft for a read index for every waiter not yet asked for, with
    /// one new context. Waiters already asked for keep their context: a new
    /// one would orphan the answer in flight (and under steady reads or
    /// ticks, no answer would ever match).
    pub(super) fn issue_read_index(&mut self, range_id: u64) {
        let Some(r) = self.replicas.get_mut(&range_id) else {
            return;
        };
        self.touched.insert(range_id);
        let ctx = self.next_ctx;
        let mut any = false;
        for w in r.reads.iter_mut().filter(|w| w.ctx == 0) {
            w.ctx = ctx;
            w.asked = Instant::now();
            any = true;
        }
        if any {
            self.next_ctx += 1;
            r.raw.read_index(ctx.to_be_bytes().to_vec());
        }
    }
}

impl Replica {
    /// Records the read indexes raft confirmed for our contexts.
    pub(super) fn on_read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            let Ok(ctx) = <[u8; 8]>::try_from(&rs.request_ctx[..]) else {
                continue;
            };
            let ctx = u64::from_be_bytes(ctx);
            for w in self.reads.iter_mut().filter(|w| w.ctx == ctx) {
                w.index = Some(rs.index);
            }
        }
    }

    /// Fails reads past their deadline, and asks again, with the same
    /// context, for read indexes unanswered for `reissue_after`: a leader
    /// that has not yet committed in its term drops ReadIndex requests
    /// (raft ignores a context it still has pending).
    pub(super) fn expire_reads(&mut self, now: Instant, reissue_after: Duration) {
        let mut i = 0;
        while i < self.reads.len() {
            if self.reads[i].deadline <= now {
                let w = self.reads.swap_remove(i);
                let _ = w.reply.send(Err(errors::timeout().into()));
            } else {
                i += 1;
            }
        }
        let mut again: Vec<u64> = Vec::new();
        for w in self.reads.iter_mut() {
            if w.ctx != 0 && w.index.is_none() && now.duration_since(w.asked) >= reissue_after {
                w.asked = now;
                again.push(w.ctx);
            }
        }
        again.sort_unstable();
        again.dedup();
        for ctx in again {
            self.raw.read_index(ctx.to_be_bytes().to_vec());
        }
    }

    /// Completes the reads whose read index is applied and below whose
    /// revision no stamped write is still unapplied (nor a pending txn's).
    pub(super) fn complete_reads(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        let applied = self.raw.raft.raft_log.applied;
        let mut lowest_pending = self.pending_revs.first().copied().unwrap_or(i64::MAX);
        // A txn holding the range commits above every revision applied here
        // (see `crate::txn`): nothing past the applied revision is closed.
        if self.shared.intent.read().is_some() {
            let next = self
                .shared
                .applied_rev
                .load(std::sync::atomic::Ordering::Acquire)
                + 1;
            lowest_pending = lowest_pending.min(next);
        }
        let mut i = 0;
        while i < self.reads.len() {
            let w = &self.reads[i];
            if w.index.is_some_and(|idx| idx <= applied) && lowest_pending > w.read_rev {
                let w = self.reads.swap_remove(i);
                let _ = w.reply.send(Ok(()));
            } else {
                i += 1;
            }
        }
    }
}
