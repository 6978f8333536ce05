//! Splits, as every replica applies them: this range keeps
//! `[start, split_key)`, a new range on the same nodes takes the rest. MVCC
//! data stays where it is (keys sort by user key, so the new range's data is
//! already contiguous); only descriptors change. The split checker
//! (`split_check.rs`) decides when and where to split.
//!
//! The new range's raft log starts at `SPLIT_INIT_INDEX` on every replica
//! that applies the split: what it holds at that index is its parent's data
//! at the split, which its log does not contain. A peer without it can only
//! be given a snapshot (see `catchup.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prost::Message as _;
use strata_proto::strata::{FeedMessage, RangeDescriptor, SplitCommand};
use tonic::Status;

use super::exec::Applied;
use super::replica::RangeShared;
use super::{meta, Store};
use crate::engine::RaftStorage;
use crate::storage::{Cf, WriteBatch};

impl Store {
    /// Applies a split: this range keeps `[start, split_key)`, a new range takes
    /// the rest. MVCC data stays where it is (keys sort by user key, so the new
    /// range's data is already contiguous); only descriptors change.
    pub(super) fn exec_split(
        &self,
        shared: &Arc<RangeShared>,
        sc: &SplitCommand,
        wb: &mut WriteBatch,
    ) -> anyhow::Result<Applied> {
        let mut desc = shared.desc.read().clone();
        let valid = sc.split_key > desc.start_key
            && (desc.end_key.is_empty() || sc.split_key < desc.end_key)
            && sc.new_peers.len() == desc.peers.len()
            && sc
                .new_peers
                .iter()
                .zip(&desc.peers)
                .all(|(n, o)| n.node_id == o.node_id)
            && sc.new_range_id != desc.id
            // A learner's raft membership would not carry over to the new
            // range; splits wait until it is promoted or removed.
            && !desc.peers.iter().any(|p| p.learner);
        if !valid {
            return Ok(Applied {
                result: Err(Status::failed_precondition(
                    "strata: split rejected (stale or invalid)",
                )
                .into()),
                ..Default::default()
            });
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
        wb.put(Cf::Meta, meta::desc_key(desc.id), desc.encode_to_vec());
        match self.replicas.get(&child.id) {
            // Cannot happen: its snapshot would have overlapped this
            // replica (see `catchup.rs`). Its state is left as it is.
            Some(c) if c.initialized => {
                tracing::error!(
                    range = desc.id,
                    child = child.id,
                    "split child already here"
                );
            }
            existing => {
                // An uninitialized replica's term and vote are kept.
                let prior = existing.map(|c| (c.raw.raft.term, c.raw.raft.vote));
                let voters: Vec<u64> = child
                    .peers
                    .iter()
                    .filter(|p| !p.learner)
                    .map(|p| p.id)
                    .collect();
                RaftStorage::stage_split_init(wb, child.id, &voters, prior)?;
                self.stage_child_records(shared, &desc, &child, wb)?;
            }
        }
        tracing::info!(range = desc.id, new_range = child.id, split_key = ?String::from_utf8_lossy(&sc.split_key), "split");
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
        Ok(Applied {
            feed: Some(end),
            desc: Some(desc),
            child: Some(child),
            ..Default::default()
        })
    }

    /// The new range's records, inherited from its parent at the split.
    fn stage_child_records(
        &self,
        shared: &RangeShared,
        parent: &RangeDescriptor,
        child: &RangeDescriptor,
        wb: &mut WriteBatch,
    ) -> anyhow::Result<()> {
        wb.put(Cf::Meta, meta::desc_key(child.id), child.encode_to_vec());
        let applied_rev = shared.applied_rev.load(Ordering::Acquire);
        wb.put(
            Cf::Meta,
            meta::maxrev_key(child.id),
            applied_rev.to_be_bytes(),
        );
        let compacted = shared.compacted.load(Ordering::Acquire);
        wb.put(
            Cf::Meta,
            meta::compacted_key(child.id),
            compacted.to_be_bytes(),
        );
        crate::lease::Revoked::of(&*self.db, parent.id).stage_copy_to(wb, child.id)?;
        Ok(())
    }

    /// After a split applied: opens the replica of the range it created
    /// here. An uninitialized replica of it (this node learned of the range
    /// before applying the split) is replaced at the end of the Ready round
    /// (see `catchup.rs`); an initialized one is kept.
    pub(super) fn create_split_child(
        &mut self,
        child: RangeDescriptor,
        parent_was_leader: bool,
    ) -> anyhow::Result<()> {
        match self.replicas.get(&child.id) {
            None => self.start_split_child(child, parent_was_leader),
            Some(c) if !c.initialized => {
                self.split_children.push((child, parent_was_leader));
                Ok(())
            }
            Some(_) => Ok(()),
        }
    }

    /// Opens a split child from the state the split staged. The parent's
    /// leader also leads the child at first: it is the one replica that
    /// certainly has the split applied already.
    pub(super) fn start_split_child(
        &mut self,
        child: RangeDescriptor,
        parent_was_leader: bool,
    ) -> anyhow::Result<()> {
        let child_id = child.id;
        self.create(child, false)?;
        if parent_was_leader {
            if let Some(c) = self.replicas.get_mut(&child_id) {
                let _ = c.raw.campaign();
            }
        }
        Ok(())
    }
}
