//! Applying the commands of cross-range transactions (see `crate::txn`).
//! Every outcome is deterministic on every replica: it depends only on the
//! command and the range's state.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prost::Message as _;
use strata_proto::etcd::PbTxnRequest;
use strata_proto::strata::{KvKind, RangeCommand, TxnDecision, TxnIntent, TxnPrepare};

use super::exec::Applied;
use super::replica::RangeShared;
use super::{desc_range, Store};
use crate::apply::{View, WriteExec};
use crate::error::NodeError;
use crate::storage::{Cf, WriteBatch};
use crate::txn::{intent_key, not_pending, prepare_eval};

/// Commit answers kept per replica, for a coordinator that asks again.
const RECENT_TXNS: usize = 256;

impl Store {
    pub(super) fn exec_txn_command(
        &mut self,
        shared: &Arc<RangeShared>,
        kind: KvKind,
        cmd: &RangeCommand,
        prev_rev: i64,
        wb: &mut WriteBatch,
    ) -> anyhow::Result<Applied> {
        match kind {
            KvKind::KvTxnPrepare => match TxnPrepare::decode(&cmd.request[..]) {
                Ok(p) => self.exec_prepare(shared, p, prev_rev, wb),
                Err(e) => Ok(Applied::invalid(format!("bad txn prepare: {e}"))),
            },
            _ => match TxnDecision::decode(&cmd.request[..]) {
                Ok(d) if kind == KvKind::KvTxnCommit && d.commit && cmd.revision == d.revision => {
                    self.exec_commit(shared, d, prev_rev, wb)
                }
                Ok(d) if kind == KvKind::KvTxnAbort && !d.commit => {
                    Ok(self.exec_abort(shared, d.txn_id, wb))
                }
                Ok(_) => Ok(Applied::invalid(
                    "a txn decision that does not match its command",
                )),
                Err(e) => Ok(Applied::invalid(format!("bad txn decision: {e}"))),
            },
        }
    }

    fn exec_prepare(
        &mut self,
        shared: &Arc<RangeShared>,
        p: TxnPrepare,
        prev_rev: i64,
        wb: &mut WriteBatch,
    ) -> anyhow::Result<Applied> {
        if let Some(i) = shared.intent.read().clone() {
            // Asked again (a retry): the same answer. Another txn: busy.
            return Ok(Applied::answer(match i.txn_id == p.txn_id {
                true => Ok(i.prepared.clone().unwrap_or_default().encode_to_vec()),
                false => Err(NodeError::held()),
            }));
        }
        let desc = shared.desc.read().clone();
        if desc.epoch.unwrap_or_default().version != p.version {
            return Ok(Applied::answer(Err(NodeError::EpochNotMatch)));
        }
        let t = match PbTxnRequest::decode(&p.txn[..]) {
            Ok(t) => t,
            Err(e) => return Ok(Applied::invalid(format!("bad txn in prepare: {e}"))),
        };
        let span = desc_range(&desc);
        let view = View {
            mvcc: &self.mvcc,
            rev: prev_rev,
            compacted: shared.compacted.load(Ordering::Acquire),
            overlay: None,
            latest: None,
        };
        let revoked = crate::lease::Revoked::of(&*self.db, desc.id);
        let prepared = match prepare_eval(&view, &t, &span, &revoked) {
            Ok(p) => p,
            Err(e) => return Ok(Applied::answer(Err(e.into()))),
        };
        let intent = TxnIntent {
            txn_id: p.txn_id,
            participants: p.participants,
            txn: p.txn,
            prepared: Some(prepared.clone()),
            lease_revoke: p.lease_revoke,
        };
        wb.put(Cf::Meta, intent_key(desc.id), intent.encode_to_vec());
        let mut out = Applied::answer(Ok(prepared.encode_to_vec()));
        out.intent = Some(Some(Arc::new(intent)));
        Ok(out)
    }

    fn exec_commit(
        &mut self,
        shared: &Arc<RangeShared>,
        d: TxnDecision,
        prev_rev: i64,
        wb: &mut WriteBatch,
    ) -> anyhow::Result<Applied> {
        let range_id = shared.desc.read().id;
        let intent = match shared.intent.read().clone() {
            Some(i) if i.txn_id == d.txn_id => i,
            _ => {
                let r = self.replicas.get(&range_id).expect("replica");
                return Ok(Applied::answer(
                    match r.recent_txns.iter().find(|(id, _)| *id == d.txn_id) {
                        Some((_, body)) => Ok(body.clone()),
                        None => Err(not_pending(d.txn_id)),
                    },
                ));
            }
        };
        let rev = d.revision;
        if rev <= prev_rev {
            // Cannot happen with a correct oracle (the range was frozen before
            // the revision was handed out). Applying it would break revision
            // order; keeping the intent would freeze the range for good (its
            // resolver would get the same decision). So the txn is dropped
            // here, loudly, and the range goes on.
            tracing::error!(
                range = range_id,
                txn = d.txn_id,
                rev,
                prev_rev,
                "txn commit not above the applied revision: dropped in this range"
            );
            crate::metrics::REVISION_ORDER_REFUSED.inc();
            wb.delete(Cf::Meta, intent_key(range_id));
            let mut out = Applied::invalid("txn commit revision not above the range's revision");
            out.intent = Some(None);
            return Ok(out);
        }
        let span = desc_range(&shared.desc.read());
        let t = PbTxnRequest::decode(&intent.txn[..]).unwrap_or_default();
        let mut ex = WriteExec::new(&self.mvcc, rev, shared.compacted.load(Ordering::Acquire));
        ex.revoked = Some(crate::lease::Revoked::of(&*self.db, range_id));
        let res = match intent.lease_revoke {
            0 => ex.txn_part(&t, &d.path, &span).map(|r| r.encode_to_vec()),
            // A lease revoked in every range at one revision (placement's).
            lease => crate::lease::revoke(&mut ex, &*self.db, range_id, &span, lease, wb)?
                .map(|n| super::exec::span_applied(&span, n as u64)),
        };
        let mut out = Applied::default();
        match &res {
            Ok(_) => (out.feed, out.growth) = self.stage_writes(&mut ex, wb),
            // Prepare checked every op that can fail on the range's state,
            // which has not changed since: this is a bug, not a client error.
            Err(e) => tracing::error!(
                range = range_id,
                txn = d.txn_id,
                "txn part failed at commit: {e}"
            ),
        }
        shared.writes.fetch_add(1, Ordering::Relaxed);
        wb.delete(Cf::Meta, intent_key(range_id));
        // Staged as the range's current revision with the apply batch
        // (`exec.rs`, `flush_applied`).
        out.applied_rev = Some(rev);
        out.intent = Some(None);
        let r = self.replicas.get_mut(&range_id).expect("replica");
        if let Ok(body) = &res {
            if r.recent_txns.len() >= RECENT_TXNS {
                r.recent_txns.pop_front();
            }
            r.recent_txns.push_back((d.txn_id, body.clone()));
        }
        out.result = res.map_err(NodeError::from);
        Ok(out)
    }

    fn exec_abort(
        &mut self,
        shared: &Arc<RangeShared>,
        txn_id: u64,
        wb: &mut WriteBatch,
    ) -> Applied {
        let mut out = Applied::answer(Ok(Vec::new()));
        if shared.intent_id() == Some(txn_id) {
            wb.delete(Cf::Meta, intent_key(shared.desc.read().id));
            out.intent = Some(None);
        }
        out
    }
}
