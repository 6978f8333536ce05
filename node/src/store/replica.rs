//! One range replica as the raft thread holds it, and the part of it that
//! async code (service, feeds, split checker, heartbeats) may read.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use raft::RawNode;
use strata_proto::strata::{Epoch, FeedMessage, RangeDescriptor};
use tokio::sync::{broadcast, oneshot};
use tonic::Status;

use super::Reply;
use crate::engine::RaftStorage;

/// What async code may look at without asking the raft thread.
pub struct RangeShared {
    pub desc: parking_lot::RwLock<RangeDescriptor>,
    pub peer_id: u64,
    pub leader_peer: AtomicU64,
    pub term: AtomicU64,
    pub applied_index: AtomicU64,
    /// Highest revision applied here (the replica's "current revision").
    pub applied_rev: AtomicI64,
    pub compacted: AtomicI64,
    pub feed: broadcast::Sender<Arc<FeedMessage>>,
    /// Writes applied (for the write rate) and splits applied.
    pub writes: AtomicU64,
    pub splits: AtomicU64,
    /// Approximate size, from the last split check.
    pub approx_keys: AtomicU64,
    pub approx_bytes: AtomicU64,
}

impl RangeShared {
    pub fn is_leader(&self) -> bool {
        let l = self.leader_peer.load(Ordering::Acquire);
        l != 0 && l == self.peer_id
    }
    pub fn leader_node(&self) -> u64 {
        let l = self.leader_peer.load(Ordering::Acquire);
        self.desc
            .read()
            .peers
            .iter()
            .find(|p| p.id == l)
            .map_or(0, |p| p.node_id)
    }
    pub fn epoch(&self) -> Epoch {
        self.desc.read().epoch.unwrap_or_default()
    }
}

pub type Ranges = Arc<dashmap::DashMap<u64, Arc<RangeShared>>>;

pub(super) struct ReadWaiter {
    pub read_rev: i64,
    pub ctx: u64,
    pub index: Option<u64>,
    pub deadline: Instant,
    pub reply: oneshot::Sender<Result<(), Status>>,
}

pub(super) struct Proposal {
    pub index: u64,
    pub term: u64,
    pub rev: i64,
    pub reply: Reply,
}

pub(super) struct Replica {
    pub raw: RawNode<RaftStorage>,
    pub shared: Arc<RangeShared>,
    pub proposals: VecDeque<Proposal>,
    /// Revisions stamped and proposed by this leader but not yet applied.
    pub pending_revs: BTreeSet<i64>,
    pub reads: Vec<ReadWaiter>,
    /// Not ticking: the range is idle and every replica agreed (see `quiesce`).
    pub quiesced: bool,
    pub idle_ticks: u32,
}

pub(super) fn raft_config(peer_id: u64, applied: u64) -> raft::Config {
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
        ..Default::default()
    }
}
