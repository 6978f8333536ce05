//! The Ready round: the only place that writes raft state to disk.
//!
//! Over every replica a message, request or tick touched:
//! 1. send `messages()` at once (they do not depend on our persistence);
//! 2. stage every replica's log appends, hard state and received snapshot's
//!    raft state (with its install record) into ONE write batch and write it
//!    with ONE fsync (group commit) — none when only commit indexes moved
//!    (raft-rs `must_sync`);
//! 3. start installing a received snapshot's data (in the background; the
//!    replica stays paused and publishes it when done, see `snapshot.rs`),
//!    send `persisted_messages()` (votes, append acks) — only after that
//!    fsync;
//! 4. apply committed entries, `advance`, handle the `LightReady`;
//! 5. write every range's applied entries in ONE batch (`exec.rs`), publish
//!    them, then complete read barriers and truncate logs.
//!
//! Nothing steps or proposes between `ready()` and `advance()` of a replica,
//! because the whole round runs without touching the inbox; a snapshot
//! transfer's end is reported (`report_snapshot`) from the loop, between
//! rounds.

use std::sync::atomic::Ordering;

use raft::StateRole;

use super::Store;
use crate::storage::WriteBatch;

impl Store {
    pub(super) fn ready_round(&mut self) -> anyhow::Result<()> {
        let mut ids: Vec<u64> = std::mem::take(&mut self.touched)
            .into_iter()
            .filter(|id| {
                self.replicas
                    .get(id)
                    .is_some_and(|r| !r.installing() && r.raw.has_ready())
            })
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        ids.sort_unstable();
        // Phase 1: send, and stage all appends into one batch.
        let mut wb = WriteBatch::default();
        let mut readies = Vec::with_capacity(ids.len());
        let mut installs = Vec::new();
        let mut appended = 0;
        // Only entries, a snapshot, or a new term or vote need the fsync: a
        // HardState whose commit alone moved may be lost in a crash (raft
        // learns the commit index again), and RocksDB's WAL recovers a
        // prefix, so an apply batch (which persists the commit index it
        // covers) never survives without it.
        let mut must_sync = false;
        for id in ids {
            let r = self.replicas.get_mut(&id).expect("replica");
            let mut rd = r.raw.ready();
            must_sync |= rd.must_sync();
            let msgs = rd.take_messages();
            let shared = r.shared.clone();
            if let Some(ss) = rd.ss() {
                crate::metrics::leader_seen(&shared, ss.leader_id);
                shared.leader_peer.store(ss.leader_id, Ordering::Release);
                if ss.raft_state != StateRole::Leader {
                    r.step_down();
                }
            }
            if let Some(hs) = rd.hs() {
                shared.term.store(hs.term, Ordering::Release);
            }
            // Set after raft made this replica leader, so a stamp taken
            // under `lead_term` is taken after this leadership began.
            let raft = &r.raw.raft;
            let lead_term = if raft.state == StateRole::Leader {
                raft.term
            } else {
                0
            };
            shared.lead_term.store(lead_term, Ordering::Release);
            if !rd.snapshot().is_empty() {
                // Data is replaced (see `crate::apply::latest`).
                self.latest.clear();
                self.stage_leftovers(&mut wb, id, &rd.snapshot().data)?;
                installs.push((id, self.stage_snapshot(id, &mut wb, rd.snapshot())?));
            }
            let r = self.replicas.get_mut(&id).expect("replica");
            r.raw.store().stage_append(&mut wb, rd.entries(), rd.hs())?;
            appended += rd.entries().len();
            // A MsgSnapshot among them goes to its own stream; its end is
            // reported to raft later, from the loop (see `snapshot.rs`).
            self.send(&shared, msgs);
            readies.push((id, rd));
        }
        crate::metrics::ready_round(appended, readies.len(), wb.size_in_bytes());
        if !wb.is_empty() && must_sync {
            crate::failpoint::crash(self.node_id, "crash_before_log_fsync");
            let _fsync = crate::metrics::WAL_FSYNC.start_timer();
            self.db.write(&wb, true)?;
            crate::failpoint::crash(self.node_id, "crash_after_log_fsync");
        } else if !wb.is_empty() {
            // Only commit indexes moved: nothing to wait for, so no write of
            // its own either — it leads the round's apply batch.
            self.pending.lead_with(wb);
        }
        for (id, rec) in installs {
            self.start_install(id, rec);
        }
        // Phase 2: after the fsync.
        let mut applied = Vec::with_capacity(readies.len());
        for (id, mut rd) in readies {
            let (shared, persisted) = {
                let r = self.replicas.get_mut(&id).expect("replica");
                r.raw.store().on_persisted(rd.entries(), rd.hs());
                r.on_read_states(rd.take_read_states());
                (r.shared.clone(), rd.take_persisted_messages())
            };
            self.send(&shared, persisted);
            let committed = rd.take_committed_entries();
            // Nothing after a snapshot applies before its data is installed:
            // a replica is paused from the moment it takes one (see
            // `snapshot.rs`), so its Ready holds no committed entries.
            let installing = self.replicas.get(&id).is_some_and(|r| r.installing());
            anyhow::ensure!(
                !installing || committed.is_empty(),
                "range {id}: entries committed while a snapshot installs"
            );
            self.apply(id, committed)?;
            let Some(r) = self.replicas.get_mut(&id) else {
                continue; // destroyed: this node's replica was removed
            };
            let mut light = r.raw.advance(rd);
            let commit = light.commit_index();
            let msgs = light.take_messages();
            let committed = light.take_committed_entries();
            anyhow::ensure!(
                !installing || committed.is_empty(),
                "range {id}: entries committed while a snapshot installs"
            );
            self.send(&shared, msgs);
            // A commit index from the LightReady is persisted with the apply
            // state of the entries it covers (see `apply`), never ahead of them.
            let _ = commit;
            self.apply(id, committed)?;
            let Some(r) = self.replicas.get_mut(&id) else {
                continue;
            };
            r.raw.advance_apply();
            r.end_bcast_commit(self.bcast_commit);
            // Asked again next round (cheap for a range that went quiet).
            self.touched.insert(id);
            applied.push(id);
        }
        // Phase 3: the round's applied entries, every range's, in one write;
        // then what needs them durable and published: read barriers, and
        // log truncation (never ahead of the apply that covers the log).
        self.flush_applied()?;
        for id in applied {
            let Some(r) = self.replicas.get_mut(&id) else {
                continue;
            };
            r.complete_reads();
            self.gc_log(id)?;
        }
        // Each uninitialized replica's Ready of this round is complete: the
        // split children that replace them can start (see `catchup.rs`).
        for (child, parent_led) in std::mem::take(&mut self.split_children) {
            self.drop_uninitialized(child.id, false)?;
            self.start_split_child(child, parent_led)?;
        }
        Ok(())
    }
}
