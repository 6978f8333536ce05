//! Staging received snapshot chunks, and installing them crash-safely.
//!
//! Layout in the `meta` column family:
//! - `snapstage/<range id> <seq>` → chunk `seq` of the snapshot being
//!   received for that range (an encoded `SnapshotChunk`: keys and values);
//! - `snapinstall/<range id>` → a `SnapshotInstall` record: "the raft state
//!   of this range already says `index`; its data is being replaced by the
//!   staged chunks `0..chunks` and the header's descriptor and revisions".
//!
//! One transfer per range at a time uses its staging area (`recv::Slots`).
//!
//! **Crash safety.** The install goes through these writes, in order:
//! - S: the receiver stages every chunk (unsynced writes), and only once all
//!   arrived and matched the trailer is the MsgSnapshot stepped into raft.
//! - B0 (the Ready round's batch, fsynced): the raft position of the
//!   snapshot (log truncated to `index`, hard state, conf state, applied
//!   index) *and* the install record. The engine's log is sequential, so
//!   the fsync of B0 also makes every staged chunk of S durable.
//! - B1..Bn (unsynced): delete the range's old data, then one batch per
//!   staged chunk (bounded: one chunk).
//! - Bf (fsynced): descriptor, compacted and applied revision, revoked
//!   leases, and the removal of the record and of the staging area.
//!
//! Published state (descriptor, revisions, applied index) changes only after
//! Bf, and the replica neither applies entries nor serves reads meanwhile.
//! After a crash at any point:
//! - before B0: raft state, data and meta are the old ones and agree; the
//!   staging area has no record and is deleted at start ([`recover`]); the
//!   leader sends the snapshot again;
//! - after B0, before Bf is durable: the record is there, and [`recover`]
//!   redoes the whole install from the staged chunks *before the replica is
//!   opened*, so nobody sees an applied index whose data is not there. Redo
//!   is idempotent (delete the range's data, write every chunk, write meta),
//!   so a crash during a redo is handled the same way;
//! - after Bf: everything is the snapshot's, and nothing is left to do.
//!
//! So a replica is never opened with an applied index its data disagrees
//! with: the index in B0 only takes effect together with data written by
//! an install that Bf completes, here or in [`recover`].

use prost::Message as _;
use strata_proto::strata::{RangeDescriptor, SnapshotChunk, SnapshotInstall};

use crate::mvcc::{enc_key, KeyRange};
use crate::range::desc_range;
use crate::storage::{Cf, Engine, IterOptions, Reader, WriteBatch};
use crate::store::meta;

const STAGE_PREFIX: &[u8] = b"snapstage/";
const INSTALL_PREFIX: &[u8] = b"snapinstall/";

fn stage_area(range_id: u64) -> Vec<u8> {
    let mut k = STAGE_PREFIX.to_vec();
    k.extend_from_slice(&range_id.to_be_bytes());
    k
}

fn stage_key(range_id: u64, seq: u64) -> Vec<u8> {
    let mut k = stage_area(range_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn install_key(range_id: u64) -> Vec<u8> {
    let mut k = INSTALL_PREFIX.to_vec();
    k.extend_from_slice(&range_id.to_be_bytes());
    k
}

/// Stages the deletion of the range's staging area.
fn stage_clear(wb: &mut WriteBatch, range_id: u64) {
    let mut end = stage_area(range_id);
    // Above every `seq` (8 bytes) of this range.
    end.extend_from_slice(&[0xFF; 9]);
    wb.delete_range(Cf::Meta, stage_area(range_id), end);
}

/// Forgets whatever was staged for the range (a new transfer begins).
pub fn clear_staging(db: &dyn Engine, range_id: u64) -> anyhow::Result<()> {
    let mut wb = WriteBatch::new();
    stage_clear(&mut wb, range_id);
    db.write(&wb, false)?;
    Ok(())
}

/// Stages chunk `seq` of the snapshot being received for the range.
pub fn stage_chunk(
    db: &dyn Engine,
    range_id: u64,
    seq: u64,
    chunk: &SnapshotChunk,
) -> anyhow::Result<()> {
    let mut wb = WriteBatch::new();
    wb.put(Cf::Meta, stage_key(range_id, seq), chunk.encode_to_vec());
    db.write(&wb, false)?;
    Ok(())
}

/// Adds the install record to `wb` (the batch with the snapshot's raft
/// state, B0 above).
pub fn stage_install_record(wb: &mut WriteBatch, range_id: u64, rec: &SnapshotInstall) {
    wb.put(Cf::Meta, install_key(range_id), rec.encode_to_vec());
}

/// Deletes every MVCC version of `kr` in O(1) (range deletions, whatever
/// the range holds).
pub fn delete_data(db: &dyn Reader, wb: &mut WriteBatch, kr: &KeyRange) -> anyhow::Result<()> {
    let lower = enc_key(&kr.start);
    match &kr.end {
        Some(end) => wb.delete_range(Cf::Data, lower, enc_key(end)),
        None => {
            // No key is above every other: end at the range's last one.
            let mut it = db.iter_opt(Cf::Data, IterOptions::range(Some(lower.clone()), None));
            it.seek_to_last();
            if it.valid() {
                let last = it.key().to_vec();
                wb.delete_range(Cf::Data, lower, &last);
                wb.delete(Cf::Data, last);
            }
            it.status()?;
        }
    }
    Ok(())
}

/// A range's state after an install, to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Installed {
    pub desc: RangeDescriptor,
    pub compacted: i64,
    pub applied_rev: i64,
    pub index: u64,
    /// The cross-range txn the range was frozen by (`crate::txn`).
    pub intent: Option<Box<strata_proto::strata::TxnIntent>>,
}

/// Installs the staged snapshot the record describes (B1..Bf above).
/// Blocking; runs off the raft thread, or in [`recover`] at start.
pub fn install(db: &dyn Engine, range_id: u64, rec: &SnapshotInstall) -> anyhow::Result<Installed> {
    install_until(db, range_id, rec, None).map(|i| i.expect("not interrupted"))
}

/// [`install`], or (tests) stop as a crash would after `stop_after` chunks.
fn install_until(
    db: &dyn Engine,
    range_id: u64,
    rec: &SnapshotInstall,
    stop_after: Option<u64>,
) -> anyhow::Result<Option<Installed>> {
    let header = rec
        .header
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("install record without header"))?;
    let desc = header
        .desc
        .clone()
        .ok_or_else(|| anyhow::anyhow!("install record without descriptor"))?;
    anyhow::ensure!(desc.id == range_id, "install record of another range");
    let mut wb = WriteBatch::new();
    delete_data(db, &mut wb, &desc_range(&desc))?;
    db.write(&wb, false)?;
    for seq in 0..rec.chunks {
        if stop_after == Some(seq) {
            return Ok(None);
        }
        let bytes = db
            .get(Cf::Meta, &stage_key(range_id, seq))?
            .ok_or_else(|| anyhow::anyhow!("range {range_id}: staged chunk {seq} missing"))?;
        let chunk = SnapshotChunk::decode(&bytes[..])?;
        anyhow::ensure!(
            chunk.keys.len() == chunk.values.len(),
            "corrupt staged chunk"
        );
        let mut wb = WriteBatch::new();
        for (k, v) in chunk.keys.into_iter().zip(chunk.values) {
            wb.put(Cf::Data, k, v);
        }
        db.write(&wb, false)?;
    }
    if stop_after == Some(rec.chunks) {
        return Ok(None);
    }
    let mut wb = WriteBatch::new();
    wb.put(Cf::Meta, meta::desc_key(range_id), desc.encode_to_vec());
    wb.put(
        Cf::Meta,
        meta::compacted_key(range_id),
        header.compacted.to_be_bytes(),
    );
    wb.put(
        Cf::Meta,
        meta::maxrev_key(range_id),
        header.applied_revision.to_be_bytes(),
    );
    crate::lease::Revoked::of(db, range_id).stage_replace(
        &mut wb,
        &header.revoked_leases,
        header.revoked_next_seq,
    )?;
    match &header.txn_intent {
        Some(i) => wb.put(
            Cf::Meta,
            crate::txn::intent_key(range_id),
            i.encode_to_vec(),
        ),
        None => wb.delete(Cf::Meta, crate::txn::intent_key(range_id)),
    }
    wb.delete(Cf::Meta, install_key(range_id));
    stage_clear(&mut wb, range_id);
    db.write(&wb, true)?;
    Ok(Some(Installed {
        desc,
        compacted: header.compacted,
        applied_rev: header.applied_revision,
        index: rec.index,
        intent: header.txn_intent.clone(),
    }))
}

/// At start, before any replica is opened: redoes every install a crash
/// interrupted, and drops staging areas no install owns. Returns the ranges
/// whose install was redone.
pub fn recover(db: &dyn Engine) -> anyhow::Result<Vec<u64>> {
    let mut records = Vec::new();
    {
        let mut it = db.iter_opt(
            Cf::Meta,
            IterOptions::range(Some(INSTALL_PREFIX.to_vec()), None),
        );
        it.seek(INSTALL_PREFIX);
        while it.valid() && it.key().starts_with(INSTALL_PREFIX) {
            let id = it.key()[INSTALL_PREFIX.len()..]
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| anyhow::anyhow!("corrupt install record key"))?;
            records.push((id, SnapshotInstall::decode(it.value())?));
            it.next();
        }
        it.status()?;
    }
    let mut redone = Vec::new();
    for (id, rec) in records {
        tracing::info!(
            range = id,
            index = rec.index,
            "redoing an interrupted snapshot install"
        );
        install(db, id, &rec)?;
        redone.push(id);
    }
    // Leftovers of transfers that never reached raft: one seek per range.
    let mut wb = WriteBatch::new();
    {
        let mut it = db.iter_opt(
            Cf::Meta,
            IterOptions::range(Some(STAGE_PREFIX.to_vec()), None),
        );
        it.seek(STAGE_PREFIX);
        while it.valid() && it.key().starts_with(STAGE_PREFIX) {
            let rest = &it.key()[STAGE_PREFIX.len()..];
            let Some(id) = rest
                .get(..8)
                .map(|b| u64::from_be_bytes(b.try_into().unwrap()))
            else {
                break;
            };
            stage_clear(&mut wb, id);
            match id.checked_add(1) {
                Some(next) => it.seek(&stage_area(next)),
                None => break,
            }
        }
        it.status()?;
    }
    if !wb.is_empty() {
        db.write(&wb, true)?;
    }
    Ok(redone)
}

#[cfg(test)]
pub(super) fn install_crashing_after(
    db: &dyn Engine,
    range_id: u64,
    rec: &SnapshotInstall,
    chunks: u64,
) -> anyhow::Result<()> {
    assert!(install_until(db, range_id, rec, Some(chunks))?.is_none());
    Ok(())
}
