//! The raft thread of a placement replica: ticks, proposals, peer messages,
//! persistence, apply, membership changes, state checkpoints and snapshots.
//!
//! Persistence: entries and hard state are fsynced before the messages that
//! depend on them go out. The state is checkpointed (as JSON, in the `meta`
//! column family, with the applied index in the same batch) every
//! [`CHECKPOINT_EVERY`] entries and at every membership change; the log is
//! then truncated up to the checkpoint before, so a restart replays at most
//! two checkpoints' worth of entries, and a follower further behind is sent
//! the checkpoint as a raft snapshot (generated off this thread from an
//! engine snapshot, `strata_node::engine::snapgen`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, Entry, EntryType, Message, MessageType};
use raft::{RawNode, StateRole};
use strata_node::engine::RaftStorage;
use strata_node::storage::{Cf, Engine, WriteBatch};
use strata_proto::strata::MembersResponse;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::lead::{self, Leadership};
use super::transport::{AddressBook, Transport};
use crate::state::{Command, Outcome, State};

/// Entries applied between state checkpoints.
pub const CHECKPOINT_EVERY: u64 = 1000;
/// Where the checkpointed state is kept (`meta` column family).
pub const STATE_KEY: &[u8] = b"placement/state";
/// raft-rs' context marking a campaign started by a leader transfer.
const CAMPAIGN_TRANSFER: &[u8] = b"CampaignTransfer";

pub enum ConfReq {
    Add { addr: String },
    Remove { id: u64 },
}

pub enum Msg {
    Propose(Command, oneshot::Sender<Result<Outcome, Status>>),
    Conf(ConfReq, oneshot::Sender<Result<u64, Status>>),
    Raft(Message),
    Members(oneshot::Sender<MembersResponse>),
    Tick,
}

pub(super) enum Reply {
    Cmd(oneshot::Sender<Result<Outcome, Status>>),
    Conf(oneshot::Sender<Result<u64, Status>>, u64),
}

struct Pending {
    index: u64,
    term: u64,
    reply: Reply,
}

/// What the raft thread shares with the service.
#[derive(Clone)]
pub struct Shared {
    pub state: Arc<RwLock<State>>,
    pub lead: Arc<Mutex<Leadership>>,
    pub book: Arc<AddressBook>,
}

pub struct Loop {
    pub raw: RawNode<RaftStorage>,
    pub db: Arc<dyn Engine>,
    pub sh: Shared,
    pub transport: Transport,
    pub started: Instant,
    /// Lease request contexts are nanoseconds since this instant.
    pub epoch: Instant,
    pub checkpoint: u64,
    pub prev_checkpoint: u64,
    pending: VecDeque<Pending>,
}

impl Loop {
    pub fn new(
        raw: RawNode<RaftStorage>,
        db: Arc<dyn Engine>,
        sh: Shared,
        transport: Transport,
        applied: u64,
    ) -> Self {
        let now = Instant::now();
        Self {
            raw,
            db,
            sh,
            transport,
            started: now,
            epoch: now,
            checkpoint: applied,
            prev_checkpoint: applied,
            pending: VecDeque::new(),
        }
    }

    pub fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        while let Some(first) = rx.blocking_recv() {
            let mut msgs = vec![first];
            while let Ok(m) = rx.try_recv() {
                msgs.push(m);
                if msgs.len() >= 1024 {
                    break;
                }
            }
            for m in msgs {
                self.handle(m);
                self.observe();
                self.step_down_after_a_given_up_transfer();
            }
            if let Err(e) = self.ready() {
                tracing::error!("placement raft storage failed: {e:#}");
                std::process::exit(70);
            }
            self.observe();
        }
    }

    fn leader_addr(&self) -> Option<String> {
        self.sh.book.get(self.raw.raft.leader_id)
    }

    pub(super) fn refusal(&self) -> Status {
        lead::refusal(&self.sh.lead.lock(), self.leader_addr().as_deref())
    }

    /// Publishes raft's role to the service (dropping the lease on a change).
    fn observe(&mut self) {
        let r = &self.raw.raft;
        let mut l = self.sh.lead.lock();
        l.observe(
            r.state == StateRole::Leader,
            r.term,
            r.leader_id,
            r.lead_transferee.is_some(),
            Instant::now(),
        );
        let conf = r.prs().conf();
        l.voters = conf.voters().ids().len();
        l.learners = conf.learners().len();
    }

    /// A leader whose transfer was given up (the target did not take over
    /// within an election timeout) steps down: it may not serve in this term
    /// again (`lead.rs`), and an election gives the group a leader that can.
    fn step_down_after_a_given_up_transfer(&mut self) {
        let r = &self.raw.raft;
        let tainted = self.sh.lead.lock().tainted_term == r.term;
        if tainted && r.state == StateRole::Leader && r.lead_transferee.is_none() {
            tracing::warn!(term = r.term, "leader transfer given up; stepping down");
            let term = r.term;
            self.raw.raft.become_follower(term, raft::INVALID_ID);
            self.observe();
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Tick => {
                self.raw.tick();
                if self.raw.raft.state == StateRole::Leader
                    && self.sh.lead.lock().ready_term == self.raw.raft.term
                {
                    let sent = self.epoch.elapsed().as_nanos() as u64;
                    self.raw.read_index(sent.to_be_bytes().to_vec());
                    self.promote_caught_up_learner();
                    self.record_member_addrs();
                }
            }
            Msg::Raft(msg) => self.step(msg),
            Msg::Propose(cmd, reply) => {
                if self.raw.raft.state != StateRole::Leader {
                    let _ = reply.send(Err(self.refusal()));
                    return;
                }
                let data = match serde_json::to_vec(&cmd) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = reply.send(Err(Status::internal(e.to_string())));
                        return;
                    }
                };
                if self.raw.propose(vec![], data).is_err() {
                    let _ = reply.send(Err(self.refusal()));
                    return;
                }
                self.track(Reply::Cmd(reply));
            }
            Msg::Conf(req, reply) => self.conf_change(req, reply),
            Msg::Members(reply) => {
                let _ = reply.send(self.members());
            }
        }
    }

    pub(super) fn track(&mut self, reply: Reply) {
        self.pending.push_back(Pending {
            index: self.raw.raft.raft_log.last_index(),
            term: self.raw.raft.term,
            reply,
        });
    }

    /// Steps a peer's message, after refusing what raft-rs must never see.
    fn step(&mut self, msg: Message) {
        let t = msg.get_msg_type();
        let vote = matches!(
            t,
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        );
        // Restarted: it may have acknowledged a leader's lease it no longer
        // remembers; no vote before that lease is surely over (lead.rs).
        if vote
            && msg.context != CAMPAIGN_TRANSFER
            && self.started.elapsed() < lead::TICK * lead::ELECTION_TICKS as u32
        {
            return;
        }
        let cs = self.raw.raft.prs().conf();
        let known = cs.voters().contains(msg.from) || cs.learners().contains(&msg.from);
        let joining = cs.voters().ids().iter().next().is_none() && cs.learners().is_empty();
        if !known && !joining {
            tracing::debug!(
                from = msg.from,
                "dropped a raft message from a replica not in the group"
            );
            return;
        }
        // raft-rs panics on a commit index beyond its log; a correct leader
        // never sends one.
        if t == MessageType::MsgHeartbeat && msg.commit > self.raw.raft.raft_log.last_index() {
            tracing::warn!(
                from = msg.from,
                commit = msg.commit,
                "dropped a heartbeat committing past this log"
            );
            return;
        }
        if let Err(e) = self.raw.step(msg) {
            tracing::debug!("placement raft step: {e}");
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            self.transport.send(&m);
            if m.get_msg_type() == MessageType::MsgSnapshot {
                // The snapshot is all in the message: release its engine view,
                // and let raft go on (a lost one is simply sent again).
                let _ = self.raw.store().take_generated(m.to, m.get_snapshot());
                self.raw.report_snapshot(m.to, raft::SnapshotStatus::Finish);
            }
        }
    }

    fn ready(&mut self) -> anyhow::Result<()> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        self.send(rd.take_messages());
        if !rd.snapshot().is_empty() {
            self.install(rd.snapshot().clone())?;
        }
        let mut wb = WriteBatch::default();
        self.raw
            .store()
            .stage_append(&mut wb, rd.entries(), rd.hs())?;
        if !wb.is_empty() {
            // No fsync when only the commit index moved (raft-rs
            // `must_sync`): raft learns it again after a crash.
            self.db.write(&wb, rd.must_sync())?;
        }
        self.raw.store().on_persisted(rd.entries(), rd.hs());
        self.send(rd.take_persisted_messages());
        for rs in rd.read_states() {
            if let Ok(b) = <[u8; 8]>::try_from(&rs.request_ctx[..]) {
                let sent = self.epoch + Duration::from_nanos(u64::from_be_bytes(b));
                self.sh.lead.lock().renew(self.raw.raft.term, sent);
            }
        }
        let mut ckpt = WriteBatch::default();
        let mut conf_changed = self.apply(rd.take_committed_entries(), &mut ckpt)?;
        let mut light = self.raw.advance(rd);
        self.send(light.take_messages());
        conf_changed |= self.apply(light.take_committed_entries(), &mut ckpt)?;
        self.raw.advance_apply();
        self.maybe_checkpoint(ckpt, conf_changed)
    }

    /// A snapshot from the leader replaces the log and the state.
    fn install(&mut self, snap: raft::eraftpb::Snapshot) -> anyhow::Result<()> {
        let st: State = serde_json::from_slice(&snap.data)
            .map_err(|e| anyhow::anyhow!("undecodable placement snapshot: {e}"))?;
        let mut wb = WriteBatch::default();
        self.raw.store().stage_snapshot(&mut wb, &snap)?;
        wb.put(Cf::Meta, STATE_KEY, &snap.data[..]);
        self.db.write(&wb, true)?;
        let index = snap.get_metadata().index;
        for (&id, addr) in &st.members {
            self.sh.book.set(id, addr);
        }
        *self.sh.state.write() = st;
        self.sh.lead.lock().applied = index;
        self.prev_checkpoint = index;
        self.checkpoint = index;
        tracing::info!(index, "placement state installed from a snapshot");
        Ok(())
    }

    /// Applies committed entries; true when the membership changed.
    fn apply(&mut self, entries: Vec<Entry>, ckpt: &mut WriteBatch) -> anyhow::Result<bool> {
        let mut conf_changed = false;
        if let Some(last) = entries.last() {
            let mut wb = WriteBatch::default();
            self.raw.store().set_commit(&mut wb, last.index)?;
            if !wb.is_empty() {
                self.db.write(&wb, false)?;
            }
        }
        for e in entries {
            let mut outcome = Ok(Outcome::Ok);
            match e.get_entry_type() {
                EntryType::EntryNormal if !e.data.is_empty() => match serde_json::from_slice::<
                    Command,
                >(&e.data)
                {
                    Ok(cmd) => outcome = Ok(self.sh.state.write().apply(&cmd)),
                    Err(err) => {
                        tracing::error!(index = e.index, "undecodable placement command: {err}");
                        outcome = Err(Status::internal("undecodable command"));
                    }
                },
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data)?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.store().stage_conf_state(ckpt, &cs)?;
                    self.membership_applied(&cc);
                    conf_changed = true;
                }
                _ => {}
            }
            {
                let mut l = self.sh.lead.lock();
                l.applied = e.index;
                l.commit = self.raw.raft.raft_log.committed;
                if e.term == self.raw.raft.term && self.raw.raft.state == StateRole::Leader {
                    l.ready_term = e.term;
                }
            }
            self.resolve(&e, outcome);
        }
        Ok(conf_changed)
    }

    fn resolve(&mut self, e: &Entry, outcome: Result<Outcome, Status>) {
        while let Some(p) = self.pending.front() {
            if p.index > e.index {
                break;
            }
            let p = self.pending.pop_front().expect("front");
            let ours = p.index == e.index && p.term == e.term;
            match p.reply {
                Reply::Cmd(tx) => {
                    let _ = tx.send(if ours {
                        outcome.clone()
                    } else {
                        Err(self.refusal())
                    });
                }
                Reply::Conf(tx, id) => {
                    let _ = tx.send(if ours { Ok(id) } else { Err(self.refusal()) });
                }
            }
        }
    }

    fn maybe_checkpoint(&mut self, mut wb: WriteBatch, conf_changed: bool) -> anyhow::Result<()> {
        let applied = self.raw.raft.raft_log.applied;
        if !conf_changed && applied < self.checkpoint + CHECKPOINT_EVERY {
            if !wb.is_empty() {
                self.db.write(&wb, true)?;
            }
            return Ok(());
        }
        let data = serde_json::to_vec(&*self.sh.state.read())?;
        wb.put(Cf::Meta, STATE_KEY, data);
        self.raw.store().stage_applied(&mut wb, applied);
        // After a membership change the log goes entirely: a replica just
        // added starts with no conf state and must be sent the state as a
        // snapshot, never the log from its start (which lacks the initial
        // members).
        let upto = if conf_changed {
            applied
        } else {
            self.prev_checkpoint
        };
        if upto > self.raw.store().truncated_index() {
            self.raw.store().stage_truncate(&mut wb, upto)?;
        }
        self.db.write(&wb, true)?;
        self.prev_checkpoint = self.checkpoint;
        self.checkpoint = applied;
        crate::metrics::CHECKPOINTS.inc();
        Ok(())
    }
}

/// Builds the snapshot sent to a follower: the checkpointed state in the
/// engine view (it agrees with the view's applied index: one batch wrote both).
pub fn snapshot_header() -> strata_node::engine::SnapshotHeaderFn {
    Arc::new(|view| {
        view.get(Cf::Meta, STATE_KEY)?
            .ok_or_else(|| anyhow::anyhow!("no placement state checkpoint yet"))
    })
}
