//! Placement's raft group (one voter in this version): commands are appended
//! to a raft log in placement's storage engine (RocksDB) and applied to [`State`] in log order.
//! The state is rebuilt by replaying the log on start (the log is small: node
//! registrations, oracle windows, compactions, leases).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use raft::eraftpb::{Entry, EntryType};
use raft::{RawNode, StateRole};
use strata_node::engine::RaftStorage;
use strata_node::storage::{Engine, WriteBatch};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::state::{Command, Outcome, State};

const GROUP_ID: u64 = 0;
const PEER_ID: u64 = 1;

enum Msg {
    Propose(Command, oneshot::Sender<Result<Outcome, Status>>),
    Tick,
}

#[derive(Clone)]
pub struct Replicated {
    tx: mpsc::Sender<Msg>,
    state: Arc<RwLock<State>>,
}

impl Replicated {
    pub fn open(db: Arc<dyn Engine>) -> anyhow::Result<Self> {
        let storage = RaftStorage::open(db.clone(), GROUP_ID, &[PEER_ID])?;
        let cfg = raft::Config {
            id: PEER_ID,
            election_tick: 10,
            heartbeat_tick: 2,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut raw = RawNode::new(&cfg, storage, &logger)?;
        raw.campaign()?;
        let state = Arc::new(RwLock::new(State::default()));
        let (tx, rx) = mpsc::channel(4096);
        let st = state.clone();
        std::thread::Builder::new()
            .name("placement-raft".into())
            .spawn(move || run(raw, db, st, rx))?;
        let ticker = tx.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(100));
            loop {
                iv.tick().await;
                if ticker.send(Msg::Tick).await.is_err() {
                    return;
                }
            }
        });
        Ok(Self { tx, state })
    }

    /// Temporary (multi-voter group in progress).
    pub async fn receive(
        &self,
        _s: tonic::Streaming<strata_proto::strata::PlacementRaftMessage>,
    ) -> Result<(), Status> {
        Err(Status::unimplemented("strata: placement raft transport"))
    }
    pub fn members(&self) -> strata_proto::strata::MembersResponse {
        Default::default()
    }
    pub async fn add_member(&self, _id: u64, _addr: String) -> Result<u64, Status> {
        Err(Status::unimplemented("strata: placement membership"))
    }
    pub async fn remove_member(&self, _id: u64) -> Result<(), Status> {
        Err(Status::unimplemented("strata: placement membership"))
    }

    pub fn state(&self) -> parking_lot::RwLockReadGuard<'_, State> {
        self.state.read()
    }

    /// Proposes a command and waits until it is applied.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, Status> {
        for _ in 0..50 {
            let (tx, rx) = oneshot::channel();
            self.tx
                .send(Msg::Propose(cmd.clone(), tx))
                .await
                .map_err(|_| Status::unavailable("strata: placement stopped"))?;
            match rx.await {
                Ok(Ok(o)) => return Ok(o),
                Ok(Err(e)) if e.code() == tonic::Code::Unavailable => {
                    // Not leader yet (just started): wait for the election.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(Status::unavailable("strata: placement stopped")),
            }
        }
        Err(strata_proto::errors::no_leader())
    }
}

struct Pending {
    index: u64,
    term: u64,
    reply: oneshot::Sender<Result<Outcome, Status>>,
}

fn run(
    mut raw: RawNode<RaftStorage>,
    db: Arc<dyn Engine>,
    state: Arc<RwLock<State>>,
    mut rx: mpsc::Receiver<Msg>,
) {
    let mut pending: VecDeque<Pending> = VecDeque::new();
    while let Some(first) = rx.blocking_recv() {
        let mut msgs = vec![first];
        while let Ok(m) = rx.try_recv() {
            msgs.push(m);
            if msgs.len() >= 1024 {
                break;
            }
        }
        for m in msgs {
            match m {
                Msg::Tick => {
                    raw.tick();
                }
                Msg::Propose(cmd, reply) => {
                    if raw.raft.state != StateRole::Leader {
                        let _ = reply.send(Err(Status::unavailable("not leader")));
                        continue;
                    }
                    let data = match serde_json::to_vec(&cmd) {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = reply.send(Err(Status::internal(e.to_string())));
                            continue;
                        }
                    };
                    if raw.propose(vec![], data).is_err() {
                        let _ = reply.send(Err(Status::unavailable("not leader")));
                        continue;
                    }
                    pending.push_back(Pending {
                        index: raw.raft.raft_log.last_index(),
                        term: raw.raft.term,
                        reply,
                    });
                }
            }
        }
        if let Err(e) = ready(&mut raw, &*db, &state, &mut pending) {
            tracing::error!("placement raft storage failed: {e:#}");
            std::process::exit(70);
        }
    }
}

fn ready(
    raw: &mut RawNode<RaftStorage>,
    db: &dyn Engine,
    state: &RwLock<State>,
    pending: &mut VecDeque<Pending>,
) -> anyhow::Result<()> {
    if !raw.has_ready() {
        return Ok(());
    }
    let mut rd = raw.ready();
    let mut wb = WriteBatch::default();
    raw.store().stage_append(&mut wb, rd.entries(), rd.hs())?;
    if !wb.is_empty() {
        db.write(&wb, true)?;
    }
    raw.store().on_persisted(rd.entries(), rd.hs());
    apply(raw, db, state, pending, rd.take_committed_entries())?;
    let mut light = raw.advance(rd);
    apply(raw, db, state, pending, light.take_committed_entries())?;
    raw.advance_apply();
    Ok(())
}

fn apply(
    raw: &mut RawNode<RaftStorage>,
    db: &dyn Engine,
    state: &RwLock<State>,
    pending: &mut VecDeque<Pending>,
    entries: Vec<Entry>,
) -> anyhow::Result<()> {
    if let Some(last) = entries.last() {
        let mut wb = WriteBatch::default();
        raw.store().set_commit(&mut wb, last.index)?;
        db.write(&wb, false)?;
    }
    for e in entries {
        let mut outcome = Ok(Outcome::Ok);
        if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
            match serde_json::from_slice::<Command>(&e.data) {
                Ok(cmd) => outcome = Ok(state.write().apply(&cmd)),
                Err(err) => {
                    tracing::error!(index = e.index, "undecodable placement command: {err}");
                    outcome = Err(Status::internal("undecodable command"));
                }
            }
        }
        while let Some(p) = pending.front() {
            if p.index > e.index {
                break;
            }
            let p = pending.pop_front().expect("front");
            if p.index == e.index && p.term == e.term {
                let _ = p.reply.send(outcome.clone());
            } else {
                let _ = p.reply.send(Err(Status::unavailable("not leader")));
            }
        }
    }
    Ok(())
}
