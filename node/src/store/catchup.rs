//! Replicas a node is listed in but holds no data for — **uninitialized
//! replicas** — and how they catch up.
//!
//! A node can be listed in a range's descriptor without hosting the range:
//! it is being added as a learner, or it lagged past its range's log
//! truncation while the range split. Such a node catches up on the parent
//! with a snapshot, which carries the post-split descriptor but not the split
//! itself, so no replica of the new range is created by it. The new range's
//! descriptor then names a voter that does not exist. This module makes the
//! node end up hosting exactly what the descriptors say.
//!
//! 1. **Learning.** Placement compares the descriptors with what each node
//!    reports hosting, and tells a node about a range that lists it but that
//!    it does not host (`lib.rs`, heartbeat). The node creates an
//!    *uninitialized* replica: its peer id from the descriptor, raft state
//!    with no voters and an empty log, no data. It is not published in
//!    `ranges`, so it serves nothing and is not reported; with no voters it
//!    never campaigns.
//! 2. **Only a snapshot initializes it.** The node may still hold a stale
//!    copy of the range's keys (the parent's, from before the split); that
//!    copy must never be served, nor have the new range's log replayed onto
//!    it (the log lacks everything the range inherited at the split). A
//!    split-created range's log starts at `SPLIT_INIT_INDEX`, and every
//!    other log is truncated past index 1 once applied (`log_gc.rs`), so a
//!    leader never finds the entries an empty log lacks: it sends a snapshot
//!    of the range, whose install replaces every version in the span.
//! 3. **Initialized replicas never overlap.** A snapshot is stepped only if
//!    its span overlaps no *other initialized* replica here. A split
//!    partitions a span, so with this rule no two initialized replicas on a
//!    node ever overlap, and installing a snapshot (which deletes its span
//!    first) or destroying a replica never touches another one's data. The
//!    new range's snapshot, arriving while this node's parent replica still
//!    covers its span, waits (the leader resends it) until the parent split
//!    or narrowed.
//! 4. **Nothing is left behind.** A snapshot that narrows a replica (the
//!    parent's, past a split) deletes in the same batch the data of the old
//!    span that no other initialized replica here covers: the stale copy is
//!    gone before any replica could serve it, and data of a range that moved
//!    elsewhere does not linger.
//! 5. **The split applies after all.** If the parent here applies the split
//!    from its log (it was merely slow), the uninitialized replica is
//!    replaced by the split's own child, which starts from the parent's data
//!    at the split exactly as on every other replica (the split's batch
//!    writes its raft state, keeping the uninitialized replica's term and
//!    vote). The swap waits for the end of the Ready round: the
//!    uninitialized replica's own Ready of that round must complete first.
//!
//! An uninitialized replica holds no data, so dropping one (its node was
//! re-added under a new peer id, or the split's child replaces it) deletes
//! raft state only — never data in its span, which may be its parent's.

use prost::Message as _;
use strata_proto::strata::RangeDescriptor;

use super::{desc_range, meta, Store};
use crate::mvcc::KeyRange;
use crate::storage::{Cf, WriteBatch};

/// The descriptor of a snapshot's data (`RangeSnapshotData.desc`), decoded
/// without its keys and values.
#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotDesc {
    #[prost(message, optional, tag = "1")]
    desc: Option<RangeDescriptor>,
}

fn snapshot_desc(data: &[u8]) -> Option<RangeDescriptor> {
    SnapshotDesc::decode(data).ok()?.desc
}

fn overlaps(a: &KeyRange, b: &KeyRange) -> bool {
    let before = |x: &KeyRange, y: &KeyRange| x.end.as_ref().is_some_and(|e| *e <= y.start);
    !a.is_empty() && !b.is_empty() && !before(a, b) && !before(b, a)
}

/// The parts of `old` that none of `covered` covers, in key order.
pub(super) fn uncovered(old: &KeyRange, covered: &[KeyRange]) -> Vec<KeyRange> {
    let mut cov: Vec<&KeyRange> = covered.iter().filter(|k| !k.is_empty()).collect();
    cov.sort_by(|a, b| a.start.cmp(&b.start));
    let mut out = Vec::new();
    if old.is_empty() {
        return out;
    }
    // Everything of `old` before `cur` is covered or already in `out`.
    let mut cur = old.start.clone();
    let before_end = |k: &[u8]| old.end.as_ref().is_none_or(|e| k < e.as_slice());
    for c in cov {
        if c.end.as_ref().is_some_and(|e| *e <= cur) {
            continue;
        }
        if c.start > cur {
            let gap_end = match &old.end {
                Some(e) if *e < c.start => e.clone(),
                _ => c.start.clone(),
            };
            out.push(KeyRange {
                start: cur.clone(),
                end: Some(gap_end),
            });
        }
        match &c.end {
            None => return out,
            Some(e) => cur = e.clone(),
        }
        if !before_end(&cur) {
            return out;
        }
    }
    out.push(KeyRange {
        start: cur,
        end: old.end.clone(),
    });
    out
}

impl Store {
    /// Placement lists this node in `desc`: create the replica if it is not
    /// here (see the module doc).
    pub(super) fn on_create(&mut self, desc: RangeDescriptor) {
        // A replica removed from this node is not recreated from a
        // directory entry that predates its removal.
        let epoch = desc.epoch.unwrap_or_default();
        if self
            .destroyed
            .get(&desc.id)
            .is_some_and(|v| *v >= epoch.conf_ver)
        {
            return;
        }
        let Some(me) = desc.peers.iter().find(|p| p.node_id == self.node_id) else {
            return;
        };
        if let Some(r) = self.replicas.get(&desc.id) {
            if r.initialized || r.shared.peer_id == me.id {
                return;
            }
            // An uninitialized replica of a peer of ours that was removed
            // from the range; this node was added again under a new peer id.
            tracing::info!(
                range = desc.id,
                old_peer = r.shared.peer_id,
                peer = me.id,
                "replacing an uninitialized replica"
            );
            if let Err(e) = self.drop_uninitialized(desc.id, true) {
                tracing::warn!(range = desc.id, "cannot drop a replica: {e:#}");
                return;
            }
        }
        // The first range's log from index 1 is its whole history, so its
        // first replicas start with its voters; any other starts empty.
        let bootstrap = desc.id == 1 && epoch.conf_ver == 1 && epoch.version == 1;
        if let Err(e) = self.create(desc, bootstrap) {
            tracing::warn!("cannot create replica: {e:#}");
        }
    }

    /// The initialized replica other than `range_id` whose span a snapshot
    /// for `range_id` would overlap, if any (such a snapshot is refused).
    pub(super) fn snapshot_overlap(&self, range_id: u64, data: &[u8]) -> Option<u64> {
        let span = desc_range(&snapshot_desc(data)?);
        self.replicas
            .iter()
            .filter(|(id, r)| **id != range_id && r.initialized)
            .find(|(_, r)| overlaps(&span, &desc_range(&r.shared.desc.read())))
            .map(|(id, _)| *id)
    }

    /// Stages, with a snapshot for `range_id`, the deletion of the data its
    /// replica here covered before that neither the snapshot's span nor any
    /// other initialized replica covers.
    pub(super) fn stage_leftovers(
        &self,
        wb: &mut WriteBatch,
        range_id: u64,
        snap_data: &[u8],
    ) -> anyhow::Result<()> {
        let Some(r) = self.replicas.get(&range_id).filter(|r| r.initialized) else {
            return Ok(()); // held nothing
        };
        let Some(new) = snapshot_desc(snap_data) else {
            return Ok(()); // refused by `stage_snapshot_data`
        };
        let old = desc_range(&r.shared.desc.read());
        let mut covered = vec![desc_range(&new)];
        covered.extend(
            self.replicas
                .iter()
                .filter(|(id, o)| **id != range_id && o.initialized)
                .map(|(_, o)| desc_range(&o.shared.desc.read())),
        );
        for kr in uncovered(&old, &covered) {
            tracing::info!(range = range_id, span = ?kr, "deleting data no replica here covers");
            crate::snapshot::stage::delete_data(&*self.db, wb, &kr)?;
        }
        Ok(())
    }

    /// A snapshot's install is durable: an uninitialized replica now holds
    /// its range's data and is published.
    pub(super) fn on_initialized(&mut self, range_id: u64) {
        let Some(r) = self.replicas.get_mut(&range_id) else {
            return;
        };
        if !r.initialized {
            r.initialized = true;
            self.ranges.insert(range_id, r.shared.clone());
            tracing::info!(range = range_id, "replica initialized by a snapshot");
        }
    }

    /// Forgets an uninitialized replica; with `wipe`, deletes its raft state
    /// and records too (without, the caller has replaced them). Never its
    /// span's data: it holds none.
    pub(super) fn drop_uninitialized(&mut self, range_id: u64, wipe: bool) -> anyhow::Result<()> {
        let Some(r) = self.replicas.get(&range_id) else {
            return Ok(());
        };
        anyhow::ensure!(!r.initialized, "range {range_id} is initialized here");
        let r = self.replicas.remove(&range_id).expect("replica");
        self.touched.remove(&range_id);
        if wipe {
            let mut wb = WriteBatch::default();
            r.raw.store().stage_destroy(&mut wb);
            for k in meta::all_keys(range_id) {
                wb.delete(Cf::Meta, k);
            }
            crate::lease::Revoked::of(&*self.db, range_id).stage_delete_all(&mut wb)?;
            self.db.write(&wb, true)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kr(start: &str, end: &str) -> KeyRange {
        KeyRange {
            start: start.as_bytes().to_vec(),
            end: (!end.is_empty()).then(|| end.as_bytes().to_vec()),
        }
    }

    fn spans(v: &[KeyRange]) -> Vec<(String, String)> {
        v.iter()
            .map(|k| {
                (
                    String::from_utf8_lossy(&k.start).into_owned(),
                    String::from_utf8_lossy(k.end.as_deref().unwrap_or_default()).into_owned(),
                )
            })
            .collect()
    }

    fn s(a: &str, b: &str) -> (String, String) {
        (a.into(), b.into())
    }

    #[test]
    fn a_narrowed_replica_leaves_what_nothing_covers() {
        // [a, ∞) narrowed to [a, m): the rest goes.
        assert_eq!(
            spans(&uncovered(&kr("a", ""), &[kr("a", "m")])),
            vec![s("m", "")]
        );
        // … except what another replica here covers.
        assert_eq!(
            spans(&uncovered(&kr("a", ""), &[kr("a", "m"), kr("t", "")])),
            vec![s("m", "t")]
        );
        assert_eq!(
            spans(&uncovered(&kr("a", "z"), &[kr("c", "m"), kr("p", "q")])),
            vec![s("a", "c"), s("m", "p"), s("q", "z")]
        );
        // Unsorted, overlapping and out-of-span covers.
        assert_eq!(
            spans(&uncovered(
                &kr("b", "y"),
                &[kr("x", ""), kr("a", "c"), kr("c", "f"), kr("e", "g")]
            )),
            vec![s("g", "x")]
        );
        // Fully covered, or nothing to cover.
        assert!(uncovered(&kr("a", "m"), &[kr("", "")]).is_empty());
        assert!(uncovered(&kr("a", "m"), &[kr("a", "m")]).is_empty());
        assert!(uncovered(&kr("m", "m"), &[]).is_empty());
        assert_eq!(spans(&uncovered(&kr("a", "m"), &[])), vec![s("a", "m")]);
        // Covers entirely before or after the span.
        assert_eq!(
            spans(&uncovered(&kr("d", "f"), &[kr("a", "c"), kr("g", "")])),
            vec![s("d", "f")]
        );
    }

    #[test]
    fn overlap_is_of_non_empty_half_open_spans() {
        assert!(overlaps(&kr("a", "m"), &kr("l", "")));
        assert!(overlaps(&kr("", ""), &kr("q", "r")));
        assert!(!overlaps(&kr("a", "m"), &kr("m", "")));
        assert!(!overlaps(&kr("m", ""), &kr("a", "m")));
        assert!(!overlaps(&kr("c", "c"), &kr("a", "z")));
    }
}
