//! Applying committed entries: each entry's MVCC changes and apply index go
//! into one write batch; its client is answered and its feed event published
//! once the batch is written.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prost::Message as _;
use raft::eraftpb::{Entry, EntryType};
use raft::StateRole;
use strata_proto::etcd::{
    PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbLeaseRevokeRequest, PbPutRequest,
    PbTxnRequest,
};
use strata_proto::strata::{FeedMessage, KvKind, RangeCommand, RangeDescriptor, SplitCommand};
use tonic::Status;

use super::{desc_range, meta, Store};
use crate::apply::{header, WriteExec};
use crate::mvcc::KeyRange;
use crate::storage::{Cf, WriteBatch};

impl Store {
    pub(super) fn apply(&mut self, range_id: u64, entries: Vec<Entry>) -> anyhow::Result<()> {
        let _apply = crate::metrics::applying(entries.len());
        for e in entries {
            let r = self.replicas.get_mut(&range_id).expect("replica");
            let mut wb = WriteBatch::default();
            // The commit index covering this entry is persisted with it, so the
            // applied index never exceeds the persisted commit index.
            r.raw.store().set_commit(&mut wb, e.index)?;
            r.raw.store().stage_applied(&mut wb, e.index);
            let mut result: Result<Vec<u8>, Status> = Ok(Vec::new());
            let mut feed_msg = None;
            let mut child = None;
            let mut destroy = false;
            if e.get_entry_type() == EntryType::EntryConfChangeV2 {
                let removed_self = self.apply_conf_change(range_id, &e, &mut wb)?;
                if removed_self {
                    destroy = true;
                }
            } else if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                match RangeCommand::decode(&e.data[..]) {
                    Ok(cmd) => {
                        let (res, msg, c) = self.exec(range_id, &cmd, &mut wb)?;
                        result = res;
                        feed_msg = msg;
                        child = c;
                    }
                    Err(err) => {
                        tracing::error!(
                            range = range_id,
                            index = e.index,
                            "undecodable command: {err}"
                        );
                        result = Err(Status::internal("strata: undecodable command"));
                    }
                }
            }
            self.db.write(&wb, false)?;
            let r = self.replicas.get_mut(&range_id).expect("replica");
            r.shared.applied_index.store(e.index, Ordering::Release);
            if let Some(m) = feed_msg {
                let _ = r.shared.feed.send(Arc::new(m));
            }
            let was_leader = r.raw.raft.state == StateRole::Leader;
            r.answer_proposals(e.index, e.term, result);
            if destroy {
                self.destroy(range_id)?;
                return Ok(());
            }
            if let Some(child) = child {
                let child_id = child.id;
                self.create(child)?;
                // The parent's leader also leads the child at first: it is the
                // one replica that certainly has the split applied already.
                if was_leader {
                    if let Some(c) = self.replicas.get_mut(&child_id) {
                        let _ = c.raw.campaign();
                    }
                }
            }
        }
        Ok(())
    }

    /// Executes one command into `wb`; returns the client response and the
    /// feed message to publish once `wb` is written.
    fn exec(
        &mut self,
        range_id: u64,
        cmd: &RangeCommand,
        wb: &mut WriteBatch,
    ) -> anyhow::Result<Executed> {
        let r = self.replicas.get(&range_id).expect("replica");
        let shared = r.shared.clone();
        let compacted = shared.compacted.load(Ordering::Acquire);
        let rev = cmd.revision;
        let kind = KvKind::try_from(cmd.kind).unwrap_or(KvKind::KvRange);
        if kind == KvKind::KvCompact {
            let req = PbCompactionRequest::decode(&cmd.request[..])?;
            let desc = shared.desc.read().clone();
            if req.revision > compacted {
                let kr = desc_range(&desc);
                self.mvcc.stage_compact(wb, &kr, req.revision)?;
                wb.put(
                    Cf::Meta,
                    meta::compacted_key(range_id),
                    req.revision.to_be_bytes(),
                );
                shared.compacted.store(req.revision, Ordering::Release);
            }
            let resp = PbCompactionResponse {
                header: header(shared.applied_rev.load(Ordering::Acquire)),
            };
            return Ok((Ok(resp.encode_to_vec()), None, None));
        }
        if kind == KvKind::KvSplit {
            return self.exec_split(&shared, &SplitCommand::decode(&cmd.request[..])?, wb);
        }
        anyhow::ensure!(rev > 0, "write command without a revision");
        // A split may have applied since the request was checked: keys that
        // left the range are refused (unapplied, so the router may retry).
        if !keys_within(kind, &cmd.request, &desc_range(&shared.desc.read())) {
            return Ok((Err(crate::service::epoch_not_match()), None, None));
        }
        let mut ex = WriteExec::new(&self.mvcc, rev, compacted);
        let res: Result<Vec<u8>, Status> = match kind {
            KvKind::KvPut => ex
                .put(&PbPutRequest::decode(&cmd.request[..])?)
                .map(|r| r.encode_to_vec()),
            KvKind::KvDeleteRange => ex
                .delete(&PbDeleteRequest::decode(&cmd.request[..])?)
                .map(|r| r.encode_to_vec()),
            KvKind::KvTxn => ex
                .txn(&PbTxnRequest::decode(&cmd.request[..])?)
                .map(|r| r.encode_to_vec()),
            KvKind::KvLeaseRevoke => {
                let req = PbLeaseRevokeRequest::decode(&cmd.request[..])?;
                let kr = desc_range(&shared.desc.read());
                ex.revoke_lease(&kr, req.id)
                    .map(|n| (n as u64).to_be_bytes().to_vec())
            }
            _ => Err(Status::internal("strata: unexpected command kind")),
        };
        let mut feed = None;
        shared.writes.fetch_add(1, Ordering::Relaxed);
        if res.is_ok() && !ex.overlay.is_empty() {
            for v in ex.overlay.values() {
                self.mvcc.stage_version(wb, &v.key, rev, &v.value);
            }
            feed = Some(FeedMessage {
                revision: rev,
                events: std::mem::take(&mut ex.events),
                ..Default::default()
            });
        }
        // The replica's current revision advances with every stamped write
        // (even one that changed nothing), and survives restarts.
        let prev = shared.applied_rev.load(Ordering::Acquire);
        if rev > prev {
            wb.put(Cf::Meta, meta::maxrev_key(range_id), rev.to_be_bytes());
            shared.applied_rev.store(rev, Ordering::Release);
        } else {
            // Invariant: within a range, apply order is revision order.
            tracing::error!(range = range_id, rev, prev, "revision applied out of order");
        }
        Ok((res, feed, None))
    }
}

/// What applying a command produced: the client's response, the feed message
/// to publish once the batch is written, and a range created by a split.
pub(super) type Executed = (
    Result<Vec<u8>, Status>,
    Option<FeedMessage>,
    Option<RangeDescriptor>,
);

/// Are all keys a write command touches inside `kr`?
fn keys_within(kind: KvKind, request: &[u8], kr: &KeyRange) -> bool {
    let mut keys = Vec::new();
    match kind {
        KvKind::KvPut => match PbPutRequest::decode(request) {
            Ok(p) => keys.push(KeyRange::from_etcd(&p.key, &[])),
            Err(_) => return true, // undecodable: let exec report it
        },
        KvKind::KvDeleteRange => match PbDeleteRequest::decode(request) {
            Ok(d) => keys.push(KeyRange::from_etcd(&d.key, &d.range_end)),
            Err(_) => return true,
        },
        KvKind::KvTxn => match PbTxnRequest::decode(request) {
            Ok(t) => strata_proto::etcdutil::txn_keys(&t, &mut keys),
            Err(_) => return true,
        },
        _ => return true,
    }
    keys.iter().all(|k| kr.covers(k))
}
