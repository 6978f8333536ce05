//! MVCC storage in the `data` column family.
//!
//! A version of a user key is stored at `enc(key) ‖ !revision` (big endian), where
//! `enc` is an order-preserving, self-delimiting escape of the key (every `0x00`
//! becomes `0x00 0xFF`, and `0x00 0x01` terminates). Keys therefore sort by user
//! key first, and versions of one key from newest to oldest, so "the version at or
//! below revision R" is one seek. Deletions are tombstone versions.

use std::sync::Arc;

use prost::Message;
use strata_proto::etcd::PbKeyValue;
pub use strata_proto::etcdutil::KeyRange;
use strata_proto::strata::MvccValue;

use crate::storage::{Cf, Engine, IterOptions, Reader, Snapshot, WriteBatch};

const ESC: u8 = 0x00;
const ESC_ZERO: u8 = 0xFF;
const ESC_END: u8 = 0x01;

/// Order-preserving escape of a user key.
pub fn enc_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    for &b in key {
        out.push(b);
        if b == ESC {
            out.push(ESC_ZERO);
        }
    }
    out.push(ESC);
    out.push(ESC_END);
    out
}

/// Splits a data key into (user key, revision); `None` if malformed.
pub fn dec_key(k: &[u8]) -> Option<(Vec<u8>, i64)> {
    let mut user = Vec::with_capacity(k.len());
    let mut i = 0;
    while i < k.len() {
        let b = k[i];
        if b == ESC {
            match *k.get(i + 1)? {
                ESC_ZERO => user.push(0),
                ESC_END => {
                    let rest = k.get(i + 2..)?;
                    if rest.len() != 8 {
                        return None;
                    }
                    let inv = u64::from_be_bytes(rest.try_into().ok()?);
                    return Some((user, (u64::MAX - inv) as i64));
                }
                _ => return None,
            }
            i += 2;
        } else {
            user.push(b);
            i += 1;
        }
    }
    None
}

/// How far past a split limit `Mvcc::split_scan` reads to find the middle of
/// an oversized range (see there).
const SPLIT_SCAN_KEYS: u64 = 1_000_000;
const SPLIT_SCAN_BYTES: u64 = 256 * 1024 * 1024;

/// What one stored version weighs in a range's size: its user key, its
/// encoded value and its revision.
pub fn version_size(user_key: &[u8], encoded_value: &[u8]) -> u64 {
    (user_key.len() + encoded_value.len() + 8) as u64
}

pub fn version_key(key: &[u8], rev: i64) -> Vec<u8> {
    let mut k = enc_key(key);
    k.extend_from_slice(&(u64::MAX - rev as u64).to_be_bytes());
    k
}

/// One stored version.
#[derive(Clone, Debug, PartialEq)]
pub struct Version {
    pub key: Vec<u8>,
    pub mod_revision: i64,
    pub value: MvccValue,
}

impl Version {
    pub fn to_kv(&self) -> PbKeyValue {
        PbKeyValue {
            key: self.key.clone(),
            create_revision: self.value.create_revision,
            mod_revision: self.mod_revision,
            version: self.value.version,
            value: self.value.value.clone(),
            lease: self.value.lease,
        }
    }
}

/// MVCC reads over the engine's current state, or over a snapshot of it (see
/// [`Mvcc::snapshot`]); writes are staged into a [`WriteBatch`].
#[derive(Clone)]
pub struct Mvcc {
    engine: Arc<dyn Engine>,
    /// Set on a view made by [`Mvcc::snapshot`]: reads see only this.
    snapshot: Option<Arc<dyn Snapshot>>,
}

impl Mvcc {
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self {
            engine,
            snapshot: None,
        }
    }

    /// A view whose reads all see the state of this moment, whatever is
    /// written (or compacted away) meanwhile. Several reads that must agree
    /// with each other go through one view.
    pub fn snapshot(&self) -> Mvcc {
        Mvcc {
            engine: self.engine.clone(),
            snapshot: Some(self.engine.snapshot()),
        }
    }

    fn reader(&self) -> &dyn Reader {
        match &self.snapshot {
            Some(s) => &**s,
            None => &*self.engine,
        }
    }

    /// Calls `f` for every stored version in `kr` (newest first within a key),
    /// stopping when `f` returns false.
    fn scan(
        &self,
        kr: &KeyRange,
        mut f: impl FnMut(Vec<u8>, i64, &[u8]) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        if kr.is_empty() {
            return Ok(());
        }
        let end = kr.end.as_ref().map(|e| enc_key(e));
        let mut it = self
            .reader()
            .iter_opt(Cf::Data, IterOptions::range(None, end));
        it.seek(&enc_key(&kr.start));
        while it.valid() {
            let (k, v) = (it.key(), it.value());
            let (user, rev) =
                dec_key(k).ok_or_else(|| anyhow::anyhow!("corrupt MVCC key {k:?}"))?;
            if !f(user, rev, v)? {
                break;
            }
            it.next();
        }
        it.status()?;
        Ok(())
    }

    /// Live keys of `kr` as of revision `rev` (latest version ≤ rev, not deleted),
    /// in key order.
    pub fn range_at(&self, kr: &KeyRange, rev: i64) -> anyhow::Result<Vec<Version>> {
        Ok(self.range_at_first(kr, rev, usize::MAX, false)?.0)
    }

    /// Like [`Mvcc::range_at`], keeping only the first `keep` live keys:
    /// answers them and how many live keys `kr` holds at `rev` (a limited
    /// or count-only read holds at most `keep` versions, not the range).
    /// Without `count_all` the scan stops at the `keep`-th live key (and
    /// the count is of the keys kept).
    pub fn range_at_first(
        &self,
        kr: &KeyRange,
        rev: i64,
        keep: usize,
        count_all: bool,
    ) -> anyhow::Result<(Vec<Version>, i64)> {
        let mut out = Vec::new();
        let mut count = 0i64;
        let mut last: Option<Vec<u8>> = None;
        self.scan(kr, |user, r, v| {
            if r > rev || last.as_deref() == Some(user.as_slice()) {
                return Ok(true);
            }
            let value = MvccValue::decode(v)?;
            last = Some(user.clone());
            if !value.tombstone {
                count += 1;
                if out.len() < keep {
                    out.push(Version {
                        key: user,
                        mod_revision: r,
                        value,
                    });
                }
                if !count_all && out.len() >= keep {
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        Ok((out, count))
    }

    /// The live version of `key` at revision `rev`.
    /// The iterator is bounded by the key's own versions.
    pub fn get_at(&self, key: &[u8], rev: i64) -> anyhow::Result<Option<Version>> {
        let mut past_versions = enc_key(key);
        if let Some(last) = past_versions.last_mut() {
            *last = ESC_END + 1;
        }
        let mut it = self
            .reader()
            .iter_opt(Cf::Data, IterOptions::range(None, Some(past_versions)));
        it.seek(&version_key(key, rev));
        if it.valid() {
            let (k, v) = (it.key(), it.value());
            if let Some((user, r)) = dec_key(k) {
                if user == key {
                    let value = MvccValue::decode(v)?;
                    return Ok((!value.tombstone).then_some(Version {
                        key: user,
                        mod_revision: r,
                        value,
                    }));
                }
            }
        }
        it.status()?;
        Ok(None)
    }

    /// Every version in `kr` with revision in `[from, to]`, each with the
    /// key's previous version (if live). For watch catch-up, so in the order
    /// a watch delivers them: by revision, then by the op that wrote them
    /// (`MvccValue::op`: op order within a txn), then by key (the order of
    /// one delete's keys, and of data written before versions had an op).
    /// etcd's history is keyed by (revision, sub-revision): the same order.
    pub fn history(
        &self,
        kr: &KeyRange,
        from: i64,
        to: i64,
        max_versions: usize,
    ) -> anyhow::Result<Vec<(Version, Option<Version>)>> {
        let mut out = Vec::new();
        // Versions of one key arrive newest first: keep the previous one pending
        // so each version can be paired with the one just older than it.
        let mut pending: Option<Version> = None;
        let mut truncated = false;
        self.scan(kr, |user, r, v| {
            let cur = Version {
                key: user,
                mod_revision: r,
                value: MvccValue::decode(v)?,
            };
            if let Some(p) = pending.take() {
                let prev = (p.key == cur.key && !cur.value.tombstone).then(|| cur.clone());
                out.push((p, prev));
            }
            if r >= from && r <= to {
                pending = Some(cur);
            }
            if out.len() > max_versions {
                truncated = true;
                return Ok(false);
            }
            Ok(true)
        })?;
        if let Some(p) = pending.take() {
            out.push((p, None));
        }
        anyhow::ensure!(!truncated, "watch history too large to replay");
        out.sort_by(|(a, _), (b, _)| {
            (a.mod_revision, a.value.op, &a.key).cmp(&(b.mod_revision, b.value.op, &b.key))
        });
        Ok(out)
    }

    /// Counts live keys and stored bytes (all versions) of `kr` and picks a
    /// split key once either passes its limit. Returns (keys, bytes, split key).
    ///
    /// The scan goes on past the limit, up to a budget (`SPLIT_SCAN_KEYS` keys,
    /// `SPLIT_SCAN_BYTES` bytes, or twice the limit when that is larger), and
    /// the split key is the live key in the middle of what was scanned (by the
    /// measure whose limit was passed). So a range far over the limit — e.g.
    /// after an operator lowers the thresholds — halves on each check and
    /// reaches the limit in a logarithmic number of splits, instead of shedding
    /// a limit-sized piece per check; and both halves of a range just over the
    /// limit stay under it.
    pub fn split_scan(
        &self,
        kr: &KeyRange,
        max_keys: u64,
        max_bytes: u64,
    ) -> anyhow::Result<(u64, u64, Option<Vec<u8>>)> {
        let budget_keys = SPLIT_SCAN_KEYS.max(max_keys.saturating_mul(2));
        let budget_bytes = SPLIT_SCAN_BYTES.max(max_bytes.saturating_mul(2));
        // Pass 1: measure (within the budget).
        let (mut keys, mut bytes) = (0u64, 0u64);
        let mut last: Option<Vec<u8>> = None;
        self.scan(kr, |user, _rev, v| {
            bytes += version_size(&user, v);
            if last.as_deref() != Some(user.as_slice()) {
                if !MvccValue::decode(v)?.tombstone {
                    keys += 1;
                }
                last = Some(user);
            }
            Ok(keys < budget_keys && bytes < budget_bytes)
        })?;
        let by_keys = keys > max_keys;
        if !by_keys && bytes <= max_bytes {
            return Ok((keys, bytes, None));
        }
        // Pass 2: the live key at half of what pass 1 measured.
        let (half_keys, half_bytes) = (keys / 2 + 1, bytes / 2);
        let (mut k2, mut b2) = (0u64, 0u64);
        let mut last: Option<Vec<u8>> = None;
        let mut split = None;
        self.scan(kr, |user, _rev, v| {
            b2 += version_size(&user, v);
            if last.as_deref() == Some(user.as_slice()) {
                return Ok(true);
            }
            last = Some(user.clone());
            if MvccValue::decode(v)?.tombstone {
                return Ok(true);
            }
            k2 += 1;
            if (by_keys && k2 >= half_keys) || (!by_keys && b2 > half_bytes) {
                split = Some(user);
                return Ok(false);
            }
            Ok(true)
        })?;
        // Never split at the range's first key (the left half would be empty).
        let split = split.filter(|k| *k != kr.start);
        Ok((keys, bytes, split))
    }

    /// The live key in the middle of `kr` (counting at most `max_keys` keys),
    /// or `None` when the range has fewer than two live keys.
    pub fn median_key(&self, kr: &KeyRange, max_keys: u64) -> anyhow::Result<Option<Vec<u8>>> {
        let live_keys = |stop_after: u64| -> anyhow::Result<Vec<Vec<u8>>> {
            let mut out = Vec::new();
            let mut last: Option<Vec<u8>> = None;
            self.scan(kr, |user, _rev, v| {
                if last.as_deref() == Some(user.as_slice()) {
                    return Ok(true);
                }
                last = Some(user.clone());
                if !MvccValue::decode(v)?.tombstone {
                    out.push(user);
                }
                Ok((out.len() as u64) < stop_after)
            })?;
            Ok(out)
        };
        let count = live_keys(max_keys)?.len() as u64;
        if count < 2 {
            return Ok(None);
        }
        let half = live_keys(count / 2 + 1)?;
        Ok(half.last().cloned().filter(|k| *k != kr.start))
    }

    /// A hash of the state of `kr` at revision `rev`: every key live at
    /// `rev` with its value, revisions, version and lease, and how many keys
    /// that is. Each key is hashed alone (CRC-32) and the hashes are added
    /// (wrapping): the hash of a span is the sum of its parts', so hashes of
    /// ranges add up to the same total however the keyspace is split.
    /// Streams: memory stays bounded whatever the span holds.
    pub fn hash_at(&self, kr: &KeyRange, rev: i64) -> anyhow::Result<(u32, u64)> {
        let (mut sum, mut keys) = (0u32, 0u64);
        let mut last: Option<Vec<u8>> = None;
        self.scan(kr, |user, r, v| {
            if r > rev || last.as_deref() == Some(user.as_slice()) {
                return Ok(true);
            }
            let value = MvccValue::decode(v)?;
            if !value.tombstone {
                let mut h = crc32fast::Hasher::new();
                h.update(&(user.len() as u64).to_be_bytes());
                h.update(&user);
                for n in [r, value.create_revision, value.version, value.lease] {
                    h.update(&n.to_be_bytes());
                }
                h.update(&value.value);
                sum = sum.wrapping_add(h.finalize());
                keys += 1;
            }
            last = Some(user);
            Ok(true)
        })?;
        Ok((sum, keys))
    }

    /// Stages one version; returns its size as [`Mvcc::split_scan`] counts
    /// it ([`version_size`]).
    pub fn stage_version(
        &self,
        wb: &mut WriteBatch,
        key: &[u8],
        rev: i64,
        value: &MvccValue,
    ) -> u64 {
        let v = value.encode_to_vec();
        let size = version_size(key, &v);
        wb.put(Cf::Data, version_key(key, rev), v);
        size
    }

    /// Removes history below `rev` in `kr`: each key keeps every version above
    /// `rev` and its latest version at or below it, unless that one is a tombstone.
    pub fn stage_compact(
        &self,
        wb: &mut WriteBatch,
        kr: &KeyRange,
        rev: i64,
    ) -> anyhow::Result<()> {
        let mut kept_at_or_below: Option<Vec<u8>> = None;
        self.scan(kr, |user, r, v| {
            if r > rev {
                return Ok(true);
            }
            if kept_at_or_below.as_deref() == Some(user.as_slice()) {
                wb.delete(Cf::Data, version_key(&user, r));
            } else {
                let value = MvccValue::decode(v)?;
                if value.tombstone {
                    wb.delete(Cf::Data, version_key(&user, r));
                }
                kept_at_or_below = Some(user);
            }
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests;
