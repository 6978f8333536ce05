//! etcd request semantics over MVCC: Range, Put, DeleteRange, Txn.
//!
//! Writes execute on apply, on every replica, at the revision the sequencer
//! stamped; they are deterministic functions of (MVCC state, request, revision).
//! A write request first runs against an in-memory overlay so that a failing op
//! (e.g. `ignore_value` on a missing key) leaves no trace, as in etcd.

use std::collections::BTreeMap;

use strata_proto::errors;
use strata_proto::etcd::{
    PbCompare, PbDeleteRequest, PbDeleteResponse, PbPutRequest, PbPutResponse, PbRangeRequest,
    PbRangeResponse, PbResponseHeader, PbResponseOp, PbTxnOpRequest, PbTxnOpResponse, PbTxnRequest,
    PbTxnResponse,
};
use strata_proto::strata::{FeedEvent, FeedKv, MvccValue};
use tonic::Status;

use crate::mvcc::{KeyRange, Mvcc, Version};
use crate::storage::WriteBatch;

pub fn header(rev: i64) -> Option<PbResponseHeader> {
    Some(PbResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

fn internal(e: anyhow::Error) -> Status {
    Status::internal(format!("strata: storage error: {e:#}"))
}

/// A consistent view for reads: MVCC at `rev`, plus (inside a write) the
/// writes the current request made so far.
pub struct View<'a> {
    pub mvcc: &'a Mvcc,
    /// The revision "now" for this view.
    pub rev: i64,
    pub compacted: i64,
    pub overlay: Option<&'a BTreeMap<Vec<u8>, Version>>,
    /// The raft thread's newest versions (only in the apply path, see
    /// [`latest`]): a key found there needs no read of the engine.
    pub latest: Option<&'a latest::Latest>,
}

impl View<'_> {
    pub(crate) fn range_at(&self, kr: &KeyRange, rev: i64) -> Result<Vec<Version>, Status> {
        let mut kvs = self.mvcc.range_at(kr, rev).map_err(internal)?;
        if rev == self.rev {
            if let Some(ov) = self.overlay.filter(|o| !o.is_empty()) {
                let mut merged: BTreeMap<Vec<u8>, Version> =
                    kvs.into_iter().map(|v| (v.key.clone(), v)).collect();
                for (k, v) in ov.iter().filter(|(k, _)| kr.contains(k)) {
                    if v.value.tombstone {
                        merged.remove(k);
                    } else {
                        merged.insert(k.clone(), v.clone());
                    }
                }
                kvs = merged.into_values().collect();
            }
        }
        Ok(kvs)
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Version>, Status> {
        if let Some(v) = self.overlay.and_then(|o| o.get(key)) {
            return Ok((!v.value.tombstone).then(|| v.clone()));
        }
        if let Some(known) = self.latest.and_then(|l| l.get(key, self.rev)) {
            return Ok(known);
        }
        self.mvcc.get_at(key, self.rev).map_err(internal)
    }

    pub fn range(&self, r: &PbRangeRequest) -> Result<PbRangeResponse, Status> {
        self.range_with(r, true)
    }

    /// A Range answered as a page (`KV_RANGE_PAGE`): a limited read in key
    /// order stops at the key past the limit instead of counting the rest;
    /// `count` is then only the keys it read.
    pub fn range_page(&self, r: &PbRangeRequest) -> Result<PbRangeResponse, Status> {
        self.range_with(r, false)
    }

    fn range_with(&self, r: &PbRangeRequest, count_all: bool) -> Result<PbRangeResponse, Status> {
        if r.key.is_empty() {
            return Err(errors::empty_key());
        }
        let rev = if r.revision > 0 {
            if r.revision > self.rev {
                return Err(errors::future_rev());
            }
            if r.revision < self.compacted {
                return Err(errors::compacted());
            }
            r.revision
        } else {
            if self.rev < self.compacted {
                return Err(errors::compacted());
            }
            self.rev
        };
        let kr = KeyRange::from_etcd(&r.key, &r.range_end);
        // A limited read in key order without revision filters (or a count)
        // keeps only the keys it answers, not the whole interval.
        let plain = r.min_mod_revision == 0
            && r.max_mod_revision == 0
            && r.min_create_revision == 0
            && r.max_create_revision == 0
            && r.sort_target == 0
            && (r.sort_order == 0 || r.sort_order == 1)
            && (rev != self.rev || self.overlay.is_none_or(|o| o.is_empty()));
        let (mut kvs, count) = match (plain, r.count_only, r.limit) {
            (true, true, _) => self
                .mvcc
                .range_at_first(&kr, rev, 0, true)
                .map_err(internal)?,
            (true, false, limit) if limit > 0 => {
                // One past the limit says `more`.
                let keep = usize::try_from(limit)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1);
                self.mvcc
                    .range_at_first(&kr, rev, keep, count_all)
                    .map_err(internal)?
            }
            _ => {
                let kvs = self.range_at(&kr, rev)?;
                let n = kvs.len() as i64;
                (kvs, n)
            }
        };
        kvs.retain(|v| {
            (r.min_mod_revision == 0 || v.mod_revision >= r.min_mod_revision)
                && (r.max_mod_revision == 0 || v.mod_revision <= r.max_mod_revision)
                && (r.min_create_revision == 0 || v.value.create_revision >= r.min_create_revision)
                && (r.max_create_revision == 0 || v.value.create_revision <= r.max_create_revision)
        });
        sort_versions(&mut kvs, r.sort_order, r.sort_target);
        let mut more = false;
        // With count_only etcd fetches no kvs, so `limit` cuts nothing.
        if r.limit > 0 && !r.count_only && kvs.len() > r.limit as usize {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        let kvs = if r.count_only {
            Vec::new()
        } else {
            kvs.iter()
                .map(|v| {
                    let mut kv = v.to_kv();
                    if r.keys_only {
                        kv.value.clear();
                    }
                    kv
                })
                .collect()
        };
        Ok(PbRangeResponse {
            header: header(self.rev),
            kvs,
            more,
            count,
        })
    }
}

/// etcd's sort: order NONE(0)/ASCEND(1)/DESCEND(2); target KEY(0)/VERSION(1)/
/// CREATE(2)/MOD(3)/VALUE(4). NONE with a non-key target means ascending.
fn sort_versions(kvs: &mut [Version], order: i32, target: i32) {
    let order = if order == 0 && target != 0 { 1 } else { order };
    if order == 0 || (order == 1 && target == 0) {
        return; // already in key order
    }
    match target {
        1 => kvs.sort_by_key(|v| v.value.version),
        2 => kvs.sort_by_key(|v| v.value.create_revision),
        3 => kvs.sort_by_key(|v| v.mod_revision),
        4 => kvs.sort_by(|a, b| a.value.value.cmp(&b.value.value)),
        _ => {}
    }
    if order == 2 {
        kvs.reverse();
    }
}

/// A stored version as a feed event carries it.
/// [`feed_kv`] of a version no longer needed.
fn into_feed_kv(v: Version) -> FeedKv {
    FeedKv {
        key: v.key,
        create_revision: v.value.create_revision,
        mod_revision: v.mod_revision,
        version: v.value.version,
        value: v.value.value,
        lease: v.value.lease,
    }
}

pub fn feed_kv(v: &Version) -> FeedKv {
    FeedKv {
        key: v.key.clone(),
        create_revision: v.value.create_revision,
        mod_revision: v.mod_revision,
        version: v.value.version,
        value: v.value.value.clone(),
        lease: v.value.lease,
    }
}

/// Executes one write request at revision `rev` against state as of `rev - 1`.
pub struct WriteExec<'a> {
    pub mvcc: &'a Mvcc,
    pub rev: i64,
    pub compacted: i64,
    /// Key → its new version at `rev` (tombstone for deletes).
    pub overlay: BTreeMap<Vec<u8>, Version>,
    pub events: Vec<FeedEvent>,
    /// The op now running: its number in the txn tree's pre-order over ops
    /// (0 outside txns). Stored with each version it writes and carried by
    /// its events, so a revision's events keep op order wherever they are
    /// read from (etcd orders them by sub-revision, i.e. op order).
    pub op: u32,
    /// The leases revoked in this range: a Put attached to one is refused.
    pub revoked: Option<crate::lease::Revoked<'a>>,
    /// See [`View::latest`].
    pub latest: Option<&'a latest::Latest>,
}

/// What a command added to its range's data, as split checks measure it
/// ([`Mvcc::split_scan`]): an upper bound on the live keys it created, and
/// the bytes of the versions it wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Growth {
    pub keys: u64,
    pub bytes: u64,
}

impl<'a> WriteExec<'a> {
    /// Stages every version the command wrote into `wb`; returns what it
    /// added. A key live before the command keeps its creation revision, so
    /// a live version created at this revision is a key that was not live
    /// before (or was deleted and put again in this command, counted too:
    /// the figure may overcount, never undercount).
    pub fn stage(&self, wb: &mut WriteBatch) -> Growth {
        let mut g = Growth::default();
        for v in self.overlay.values() {
            g.bytes += self.mvcc.stage_version(wb, &v.key, self.rev, &v.value);
            if !v.value.tombstone && v.value.create_revision == self.rev {
                g.keys += 1;
            }
        }
        g
    }

    pub fn new(mvcc: &'a Mvcc, rev: i64, compacted: i64) -> Self {
        Self {
            mvcc,
            rev,
            compacted,
            overlay: BTreeMap::new(),
            events: Vec::new(),
            op: 0,
            revoked: None,
            latest: None,
        }
    }

    pub(crate) fn view(&self) -> View<'_> {
        View {
            mvcc: self.mvcc,
            rev: self.rev - 1,
            compacted: self.compacted,
            overlay: Some(&self.overlay),
            latest: self.latest,
        }
    }

    pub fn put(&mut self, r: &PbPutRequest) -> Result<PbPutResponse, Status> {
        self.put_owned(r.clone())
    }

    /// [`WriteExec::put`] of a request it may take apart (one copy fewer of
    /// the key and the value: the plain Put's path).
    pub fn put_owned(&mut self, r: PbPutRequest) -> Result<PbPutResponse, Status> {
        if r.key.is_empty() {
            return Err(errors::empty_key());
        }
        if let (Some(revoked), true) = (&self.revoked, r.lease != 0) {
            revoked.check_put(r.lease)?;
        }
        let prev = self.view().get(&r.key)?;
        if (r.ignore_value || r.ignore_lease) && prev.is_none() {
            return Err(errors::key_not_found());
        }
        let p = prev.as_ref();
        let value = MvccValue {
            value: if r.ignore_value {
                p.map(|v| v.value.value.clone()).unwrap_or_default()
            } else {
                r.value
            },
            create_revision: p.map(|v| v.value.create_revision).unwrap_or(self.rev),
            version: p.map(|v| v.value.version + 1).unwrap_or(1),
            lease: if r.ignore_lease {
                p.map(|v| v.value.lease).unwrap_or(0)
            } else {
                r.lease
            },
            tombstone: false,
            op: self.op,
        };
        let new = Version {
            key: r.key,
            mod_revision: self.rev,
            value,
        };
        let prev_kv = if r.prev_kv {
            prev.as_ref().map(|v| v.to_kv())
        } else {
            None
        };
        self.events.push(FeedEvent {
            delete: false,
            kv: Some(feed_kv(&new)),
            prev_kv: prev.map(into_feed_kv),
            op: self.op,
        });
        self.overlay.insert(new.key.clone(), new);
        Ok(PbPutResponse {
            header: header(self.rev),
            prev_kv,
        })
    }

    pub fn delete(&mut self, r: &PbDeleteRequest) -> Result<PbDeleteResponse, Status> {
        if r.key.is_empty() {
            return Err(errors::empty_key());
        }
        let kr = KeyRange::from_etcd(&r.key, &r.range_end);
        let victims = self.view().range_at(&kr, self.rev - 1)?;
        self.delete_versions(&victims);
        Ok(PbDeleteResponse {
            header: header(self.rev),
            deleted: victims.len() as i64,
            prev_kvs: if r.prev_kv {
                victims.iter().map(|v| v.to_kv()).collect()
            } else {
                Vec::new()
            },
        })
    }

    fn delete_versions(&mut self, victims: &[Version]) {
        for v in victims {
            let tomb = Version {
                key: v.key.clone(),
                mod_revision: self.rev,
                value: MvccValue {
                    tombstone: true,
                    op: self.op,
                    ..Default::default()
                },
            };
            self.events.push(FeedEvent {
                delete: true,
                kv: Some(FeedKv {
                    key: v.key.clone(),
                    mod_revision: self.rev,
                    ..Default::default()
                }),
                prev_kv: Some(feed_kv(v)),
                op: self.op,
            });
            self.overlay.insert(v.key.clone(), tomb);
        }
    }

    /// Deletes every key in `kr` attached to `lease`.
    pub fn revoke_lease(&mut self, kr: &KeyRange, lease: i64) -> Result<usize, Status> {
        let mut victims = self.view().range_at(kr, self.rev - 1)?;
        victims.retain(|v| v.value.lease == lease);
        self.delete_versions(&victims);
        Ok(victims.len())
    }

    fn compare(&self, c: &PbCompare) -> Result<bool, Status> {
        let kvs = if c.range_end.is_empty() {
            self.view().get(&c.key)?.into_iter().collect::<Vec<_>>()
        } else {
            let kr = KeyRange::from_etcd(&c.key, &c.range_end);
            self.view().range_at(&kr, self.rev - 1)?
        };
        if kvs.is_empty() {
            // A missing key compares as all-zero fields; a value compare fails.
            return Ok(strata_proto::xtxn::compare_missing(c));
        }
        Ok(kvs.iter().all(|v| compare_one(c, Some(v))))
    }

    /// etcd's txn: every compare of the tree, nested txns' included, is
    /// evaluated first against the state before the txn (etcd's
    /// `compareToPath`), then the ops run along that path (a Range op sees
    /// the txn's earlier writes).
    pub fn txn(&mut self, r: &PbTxnRequest) -> Result<PbTxnResponse, Status> {
        let results = strata_proto::xtxn::compares(r)
            .into_iter()
            .map(|c| self.compare(c))
            .collect::<Result<Vec<bool>, Status>>()?;
        let path = strata_proto::xtxn::path(r, &results)
            .ok_or_else(|| Status::internal("strata: a txn's compares do not match its tree"))?;
        self.txn_along(r, &path, &mut Walk::default())
    }

    /// Runs `r`'s ops along `path` (one entry per txn of the tree, in
    /// pre-order; `at.node` is `r`'s).
    fn txn_along(
        &mut self,
        r: &PbTxnRequest,
        path: &[bool],
        at: &mut Walk,
    ) -> Result<PbTxnResponse, Status> {
        let ok = path.get(at.node).copied().unwrap_or(false);
        at.node += 1;
        let mut responses = Vec::new();
        for (branch, ops) in [(true, &r.success), (false, &r.failure)] {
            for op in ops {
                self.op = at.next_op();
                let resp = match &op.request {
                    // A txn on the branch not taken: skip its tree.
                    Some(PbTxnOpRequest::RequestTxn(t)) if branch != ok => {
                        at.skip(t);
                        continue;
                    }
                    _ if branch != ok => continue,
                    Some(PbTxnOpRequest::RequestRange(rr)) => {
                        PbTxnOpResponse::ResponseRange(self.view().range(rr).map(|mut x| {
                            x.header = header(self.rev);
                            x
                        })?)
                    }
                    Some(PbTxnOpRequest::RequestPut(p)) => {
                        PbTxnOpResponse::ResponsePut(self.put(p)?)
                    }
                    Some(PbTxnOpRequest::RequestDeleteRange(d)) => {
                        PbTxnOpResponse::ResponseDeleteRange(self.delete(d)?)
                    }
                    Some(PbTxnOpRequest::RequestTxn(t)) => {
                        PbTxnOpResponse::ResponseTxn(self.txn_along(t, path, at)?)
                    }
                    None => return Err(Status::invalid_argument("etcdserver: empty request op")),
                };
                responses.push(PbResponseOp {
                    response: Some(resp),
                });
            }
        }
        Ok(PbTxnResponse {
            header: header(self.rev),
            succeeded: ok,
            responses,
        })
    }
}

/// Where a walk of a txn tree is: the next txn's and the next op's number,
/// both in pre-order (see `strata_proto::xtxn`).
#[derive(Default)]
pub(crate) struct Walk {
    pub node: usize,
    op: u32,
}

impl Walk {
    /// The number of the op the walk reaches; moves past it.
    pub fn next_op(&mut self) -> u32 {
        let n = self.op;
        self.op = self.op.saturating_add(1);
        n
    }

    /// Moves past a nested txn's whole tree (a branch not taken).
    pub fn skip(&mut self, t: &PbTxnRequest) {
        self.node = self.node.saturating_add(strata_proto::xtxn::nodes(t));
        let ops = u32::try_from(strata_proto::xtxn::ops(t).len()).unwrap_or(u32::MAX);
        self.op = self.op.saturating_add(ops);
    }
}

fn compare_one(c: &PbCompare, v: Option<&Version>) -> bool {
    strata_proto::xtxn::compare_one(c, v.map(crate::txn::fields).as_ref())
}

/// Read-only txn at revision `view.rev` (no revision consumed, as in etcd).
pub fn read_txn(view: &View<'_>, r: &PbTxnRequest) -> Result<PbTxnResponse, Status> {
    let mut ex = WriteExec::new(view.mvcc, view.rev + 1, view.compacted);
    let mut resp = ex.txn(r)?;
    debug_assert!(ex.overlay.is_empty());
    fix_headers(&mut resp, view.rev);
    Ok(resp)
}

pub(crate) fn fix_headers(resp: &mut PbTxnResponse, rev: i64) {
    resp.header = header(rev);
    for op in &mut resp.responses {
        match &mut op.response {
            Some(PbTxnOpResponse::ResponseRange(r)) => r.header = header(rev),
            Some(PbTxnOpResponse::ResponseTxn(t)) => fix_headers(t, rev),
            _ => {}
        }
    }
}

pub mod latest;
#[cfg(test)]
mod tests;
