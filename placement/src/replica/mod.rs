//! Placement's raft group: 1, 3 or 5 replicas (`--peers`, `--join`). Commands
//! are appended to a raft log in each replica's own storage engine (RocksDB,
//! through `strata_node::storage`) and applied to [`State`] in log order.
//!
//! - `lead.rs`: who leads, the leader lease, and when a replica may serve
//!   (the argument for the oracle's safety across failovers is there);
//! - `raft_loop.rs`: the raft thread (persistence, apply, membership changes,
//!   checkpoints, snapshots);
//! - `transport.rs`: raft messages between replicas over gRPC.

mod lead;
mod membership;
mod raft_loop;
mod transport;

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use raft::RawNode;
use strata_node::engine::RaftStorage;
use strata_node::storage::{Cf, Engine, WriteBatch};
use strata_proto::strata::{MembersResponse, PlacementRaftMessage};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

pub use lead::{Leadership, ELECTION_TICKS, TICK};
use raft_loop::{ConfReq, Loop, Msg, Shared, STATE_KEY};
pub use transport::{AddressBook, MAX_MESSAGE};

use crate::state::{Command, Outcome, State};

const GROUP_ID: u64 = 0;
/// Where a replica keeps its id (`meta` column family).
const ID_KEY: &[u8] = b"placement/id";
/// How long a proposal may wait to be applied.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How a replica starts.
pub struct ReplicaConfig {
    /// This replica's id (for a new data directory: from `--id`, `--peers`
    /// or the group that added it).
    pub id: u64,
    /// Its placement address, as peers reach it.
    pub addr: String,
    /// Where other members listen, as far as known at start (from `--peers`
    /// or the group it joined); the replicated state knows the rest.
    pub peers: Vec<(u64, String)>,
    /// The voters of a new group (this replica among them); empty when it
    /// joins a running group: it then starts with no members and is sent
    /// the state by the leader. Read only for a new data directory.
    pub voters: Vec<u64>,
}

#[derive(Clone)]
pub struct Replicated {
    id: u64,
    /// The group had one voter when this replica started.
    single: bool,
    tx: mpsc::Sender<Msg>,
    sh: Shared,
    /// Declared after `tx`: the last handle dropped closes the channel, then
    /// waits for the raft thread to finish what it was writing.
    _thread: Arc<Joiner>,
}

struct Joiner(Option<std::thread::JoinHandle<()>>);

impl Drop for Joiner {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            let _ = h.join();
        }
    }
}

/// The id a data directory belongs to, if it holds a replica already.
pub fn stored_id(db: &dyn Engine) -> anyhow::Result<Option<u64>> {
    Ok(match db.get(Cf::Meta, ID_KEY)? {
        Some(b) => {
            Some(u64::from_be_bytes(b[..].try_into().map_err(|_| {
                anyhow::anyhow!("corrupt placement replica id")
            })?))
        }
        None => None,
    })
}

impl Replicated {
    /// Opens the replica in `db` (creating it for a new data directory) and
    /// starts its raft thread. Must run inside a tokio runtime.
    pub fn open(db: Arc<dyn Engine>, cfg: ReplicaConfig) -> anyhow::Result<Self> {
        let id = match stored_id(&*db)? {
            Some(id) => {
                anyhow::ensure!(
                    cfg.id == 0 || cfg.id == id,
                    "this data directory holds placement replica {id}, not {}",
                    cfg.id
                );
                id
            }
            None => {
                anyhow::ensure!(cfg.id != 0, "a new placement replica needs an id");
                let mut wb = WriteBatch::default();
                wb.put(Cf::Meta, ID_KEY, cfg.id.to_be_bytes());
                db.write(&wb, true)?;
                cfg.id
            }
        };
        let storage = RaftStorage::open(db.clone(), GROUP_ID, &cfg.voters)?;
        storage.set_snapshot_header(raft_loop::snapshot_header());
        let applied = storage.applied_index()?;
        let state = match db.get(Cf::Meta, STATE_KEY)? {
            Some(b) => serde_json::from_slice::<State>(&b)
                .map_err(|e| anyhow::anyhow!("corrupt placement state checkpoint: {e}"))?,
            None => {
                anyhow::ensure!(
                    applied == 0,
                    "placement state checkpoint missing at index {applied}"
                );
                State::default()
            }
        };
        let book = Arc::new(AddressBook::default());
        for (pid, addr) in &cfg.peers {
            book.set(*pid, addr);
        }
        for (pid, addr) in &state.members {
            book.set(*pid, addr);
        }
        book.set(id, &cfg.addr);
        let single = storage.conf_state().voters == [id];
        let raft_cfg = raft::Config {
            id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: lead::HEARTBEAT_TICKS,
            pre_vote: true,
            check_quorum: true,
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut raw = RawNode::new(&raft_cfg, storage, &logger)?;
        if single {
            raw.campaign()?;
        }
        let sh = Shared {
            state: Arc::new(RwLock::new(state)),
            lead: Arc::new(Mutex::new(Leadership::new(id, Instant::now()))),
            book: book.clone(),
        };
        let rt = tokio::runtime::Handle::current();
        let transport = transport::Transport::new(id, cfg.addr.clone(), book, rt);
        let lp = Loop::new(raw, db, sh.clone(), transport, applied);
        let (tx, rx) = mpsc::channel(4096);
        let thread = std::thread::Builder::new()
            .name("placement-raft".into())
            .spawn(move || {
                let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lp.run(rx)));
                if res.is_err() {
                    // Raft state is in memory only up to the panic: start
                    // again from disk (a supervisor restarts the process).
                    tracing::error!("placement raft thread panicked; exiting");
                    std::process::exit(70);
                }
            })?;
        // Weak: ticks alone do not keep the raft thread running.
        let ticker = tx.downgrade();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(TICK);
            loop {
                iv.tick().await;
                match ticker.upgrade() {
                    Some(tx) if tx.send(Msg::Tick).await.is_ok() => {}
                    _ => return,
                }
            }
        });
        Ok(Self {
            id,
            single,
            tx,
            sh,
            _thread: Arc::new(Joiner(Some(thread))),
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Was this replica the group's only voter when it started?
    pub fn single_voter(&self) -> bool {
        self.single
    }

    pub fn state(&self) -> parking_lot::RwLockReadGuard<'_, State> {
        self.sh.state.read()
    }

    pub fn leadership(&self) -> Leadership {
        self.sh.lead.lock().clone()
    }

    /// The term in which this replica leads and may serve now (leader,
    /// holding its lease, its term's first entry applied), or the refusal
    /// placement clients follow to the leader.
    pub fn serving(&self) -> Result<u64, Status> {
        let l = self.sh.lead.lock();
        match l.serving_term(Instant::now()) {
            Some(t) => Ok(t),
            None => Err(lead::refusal(&l, self.sh.book.get(l.leader_id).as_deref())),
        }
    }

    /// Waits until this replica serves (tests and single-replica start-up).
    pub async fn wait_serving(&self, within: Duration) -> Result<u64, Status> {
        let deadline = Instant::now() + within;
        loop {
            match self.serving() {
                Ok(t) => return Ok(t),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    async fn ask<T>(&self, msg: impl FnOnce(oneshot::Sender<T>) -> Msg) -> Result<T, Status> {
        let stopped = || Status::unavailable("strata: placement stopped");
        let (tx, rx) = oneshot::channel();
        self.tx.send(msg(tx)).await.map_err(|_| stopped())?;
        match tokio::time::timeout(PROPOSE_TIMEOUT, rx).await {
            Ok(r) => r.map_err(|_| stopped()),
            Err(_) => Err(strata_proto::errors::timeout()),
        }
    }

    /// Proposes a command and waits until it is applied (leader only).
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, Status> {
        self.ask(|tx| Msg::Propose(cmd, tx)).await?
    }

    /// Feeds a peer's raft messages to the raft thread.
    pub async fn receive(
        &self,
        mut s: tonic::Streaming<PlacementRaftMessage>,
    ) -> Result<(), Status> {
        while let Some(env) = s.message().await? {
            let Some(m) = transport::decode(&env, self.id) else {
                return Err(Status::invalid_argument(
                    "strata: undecodable placement raft message",
                ));
            };
            self.sh.book.learn(env.from, &env.from_addr);
            // Full: the raft thread is behind; raft resends what matters.
            let _ = self.tx.try_send(Msg::Raft(m));
        }
        Ok(())
    }

    /// The group's members as this replica sees them.
    pub async fn members(&self) -> Result<MembersResponse, Status> {
        self.ask(Msg::Members).await
    }

    /// Adds a replica at `addr` as a learner (promoted once caught up);
    /// returns its id. Adding an address already a member answers its id.
    pub async fn add_member(&self, addr: String) -> Result<u64, Status> {
        self.ask(|tx| Msg::Conf(ConfReq::Add { addr }, tx)).await?
    }

    /// Removes replica `id`. The leader removing itself first hands its
    /// lead to another voter and refuses with a hint naming it.
    pub async fn remove_member(&self, id: u64) -> Result<(), Status> {
        self.ask(|tx| Msg::Conf(ConfReq::Remove { id }, tx))
            .await?
            .map(|_| ())
    }
}
