//! Applying committed entries.
//!
//! `exec` decides what one command does: it stages the command's writes into
//! the entry's batch and returns its effects as a value ([`Applied`]); it
//! publishes nothing. `apply` writes the batch, and only then publishes the
//! effects to readers, feeds and the proposer.
//!
//! **Invariant (publish after durable):** a reader that sees `applied_rev`,
//! `applied_index` or a descriptor finds the data that makes it true in the
//! engine. The one exception is deliberate: the compaction floor is raised
//! *before* the batch that removes history is written, and readers check the
//! floor *after* they read (see `service.rs`), so a read that may have missed
//! compacted history always learns it was compacted.
//!
//! **Invariant (revision order):** within a range, stamped writes apply in
//! strictly increasing revision order. The sequencer and the term check in
//! `propose.rs` make this true by construction; `exec` checks it for every
//! entry and refuses (deterministically, on every replica) a write that
//! would break it, instead of applying it.
//!
//! Bad input never stops the raft thread: an entry that does not decode, or
//! a command that is invalid, applies as a deterministic error result on
//! every replica. Only a failing read or write of our own disk is fatal.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prost::Message as _;
use raft::eraftpb::{Entry, EntryType};
use raft::StateRole;
use strata_proto::etcd::{
    PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbLeaseRevokeRequest, PbPutRequest,
    PbTxnRequest,
};
use strata_proto::strata::{
    FeedMessage, KvKind, RangeCommand, RangeDescriptor, SplitCommand, TxnIntent,
};
use tonic::Status;

use super::replica::RangeShared;
use super::{desc_range, meta, Store};
use crate::apply::{header, Growth, WriteExec};
use crate::error::{NodeError, NodeResult};
use crate::mvcc::{KeyRange, Version};
use crate::storage::{Cf, WriteBatch};

/// What applying one command produced, published by `flush_applied` once the
/// entry's batch is written.
pub(super) struct Applied {
    /// The proposer's answer.
    pub result: NodeResult<Vec<u8>>,
    /// Events for range feeds.
    pub feed: Option<FeedMessage>,
    /// The range's new current revision.
    pub applied_rev: Option<i64>,
    /// The new compaction floor (published before the batch is written).
    pub compacted: Option<i64>,
    /// This range's new descriptor (a split).
    pub desc: Option<RangeDescriptor>,
    /// A range created by a split.
    pub child: Option<RangeDescriptor>,
    /// The range's new txn intent (`Some(None)`: none any more).
    pub intent: Option<Option<Arc<TxnIntent>>>,
    /// What the write added to the range's data (counted for split checks
    /// once published, so a scan taken after the count sees the data).
    pub growth: Growth,
}

impl Default for Applied {
    fn default() -> Self {
        Self {
            result: Ok(Vec::new()),
            feed: None,
            applied_rev: None,
            compacted: None,
            desc: None,
            child: None,
            intent: None,
            growth: Growth::default(),
        }
    }
}

impl Applied {
    pub(super) fn answer(result: NodeResult<Vec<u8>>) -> Self {
        Self {
            result,
            ..Default::default()
        }
    }

    /// A command that applies as an error, identically on every replica.
    pub(super) fn invalid(msg: impl std::fmt::Display) -> Self {
        crate::metrics::BAD_ENTRIES.inc();
        Self::answer(Err(
            Status::invalid_argument(format!("strata: {msg}")).into()
        ))
    }
}

/// Entries applied but not yet written, over every range of a Ready round:
/// plain Puts on distinct keys share one write batch (one RocksDB write per
/// round under load, not one per entry or per range; the ranges of a node
/// never overlap, so their keys are distinct too). Their effects are
/// published, in log order per range, only once that batch is written
/// ([`Store::flush_applied`]).
#[derive(Default)]
pub(super) struct Pending {
    wb: WriteBatch,
    /// Per range with entries here, in the order they came.
    ranges: Vec<RangeGroup>,
    /// Range id → its place in `ranges` (a round may touch thousands).
    index: std::collections::HashMap<u64, usize>,
    /// Keys the pending Puts write: a Put of one of them must see the
    /// earlier one's version, so it waits for the batch's write.
    keys: std::collections::HashSet<Vec<u8>, foldhash::fast::RandomState>,
    /// The versions Puts, deletes and txns staged here, for
    /// `crate::apply::latest` once the batch is written.
    written: Vec<Version>,
}

impl Pending {
    /// Puts `wb` ahead of everything staged here, to be written with it
    /// (hard states whose commit index alone moved: a later commit index
    /// staged for the applied entries then overwrites theirs in the batch).
    pub(super) fn lead_with(&mut self, mut wb: WriteBatch) {
        wb.append(std::mem::take(&mut self.wb));
        self.wb = wb;
    }
}

/// One range's entries in [`Pending`].
struct RangeGroup {
    range_id: u64,
    /// (index, term, effects, led when applied) in log order.
    done: Vec<(u64, u64, Applied, bool)>,
    /// The revision of the range's last stamped write here.
    last_rev: i64,
    /// The last entry removed this node's replica.
    destroy: bool,
}

/// A command that may wait in [`Pending`], decoded: a plain Put (no other
/// command reads state an earlier pending entry may have changed without
/// that entry's key telling). Decoded once here for the whole apply.
fn plain_put(e: &Entry, cmd: Option<&RangeCommand>) -> Option<PbPutRequest> {
    let cmd = cmd.filter(|_| e.get_entry_type() == EntryType::EntryNormal)?;
    if cmd.kind != KvKind::KvPut as i32 {
        return None;
    }
    PbPutRequest::decode(&cmd.request[..]).ok()
}

impl Store {
    /// Applies committed entries of `range_id` into [`Pending`]; plain Puts
    /// wait there for the round's write (`flush_applied`), anything else is
    /// written and published at once, after everything before it.
    pub(super) fn apply(&mut self, range_id: u64, entries: Vec<Entry>) -> anyhow::Result<()> {
        let _apply = crate::metrics::applying(entries.len());
        for e in entries {
            let cmd = match e.get_entry_type() {
                EntryType::EntryNormal if !e.data.is_empty() => {
                    Some(RangeCommand::decode(&e.data[..]))
                }
                _ => None,
            };
            let put = plain_put(&e, cmd.as_ref().and_then(|c| c.as_ref().ok()));
            let key = put.as_ref().map(|p| p.key.clone());
            if key.as_ref().is_none_or(|k| self.pending.keys.contains(k)) {
                // Applied alone, or after the batch that wrote its key.
                self.flush_applied()?;
                if !self.replicas.contains_key(&range_id) {
                    return Ok(()); // removed here: nothing after applies
                }
            }
            let at = self.pending.index.get(&range_id).copied();
            let last_rev = match at {
                Some(i) => self.pending.ranges[i].last_rev,
                None => {
                    let r = self.replicas.get(&range_id).expect("replica");
                    r.shared.applied_rev.load(Ordering::Acquire)
                }
            };
            let mut wb = std::mem::take(&mut self.pending.wb);
            let mut destroy = false;
            let applied = match (e.get_entry_type(), cmd) {
                (EntryType::EntryConfChangeV2, _) => {
                    destroy = self.apply_conf_change(range_id, &e, &mut wb)?;
                    Applied::answer(Ok(Vec::new()))
                }
                (_, Some(Ok(cmd))) => self.exec(range_id, &cmd, put, last_rev, &mut wb)?,
                (_, Some(Err(err))) => {
                    tracing::error!(
                        range = range_id,
                        index = e.index,
                        "undecodable command: {err}"
                    );
                    Applied::invalid("undecodable command")
                }
                // Empty entries (a new leader's) and v1 conf changes (never
                // proposed here) change nothing but the applied index.
                _ => Applied::answer(Ok(Vec::new())),
            };
            self.pending.wb = wb;
            let r = self.replicas.get(&range_id).expect("replica");
            let was_leader = r.raw.raft.state == StateRole::Leader;
            let g = match at {
                Some(i) => &mut self.pending.ranges[i],
                None => {
                    let p = &mut self.pending;
                    p.index.insert(range_id, p.ranges.len());
                    p.ranges.push(RangeGroup {
                        range_id,
                        done: Vec::new(),
                        last_rev,
                        destroy: false,
                    });
                    self.pending.ranges.last_mut().expect("just pushed")
                }
            };
            if let Some(rev) = applied.applied_rev {
                g.last_rev = rev;
            }
            g.destroy |= destroy;
            g.done.push((e.index, e.term, applied, was_leader));
            match key {
                Some(k) => {
                    self.pending.keys.insert(k);
                }
                None => {
                    self.flush_applied()?;
                    if !self.replicas.contains_key(&range_id) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// The published state of `range_id`'s replica, which applies here.
    fn shared(&self, range_id: u64) -> Arc<RangeShared> {
        self.replicas
            .get(&range_id)
            .expect("replica")
            .shared
            .clone()
    }

    /// Writes the pending batch, then publishes its entries' effects, in log
    /// order per range (see [`Pending`]).
    pub(super) fn flush_applied(&mut self) -> anyhow::Result<()> {
        let mut p = std::mem::take(&mut self.pending);
        if p.ranges.is_empty() {
            // Nothing applied; perhaps hard states to write (`lead_with`).
            if !p.wb.is_empty() {
                self.db.write(&p.wb, false)?;
            }
            return Ok(());
        }
        let mut stamped = false;
        let mut split = false;
        for g in &p.ranges {
            let r = self.replicas.get(&g.range_id).expect("replica");
            // Each range's bookkeeping, once per batch rather than per entry:
            // the commit index covering its entries is persisted with them
            // (so the applied index never exceeds the persisted commit
            // index), the applied index, and the range's current revision if
            // a stamped write moved it (which survives restarts).
            let last_index = g.done.last().map_or(0, |d| d.0);
            r.raw.store().set_commit(&mut p.wb, last_index)?;
            r.raw.store().stage_applied(&mut p.wb, last_index);
            if g.done.iter().any(|(_, _, a, _)| a.applied_rev.is_some()) {
                p.wb.put(
                    Cf::Meta,
                    meta::maxrev_key(g.range_id),
                    g.last_rev.to_be_bytes(),
                );
                stamped = true;
            }
            for (_, _, a, _) in &g.done {
                if let Some(c) = a.compacted {
                    r.shared.compacted.store(c, Ordering::Release);
                }
                split |= a.child.is_some();
            }
        }
        if stamped {
            crate::failpoint::pause_blocking(self.node_id, "apply_before_write");
        }
        if let Err(e) = self.db.write(&p.wb, false) {
            self.latest.clear();
            return Err(e.into());
        }
        crate::metrics::APPLY_WRITES.inc();
        for v in p.written {
            self.latest.record(v.key, v.mod_revision, v.value);
        }
        if split {
            crate::failpoint::crash(self.node_id, "crash_mid_split");
        }
        crate::failpoint::crash(self.node_id, "crash_mid_apply");
        // Published only now that the batch is written (see the module doc).
        for g in p.ranges {
            self.publish(g)?;
        }
        Ok(())
    }

    fn publish(&mut self, g: RangeGroup) -> anyhow::Result<()> {
        let range_id = g.range_id;
        let shared = self.shared(range_id);
        for (index, term, applied, was_leader) in g.done {
            shared.applied_index.store(index, Ordering::Release);
            if let Some(d) = applied.desc {
                *shared.desc.write() = d;
            }
            if let Some(rev) = applied.applied_rev {
                shared.applied_rev.store(rev, Ordering::Release);
            }
            shared.grew(applied.growth);
            if let Some(i) = applied.intent {
                *shared.intent.write() = i;
            }
            if let Some(m) = applied.feed {
                shared.feed.send(Arc::new(m));
            }
            let r = self.replicas.get_mut(&range_id).expect("replica");
            r.answer_proposals(index, term, applied.result);
            if let Some(child) = applied.child {
                self.create_split_child(child, was_leader)?;
            }
        }
        if g.destroy {
            self.destroy(range_id)?;
        }
        Ok(())
    }

    /// Decides what one command does, staging its writes into `wb`.
    /// Returns an error only when our own storage fails.
    /// `prev_rev` is the range's revision before this command (the last
    /// stamped write applied, perhaps not yet written, see [`Pending`]).
    fn exec(
        &mut self,
        range_id: u64,
        cmd: &RangeCommand,
        put: Option<PbPutRequest>,
        prev_rev: i64,
        wb: &mut WriteBatch,
    ) -> anyhow::Result<Applied> {
        let shared = self.shared(range_id);
        let Ok(kind) = KvKind::try_from(cmd.kind) else {
            return Ok(Applied::invalid(format!(
                "unknown command kind {}",
                cmd.kind
            )));
        };
        // A range frozen by a cross-range txn applies nothing else until
        // the txn is decided (see `crate::txn`): certainly not applied, so
        // the router sends it again.
        let txn_cmd = matches!(
            kind,
            KvKind::KvTxnPrepare | KvKind::KvTxnCommit | KvKind::KvTxnAbort
        );
        if !txn_cmd && shared.intent.read().is_some() {
            return Ok(Applied::answer(Err(NodeError::held())));
        }
        // Commands that may change data outside `Pending::written` (see
        // `crate::apply::latest`): the newest versions known are forgotten.
        if !matches!(
            kind,
            KvKind::KvPut
                | KvKind::KvDeleteRange
                | KvKind::KvTxn
                | KvKind::KvLeaseGrant
                | KvKind::KvSplit
        ) {
            self.latest.clear();
        }
        match kind {
            KvKind::KvTxnPrepare | KvKind::KvTxnCommit | KvKind::KvTxnAbort => {
                self.exec_txn_command(&shared, kind, cmd, prev_rev, wb)
            }
            KvKind::KvCompact => self.exec_compact(&shared, &cmd.request, wb),
            KvKind::KvIngest => self.exec_ingest(&shared, &cmd.request, prev_rev, wb),
            KvKind::KvSplit => match SplitCommand::decode(&cmd.request[..]) {
                Ok(sc) => self.exec_split(&shared, &sc, wb),
                Err(e) => Ok(Applied::invalid(format!("bad split command: {e}"))),
            },
            KvKind::KvPut
            | KvKind::KvDeleteRange
            | KvKind::KvTxn
            | KvKind::KvLeaseRevoke
            | KvKind::KvLeaseGrant => self.exec_write(&shared, kind, cmd, put, prev_rev, wb),
            KvKind::KvRange | KvKind::KvRangePage | KvKind::KvTxnRead => {
                Ok(Applied::invalid("a read is not a command"))
            }
            KvKind::KvTxnTouch => Ok(Applied::invalid("a txn touch is not a command")),
        }
    }

    fn exec_compact(
        &mut self,
        shared: &RangeShared,
        request: &[u8],
        wb: &mut WriteBatch,
    ) -> anyhow::Result<Applied> {
        let req = match PbCompactionRequest::decode(request) {
            Ok(r) => r,
            Err(e) => return Ok(Applied::invalid(format!("bad compaction request: {e}"))),
        };
        let resp = PbCompactionResponse {
            header: header(shared.applied_rev.load(Ordering::Acquire)),
        };
        let mut out = Applied::answer(Ok(resp.encode_to_vec()));
        if req.revision > shared.compacted.load(Ordering::Acquire) {
            let range_id = shared.desc.read().id;
            let kr = desc_range(&shared.desc.read());
            self.mvcc.stage_compact(wb, &kr, req.revision)?;
            wb.put(
                Cf::Meta,
                meta::compacted_key(range_id),
                req.revision.to_be_bytes(),
            );
            out.compacted = Some(req.revision);
        }
        Ok(out)
    }

    fn exec_write(
        &mut self,
        shared: &RangeShared,
        kind: KvKind,
        cmd: &RangeCommand,
        put: Option<PbPutRequest>,
        prev: i64,
        wb: &mut WriteBatch,
    ) -> anyhow::Result<Applied> {
        let rev = cmd.revision;
        if rev <= prev {
            // Never applied: the write would land behind newer revisions
            // (see the module doc). It certainly did not apply, so the
            // router may stamp it again.
            tracing::error!(
                range = shared.desc.read().id,
                rev,
                prev,
                "refused a write stamped below the applied revision"
            );
            crate::metrics::REVISION_ORDER_REFUSED.inc();
            return Ok(Applied::answer(Err(NodeError::NotLeader)));
        }
        let kr = desc_range(&shared.desc.read());
        // A split may have applied since the request was checked: keys that
        // left the range are refused (unapplied, so the router may retry).
        let within = match &put {
            Some(p) => Ok(kr.contains(&p.key)),
            None => keys_within(kind, &cmd.request, &kr),
        };
        match within {
            Ok(true) => {}
            Ok(false) => return Ok(Applied::answer(Err(NodeError::EpochNotMatch))),
            Err(e) => return Ok(Applied::invalid(format!("bad request: {e}"))),
        }
        let compacted = shared.compacted.load(Ordering::Acquire);
        let range_id = shared.desc.read().id;
        let mut ex = WriteExec::new(&self.mvcc, rev, compacted);
        ex.revoked = Some(crate::lease::Revoked::of(&*self.db, range_id));
        ex.latest = Some(&self.latest);
        let res: Result<Vec<u8>, Status> = match kind {
            KvKind::KvPut => put
                .map_or_else(|| PbPutRequest::decode(&cmd.request[..]), Ok)
                .map_err(bad_request)
                .and_then(|p| ex.put_owned(p))
                .map(|r| r.encode_to_vec()),
            KvKind::KvDeleteRange => PbDeleteRequest::decode(&cmd.request[..])
                .map_err(bad_request)
                .and_then(|d| ex.delete(&d))
                .map(|r| r.encode_to_vec()),
            KvKind::KvTxn => PbTxnRequest::decode(&cmd.request[..])
                .map_err(bad_request)
                .and_then(|t| ex.txn(&t))
                .map(|r| r.encode_to_vec()),
            KvKind::KvLeaseRevoke => match PbLeaseRevokeRequest::decode(&cmd.request[..]) {
                Ok(l) => crate::lease::revoke(&mut ex, &*self.db, range_id, &kr, l.id, wb)?
                    .map(|n| span_applied(&kr, n as u64)),
                Err(e) => Err(bad_request(e)),
            },
            _ => crate::lease::grant(&*self.db, range_id, &cmd.request, wb)?
                .map(|()| span_applied(&kr, 0)),
        };
        shared.writes.fetch_add(1, Ordering::Relaxed);
        let mut out = Applied::default();
        if res.is_ok() {
            (out.feed, out.growth) = self.stage_writes(&mut ex, wb);
            let staged = std::mem::take(&mut ex.overlay);
            self.pending
                .written
                .extend(staged.into_values().map(|v| Version {
                    mod_revision: rev,
                    ..v
                }));
        }
        out.result = res.map_err(NodeError::from);
        // The replica's current revision advances with every stamped write
        // (even one that changed nothing), and survives restarts: the apply
        // batch stages it (`flush_applied`).
        out.applied_rev = Some(rev);
        Ok(out)
    }
}

impl Store {
    /// Stages what `ex` wrote at its revision; answers the feed message
    /// carrying its events (none if it wrote nothing).
    pub(super) fn stage_writes(
        &self,
        ex: &mut WriteExec<'_>,
        wb: &mut WriteBatch,
    ) -> (Option<FeedMessage>, Growth) {
        if ex.overlay.is_empty() {
            return (None, Growth::default());
        }
        let growth = ex.stage(wb);
        let feed = FeedMessage {
            revision: ex.rev,
            events: std::mem::take(&mut ex.events),
            ..Default::default()
        };
        (Some(feed), growth)
    }
}

/// The answer of a command placement sends to every range: what this range
/// covered when it applied (proto `SpanApplied`).
pub(super) fn span_applied(kr: &KeyRange, deleted: u64) -> Vec<u8> {
    strata_proto::strata::SpanApplied {
        start_key: kr.start.clone(),
        end_key: kr.end.clone().unwrap_or_default(),
        deleted,
    }
    .encode_to_vec()
}

fn bad_request(e: prost::DecodeError) -> Status {
    Status::invalid_argument(format!("strata: bad request encoding: {e}"))
}

/// Are all keys a write command touches inside `kr`?
pub fn keys_within(
    kind: KvKind,
    request: &[u8],
    kr: &KeyRange,
) -> Result<bool, prost::DecodeError> {
    let mut keys = Vec::new();
    match kind {
        KvKind::KvRange | KvKind::KvRangePage => {
            let r = strata_proto::etcd::PbRangeRequest::decode(request)?;
            keys.push(KeyRange::from_etcd(&r.key, &r.range_end));
        }
        KvKind::KvPut => keys.push(KeyRange::from_etcd(
            &PbPutRequest::decode(request)?.key,
            &[],
        )),
        KvKind::KvDeleteRange => {
            let d = PbDeleteRequest::decode(request)?;
            keys.push(KeyRange::from_etcd(&d.key, &d.range_end));
        }
        KvKind::KvTxn => {
            strata_proto::etcdutil::txn_keys(&PbTxnRequest::decode(request)?, &mut keys)
        }
        KvKind::KvIngest => keys = super::ingest::ingest_keys(request)?,
        _ => {}
    }
    Ok(keys.iter().all(|k| kr.covers(k)))
}
