//! The store: every range replica of this node, driven by one raft thread.
//!
//! Each loop iteration drains the inbox (raft messages, proposals, read
//! barriers, ticks), then runs one Ready round (`ready.rs`) over the replicas
//! that have one. One file per operation:
//! - `propose.rs`: proposals and how they are answered;
//! - `read.rs`: read barriers (ReadIndex + no stamped write still unapplied);
//! - `exec.rs`: applying committed commands (MVCC writes, compaction);
//! - `split.rs`: applying a split;
//! - `conf_change.rs`: membership changes, leader transfer, replica removal;
//! - `snapshot.rs`: raft snapshots on the raft thread (sending, stepping,
//!   installing; the data path is `crate::snapshot`);
//! - `catchup.rs`: replicas listed here but without data (uninitialized),
//!   initialized only by a snapshot;
//! - `gc.rs`: replicas removed from their range while this node did not hear;
//! - `quiesce.rs`: idle ranges stop ticking;
//! - `log_gc.rs`: raft log truncation;
//! - `ready.rs`: the Ready round, the only place raft state is written;
//! - `replica.rs`, `meta.rs`: the replica's state and its `meta` records.

mod catchup;
mod conf_change;
mod exec;
mod gc;
pub(crate) mod ingest;
mod log_gc;
pub(crate) mod meta;
mod propose;
mod quiesce;
mod read;
mod ready;
mod replica;
mod snapshot;
mod split;
mod txn;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use raft::{RawNode, StateRole};
use strata_proto::strata::{AdminKind, Peer, RaftEnvelope, RangeCommand, RangeDescriptor};
use tokio::sync::{mpsc, oneshot};

pub use crate::range::{desc_range, RangeShared, Ranges};
pub use exec::keys_within;
pub use gc::Suspects;

use crate::engine::RaftStorage;
use crate::error::NodeResult;
use crate::mvcc::Mvcc;
use crate::storage::{Cf, Engine, WriteBatch};
use crate::transport::SharedTransport;
use replica::{raft_config, Replica};

/// Capacity of the store inbox; a full inbox sheds load with `ServerBusy`.
pub const INBOX_CAP: usize = 16_384;
/// Messages handled per loop iteration before a Ready round.
const DRAIN_MAX: usize = 4096;
/// Pending proposals per replica before new ones are refused.
const PROPOSALS_MAX: usize = 8192;
/// A read barrier that did not complete in this time fails (client retries).
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// A ReadIndex request unanswered for this many ticks is asked again.
const READ_REISSUE_TICKS: u32 = 3;

pub type Reply = oneshot::Sender<NodeResult<Vec<u8>>>;

pub enum StoreMsg {
    Raft(RaftEnvelope),
    /// A command stamped under the leadership of `term` (see `propose.rs`).
    Propose {
        range_id: u64,
        term: u64,
        cmd: RangeCommand,
        reply: Reply,
    },
    /// Completes once this replica is leader, has applied everything up to a
    /// quorum-confirmed read index, and no write stamped `<= read_rev` is
    /// still unapplied: then no write `<= read_rev` can ever apply here later.
    ReadBarrier {
        range_id: u64,
        read_rev: i64,
        reply: oneshot::Sender<NodeResult<()>>,
    },
    Create(RangeDescriptor),
    /// Placement's current descriptor of a range hosted here that this
    /// node asked about (see `gc.rs`).
    Checked(RangeDescriptor),
    Tick,
    /// Stops the raft thread after this round (in-process tests); `done`
    /// hears once every replica is closed.
    Stop(std::sync::mpsc::Sender<()>),
    /// Nodes placement currently reports as down.
    NodesDown(Vec<u64>),
    /// A replica change or leader transfer, on the range leader.
    Admin {
        range_id: u64,
        kind: AdminKind,
        peer: Peer,
        reply: oneshot::Sender<NodeResult<()>>,
    },
    /// A received MsgSnapshot whose data is all staged (`crate::snapshot`).
    Snapshot {
        env: RaftEnvelope,
        staged: Box<crate::snapshot::StagedSnapshot>,
        reply: crate::snapshot::recv::StepReply,
    },
    /// Background snapshot work has news (see `snapshot.rs`).
    Wake,
}

pub struct Store {
    node_id: u64,
    db: Arc<dyn Engine>,
    mvcc: Mvcc,
    ranges: Ranges,
    replicas: HashMap<u64, Replica>,
    transport: SharedTransport,
    logger: slog::Logger,
    tick_every: Duration,
    next_ctx: u64,
    /// Peer → node, learned from incoming messages (a new learner does not
    /// know its peers' nodes until its snapshot arrives).
    peer_nodes: HashMap<u64, u64>,
    /// Ranges whose replica was removed here → conf_ver at removal.
    destroyed: HashMap<u64, u64>,
    /// Split children to start at the end of the Ready round, in place of
    /// an uninitialized replica (with whether the parent led; see
    /// `catchup.rs`).
    split_children: Vec<(RangeDescriptor, bool)>,
    /// Idle ticks before a leader quiesces its range (0 = never).
    pub quiesce_after_ticks: u32,
    /// Followers told of a new commit index at once (see `raft_config`).
    pub bcast_commit: bool,
    /// Raft log entries kept behind the applied index (see `log_gc.rs`).
    pub log_keep_entries: u64,
    /// Bytes of raft log entries kept behind the applied index (see `log_gc.rs`).
    pub log_keep_bytes: u64,
    /// Ranges quiesced by this round's tick whose followers are told after
    /// the round's raft messages went out (see `run`).
    quiesce_pending: Vec<u64>,
    /// Set by `StoreMsg::Stop`: the loop ends after this round.
    stop: Option<std::sync::mpsc::Sender<()>>,
    /// Ranges that may have a raft `Ready` since the last round: those a
    /// message, request or tick reached, new ones, and those handled in the
    /// last round. Only these are asked, so a round costs nothing per idle
    /// range.
    touched: HashSet<u64>,
    /// Snapshot transfers and installs report here (see `snapshot.rs`).
    snap_events: Arc<snapshot::SnapEvents>,
    /// Replicas to ask placement about (see `gc.rs`).
    suspects: Suspects,
    /// Applied entries of this Ready round not yet written (see `exec.rs`).
    pending: exec::Pending,
    /// The newest versions apply wrote (`crate::apply::latest`).
    latest: crate::apply::latest::Latest,
    /// Checked proposals not yet in raft, in arrival order (see `propose.rs`).
    queued: Vec<propose::Queued>,
    /// This thread's CPU time, published every tick (the split checker's
    /// saturation signal, `cpu.rs`).
    pub raft_cpu: crate::cpu::ThreadCpu,
}

impl Store {
    pub fn new(
        node_id: u64,
        db: Arc<dyn Engine>,
        ranges: Ranges,
        transport: SharedTransport,
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
            split_children: Vec::new(),
            quiesce_after_ticks: 20,
            bcast_commit: false,
            log_keep_entries: log_gc::LOG_KEEP_ENTRIES,
            log_keep_bytes: log_gc::LOG_KEEP_BYTES,
            quiesce_pending: Vec::new(),
            stop: None,
            touched: HashSet::new(),
            snap_events: Arc::default(),
            suspects: Suspects::default(),
            pending: exec::Pending::default(),
            latest: Default::default(),
            queued: Vec::new(),
            raft_cpu: Default::default(),
        }
    }

    /// Lets background snapshot work wake the loop through its inbox.
    pub fn set_inbox(&self, inbox: &mpsc::Sender<StoreMsg>) {
        self.snap_events.set_wake(inbox);
    }

    /// Loads every replica persisted in `meta`, after finishing snapshot
    /// installs a crash interrupted (see `snapshot::stage`).
    pub fn load(&mut self) -> anyhow::Result<()> {
        crate::snapshot::stage::recover(&*self.db)?;
        let mut descs = Vec::new();
        let mut it = self.db.iter(Cf::Meta);
        it.seek(meta::DESC_PREFIX);
        while it.valid() && it.key().starts_with(meta::DESC_PREFIX) {
            descs.push(RangeDescriptor::decode(it.value())?);
            it.next();
        }
        it.status()?;
        drop(it);
        for d in descs {
            self.create(d, false)?;
        }
        Ok(())
    }

    /// Opens the replica of `desc` on this node. One with raft state on
    /// disk (loaded, or staged by the split that created it) opens as it
    /// was; one without starts with the range's voters when `bootstrap`
    /// (the first range's first replicas: its log from index 1 is its whole
    /// history), else empty: uninitialized, waiting for a snapshot (see
    /// `catchup.rs`). Only an initialized replica is published in `ranges`.
    fn create(&mut self, desc: RangeDescriptor, bootstrap: bool) -> anyhow::Result<()> {
        if self.replicas.contains_key(&desc.id) {
            return Ok(());
        }
        let Some(me) = desc.peers.iter().find(|p| p.node_id == self.node_id) else {
            anyhow::bail!("range {} has no peer on node {}", desc.id, self.node_id);
        };
        let peer_id = me.id;
        let voters: Vec<u64> = if bootstrap && !me.learner {
            desc.peers
                .iter()
                .filter(|p| !p.learner)
                .map(|p| p.id)
                .collect()
        } else {
            Vec::new()
        };
        let storage = RaftStorage::open(self.db.clone(), desc.id, &voters)?;
        // Holds its range's data: a snapshot, a split or the bootstrap gave
        // it voters (an uninitialized replica has none).
        let initialized = !storage.conf_state().voters.is_empty();
        let applied = storage.applied_index()?;
        log_gc::truncate_index_one(&*self.db, &storage, applied)?;
        let mut wb = WriteBatch::new();
        wb.put(Cf::Meta, meta::desc_key(desc.id), desc.encode_to_vec());
        self.db.write(&wb, false)?;
        let compacted = meta::load_i64(&*self.db, &meta::compacted_key(desc.id))?;
        // The highest revision applied before a restart (see `exec`).
        let applied_rev = meta::load_i64(&*self.db, &meta::maxrev_key(desc.id))?;
        let raw = RawNode::new(
            &raft_config(peer_id, applied, self.bcast_commit),
            storage,
            &self.logger,
        )?;
        let shared = Arc::new(RangeShared {
            peer_id,
            desc: parking_lot::RwLock::new(desc.clone()),
            leader_peer: AtomicU64::new(0),
            term: AtomicU64::new(0),
            lead_term: AtomicU64::new(0),
            applied_index: AtomicU64::new(applied),
            applied_rev: AtomicI64::new(applied_rev),
            compacted: AtomicI64::new(compacted),
            feed: crate::range::Feed::default(),
            writes: AtomicU64::new(0),
            splits: AtomicU64::new(0),
            approx_keys: AtomicU64::new(0),
            approx_bytes: AtomicU64::new(0),
            added_keys: AtomicU64::new(0),
            added_bytes: AtomicU64::new(0),
            data_gen: AtomicU64::new(0),
            intent: parking_lot::RwLock::new(
                crate::txn::load_intent(&*self.db, desc.id)?.map(Arc::new),
            ),
            touched: parking_lot::Mutex::new(None),
        });
        raw.store()
            .set_snapshot_header(snapshot::header_fn(desc.id));
        if initialized {
            self.ranges.insert(desc.id, shared.clone());
        }
        self.replicas.insert(
            desc.id,
            Replica {
                raw,
                shared,
                initialized,
                proposals: VecDeque::new(),
                pending_revs: BTreeSet::new(),
                reads: Vec::new(),
                quiesced: false,
                idle_ticks: 0,
                install: None,
                recent_txns: VecDeque::new(),
                bcast_through: 0,
            },
        );
        self.touched.insert(desc.id);
        tracing::info!(
            range = desc.id,
            peer = peer_id,
            applied,
            initialized,
            "replica opened"
        );
        Ok(())
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
            self.flush_proposals();
            if let Err(e) = self.drain_snapshot_events() {
                tracing::error!("fatal storage error in raft loop: {e:#}");
                std::process::exit(70);
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
            if let Some(done) = self.stop.take() {
                drop(self); // closes every replica before saying so
                let _ = done.send(());
                return;
            }
        }
    }

    fn handle(&mut self, m: StoreMsg, new_reads: &mut Vec<u64>) {
        if !matches!(m, StoreMsg::Propose { .. }) {
            // Proposals enter raft before anything else happens here.
            self.flush_proposals();
        }
        match &m {
            StoreMsg::Raft(env) => self.touched.insert(env.range_id),
            StoreMsg::Propose { range_id, .. }
            | StoreMsg::ReadBarrier { range_id, .. }
            | StoreMsg::Admin { range_id, .. } => self.touched.insert(*range_id),
            StoreMsg::Create(desc) | StoreMsg::Checked(desc) => self.touched.insert(desc.id),
            StoreMsg::Snapshot { env, .. } => self.touched.insert(env.range_id),
            StoreMsg::Tick | StoreMsg::NodesDown(_) | StoreMsg::Wake | StoreMsg::Stop(_) => false,
        };
        match m {
            StoreMsg::Tick | StoreMsg::Wake => {}
            StoreMsg::Stop(done) => self.stop = Some(done),
            StoreMsg::Snapshot { env, staged, reply } => self.step_snapshot(env, *staged, reply),
            StoreMsg::NodesDown(down) => self.nodes_down(&down),
            StoreMsg::Create(desc) => self.on_create(desc),
            StoreMsg::Checked(desc) => self.on_checked(desc),
            StoreMsg::Raft(env) => self.step(env),
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
                term,
                cmd,
                reply,
            } => self.propose(range_id, term, cmd, reply),
            StoreMsg::ReadBarrier {
                range_id,
                read_rev,
                reply,
            } => self.read_barrier(range_id, read_rev, reply, new_reads),
        }
    }

    /// A raft message from another node.
    fn step(&mut self, env: RaftEnvelope) {
        if env.from_node != 0 {
            self.peer_nodes.insert(env.from_peer, env.from_node);
        }
        let Some(r) = self.replicas.get_mut(&env.range_id) else {
            return; // unknown range: placement will tell us if it is ours
        };
        if env.to_peer != r.shared.peer_id {
            // A newer peer of this node in the range (peer ids only grow):
            // this replica may have been removed and the node added again.
            if env.to_peer > r.shared.peer_id && r.initialized {
                self.suspect(env.range_id);
            }
            return;
        }
        if r.install.is_some() {
            // Paused for a snapshot install (see `snapshot.rs`): the
            // leader retransmits once it is done.
            return;
        }
        if env.quiesce {
            r.on_quiesce(&env);
            return;
        }
        match RaftMessage::parse_from_bytes(&env.message) {
            Ok(msg) => {
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    // Snapshots come only with their data, through
                    // `StoreMsg::Snapshot`; this one has none.
                    tracing::warn!(
                        range = env.range_id,
                        from = env.from_node,
                        "dropped a MsgSnapshot that came without its data"
                    );
                    crate::metrics::BAD_ENTRIES.inc();
                    return;
                }
                let Some(r) = self.replicas.get_mut(&env.range_id) else {
                    return;
                };
                r.wake_for(&msg);
                if let Err(e) = r.raw.step(msg) {
                    tracing::debug!(range = env.range_id, "step: {e}");
                }
            }
            Err(e) => tracing::warn!("bad raft message from node: {e}"),
        }
    }

    fn tick(&mut self) {
        self.raft_cpu.publish();
        let now = Instant::now();
        let reissue_after = self.tick_every * READ_REISSUE_TICKS;
        let mut pending = 0;
        for (id, r) in self.replicas.iter_mut() {
            if r.quiesced || r.install.is_some() {
                continue; // an idle (or paused) range costs nothing per tick
            }
            r.raw.tick();
            self.touched.insert(*id);
            conf_change::promote_caught_up_learners(r);
            if r.idle_tick(self.quiesce_after_ticks) {
                self.quiesce_pending.push(*id);
            }
            if r.raw.raft.state != StateRole::Leader {
                // Proposals kept from a former leadership (see `step_down`)
                // whose clients stopped waiting.
                r.proposals.retain(|p| !p.reply.is_closed());
            }
            pending += r.proposals.len();
            r.expire_reads(now, reissue_after);
        }
        crate::metrics::PROPOSALS_PENDING.set(pending as i64);
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
            let env = RaftEnvelope {
                range_id: desc.id,
                epoch: desc.epoch,
                from_peer: m.from,
                to_peer: m.to,
                message: bytes,
                from_node: self.node_id,
                ..Default::default()
            };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                // Streamed with its data, never in the batched RPC.
                self.send_snapshot(desc.id, to_node, &m, env);
            } else if crate::failpoint::partitioned(self.node_id) {
                crate::metrics::RAFT_DROPPED.inc();
            } else {
                self.transport.send(to_node, env);
            }
        }
    }
}
