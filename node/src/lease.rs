//! The leases revoked in a range, so that a Put attached to one is refused.
//!
//! The race it closes: the router checks that a Put's lease exists, then sends
//! the Put; placement's revoke deletes the lease's keys in every range, then
//! forgets the lease. A Put checked before the revoke but applied after the
//! range applied it would leave a key attached to a dead lease, which nobody
//! would ever delete. So each range remembers the lease ids revoked in it, and
//! at apply time (deterministically, on every replica) a Put — also one inside
//! a Txn — attached to one of them fails with `etcdserver: requested lease not
//! found` and writes nothing. A Put applied before the revoke is deleted by it.
//!
//! The memory is replicated state: written in the same write batch as the
//! revoke's apply, in the `meta` column family under the range's prefix
//! `revoked/<range id>`; carried in raft snapshots (`RangeSnapshotHeader`);
//! inherited by the new range of a split; deleted with the replica.
//!
//! **Bound:** a range keeps the [`REVOKED_KEEP`] most recent revocations and
//! forgets the oldest. A late Put is still refused as long as fewer than that
//! many other leases were revoked while it was in flight (a request lives for
//! seconds; that is over 100 revocations a second).
//!
//! A lease id granted again after its revocation (etcd allows that for
//! explicit ids) is forgotten first: placement sends `KV_LEASE_GRANT` to every
//! range before granting it.
//!
//! Layout under `revoked/<range id, 8 bytes BE>`:
//! - `n` → the `seq` of the next revocation (u64 BE);
//! - `s <seq>` → the lease id revoked at that position (i64 BE);
//! - `l <lease id>` → its `seq` (the membership index a Put looks up).
//!
//! Recording revocation `seq` drops revocation `seq - REVOKED_KEEP`, so at most
//! `REVOKED_KEEP` are kept, and every replica drops the same one.

use prost::Message as _;
use strata_proto::errors;
use strata_proto::etcd::PbLeaseGrantRequest;
use strata_proto::strata::RevokedLease;
use tonic::Status;

use crate::apply::WriteExec;
use crate::mvcc::KeyRange;
use crate::storage::{Cf, Engine, IterOptions, Reader, WriteBatch};

/// Revocations a range remembers (the most recent ones).
pub const REVOKED_KEEP: u64 = 1024;

/// Apply of `KV_LEASE_REVOKE` in range `range_id`: deletes the keys in `kr`
/// attached to `lease` (into `ex`) and, if that worked, stages into `wb` that
/// the lease was revoked here. Answers the number of keys deleted.
pub fn revoke(
    ex: &mut WriteExec<'_>,
    db: &dyn Engine,
    range_id: u64,
    kr: &KeyRange,
    lease: i64,
    wb: &mut WriteBatch,
) -> anyhow::Result<Result<usize, Status>> {
    let res = ex.revoke_lease(kr, lease);
    if res.is_ok() {
        Revoked::of(db, range_id).stage_revoke(wb, lease)?;
    }
    Ok(res)
}

/// Apply of `KV_LEASE_GRANT` (`request`: a LeaseGrantRequest): the lease id
/// is being granted again, so this range forgets it was revoked.
pub fn grant(
    db: &dyn Engine,
    range_id: u64,
    request: &[u8],
    wb: &mut WriteBatch,
) -> anyhow::Result<Result<(), Status>> {
    let req = match PbLeaseGrantRequest::decode(request) {
        Ok(r) => r,
        Err(e) => {
            return Ok(Err(Status::invalid_argument(format!(
                "strata: bad lease grant request: {e}"
            ))))
        }
    };
    Revoked::of(db, range_id).stage_forget(wb, req.id)?;
    Ok(Ok(()))
}

/// Whether a list of revocations (oldest first) and the next `seq` could be
/// a range's memory (checked before one from a snapshot is installed).
pub fn valid_list(entries: &[RevokedLease], next: u64) -> bool {
    entries.len() as u64 <= REVOKED_KEEP
        && entries
            .iter()
            .all(|e| e.lease != 0 && e.seq < next && next - e.seq <= REVOKED_KEEP)
        && entries.windows(2).all(|w| w[0].seq < w[1].seq)
}

/// One range's revoked leases, read from and staged into the node's RocksDB.
#[derive(Clone, Copy)]
pub struct Revoked<'a> {
    db: &'a dyn Reader,
    range_id: u64,
}

fn be_u64(b: &[u8]) -> anyhow::Result<u64> {
    Ok(u64::from_be_bytes(b.try_into().map_err(|_| {
        anyhow::anyhow!("corrupt revoked-lease record ({} bytes)", b.len())
    })?))
}

impl<'a> Revoked<'a> {
    pub fn of(db: &'a dyn Reader, range_id: u64) -> Self {
        Self { db, range_id }
    }

    fn prefix(&self) -> Vec<u8> {
        let mut k = b"revoked/".to_vec();
        k.extend_from_slice(&self.range_id.to_be_bytes());
        k
    }

    fn key(&self, tag: u8, n: u64) -> Vec<u8> {
        let mut k = self.prefix();
        k.push(tag);
        k.extend_from_slice(&n.to_be_bytes());
        k
    }

    fn next_key(&self) -> Vec<u8> {
        let mut k = self.prefix();
        k.push(b'n');
        k
    }

    fn get(&self, key: &[u8]) -> anyhow::Result<Option<u64>> {
        self.db.get(Cf::Meta, key)?.map(|b| be_u64(&b)).transpose()
    }

    /// Was `lease` revoked in this range (among the most recent revocations)?
    pub fn contains(&self, lease: i64) -> anyhow::Result<bool> {
        Ok(lease != 0 && self.get(&self.key(b'l', lease as u64))?.is_some())
    }

    /// Apply's check of a Put attached to `lease`.
    pub fn check_put(&self, lease: i64) -> Result<(), Status> {
        match self.contains(lease) {
            Ok(false) => Ok(()),
            Ok(true) => Err(errors::lease_not_found()),
            Err(e) => Err(Status::internal(format!("strata: storage error: {e:#}"))),
        }
    }

    /// Stages "`lease` was revoked here" into `wb` (with the revoke's apply),
    /// dropping the oldest revocation beyond [`REVOKED_KEEP`].
    pub fn stage_revoke(&self, wb: &mut WriteBatch, lease: i64) -> anyhow::Result<()> {
        if lease == 0 || self.contains(lease)? {
            return Ok(()); // no lease, or revoked again (placement retried)
        }
        let seq = self.get(&self.next_key())?.unwrap_or(0);
        let next = seq
            .checked_add(1)
            .ok_or_else(|| anyhow::anyhow!("revoked-lease sequence exhausted"))?;
        wb.put(Cf::Meta, self.key(b's', seq), lease.to_be_bytes());
        wb.put(Cf::Meta, self.key(b'l', lease as u64), seq.to_be_bytes());
        wb.put(Cf::Meta, self.next_key(), next.to_be_bytes());
        if let Some(old) = seq.checked_sub(REVOKED_KEEP) {
            if let Some(old_lease) = self.get(&self.key(b's', old))? {
                wb.delete(Cf::Meta, self.key(b's', old));
                wb.delete(Cf::Meta, self.key(b'l', old_lease));
            }
        }
        Ok(())
    }

    /// Stages "forget that `lease` was revoked" (it is being granted again).
    pub fn stage_forget(&self, wb: &mut WriteBatch, lease: i64) -> anyhow::Result<()> {
        if let Some(seq) = self.get(&self.key(b'l', lease as u64))? {
            wb.delete(Cf::Meta, self.key(b'l', lease as u64));
            wb.delete(Cf::Meta, self.key(b's', seq));
        }
        Ok(())
    }

    /// Every remembered revocation, oldest first, and the next `seq` (what a
    /// snapshot carries).
    pub fn load(&self) -> anyhow::Result<(Vec<RevokedLease>, u64)> {
        let mut from = self.prefix();
        from.push(b's');
        let mut it = self
            .db
            .iter_opt(Cf::Meta, IterOptions::range(Some(from.clone()), None));
        it.seek(&from);
        let mut out = Vec::new();
        while it.valid() {
            let Some(seq) = it.key().strip_prefix(from.as_slice()) else {
                break;
            };
            out.push(RevokedLease {
                seq: be_u64(seq)?,
                lease: be_u64(it.value())? as i64,
            });
            it.next();
        }
        it.status()?;
        drop(it);
        Ok((out, self.get(&self.next_key())?.unwrap_or(0)))
    }

    /// Stages the deletion of everything this range remembers.
    pub fn stage_delete_all(&self, wb: &mut WriteBatch) -> anyhow::Result<()> {
        let prefix = self.prefix();
        let mut it = self.db.iter(Cf::Meta);
        it.seek(&prefix);
        while it.valid() && it.key().starts_with(&prefix) {
            wb.delete(Cf::Meta, it.key());
            it.next();
        }
        it.status()?;
        Ok(())
    }

    /// Stages exactly `entries` and `next` as this range's memory (a received
    /// snapshot, or the parent's memory for a split's new range). Input from
    /// the network: checked, never trusted.
    pub fn stage_replace(
        &self,
        wb: &mut WriteBatch,
        entries: &[RevokedLease],
        next: u64,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(
            valid_list(entries, next),
            "corrupt revoked-lease list ({} entries, next {next})",
            entries.len()
        );
        self.stage_delete_all(wb)?;
        for e in entries {
            wb.put(Cf::Meta, self.key(b's', e.seq), e.lease.to_be_bytes());
            wb.put(
                Cf::Meta,
                self.key(b'l', e.lease as u64),
                e.seq.to_be_bytes(),
            );
        }
        if next > 0 {
            wb.put(Cf::Meta, self.next_key(), next.to_be_bytes());
        }
        Ok(())
    }

    /// Stages a copy of this range's memory as `child`'s (split).
    pub fn stage_copy_to(&self, wb: &mut WriteBatch, child: u64) -> anyhow::Result<()> {
        let (entries, next) = self.load()?;
        Revoked::of(self.db, child).stage_replace(wb, &entries, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(db: &dyn Engine, f: impl FnOnce(&mut WriteBatch)) {
        let mut wb = WriteBatch::default();
        f(&mut wb);
        db.write(&wb, false).unwrap();
    }

    fn revoke(db: &dyn Engine, range: u64, lease: i64) {
        write(db, |wb| {
            Revoked::of(db, range).stage_revoke(wb, lease).unwrap()
        });
    }

    #[test]
    fn keeps_the_most_recent_revocations_only() {
        let t = crate::storage::testing::TestEngine::memory();
        let db = t.engine();
        let db = &*db;
        let r = Revoked::of(db, 7);
        let extra = 10;
        let leases: Vec<i64> = (1..=(REVOKED_KEEP as i64 + extra))
            .map(|i| i * 1000)
            .collect();
        for &l in &leases {
            revoke(db, 7, l);
        }
        let (kept, next) = r.load().unwrap();
        assert_eq!(kept.len() as u64, REVOKED_KEEP, "the bound holds");
        assert_eq!(next, leases.len() as u64);
        // The oldest ones were dropped, in order; the rest are kept, in order.
        for &l in &leases[..extra as usize] {
            assert!(!r.contains(l).unwrap(), "lease {l} should have been pruned");
            assert!(r.check_put(l).is_ok());
        }
        for &l in &leases[extra as usize..] {
            assert!(r.contains(l).unwrap(), "lease {l} should be kept");
        }
        let order: Vec<i64> = kept.iter().map(|e| e.lease).collect();
        assert_eq!(order, leases[extra as usize..]);
        let err = r.check_put(*leases.last().unwrap()).unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (
                tonic::Code::NotFound,
                "etcdserver: requested lease not found"
            )
        );
        // Other ranges remember nothing of it; no lease is never revoked.
        assert!(!Revoked::of(db, 8).contains(leases[extra as usize]).unwrap());
        assert!(!r.contains(0).unwrap());
    }

    #[test]
    fn revoke_again_forget_copy_and_delete() {
        let t = crate::storage::testing::TestEngine::memory();
        let db = t.engine();
        let db = &*db;
        let r = Revoked::of(db, 3);
        for l in [5, 6, 5, 0, 7] {
            revoke(db, 3, l);
        }
        // A repeated revoke and "no lease" take no place.
        let (kept, next) = r.load().unwrap();
        let as_pairs: Vec<(u64, i64)> = kept.iter().map(|e| (e.seq, e.lease)).collect();
        assert_eq!((as_pairs, next), (vec![(0, 5), (1, 6), (2, 7)], 3));
        // Granted again: forgotten.
        write(db, |wb| r.stage_forget(wb, 6).unwrap());
        assert!(!r.contains(6).unwrap() && r.contains(5).unwrap());
        // A split's new range inherits exactly the same memory.
        write(db, |wb| r.stage_copy_to(wb, 4).unwrap());
        assert_eq!(Revoked::of(db, 4).load().unwrap(), r.load().unwrap());
        // A snapshot replaces what a replica had.
        let snap = vec![RevokedLease { seq: 9, lease: 42 }];
        write(db, |wb| r.stage_replace(wb, &snap, 10).unwrap());
        assert_eq!(r.load().unwrap(), (snap, 10));
        assert!(!r.contains(5).unwrap() && r.contains(42).unwrap());
        // Corrupt input is an error, not a panic.
        let bad = vec![RevokedLease { seq: 10, lease: 1 }];
        let mut wb = WriteBatch::default();
        assert!(r.stage_replace(&mut wb, &bad, 10).is_err());
        // A removed replica forgets everything.
        write(db, |wb| r.stage_delete_all(wb).unwrap());
        assert_eq!(r.load().unwrap(), (vec![], 0));
        assert!(
            Revoked::of(db, 4).contains(5).unwrap(),
            "only range 3's memory"
        );
    }
}
