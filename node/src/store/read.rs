//! Read barriers: a linearizable read at revision R waits until this replica
//! is leader, has applied everything up to a quorum-confirmed read index
//! (raft ReadIndex), and no write stamped `<= R` is still unapplied.

use std::time::Instant;

use raft::{ReadState, StateRole};
use strata_proto::errors;
use tokio::sync::oneshot;
use tonic::Status;

use super::replica::{ReadWaiter, Replica};
use super::{Store, READ_DEADLINE};

impl Store {
    pub(super) fn read_barrier(
        &mut self,
        range_id: u64,
        read_rev: i64,
        reply: oneshot::Sender<Result<(), Status>>,
        new_reads: &mut Vec<u64>,
    ) {
        let Some(r) = self.replicas.get_mut(&range_id) else {
            let _ = reply.send(Err(Status::not_found("strata: range not found")));
            return;
        };
        r.wake();
        if r.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(crate::service::not_leader()));
            return;
        }
        r.reads.push(ReadWaiter {
            read_rev,
            ctx: 0,
            index: None,
            deadline: Instant::now() + READ_DEADLINE,
            reply,
        });
        new_reads.push(range_id);
    }

    pub(super) fn issue_read_index(&mut self, range_id: u64) {
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        self.touched.insert(range_id);
        let Some(r) = self.replicas.get_mut(&range_id) else {
            return;
        };
        let mut any = false;
        for w in r.reads.iter_mut().filter(|w| w.index.is_none()) {
            w.ctx = ctx;
            any = true;
        }
        if any {
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

    /// Fails reads past their deadline; returns whether some still wait for
    /// a read index (ReadIndex requests are dropped by a leader that has not
    /// yet committed in its term, so those are issued again).
    pub(super) fn expire_reads(&mut self, now: Instant) -> bool {
        let mut i = 0;
        while i < self.reads.len() {
            if self.reads[i].deadline <= now {
                let w = self.reads.swap_remove(i);
                let _ = w.reply.send(Err(errors::timeout()));
            } else {
                i += 1;
            }
        }
        self.reads.iter().any(|w| w.index.is_none())
    }

    /// Completes the reads whose read index is applied and below whose
    /// revision no stamped write is still unapplied.
    pub(super) fn complete_reads(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        let applied = self.raw.raft.raft_log.applied;
        let lowest_pending = self.pending_revs.first().copied().unwrap_or(i64::MAX);
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
