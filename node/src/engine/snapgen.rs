//! Generating a replica's raft snapshots off the raft thread.
//!
//! raft-rs asks `Storage::snapshot()` on the raft thread whenever a follower
//! needs one. Answering it never reads the range's data there:
//! 1. the first call takes a consistent engine snapshot (O(1)) and starts a
//!    background thread; raft hears `SnapshotTemporarilyUnavailable` and asks
//!    again later (on the follower's next heartbeat response);
//! 2. the thread reads, from that one engine snapshot, the applied index, its
//!    term, the conf state and the header (descriptor, revisions, revoked
//!    leases: [`SnapshotHeaderFn`]). They agree with each other and with the
//!    data, because every apply writes its data and the applied index in one
//!    batch, and an engine snapshot sees a batch whole or not at all;
//! 3. the next call hands the result to raft (it goes out as a MsgSnapshot)
//!    and keeps the engine snapshot for that follower: the transport streams
//!    the range's MVCC versions from it ([`RaftStorage::take_generated`]).
//!
//! The raft snapshot's `data` is only the small header. An engine snapshot
//! pins old data while it lives, so it is kept only until its transfer ends
//! (a generated snapshot goes to one follower; another one gets its own).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, Snapshot};
use raft::StorageError;

use super::{raft_key, RaftStorage, KIND_APPLIED, KIND_CONF_STATE, KIND_ENTRY, KIND_TRUNCATED};
use crate::storage::{self, Cf};

/// Builds a raft snapshot's `data` (the range's header) from a consistent
/// engine snapshot. Runs off the raft thread.
pub type SnapshotHeaderFn =
    Arc<dyn Fn(&dyn storage::Snapshot) -> anyhow::Result<Vec<u8>> + Send + Sync>;

/// A snapshot handed to raft, and the engine view its data streams from.
#[derive(Clone)]
pub struct GeneratedSnapshot {
    pub snap: Snapshot,
    pub view: Arc<dyn storage::Snapshot>,
}

#[derive(Default)]
enum Gen {
    #[default]
    Idle,
    Running,
    Ready(GeneratedSnapshot),
}

#[derive(Default)]
pub(super) struct SnapGen {
    header: Option<SnapshotHeaderFn>,
    state: Gen,
    /// Handed to raft for a follower (peer id), until its transfer starts.
    handed: HashMap<u64, GeneratedSnapshot>,
    /// The applied index the last snapshot generated was taken at, and when
    /// its generation started: log GC keeps the entries after it for a while
    /// (see [`RaftStorage::snapshot_floor`]).
    floor: Option<(u64, Instant)>,
}

/// How long a snapshot being generated holds back log GC at most.
const FLOOR_HELD: Duration = Duration::from_secs(120);

fn unavailable() -> raft::Error {
    raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)
}

impl RaftStorage {
    /// How this replica's snapshot headers are built; without one, raft is
    /// told snapshots are unavailable.
    pub fn set_snapshot_header(&self, f: SnapshotHeaderFn) {
        self.snapgen.lock().header = Some(f);
    }

    /// For [`FLOOR_HELD`] after a snapshot's generation started: the index
    /// it is taken at. The log after it should stay until the follower that
    /// gets it has installed it and caught up, or it needs another; its
    /// generation, transfer and install take a while.
    pub fn snapshot_floor(&self) -> Option<u64> {
        let g = self.snapgen.lock();
        g.floor
            .filter(|(_, at)| at.elapsed() < FLOOR_HELD)
            .map(|(i, _)| i)
    }

    /// The engine view a snapshot handed to raft for peer `to` streams from,
    /// if `snap` is that snapshot (taken once: the transfer owns it).
    pub fn take_generated(&self, to: u64, snap: &Snapshot) -> Option<Arc<dyn storage::Snapshot>> {
        let g = self.snapgen.lock().handed.remove(&to)?;
        let (a, b) = (g.snap.get_metadata(), snap.get_metadata());
        (a.index == b.index && a.term == b.term).then_some(g.view)
    }

    /// `raft::Storage::snapshot`: a generated snapshot at or after
    /// `request_index`, or "temporarily unavailable" while one is generated.
    /// Never an error of another kind: raft-rs treats those as fatal.
    pub(super) fn generated_snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mut g = self.snapgen.lock();
        let Some(header) = g.header.clone() else {
            return Err(unavailable());
        };
        match std::mem::take(&mut g.state) {
            Gen::Running => {
                g.state = Gen::Running;
                Err(unavailable())
            }
            // Usable: recent enough for raft, and the leader's log still
            // goes on right after it (else the follower would need another).
            Gen::Ready(s)
                if s.snap.get_metadata().index >= request_index
                    && s.snap.get_metadata().index >= self.truncated_index() =>
            {
                let snap = s.snap.clone();
                g.handed.insert(to, s);
                Ok(snap)
            }
            Gen::Idle | Gen::Ready(_) => {
                g.state = Gen::Running;
                // What the engine view below will hold (every apply writes
                // its applied index with its data, on this thread).
                g.floor = self.applied_index().ok().map(|i| (i, Instant::now()));
                drop(g);
                self.start_generating(header);
                Err(unavailable())
            }
        }
    }

    fn start_generating(&self, header: SnapshotHeaderFn) {
        // O(1): the raft thread does nothing more than this.
        let view = self.db.snapshot();
        let (range_id, gen) = (self.range_id, self.snapgen.clone());
        let spawned = std::thread::Builder::new()
            .name("snapshot-gen".into())
            .spawn(move || {
                let res = generate(range_id, view, &*header);
                let mut g = gen.lock();
                g.state = match res {
                    Ok(s) => {
                        let md = s.snap.get_metadata();
                        tracing::info!(range = range_id, index = md.index, "snapshot generated");
                        Gen::Ready(s)
                    }
                    Err(e) => {
                        tracing::warn!(range = range_id, "cannot generate a snapshot: {e:#}");
                        Gen::Idle
                    }
                };
            });
        if let Err(e) = spawned {
            tracing::warn!(
                range = self.range_id,
                "cannot start snapshot generation: {e}"
            );
            self.snapgen.lock().state = Gen::Idle;
        }
    }
}

/// Reads a snapshot of range `range_id` from one consistent engine view.
fn generate(
    range_id: u64,
    view: Arc<dyn storage::Snapshot>,
    header: &dyn Fn(&dyn storage::Snapshot) -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<GeneratedSnapshot> {
    let get = |kind: u8, index: u64| view.get(Cf::Raft, &raft_key(range_id, kind, index));
    let index = match get(KIND_APPLIED, 0)? {
        Some(b) => u64::from_be_bytes(
            b[..]
                .try_into()
                .map_err(|_| anyhow::anyhow!("corrupt applied index"))?,
        ),
        None => 0,
    };
    anyhow::ensure!(index > 0, "nothing applied yet");
    // The applied entry is never truncated away, except by truncating the
    // log exactly at it (a learner being added, a snapshot installed).
    let term = match get(KIND_ENTRY, index)? {
        Some(b) => Entry::parse_from_bytes(&b)?.term,
        None => match get(KIND_TRUNCATED, 0)? {
            Some(b) if b.len() == 16 && b[..8] == index.to_be_bytes() => {
                u64::from_be_bytes(b[8..].try_into().expect("8 bytes"))
            }
            _ => anyhow::bail!("no term for the applied index {index}"),
        },
    };
    let conf_state = match get(KIND_CONF_STATE, 0)? {
        Some(b) => ConfState::parse_from_bytes(&b)?,
        None => anyhow::bail!("no conf state"),
    };
    let mut snap = Snapshot {
        data: header(&*view)?.into(),
        ..Default::default()
    };
    let md = snap.mut_metadata();
    md.index = index;
    md.term = term;
    md.set_conf_state(conf_state);
    Ok(GeneratedSnapshot { snap, view })
}

/// Shared between a replica's storage handles and the generating thread.
pub(super) type SharedGen = Arc<Mutex<SnapGen>>;
