//! Raft snapshots of a range: every MVCC version in it plus its revision
//! state, built from the applied state and installed over the range's data.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prost::Message as _;
use strata_proto::strata::RangeDescriptor;

use super::replica::RangeShared;
use super::{desc_range, meta, Store};
use crate::engine::RaftStorage;
use crate::mvcc::KeyRange;
use crate::storage::{Cf, Engine, EngineIterator, IterOptions, WriteBatch};

/// An iterator over the MVCC versions of `kr`, positioned at its first one.
fn data_iter<'a>(db: &'a dyn Engine, kr: &KeyRange) -> Box<dyn EngineIterator + 'a> {
    let end = kr.end.as_ref().map(|e| crate::mvcc::enc_key(e));
    let mut it = db.iter_opt(Cf::Data, IterOptions::range(None, end));
    it.seek(&crate::mvcc::enc_key(&kr.start));
    it
}

/// Deletes every MVCC version of `kr` (this node no longer hosts it).
pub(super) fn delete_data(
    db: &dyn Engine,
    wb: &mut WriteBatch,
    kr: &KeyRange,
) -> anyhow::Result<()> {
    let mut it = data_iter(db, kr);
    while it.valid() {
        wb.delete(Cf::Data, it.key());
        it.next();
    }
    it.status()?;
    Ok(())
}

/// A range's snapshot: every MVCC version in it plus its revision state, taken
/// on the raft thread at the applied index.
pub(super) fn snapshot_builder(
    db: Arc<dyn Engine>,
    shared: Arc<RangeShared>,
) -> crate::engine::SnapshotBuilder {
    Arc::new(move || {
        let desc = shared.desc.read().clone();
        let index = shared.applied_index.load(Ordering::Acquire);
        let kr = desc_range(&desc);
        let mut it = data_iter(&*db, &kr);
        let (revoked_leases, revoked_next_seq) = crate::lease::Revoked::of(&*db, desc.id).load()?;
        let mut data = strata_proto::strata::RangeSnapshotData {
            desc: Some(desc),
            compacted: shared.compacted.load(Ordering::Acquire),
            applied_revision: shared.applied_rev.load(Ordering::Acquire),
            revoked_leases,
            revoked_next_seq,
            ..Default::default()
        };
        while it.valid() {
            data.keys.push(it.key().to_vec());
            data.values.push(it.value().to_vec());
            it.next();
        }
        it.status()?;
        Ok((index, data.encode_to_vec()))
    })
}

/// Checks a snapshot received from the network before raft sees it: one
/// that does not decode, belongs to another range or holds keys outside its
/// descriptor is dropped (the leader sends another), never installed.
pub(super) fn validate_snapshot(range_id: u64, data: &[u8]) -> Result<(), String> {
    let data = strata_proto::strata::RangeSnapshotData::decode(data)
        .map_err(|e| format!("undecodable snapshot: {e}"))?;
    let desc = data.desc.as_ref().ok_or("snapshot without descriptor")?;
    if desc.id != range_id {
        return Err(format!(
            "snapshot of range {} sent for range {range_id}",
            desc.id
        ));
    }
    if data.keys.len() != data.values.len() {
        return Err("snapshot keys and values differ in number".into());
    }
    if data.compacted < 0 || data.applied_revision < 0 {
        return Err("snapshot with a negative revision".into());
    }
    let kr = desc_range(desc);
    for (k, v) in data.keys.iter().zip(&data.values) {
        let (user, _) = crate::mvcc::dec_key(k).ok_or("snapshot with a malformed MVCC key")?;
        if !kr.contains(&user) {
            return Err("snapshot with a key outside its range".into());
        }
        strata_proto::strata::MvccValue::decode(&v[..])
            .map_err(|e| format!("snapshot with an undecodable value: {e}"))?;
    }
    Ok(())
}

/// Stages a received snapshot: replaces the range's MVCC data, descriptor,
/// revision state and raft log position. Returns the state to publish once
/// the batch is durable.
pub(super) fn stage_snapshot_data(
    db: &dyn Engine,
    wb: &mut WriteBatch,
    storage: &RaftStorage,
    snap: &raft::eraftpb::Snapshot,
) -> anyhow::Result<SnapshotState> {
    let data = strata_proto::strata::RangeSnapshotData::decode(&snap.data[..])?;
    let desc = data
        .desc
        .ok_or_else(|| anyhow::anyhow!("snapshot without descriptor"))?;
    anyhow::ensure!(data.keys.len() == data.values.len(), "corrupt snapshot");
    delete_data(db, wb, &desc_range(&desc))?;
    for (k, v) in data.keys.iter().zip(&data.values) {
        wb.put(Cf::Data, k, v);
    }
    wb.put(Cf::Meta, meta::desc_key(desc.id), desc.encode_to_vec());
    wb.put(
        Cf::Meta,
        meta::compacted_key(desc.id),
        data.compacted.to_be_bytes(),
    );
    wb.put(
        Cf::Meta,
        meta::maxrev_key(desc.id),
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

/// A received snapshot's state, published once its batch is durable:
/// (descriptor, compacted revision, applied revision, applied index).
pub(super) type SnapshotState = (RangeDescriptor, i64, i64, u64);

impl Store {
    /// Publishes a snapshot's state once the batch that installed it is
    /// written.
    pub(super) fn on_snapshot_persisted(&mut self, range_id: u64, st: SnapshotState) {
        let (desc, compacted, applied_rev, index) = st;
        let Some(r) = self.replicas.get_mut(&range_id) else {
            return;
        };
        *r.shared.desc.write() = desc;
        r.shared.compacted.store(compacted, Ordering::Release);
        r.shared.applied_rev.store(applied_rev, Ordering::Release);
        r.shared.applied_index.store(index, Ordering::Release);
        r.fail_proposals_through(index);
        tracing::info!(range = range_id, index, "snapshot applied");
        crate::metrics::SNAPSHOTS_APPLIED.inc();
    }
}
