//! Raft snapshots on the raft thread: what it does itself is O(1) per
//! snapshot; data is read, sent, staged and installed elsewhere (see
//! `crate::snapshot` for the whole path).
//!
//! - Sending: a MsgSnapshot raft emits is handed to the transport's
//!   streaming `send_snapshot` with the engine view it was generated from;
//!   the transport reports the end of the transfer through [`SnapEvents`],
//!   and `report_snapshot` is called when the events are drained: in the
//!   loop, between inbox messages, never inside a Ready round.
//! - Receiving: a MsgSnapshot is stepped only with its staged data
//!   ([`Store::step_snapshot`]); one from anywhere else is dropped. Once
//!   raft takes it the replica *pauses* (no ticks, no messages stepped, no
//!   Ready rounds), so the Ready round that persists the snapshot's raft
//!   state is the only one until the data is installed, and no entry after
//!   the snapshot applies before its data is there.
//! - Installing: that Ready round writes the raft state with the install
//!   record (`snapshot::stage`), then a background thread copies the staged
//!   data in bounded batches; when it is done the state is published and the
//!   replica resumes ([`Store::on_snapshot_installed`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use strata_proto::strata::{RaftEnvelope, RangeDescriptor, RangeSnapshotHeader, SnapshotInstall};
use tokio::sync::mpsc;

use super::replica::Install;
use super::{meta, Store, StoreMsg};
use crate::engine::SnapshotHeaderFn;
use crate::snapshot::recv::StepReply;
use crate::snapshot::stage::{self, Installed};
use crate::snapshot::{SnapshotSource, StagedSnapshot};
use crate::storage::{self, Cf, WriteBatch};

/// Builds range `range_id`'s snapshot header from a consistent engine view
/// (on the generating thread, see `engine/snapgen.rs`).
pub(super) fn header_fn(range_id: u64) -> SnapshotHeaderFn {
    Arc::new(move |view: &dyn storage::Snapshot| {
        let desc = view
            .get(Cf::Meta, &meta::desc_key(range_id))?
            .ok_or_else(|| anyhow::anyhow!("range {range_id}: no descriptor"))?;
        let desc = RangeDescriptor::decode(&desc[..])?;
        let (revoked_leases, revoked_next_seq) =
            crate::lease::Revoked::of(view, range_id).load()?;
        Ok(RangeSnapshotHeader {
            desc: Some(desc),
            compacted: meta::load_i64(view, &meta::compacted_key(range_id))?,
            applied_revision: meta::load_i64(view, &meta::maxrev_key(range_id))?,
            revoked_leases,
            revoked_next_seq,
            txn_intent: crate::txn::load_intent(view, range_id)?.map(Box::new),
        }
        .encode_to_vec())
    })
}

/// What background snapshot work tells the raft thread.
pub(super) enum SnapEvent {
    /// A transfer to `to_peer` finished or failed: `report_snapshot`.
    Sent {
        range_id: u64,
        to_peer: u64,
        status: raft::SnapshotStatus,
    },
    /// A received snapshot's data is installed (or our disk failed).
    Installed {
        range_id: u64,
        result: anyhow::Result<Installed>,
    },
}

/// Events from transfers and installs, drained by the raft loop. Holds at
/// most one event per transfer or install, which are bounded in number.
#[derive(Default)]
pub(super) struct SnapEvents {
    events: Mutex<Vec<SnapEvent>>,
    /// Wakes the raft loop (weak: the store must not keep its own inbox open).
    wake: Mutex<Option<mpsc::WeakSender<StoreMsg>>>,
}

impl SnapEvents {
    pub(super) fn set_wake(&self, inbox: &mpsc::Sender<StoreMsg>) {
        *self.wake.lock() = Some(inbox.downgrade());
    }

    pub(super) fn push(&self, e: SnapEvent) {
        self.events.lock().push(e);
        // A full inbox means the loop is busy: it drains events every turn.
        if let Some(tx) = self.wake.lock().as_ref().and_then(|w| w.upgrade()) {
            let _ = tx.try_send(StoreMsg::Wake);
        }
    }

    fn take(&self) -> Vec<SnapEvent> {
        std::mem::take(&mut *self.events.lock())
    }
}

impl Store {
    /// Hands a MsgSnapshot raft emitted to the transport, with the engine
    /// view it was generated from.
    pub(super) fn send_snapshot(
        &self,
        range_id: u64,
        to_node: u64,
        m: &RaftMessage,
        env: RaftEnvelope,
    ) {
        let to_peer = m.to;
        let events = self.snap_events.clone();
        let report = move |status| {
            events.push(SnapEvent::Sent {
                range_id,
                to_peer,
                status,
            })
        };
        let view = self
            .replicas
            .get(&range_id)
            .and_then(|r| r.raw.store().take_generated(to_peer, m.get_snapshot()));
        let header = RangeSnapshotHeader::decode(&m.get_snapshot().data[..]);
        if crate::failpoint::partitioned(self.node_id) {
            // Dropped by the partition: raft tries again later.
            report(raft::SnapshotStatus::Failure);
            return;
        }
        let (Some(view), Ok(header)) = (view, header) else {
            tracing::warn!(range = range_id, to = to_peer, "snapshot without its data");
            report(raft::SnapshotStatus::Failure);
            return;
        };
        let Some(desc) = header.desc.as_ref() else {
            report(raft::SnapshotStatus::Failure);
            return;
        };
        let source = SnapshotSource {
            view,
            range: super::desc_range(desc),
        };
        tracing::info!(
            range = range_id,
            to = to_peer,
            index = m.get_snapshot().get_metadata().index,
            "sending a snapshot"
        );
        self.transport
            .send_snapshot(crate::transport::OutgoingSnapshot {
                to_node,
                head: env,
                source,
                done: Box::new(report),
            });
    }

    /// A received snapshot with all its data staged: stepped into raft,
    /// which takes it or not (it may be stale by now).
    pub(super) fn step_snapshot(
        &mut self,
        env: RaftEnvelope,
        staged: StagedSnapshot,
        reply: StepReply,
    ) {
        let range_id = env.range_id;
        let refuse = |store: &Store, staged, reply: StepReply, why: &str| {
            store.discard_staged(range_id, staged);
            let _ = reply.send(Err(why.to_string()));
        };
        let Some(r) = self.replicas.get_mut(&range_id) else {
            return refuse(self, staged, reply, "no such replica");
        };
        if env.to_peer != r.shared.peer_id || r.install.is_some() {
            return refuse(self, staged, reply, "replica busy or replaced");
        }
        let msg = match RaftMessage::parse_from_bytes(&env.message) {
            Ok(m) if m.get_msg_type() == MessageType::MsgSnapshot => m,
            _ => return refuse(self, staged, reply, "not a MsgSnapshot"),
        };
        if env.from_node != 0 {
            self.peer_nodes.insert(env.from_peer, env.from_node);
        }
        // Initialized replicas never overlap (see `catchup.rs`): the leader
        // sends it again later.
        if let Some(other) = self.snapshot_overlap(range_id, &msg.get_snapshot().data) {
            tracing::debug!(
                range = range_id,
                other,
                "snapshot waits: range {other} here still covers part of it"
            );
            self.suspect(other);
            return refuse(self, staged, reply, "overlaps another replica here");
        }
        let r = self.replicas.get_mut(&range_id).expect("replica");
        r.wake_for(&msg);
        if let Err(e) = r.raw.step(msg) {
            tracing::debug!(range = range_id, "step snapshot: {e}");
        }
        let taken = r
            .raw
            .raft
            .raft_log
            .unstable
            .snapshot
            .as_ref()
            .is_some_and(|s| {
                let md = s.get_metadata();
                md.index == staged.index && md.term == staged.term
            });
        self.touched.insert(range_id);
        if taken {
            // Paused from now on (see the module doc).
            r.install = Some(Install::Stepped(staged));
        } else {
            self.discard_staged(range_id, staged);
        }
        let _ = reply.send(Ok(taken));
    }

    /// Deletes data staged for a snapshot raft did not take. Its slot makes
    /// the staging area ours until `staged` drops: nobody else writes it.
    fn discard_staged(&self, range_id: u64, staged: StagedSnapshot) {
        if let Err(e) = stage::clear_staging(&*self.db, range_id) {
            tracing::warn!(range = range_id, "cannot clear a staged snapshot: {e:#}");
        }
        drop(staged);
    }

    /// In the Ready round that carries a received snapshot: stages its raft
    /// state and the install record into the round's batch (B0, see
    /// `snapshot::stage`). The install starts once that batch is written.
    pub(super) fn stage_snapshot(
        &mut self,
        range_id: u64,
        wb: &mut WriteBatch,
        snap: &raft::eraftpb::Snapshot,
    ) -> anyhow::Result<SnapshotInstall> {
        let r = self.replicas.get_mut(&range_id).expect("replica");
        let md = snap.get_metadata();
        let staged = match r.install.take() {
            Some(Install::Stepped(s)) if s.index == md.index && s.term == md.term => s,
            other => {
                r.install = other;
                // Only staged snapshots are ever stepped (see `step`).
                anyhow::bail!("range {range_id}: a snapshot to install without its data");
            }
        };
        r.raw.store().stage_snapshot(wb, snap)?;
        let rec = SnapshotInstall {
            index: md.index,
            term: md.term,
            header: Some(staged.header.clone()),
            chunks: staged.chunks,
        };
        stage::stage_install_record(wb, range_id, &rec);
        r.install = Some(Install::Running(staged.slot));
        Ok(rec)
    }

    /// Once the batch with the install record is written: readers of this
    /// replica are turned away, and the data is copied in the background.
    pub(super) fn start_install(&mut self, range_id: u64, rec: SnapshotInstall) {
        let Some(r) = self.replicas.get(&range_id) else {
            return;
        };
        // Odd while the data is being replaced (see `RangeShared::data_gen`).
        r.shared.data_gen.fetch_add(1, Ordering::AcqRel);
        // Feeds of this replica end: the snapshot replaces the entries between
        // its applied state and the snapshot's, whose events a feed would
        // never see (a deposed leader's feed, kept open while it was cut off,
        // would go on with the events applied after the snapshot and skip
        // those). The router resumes them from MVCC history at the leader.
        let end = strata_proto::strata::FeedMessage {
            error: Some(strata_proto::strata::RouteError {
                kind: strata_proto::strata::RouteErrorKind::NotLeader as i32,
                message: "snapshot installed".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        r.shared.feed.send(std::sync::Arc::new(end));
        let (db, events, node_id) = (self.db.clone(), self.snap_events.clone(), self.node_id);
        tracing::info!(
            range = range_id,
            index = rec.index,
            chunks = rec.chunks,
            "installing a snapshot"
        );
        let spawned = std::thread::Builder::new()
            .name("snapshot-install".into())
            .spawn(move || {
                // Staged, its raft state and install record written: an
                // install interrupted here is redone at start.
                crate::failpoint::crash(node_id, "crash_mid_snapshot_install");
                let result = stage::install(&*db, range_id, &rec);
                events.push(SnapEvent::Installed { range_id, result });
            });
        if let Err(e) = spawned {
            self.snap_events.push(SnapEvent::Installed {
                range_id,
                result: Err(anyhow::anyhow!("cannot start the install: {e}")),
            });
        }
    }

    /// Drains what transfers and installs reported. In the loop, outside any
    /// Ready round: `report_snapshot` steps raft.
    pub(super) fn drain_snapshot_events(&mut self) -> anyhow::Result<()> {
        for ev in self.snap_events.take() {
            match ev {
                SnapEvent::Sent {
                    range_id,
                    to_peer,
                    status,
                } => {
                    if status == raft::SnapshotStatus::Failure {
                        crate::metrics::SNAPSHOT_SEND_FAILURES.inc();
                    }
                    if let Some(r) = self.replicas.get_mut(&range_id) {
                        tracing::info!(
                            range = range_id,
                            to = to_peer,
                            ?status,
                            "snapshot transfer ended"
                        );
                        r.raw.report_snapshot(to_peer, status);
                        self.touched.insert(range_id);
                    }
                }
                SnapEvent::Installed { range_id, result } => {
                    // A failed write to our own disk, with the range half
                    // replaced: only a restart (which redoes the install) helps.
                    let inst = result
                        .map_err(|e| e.context(format!("range {range_id}: snapshot install")))?;
                    self.on_snapshot_installed(range_id, inst);
                }
            }
        }
        Ok(())
    }

    /// Publishes an installed snapshot's state and resumes the replica.
    fn on_snapshot_installed(&mut self, range_id: u64, st: Installed) {
        // Its data was replaced (see `crate::apply::latest`).
        self.latest.clear();
        let Some(r) = self.replicas.get_mut(&range_id) else {
            return;
        };
        *r.shared.desc.write() = st.desc;
        r.shared.compacted.store(st.compacted, Ordering::Release);
        r.shared
            .applied_rev
            .store(st.applied_rev, Ordering::Release);
        r.shared.applied_index.store(st.index, Ordering::Release);
        *r.shared.intent.write() = st.intent.map(|i| Arc::new(*i));
        r.shared.data_gen.fetch_add(1, Ordering::AcqRel);
        r.install = None;
        r.fail_proposals_through(st.index);
        r.wake();
        self.touched.insert(range_id);
        self.on_initialized(range_id);
        tracing::info!(range = range_id, index = st.index, "snapshot applied");
        crate::metrics::SNAPSHOTS_APPLIED.inc();
    }
}
