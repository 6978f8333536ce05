//! The store: every range replica of this node, driven by one raft thread.
//!
//! Each loop iteration drains the inbox (raft messages, proposals, read
//! barriers, ticks), then runs one Ready round over all replicas that have one:
//! 1. send `messages()` at once (they do not depend on our persistence);
//! 2. stage every replica's log appends and hard state into ONE write batch and
//!    write it with ONE fsync (group commit across ranges);
//! 3. send `persisted_messages()` (votes, append acks) only after that fsync;
//! 4. apply committed entries, `advance`, handle the `LightReady`.
//!
//! Nothing steps or proposes between `ready()` and `advance()` of a replica,
//! because the whole round runs without touching the inbox.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message as RaftMessage,
};
use raft::{RawNode, StateRole};
use rocksdb::{WriteBatch, DB};
use strata_proto::errors;
use strata_proto::etcd::{
    PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbLeaseRevokeRequest, PbPutRequest,
    PbTxnRequest,
};
use strata_proto::strata::{
    AdminKind, Epoch, FeedMessage, KvKind, Peer, RaftEnvelope, RangeCommand, RangeDescriptor,
    SplitCommand,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::Status;

use crate::apply::{header, WriteExec};
use crate::engine::{self, RaftStorage, CF_META};
use crate::mvcc::{KeyRange, Mvcc};
use crate::transport::Transport;

/// Capacity of the store inbox; a full inbox sheds load with `ServerBusy`.
pub const INBOX_CAP: usize = 16_384;
/// Messages handled per loop iteration before a Ready round.
const DRAIN_MAX: usize = 4096;
/// Pending proposals per replica before new ones are refused.
const PROPOSALS_MAX: usize = 8192;
/// Events buffered per range feed channel.
const FEED_CAP: usize = 4096;
/// A read barrier that did not complete in this time fails (client retries).
const READ_DEADLINE: Duration = Duration::from_secs(5);

pub type Reply = oneshot::Sender<Result<Vec<u8>, Status>>;

pub enum StoreMsg {
    Raft(RaftEnvelope),
    Propose {
        range_id: u64,
        cmd: RangeCommand,
        reply: Reply,
    },
    /// Completes once this replica is leader, has applied everything up to a
    /// quorum-confirmed read index, and no write stamped `<= read_rev` is
    /// still unapplied: then no write `<= read_rev` can ever apply here later.
    ReadBarrier {
        range_id: u64,
        read_rev: i64,
        reply: oneshot::Sender<Result<(), Status>>,
    },
    Create(RangeDescriptor),
    Tick,
    /// Nodes placement currently reports as down.
    NodesDown(Vec<u64>),
    /// A replica change or leader transfer, on the range leader.
    Admin {
        range_id: u64,
        kind: AdminKind,
        peer: Peer,
        reply: oneshot::Sender<Result<(), Status>>,
    },
}

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

struct ReadWaiter {
    read_rev: i64,
    ctx: u64,
    index: Option<u64>,
    deadline: Instant,
    reply: oneshot::Sender<Result<(), Status>>,
}

struct Proposal {
    index: u64,
    term: u64,
    rev: i64,
    reply: Reply,
}

struct Replica {
    raw: RawNode<RaftStorage>,
    shared: Arc<RangeShared>,
    proposals: VecDeque<Proposal>,
    /// Revisions stamped and proposed by this leader but not yet applied.
    pending_revs: BTreeSet<i64>,
    reads: Vec<ReadWaiter>,
    /// Not ticking: the range is idle and every replica agreed (see `quiesce`).
    quiesced: bool,
    idle_ticks: u32,
}

impl Replica {
    fn wake(&mut self) {
        self.quiesced = false;
        self.idle_ticks = 0;
    }

    /// An idle leader: nothing proposed, read or changing, and every replica
    /// has the whole log applied-and-acknowledged.
    fn can_quiesce(&self) -> bool {
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
}

pub struct Store {
    node_id: u64,
    db: Arc<DB>,
    mvcc: Mvcc,
    ranges: Ranges,
    replicas: HashMap<u64, Replica>,
    transport: Transport,
    logger: slog::Logger,
    tick_every: Duration,
    next_ctx: u64,
    /// Peer → node, learned from incoming messages (a new learner does not
    /// know its peers' nodes until its snapshot arrives).
    peer_nodes: HashMap<u64, u64>,
    /// Ranges whose replica was removed here → conf_ver at removal.
    destroyed: HashMap<u64, u64>,
    /// Idle ticks before a leader quiesces its range (0 = never).
    pub quiesce_after_ticks: u32,
    /// Ranges quiesced by this round's tick whose followers are told after
    /// the round's raft messages went out (see `run`).
    quiesce_pending: Vec<u64>,
    /// Ranges that may have a raft `Ready` since the last round: those a
    /// message, request or tick reached, new ones, and those handled in the
    /// last round. Only these are asked, so a round costs nothing per idle
    /// range.
    touched: HashSet<u64>,
}

fn raft_config(peer_id: u64, applied: u64) -> raft::Config {
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

fn meta_key_desc(range_id: u64) -> Vec<u8> {
    let mut k = b"range/".to_vec();
    k.extend_from_slice(&range_id.to_be_bytes());
    k
}

fn meta_key_maxrev(range_id: u64) -> Vec<u8> {
    let mut k = b"maxrev/".to_vec();
    k.extend_from_slice(&range_id.to_be_bytes());
    k
}

fn meta_key_compacted(range_id: u64) -> Vec<u8> {
    let mut k = b"compacted/".to_vec();
    k.extend_from_slice(&range_id.to_be_bytes());
    k
}

impl Store {
    pub fn new(
        node_id: u64,
        db: Arc<DB>,
        ranges: Ranges,
        transport: Transport,
        tick_every: Duration,
    ) -> Self {
        Self {
            node_id,
            mvcc: Mvcc::new(db.clone()),
            db,
            ranges,
            replicas: HashMap::new(),
            transport,
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            tick_every,
            next_ctx: 1,
            peer_nodes: HashMap::new(),
            destroyed: HashMap::new(),
            quiesce_after_ticks: 20,
            quiesce_pending: Vec::new(),
            touched: HashSet::new(),
        }
    }

    /// Loads every replica persisted in `meta`.
    pub fn load(&mut self) -> anyhow::Result<()> {
        let cf = self.db.cf_handle(CF_META).expect("meta cf");
        let mut descs = Vec::new();
        let mut it = self.db.raw_iterator_cf(&cf);
        it.seek(b"range/");
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !k.starts_with(b"range/") {
                break;
            }
            descs.push(RangeDescriptor::decode(v)?);
            it.next();
        }
        drop(it);
        for d in descs {
            self.create(d)?;
        }
        Ok(())
    }

    fn create(&mut self, desc: RangeDescriptor) -> anyhow::Result<()> {
        if self.replicas.contains_key(&desc.id) {
            return Ok(());
        }
        let Some(me) = desc.peers.iter().find(|p| p.node_id == self.node_id) else {
            anyhow::bail!("range {} has no peer on node {}", desc.id, self.node_id);
        };
        let peer_id = me.id;
        // A replica added as a learner starts empty and waits for a snapshot;
        // the first range's replicas (and split halves) start with the voters.
        let voters: Vec<u64> = if me.learner {
            Vec::new()
        } else {
            desc.peers
                .iter()
                .filter(|p| !p.learner)
                .map(|p| p.id)
                .collect()
        };
        let storage = RaftStorage::open(self.db.clone(), desc.id, &voters)?;
        let applied = storage.applied_index()?;
        let cf = self.db.cf_handle(CF_META).expect("meta cf");
        self.db
            .put_cf(&cf, meta_key_desc(desc.id), desc.encode_to_vec())?;
        let compacted = match self.db.get_cf(&cf, meta_key_compacted(desc.id))? {
            Some(b) if b.len() == 8 => i64::from_be_bytes(b[..].try_into().unwrap()),
            _ => 0,
        };
        // The highest revision applied before a restart: the newest MVCC version
        // in the range is the last write applied (log order == revision order).
        let applied_rev = self.max_revision(&desc)?;
        let raw = RawNode::new(&raft_config(peer_id, applied), storage, &self.logger)?;
        let (feed, _) = broadcast::channel(FEED_CAP);
        let shared = Arc::new(RangeShared {
            peer_id,
            desc: parking_lot::RwLock::new(desc.clone()),
            leader_peer: AtomicU64::new(0),
            term: AtomicU64::new(0),
            applied_index: AtomicU64::new(applied),
            applied_rev: AtomicI64::new(applied_rev),
            compacted: AtomicI64::new(compacted),
            feed,
            writes: AtomicU64::new(0),
            splits: AtomicU64::new(0),
            approx_keys: AtomicU64::new(0),
            approx_bytes: AtomicU64::new(0),
        });
        raw.store()
            .set_snapshot_builder(snapshot_builder(self.db.clone(), shared.clone()));
        self.ranges.insert(desc.id, shared.clone());
        self.replicas.insert(
            desc.id,
            Replica {
                raw,
                shared,
                proposals: VecDeque::new(),
                pending_revs: BTreeSet::new(),
                reads: Vec::new(),
                quiesced: false,
                idle_ticks: 0,
            },
        );
        self.touched.insert(desc.id);
        tracing::info!(range = desc.id, peer = peer_id, applied, "replica opened");
        Ok(())
    }

    /// The highest revision applied before a restart (see `exec`).
    fn max_revision(&self, desc: &RangeDescriptor) -> anyhow::Result<i64> {
        let cf = self.db.cf_handle(CF_META).expect("meta cf");
        Ok(match self.db.get_cf(&cf, meta_key_maxrev(desc.id))? {
            Some(b) if b.len() == 8 => i64::from_be_bytes(b[..].try_into().unwrap()),
            _ => 0,
        })
    }

    /// Runs the raft loop until the inbox closes.
    pub fn run(mut self, mut inbox: mpsc::Receiver<StoreMsg>) {
        let mut last_tick = Instant::now();
        loop {
            let Some(first) = inbox.blocking_recv() else {
                return;
            };
            let mut new_reads: Vec<u64> = Vec::new();
            self.handle(first, &mut new_reads);
            for _ in 0..DRAIN_MAX {
                match inbox.try_recv() {
                    Ok(m) => self.handle(m, &mut new_reads),
                    Err(_) => break,
                }
            }
            // One ReadIndex request per range serves every barrier of this round.
            new_reads.sort_unstable();
            new_reads.dedup();
            for range_id in new_reads {
                self.issue_read_index(range_id);
            }
            if last_tick.elapsed() >= self.tick_every {
                last_tick = Instant::now();
                self.tick();
            }
            if let Err(e) = self.ready_round() {
                // A failed write to our own disk: we can no longer promise
                // durability, so stop rather than acknowledge anything.
                tracing::error!("fatal storage error in raft loop: {e:#}");
                std::process::exit(70);
            }
            // Told only now, after the heartbeats the same tick produced: a
            // heartbeat arriving after the quiesce message would wake the
            // followers alone, and followers ticking without a leader that
            // heartbeats elect a new one.
            for id in std::mem::take(&mut self.quiesce_pending) {
                if self.replicas.get(&id).is_some_and(|r| r.quiesced) {
                    self.send_quiesce(id);
                }
            }
        }
    }

    fn handle(&mut self, m: StoreMsg, new_reads: &mut Vec<u64>) {
        match &m {
            StoreMsg::Raft(env) => self.touched.insert(env.range_id),
            StoreMsg::Propose { range_id, .. }
            | StoreMsg::ReadBarrier { range_id, .. }
            | StoreMsg::Admin { range_id, .. } => self.touched.insert(*range_id),
            StoreMsg::Create(desc) => self.touched.insert(desc.id),
            StoreMsg::Tick | StoreMsg::NodesDown(_) => false,
        };
        match m {
            StoreMsg::Tick => {}
            StoreMsg::NodesDown(down) => {
                // A quiesced follower would never notice its leader died: wake
                // it when placement reports the leader's node down.
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
            StoreMsg::Create(desc) => {
                // A replica removed from this node is not recreated from a
                // directory entry that predates its removal.
                let conf_ver = desc.epoch.unwrap_or_default().conf_ver;
                if self.destroyed.get(&desc.id).is_some_and(|v| *v >= conf_ver) {
                    return;
                }
                if let Err(e) = self.create(desc) {
                    tracing::warn!("cannot create replica: {e:#}");
                }
            }
            StoreMsg::Raft(env) => {
                if env.from_node != 0 {
                    self.peer_nodes.insert(env.from_peer, env.from_node);
                }
                let Some(r) = self.replicas.get_mut(&env.range_id) else {
                    return; // unknown range: placement will tell us if it is ours
                };
                if env.to_peer != r.shared.peer_id {
                    return;
                }
                if env.quiesce {
                    // Follow the leader into quiescence only when in step with it.
                    let raft = &r.raw.raft;
                    if raft.state == StateRole::Follower
                        && raft.leader_id == env.from_peer
                        && raft.term == env.term
                        && raft.raft_log.last_index() == env.index
                        && raft.raft_log.committed == env.index
                    {
                        r.quiesced = true;
                    }
                    return;
                }
                match RaftMessage::parse_from_bytes(&env.message) {
                    Ok(msg) => {
                        // Late acknowledgements do not wake an idle range;
                        // anything else (appends, votes, heartbeats) does.
                        use raft::eraftpb::MessageType as T;
                        let raft = &r.raw.raft;
                        // Nor does a plain heartbeat of the leader a quiesced
                        // follower already agrees with (one sent just before
                        // the leader quiesced): the follower answers it but
                        // keeps still, as the leader does.
                        let stale_heartbeat = r.quiesced
                            && msg.get_msg_type() == T::MsgHeartbeat
                            && msg.from == raft.leader_id
                            && msg.term == raft.term
                            && msg.commit <= raft.raft_log.committed
                            && msg.context.is_empty();
                        if !stale_heartbeat
                            && !matches!(
                                msg.get_msg_type(),
                                T::MsgHeartbeatResponse | T::MsgAppendResponse
                            )
                        {
                            r.wake();
                        }
                        if let Err(e) = r.raw.step(msg) {
                            tracing::debug!(range = env.range_id, "step: {e}");
                        }
                    }
                    Err(e) => tracing::warn!("bad raft message from node: {e}"),
                }
            }
            StoreMsg::Admin {
                range_id,
                kind,
                peer,
                reply,
            } => {
                if let Some(r) = self.replicas.get_mut(&range_id) {
                    r.wake();
                }
                let res = self.admin(range_id, kind, peer);
                let _ = reply.send(res);
            }
            StoreMsg::Propose {
                range_id,
                cmd,
                reply,
            } => {
                let Some(r) = self.replicas.get_mut(&range_id) else {
                    let _ = reply.send(Err(Status::not_found("strata: range not found")));
                    return;
                };
                r.wake();
                if r.raw.raft.state != StateRole::Leader {
                    crate::metrics::proposal_rejected("not_leader");
                    let _ = reply.send(Err(crate::service::not_leader()));
                    return;
                }
                if r.proposals.len() >= PROPOSALS_MAX {
                    crate::metrics::proposal_rejected("busy");
                    let _ = reply.send(Err(errors::too_many_requests()));
                    return;
                }
                let rev = cmd.revision;
                if let Err(e) = r.raw.propose(vec![], cmd.encode_to_vec()) {
                    // Dropped before reaching the log (e.g. during a leader
                    // transfer): certainly never applied, so the router may
                    // send it again, to the new leader.
                    tracing::debug!(range = range_id, "propose dropped: {e}");
                    crate::metrics::proposal_rejected("dropped");
                    let _ = reply.send(Err(crate::service::not_leader()));
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
                    let _ = p.reply.send(Err(errors::leader_changed()));
                }
                r.proposals.push_back(Proposal {
                    index,
                    term,
                    rev,
                    reply,
                });
            }
            StoreMsg::ReadBarrier {
                range_id,
                read_rev,
                reply,
            } => {
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
        }
    }

    /// Tells every other replica of an idle range to stop ticking.
    fn send_quiesce(&self, range_id: u64) {
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

    fn issue_read_index(&mut self, range_id: u64) {
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

    fn tick(&mut self) {
        let now = Instant::now();
        let mut retry = Vec::new();
        let mut pending = 0;
        for (id, r) in self.replicas.iter_mut() {
            if r.quiesced {
                continue; // an idle range costs nothing per tick
            }
            r.raw.tick();
            self.touched.insert(*id);
            promote_caught_up_learners(r);
            if self.quiesce_after_ticks > 0 && r.can_quiesce() {
                r.idle_ticks += 1;
                if r.idle_ticks >= self.quiesce_after_ticks {
                    r.quiesced = true;
                    self.quiesce_pending.push(*id);
                }
            } else {
                r.idle_ticks = 0;
            }
            if r.raw.raft.state != StateRole::Leader {
                // Proposals kept from a former leadership (see `step_down`)
                // whose clients stopped waiting.
                r.proposals.retain(|p| !p.reply.is_closed());
            }
            pending += r.proposals.len();
            // ReadIndex requests are dropped by a leader that has not yet
            // committed in its term; re-issue them, and fail expired ones.
            let mut i = 0;
            while i < r.reads.len() {
                if r.reads[i].deadline <= now {
                    let w = r.reads.swap_remove(i);
                    let _ = w.reply.send(Err(errors::timeout()));
                } else {
                    i += 1;
                }
            }
            if r.reads.iter().any(|w| w.index.is_none()) {
                retry.push(*id);
            }
        }
        crate::metrics::PROPOSALS_PENDING.set(pending as i64);
        for id in retry {
            self.issue_read_index(id);
        }
    }

    fn send(&self, shared: &RangeShared, msgs: Vec<RaftMessage>) {
        if msgs.is_empty() {
            return;
        }
        let desc = shared.desc.read();
        for m in msgs {
            let to_node = desc
                .peers
                .iter()
                .find(|p| p.id == m.to)
                .map(|p| p.node_id)
                .or_else(|| self.peer_nodes.get(&m.to).copied());
            let Some(to_node) = to_node else {
                continue;
            };
            crate::metrics::sending(&m);
            let Ok(bytes) = m.write_to_bytes() else {
                continue;
            };
            self.transport.send(
                to_node,
                RaftEnvelope {
                    range_id: desc.id,
                    epoch: desc.epoch,
                    from_peer: m.from,
                    to_peer: m.to,
                    message: bytes,
                    from_node: self.node_id,
                    ..Default::default()
                },
            );
        }
    }

    fn ready_round(&mut self) -> anyhow::Result<()> {
        let mut ids: Vec<u64> = std::mem::take(&mut self.touched)
            .into_iter()
            .filter(|id| self.replicas.get(id).is_some_and(|r| r.raw.has_ready()))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        ids.sort_unstable();
        // Phase 1: send, and stage all appends into one batch.
        let mut wb = WriteBatch::default();
        let mut readies = Vec::with_capacity(ids.len());
        let mut snapshots = Vec::new();
        let mut appended = 0;
        for id in ids {
            let r = self.replicas.get_mut(&id).expect("replica");
            let mut rd = r.raw.ready();
            let msgs = rd.take_messages();
            let shared = r.shared.clone();
            if let Some(ss) = rd.ss() {
                crate::metrics::leader_seen(&shared, ss.leader_id);
                shared.leader_peer.store(ss.leader_id, Ordering::Release);
                if ss.raft_state != StateRole::Leader {
                    step_down(r);
                }
            }
            if let Some(hs) = rd.hs() {
                shared.term.store(hs.term, Ordering::Release);
            }
            if !rd.snapshot().is_empty() {
                let st = stage_snapshot_data(&self.db, &mut wb, r.raw.store(), rd.snapshot())?;
                snapshots.push((id, st));
            }
            r.raw.store().stage_append(&mut wb, rd.entries(), rd.hs())?;
            appended += rd.entries().len();
            let snaps: Vec<u64> = msgs
                .iter()
                .filter(|m| m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot)
                .map(|m| m.to)
                .collect();
            self.send(&shared, msgs);
            let r = self.replicas.get_mut(&id).expect("replica");
            for to in snaps {
                r.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
            }
            readies.push((id, rd));
        }
        crate::metrics::ready_round(appended, readies.len(), wb.size_in_bytes());
        if !wb.is_empty() {
            let _fsync = crate::metrics::WAL_FSYNC.start_timer();
            engine::write(&self.db, wb, true)?;
        }
        for (id, (desc, compacted, applied_rev, index)) in snapshots {
            let r = self.replicas.get_mut(&id).expect("replica");
            *r.shared.desc.write() = desc;
            r.shared.compacted.store(compacted, Ordering::Release);
            r.shared.applied_rev.store(applied_rev, Ordering::Release);
            r.shared.applied_index.store(index, Ordering::Release);
            // Entries a snapshot covers are never applied one by one here.
            while r.proposals.front().is_some_and(|p| p.index <= index) {
                let p = r.proposals.pop_front().expect("front");
                let _ = p.reply.send(Err(errors::leader_changed()));
            }
            tracing::info!(range = id, index, "snapshot applied");
            crate::metrics::SNAPSHOTS_APPLIED.inc();
        }
        // Phase 2: after the fsync.
        for (id, mut rd) in readies {
            let (shared, persisted) = {
                let r = self.replicas.get_mut(&id).expect("replica");
                r.raw.store().on_persisted(rd.entries(), rd.hs());
                for rs in rd.take_read_states() {
                    if rs.request_ctx.len() == 8 {
                        let ctx = u64::from_be_bytes(rs.request_ctx[..].try_into().unwrap());
                        for w in r.reads.iter_mut().filter(|w| w.ctx == ctx) {
                            w.index = Some(rs.index);
                        }
                    }
                }
                (r.shared.clone(), rd.take_persisted_messages())
            };
            self.send(&shared, persisted);
            let committed = rd.take_committed_entries();
            self.apply(id, committed)?;
            let Some(r) = self.replicas.get_mut(&id) else {
                continue; // destroyed: this node's replica was removed
            };
            let mut light = r.raw.advance(rd);
            let commit = light.commit_index();
            let msgs = light.take_messages();
            let committed = light.take_committed_entries();
            self.send(&shared, msgs);
            // A commit index from the LightReady is persisted with the apply
            // state of the entries it covers (see `apply`), never ahead of them.
            let _ = commit;
            self.apply(id, committed)?;
            let Some(r) = self.replicas.get_mut(&id) else {
                continue;
            };
            r.raw.advance_apply();
            complete_reads(r);
            // Asked again next round (cheap for a range that went quiet).
            self.touched.insert(id);
            // Keep the log bounded: entries well behind the applied index go;
            // a follower that still needs them gets a snapshot instead.
            let applied = r.raw.raft.raft_log.applied;
            if applied > r.raw.store().truncated_index() + LOG_KEEP_ENTRIES * 2 {
                let mut wb = WriteBatch::default();
                r.raw
                    .store()
                    .stage_truncate(&mut wb, applied - LOG_KEEP_ENTRIES)?;
                engine::write(&self.db, wb, false)?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, range_id: u64, entries: Vec<Entry>) -> anyhow::Result<()> {
        let _apply = crate::metrics::applying(entries.len());
        for e in entries {
            let r = self.replicas.get_mut(&range_id).expect("replica");
            let mut wb = WriteBatch::default();
            // The commit index covering this entry is persisted with it, so the
            // applied index never exceeds the persisted commit index.
            r.raw.store().set_commit(&mut wb, e.index)?;
            r.raw.store().stage_applied(&mut wb, e.index);
            let mut result: Result<Vec<u8>, Status> = Ok(Vec::new());
            let mut feed_msg = None;
            let mut child = None;
            let mut destroy = false;
            if e.get_entry_type() == EntryType::EntryConfChangeV2 {
                let removed_self = self.apply_conf_change(range_id, &e, &mut wb)?;
                if removed_self {
                    destroy = true;
                }
            } else if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                match RangeCommand::decode(&e.data[..]) {
                    Ok(cmd) => {
                        let (res, msg, c) = self.exec(range_id, &cmd, &mut wb)?;
                        result = res;
                        feed_msg = msg;
                        child = c;
                    }
                    Err(err) => {
                        tracing::error!(
                            range = range_id,
                            index = e.index,
                            "undecodable command: {err}"
                        );
                        result = Err(Status::internal("strata: undecodable command"));
                    }
                }
            }
            engine::write(&self.db, wb, false)?;
            let r = self.replicas.get_mut(&range_id).expect("replica");
            r.shared.applied_index.store(e.index, Ordering::Release);
            if let Some(m) = feed_msg {
                let _ = r.shared.feed.send(Arc::new(m));
            }
            let was_leader = r.raw.raft.state == StateRole::Leader;
            // Answer the proposal this entry belongs to, fail dropped ones.
            while let Some(p) = r.proposals.front() {
                if p.index > e.index {
                    break;
                }
                let p = r.proposals.pop_front().expect("front");
                r.pending_revs.remove(&p.rev);
                if p.index == e.index && p.term == e.term {
                    let _ = p.reply.send(std::mem::replace(&mut result, Ok(Vec::new())));
                } else {
                    let _ = p.reply.send(Err(errors::leader_changed()));
                }
            }
            if destroy {
                self.destroy(range_id)?;
                return Ok(());
            }
            if let Some(child) = child {
                let child_id = child.id;
                self.create(child)?;
                // The parent's leader also leads the child at first: it is the
                // one replica that certainly has the split applied already.
                if was_leader {
                    if let Some(c) = self.replicas.get_mut(&child_id) {
                        let _ = c.raw.campaign();
                    }
                }
            }
        }
        Ok(())
    }

    /// Executes one command into `wb`; returns the client response and the
    /// feed message to publish once `wb` is written.
    fn exec(
        &mut self,
        range_id: u64,
        cmd: &RangeCommand,
        wb: &mut WriteBatch,
    ) -> anyhow::Result<Executed> {
        let r = self.replicas.get(&range_id).expect("replica");
        let shared = r.shared.clone();
        let compacted = shared.compacted.load(Ordering::Acquire);
        let rev = cmd.revision;
        let kind = KvKind::try_from(cmd.kind).unwrap_or(KvKind::KvRange);
        if kind == KvKind::KvCompact {
            let req = PbCompactionRequest::decode(&cmd.request[..])?;
            let desc = shared.desc.read().clone();
            if req.revision > compacted {
                let kr = desc_range(&desc);
                self.mvcc.stage_compact(wb, &kr, req.revision)?;
                let cf = self.db.cf_handle(CF_META).expect("meta cf");
                wb.put_cf(
                    &cf,
                    meta_key_compacted(range_id),
                    req.revision.to_be_bytes(),
                );
                shared.compacted.store(req.revision, Ordering::Release);
            }
            let resp = PbCompactionResponse {
                header: header(shared.applied_rev.load(Ordering::Acquire)),
            };
            return Ok((Ok(resp.encode_to_vec()), None, None));
        }
        if kind == KvKind::KvSplit {
            return self.exec_split(&shared, &SplitCommand::decode(&cmd.request[..])?, wb);
        }
        anyhow::ensure!(rev > 0, "write command without a revision");
        // A split may have applied since the request was checked: keys that
        // left the range are refused (unapplied, so the router may retry).
        if !keys_within(kind, &cmd.request, &desc_range(&shared.desc.read())) {
            return Ok((Err(crate::service::epoch_not_match()), None, None));
        }
        let mut ex = WriteExec::new(&self.mvcc, rev, compacted);
        ex.revoked = Some(crate::lease::Revoked::of(&self.db, range_id));
        let res: Result<Vec<u8>, Status> = match kind {
            KvKind::KvPut => ex
                .put(&PbPutRequest::decode(&cmd.request[..])?)
                .map(|r| r.encode_to_vec()),
            KvKind::KvDeleteRange => ex
                .delete(&PbDeleteRequest::decode(&cmd.request[..])?)
                .map(|r| r.encode_to_vec()),
            KvKind::KvTxn => ex
                .txn(&PbTxnRequest::decode(&cmd.request[..])?)
                .map(|r| r.encode_to_vec()),
            KvKind::KvLeaseRevoke => {
                let req = PbLeaseRevokeRequest::decode(&cmd.request[..])?;
                let kr = desc_range(&shared.desc.read());
                crate::lease::revoke(&mut ex, &self.db, range_id, &kr, req.id, wb)?
                    .map(|n| (n as u64).to_be_bytes().to_vec())
            }
            KvKind::KvLeaseGrant => crate::lease::grant(&self.db, range_id, &cmd.request, wb)?,
            _ => Err(Status::internal("strata: unexpected command kind")),
        };
        let mut feed = None;
        shared.writes.fetch_add(1, Ordering::Relaxed);
        if res.is_ok() && !ex.overlay.is_empty() {
            for v in ex.overlay.values() {
                self.mvcc.stage_version(wb, &v.key, rev, &v.value);
            }
            feed = Some(FeedMessage {
                revision: rev,
                events: std::mem::take(&mut ex.events),
                ..Default::default()
            });
        }
        // The replica's current revision advances with every stamped write
        // (even one that changed nothing), and survives restarts.
        let prev = shared.applied_rev.load(Ordering::Acquire);
        if rev > prev {
            let cf = self.db.cf_handle(CF_META).expect("meta cf");
            wb.put_cf(&cf, meta_key_maxrev(range_id), rev.to_be_bytes());
            shared.applied_rev.store(rev, Ordering::Release);
        } else {
            // Invariant: within a range, apply order is revision order.
            tracing::error!(range = range_id, rev, prev, "revision applied out of order");
        }
        Ok((res, feed, None))
    }

    /// Applies a split: this range keeps `[start, split_key)`, a new range takes
    /// the rest. MVCC data stays where it is (keys sort by user key, so the new
    /// range's data is already contiguous); only descriptors change.
    fn exec_split(
        &mut self,
        shared: &Arc<RangeShared>,
        sc: &SplitCommand,
        wb: &mut WriteBatch,
    ) -> anyhow::Result<Executed> {
        let mut desc = shared.desc.read().clone();
        let valid = sc.split_key > desc.start_key
            && (desc.end_key.is_empty() || sc.split_key < desc.end_key)
            && sc.new_peers.len() == desc.peers.len()
            && sc
                .new_peers
                .iter()
                .zip(&desc.peers)
                .all(|(n, o)| n.node_id == o.node_id)
            && !self.replicas.contains_key(&sc.new_range_id)
            // A learner's raft membership would not carry over to the new
            // range; splits wait until it is promoted or removed.
            && !desc.peers.iter().any(|p| p.learner);
        if !valid {
            return Ok((
                Err(Status::failed_precondition(
                    "strata: split rejected (stale or invalid)",
                )),
                None,
                None,
            ));
        }
        let mut epoch = desc.epoch.unwrap_or_default();
        epoch.version += 1;
        let child = RangeDescriptor {
            id: sc.new_range_id,
            start_key: sc.split_key.clone(),
            end_key: desc.end_key.clone(),
            epoch: Some(epoch),
            peers: sc.new_peers.clone(),
        };
        desc.end_key = sc.split_key.clone();
        desc.epoch = Some(epoch);
        let cf = self.db.cf_handle(CF_META).expect("meta cf");
        wb.put_cf(&cf, meta_key_desc(desc.id), desc.encode_to_vec());
        wb.put_cf(&cf, meta_key_desc(child.id), child.encode_to_vec());
        let applied_rev = shared.applied_rev.load(Ordering::Acquire);
        wb.put_cf(&cf, meta_key_maxrev(child.id), applied_rev.to_be_bytes());
        let compacted = shared.compacted.load(Ordering::Acquire);
        wb.put_cf(&cf, meta_key_compacted(child.id), compacted.to_be_bytes());
        crate::lease::Revoked::of(&self.db, desc.id).stage_copy_to(wb, child.id)?;
        tracing::info!(range = desc.id, new_range = child.id, split_key = ?String::from_utf8_lossy(&sc.split_key), "split");
        *shared.desc.write() = desc;
        shared.splits.fetch_add(1, Ordering::Relaxed);
        crate::metrics::SPLITS.inc();
        // Feeds of this range end; the router re-resolves and resumes.
        let end = FeedMessage {
            error: Some(strata_proto::strata::RouteError {
                kind: strata_proto::strata::RouteErrorKind::EpochNotMatch as i32,
                message: "range split".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok((Ok(Vec::new()), Some(end), Some(child)))
    }
}

/// What applying a command produced: the client's response, the feed message
/// to publish once the batch is written, and a range created by a split.
type Executed = (
    Result<Vec<u8>, Status>,
    Option<FeedMessage>,
    Option<RangeDescriptor>,
);

/// A membership change of one peer.
fn single_change(t: ConfChangeType, peer_id: u64) -> ConfChangeV2 {
    let mut c = ConfChangeSingle::default();
    c.set_change_type(t);
    c.node_id = peer_id;
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![c].into());
    cc
}

/// Are all keys a write command touches inside `kr`?
fn keys_within(kind: KvKind, request: &[u8], kr: &KeyRange) -> bool {
    let mut keys = Vec::new();
    match kind {
        KvKind::KvPut => match PbPutRequest::decode(request) {
            Ok(p) => keys.push(KeyRange::from_etcd(&p.key, &[])),
            Err(_) => return true, // undecodable: let exec report it
        },
        KvKind::KvDeleteRange => match PbDeleteRequest::decode(request) {
            Ok(d) => keys.push(KeyRange::from_etcd(&d.key, &d.range_end)),
            Err(_) => return true,
        },
        KvKind::KvTxn => match PbTxnRequest::decode(request) {
            Ok(t) => strata_proto::etcdutil::txn_keys(&t, &mut keys),
            Err(_) => return true,
        },
        _ => return true,
    }
    keys.iter().all(|k| kr.covers(k))
}

impl Store {
    fn admin(&mut self, range_id: u64, kind: AdminKind, peer: Peer) -> Result<(), Status> {
        let Some(r) = self.replicas.get_mut(&range_id) else {
            return Err(Status::not_found("strata: range not found"));
        };
        if r.raw.raft.state != StateRole::Leader {
            return Err(crate::service::not_leader());
        }
        let change = |t: ConfChangeType| single_change(t, peer.id);
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
                    .map_err(|e| Status::internal(e.to_string()))?;
                engine::write(&self.db, wb, true).map_err(|e| Status::internal(e.to_string()))?;
                change(ConfChangeType::AddLearnerNode)
            }
            AdminKind::RemovePeer => change(ConfChangeType::RemoveNode),
            AdminKind::AdminNone => return Err(Status::invalid_argument("strata: no admin kind")),
        };
        r.raw
            .propose_conf_change(peer.encode_to_vec(), cc)
            .map_err(|e| Status::unavailable(format!("strata: conf change refused: {e}")))
    }

    /// Applies a membership change; returns whether this replica was removed.
    fn apply_conf_change(
        &mut self,
        range_id: u64,
        e: &Entry,
        wb: &mut WriteBatch,
    ) -> anyhow::Result<bool> {
        let r = self.replicas.get_mut(&range_id).expect("replica");
        let cc = ConfChangeV2::parse_from_bytes(&e.data)?;
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
        let cf = self.db.cf_handle(CF_META).expect("meta cf");
        wb.put_cf(&cf, meta_key_desc(range_id), desc.encode_to_vec());
        tracing::info!(range = range_id, conf_ver = epoch.conf_ver, peers = ?desc.peers, "membership changed");
        *r.shared.desc.write() = desc;
        Ok(removed_self)
    }

    /// Deletes a replica that was removed from its range.
    fn destroy(&mut self, range_id: u64) -> anyhow::Result<()> {
        let Some(r) = self.replicas.remove(&range_id) else {
            return Ok(());
        };
        self.ranges.remove(&range_id);
        let conf_ver = r.shared.epoch().conf_ver;
        self.destroyed.insert(range_id, conf_ver);
        let mut r = r;
        step_down(&mut r);
        for p in r.proposals.drain(..) {
            let _ = p.reply.send(Err(errors::leader_changed()));
        }
        let desc = self
            .db
            .get_cf(
                &self.db.cf_handle(CF_META).expect("meta cf"),
                meta_key_desc(range_id),
            )?
            .and_then(|b| RangeDescriptor::decode(&b[..]).ok());
        let mut wb = WriteBatch::default();
        RaftStorage::open(self.db.clone(), range_id, &[])?.stage_destroy(&mut wb);
        if let Some(d) = desc {
            delete_data(&self.db, &mut wb, &desc_range(&d))?;
        }
        let cf = self.db.cf_handle(CF_META).expect("meta cf");
        for k in [
            meta_key_desc(range_id),
            meta_key_compacted(range_id),
            meta_key_maxrev(range_id),
        ] {
            wb.delete_cf(&cf, k);
        }
        crate::lease::Revoked::of(&self.db, range_id).stage_delete_all(&mut wb)?;
        engine::write(&self.db, wb, true)?;
        tracing::info!(range = range_id, "replica removed from this node");
        Ok(())
    }
}

/// Raft log entries kept behind the applied index before truncation.
const LOG_KEEP_ENTRIES: u64 = 5000;

/// On the leader: a learner whose log caught up with the commit index is
/// promoted to voter (one membership change at a time).
fn promote_caught_up_learners(r: &mut Replica) {
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

/// Deletes every MVCC version of `kr` (this node no longer hosts it).
fn delete_data(db: &DB, wb: &mut WriteBatch, kr: &KeyRange) -> anyhow::Result<()> {
    let cf = db.cf_handle(crate::engine::CF_DATA).expect("data cf");
    let mut it = db.raw_iterator_cf(&cf);
    it.seek(crate::mvcc::enc_key(&kr.start));
    let end = kr.end.as_ref().map(|e| crate::mvcc::enc_key(e));
    while it.valid() {
        let Some(k) = it.key() else { break };
        if end.as_ref().is_some_and(|e| k >= e.as_slice()) {
            break;
        }
        wb.delete_cf(&cf, k);
        it.next();
    }
    it.status()?;
    Ok(())
}

/// A range's snapshot: every MVCC version in it plus its revision state, taken
/// on the raft thread at the applied index.
fn snapshot_builder(db: Arc<DB>, shared: Arc<RangeShared>) -> crate::engine::SnapshotBuilder {
    Arc::new(move || {
        let desc = shared.desc.read().clone();
        let index = shared.applied_index.load(Ordering::Acquire);
        let kr = desc_range(&desc);
        let cf = db.cf_handle(crate::engine::CF_DATA).expect("data cf");
        let mut it = db.raw_iterator_cf(&cf);
        it.seek(crate::mvcc::enc_key(&kr.start));
        let end = kr.end.as_ref().map(|e| crate::mvcc::enc_key(e));
        let (revoked_leases, revoked_next_seq) = crate::lease::Revoked::of(&db, desc.id).load()?;
        let mut data = strata_proto::strata::RangeSnapshotData {
            desc: Some(desc),
            compacted: shared.compacted.load(Ordering::Acquire),
            applied_revision: shared.applied_rev.load(Ordering::Acquire),
            revoked_leases,
            revoked_next_seq,
            ..Default::default()
        };
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if end.as_ref().is_some_and(|e| k >= e.as_slice()) {
                break;
            }
            data.keys.push(k.to_vec());
            data.values.push(v.to_vec());
            it.next();
        }
        it.status()?;
        Ok((index, data.encode_to_vec()))
    })
}

/// Stages a received snapshot: replaces the range's MVCC data, descriptor,
/// revision state and raft log position. Returns the state to publish once
/// the batch is durable.
fn stage_snapshot_data(
    db: &DB,
    wb: &mut WriteBatch,
    storage: &RaftStorage,
    snap: &raft::eraftpb::Snapshot,
) -> anyhow::Result<(RangeDescriptor, i64, i64, u64)> {
    let data = strata_proto::strata::RangeSnapshotData::decode(&snap.data[..])?;
    let desc = data
        .desc
        .ok_or_else(|| anyhow::anyhow!("snapshot without descriptor"))?;
    anyhow::ensure!(data.keys.len() == data.values.len(), "corrupt snapshot");
    delete_data(db, wb, &desc_range(&desc))?;
    let cf = db.cf_handle(crate::engine::CF_DATA).expect("data cf");
    for (k, v) in data.keys.iter().zip(&data.values) {
        wb.put_cf(&cf, k, v);
    }
    let meta = db.cf_handle(CF_META).expect("meta cf");
    wb.put_cf(&meta, meta_key_desc(desc.id), desc.encode_to_vec());
    wb.put_cf(
        &meta,
        meta_key_compacted(desc.id),
        data.compacted.to_be_bytes(),
    );
    wb.put_cf(
        &meta,
        meta_key_maxrev(desc.id),
        data.applied_revision.to_be_bytes(),
    );
    crate::lease::Revoked::of(db, desc.id).stage_replace(
        wb,
        &data.revoked_leases,
        data.revoked_next_seq,
    )?;
    storage.stage_snapshot(wb, snap)?;
    Ok((
        desc,
        data.compacted,
        data.applied_revision,
        snap.get_metadata().index,
    ))
}

pub fn desc_range(desc: &RangeDescriptor) -> KeyRange {
    KeyRange {
        start: desc.start_key.clone(),
        end: (!desc.end_key.is_empty()).then(|| desc.end_key.clone()),
    }
}

/// On losing leadership: reads waiting here can no longer be confirmed. Pending
/// proposals stay: each may still commit under the new leader (a leader
/// transfer first brings the new leader up to date, so they usually do), and
/// `apply` answers it when the entry at its index applies here — success if
/// it is the proposal's own entry (same term), "leader changed" if another
/// leader's entry replaced it. One whose client gave up is dropped by `tick`;
/// one a snapshot skips over fails then.
fn step_down(r: &mut Replica) {
    for w in r.reads.drain(..) {
        let _ = w.reply.send(Err(errors::leader_changed()));
    }
    r.pending_revs.clear();
}

fn complete_reads(r: &mut Replica) {
    if r.reads.is_empty() {
        return;
    }
    let applied = r.raw.raft.raft_log.applied;
    let lowest_pending = r.pending_revs.first().copied().unwrap_or(i64::MAX);
    let mut i = 0;
    while i < r.reads.len() {
        let w = &r.reads[i];
        if w.index.is_some_and(|idx| idx <= applied) && lowest_pending > w.read_rev {
            let w = r.reads.swap_remove(i);
            let _ = w.reply.send(Ok(()));
        } else {
            i += 1;
        }
    }
}
