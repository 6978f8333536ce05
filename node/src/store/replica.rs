//! One range replica as the raft thread holds it, and the part of it that
//! async code (service, feeds, split checker, heartbeats) may read.

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use raft::RawNode;
use tokio::sync::oneshot;

use super::Reply;
use crate::engine::RaftStorage;
use crate::error::NodeResult;
use crate::snapshot::recv::Slot;
use crate::snapshot::StagedSnapshot;

pub use crate::range::RangeShared;

pub(super) struct ReadWaiter {
    pub read_rev: i64,
    /// The ReadIndex context asked for this waiter (0: not asked yet).
    pub ctx: u64,
    /// When that context was last asked for.
    pub asked: Instant,
    pub index: Option<u64>,
    pub deadline: Instant,
    pub reply: oneshot::Sender<NodeResult<()>>,
}

pub(super) struct Proposal {
    pub index: u64,
    pub term: u64,
    pub rev: i64,
    pub reply: Reply,
}

pub(super) struct Replica {
    pub raw: RawNode<RaftStorage>,
    pub shared: std::sync::Arc<RangeShared>,
    /// Holds its range's data; an uninitialized replica waits for a
    /// snapshot and is not published (see `catchup.rs`).
    pub initialized: bool,
    pub proposals: VecDeque<Proposal>,
    /// Revisions stamped and proposed by this leader but not yet applied.
    pub pending_revs: BTreeSet<i64>,
    pub reads: Vec<ReadWaiter>,
    /// Not ticking: the range is idle and every replica agreed (see `quiesce`).
    pub quiesced: bool,
    pub idle_ticks: u32,
    /// A received snapshot raft took, until its data is installed: the
    /// replica is paused meanwhile (see `snapshot.rs`).
    pub install: Option<Install>,
    /// The answers of the last cross-range txn commits applied here (txn
    /// id, this range's share of the response), for a coordinator asking
    /// again after a leader change.
    pub recent_txns: VecDeque<(u64, Vec<u8>)>,
    /// Commits are broadcast at once until the commit index reaches this
    /// (0: never; see [`Replica::bcast_commit_through`]).
    pub bcast_through: u64,
}

/// Where a received snapshot is on its way in.
pub(super) enum Install {
    /// Stepped into raft; its Ready round has not run yet.
    Stepped(StagedSnapshot),
    /// Raft state and install record written; data being copied. Holds the
    /// staging area until done.
    Running(#[allow(dead_code)] Slot),
}

impl Replica {
    /// Followers are told at once when the log commits through `index` (a
    /// split's entry): each applies the split then, so the new range has
    /// its replicas there as soon as its leader does. Told only with the
    /// next append or heartbeat, followers applied splits up to two ticks
    /// late, the new range had no quorum until they did, and under load a
    /// watch across many splits went 30 s without an event
    /// (`sharding::splits::splits_under_load_with_a_watch_across_them`).
    pub(super) fn bcast_commit_through(&mut self, index: u64) {
        self.bcast_through = self.bcast_through.max(index);
        self.raw.skip_bcast_commit(false);
    }

    /// Back to the configured way once the log committed through the index
    /// [`Replica::bcast_commit_through`] was given (a leader broadcast it as it
    /// committed, in the step that moved its commit index).
    pub(super) fn end_bcast_commit(&mut self, bcast_commit: bool) {
        if self.bcast_through != 0 && self.raw.raft.raft_log.committed >= self.bcast_through {
            self.bcast_through = 0;
            self.raw.skip_bcast_commit(!bcast_commit);
        }
    }

    /// Paused for a snapshot install: not ticked, stepped or readied.
    pub(super) fn installing(&self) -> bool {
        matches!(self.install, Some(Install::Running(_)))
    }
}

/// `bcast_commit`: tell followers of a new commit index at once, in an empty
/// append of its own (etcd's behaviour), rather than with the next append or
/// heartbeat. Raft's safety never rests on when a follower learns the commit
/// index (that message can be lost anyway); under load the next append follows
/// within a Ready round, and skipping halves the raft messages per write.
/// raft-rs still broadcasts while a conf change is pending.
pub(super) fn raft_config(peer_id: u64, applied: u64, bcast_commit: bool) -> raft::Config {
    raft::Config {
        id: peer_id,
        election_tick: 10,
        heartbeat_tick: 2,
        applied,
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        max_uncommitted_size: 64 * 1024 * 1024,
        skip_bcast_commit: !bcast_commit,
        ..Default::default()
    }
}
