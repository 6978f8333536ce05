//! Every KV request from the network is decoded and checked here before
//! anything is proposed, and priced against the space quota.

use strata_proto::etcd::{
    PbCompactionRequest, PbDeleteRequest, PbLeaseRevokeRequest, PbPutRequest, PbRangeRequest,
    PbTxnRequest,
};
use strata_proto::etcdutil::{txn_put_bytes, txn_writes};
use strata_proto::strata::{KvKind, TxnDecision, TxnPart, TxnPrepare};

use super::{decode, invalid};
use crate::error::NodeResult;

/// What a KV request is, once checked.
#[derive(Clone, Copy)]
pub(super) enum Checked {
    Read,
    Write,
    /// Ordered with writes but consumes no revision (compaction).
    Unstamped,
    /// Phase one of a cross-range txn (`crate::txn`): its id, how long it
    /// may wait for a range another txn holds, and its age (priority).
    Prepare(u64, std::time::Duration, u64),
    /// A cross-range txn's commit (at this revision) or abort (0).
    Decision(i64),
    /// A cross-range read-only txn's part.
    TxnRead,
    /// The coordinator of this txn is alive (not proposed).
    Touch(u64),
}

/// The most participants a cross-range txn names.
const MAX_TXN_PARTICIPANTS: usize = 1 << 16;

/// Decodes and checks a request from the network before anything is
/// proposed: a request that fails here never reaches the raft log. Also
/// answers the bytes it adds against the space quota (0 for all but Puts,
/// and txns and txn prepares with Puts: deletes and compaction always go).
pub(super) fn check_request(kind: KvKind, body: &[u8]) -> NodeResult<(Checked, u64)> {
    let mut cost = 0u64;
    let checked = match kind {
        KvKind::KvRange | KvKind::KvRangePage => {
            decode::<PbRangeRequest>(body)?;
            Checked::Read
        }
        KvKind::KvTxn => {
            let t = decode::<PbTxnRequest>(body)?;
            cost = txn_put_bytes(&t);
            match txn_writes(&t) {
                true => Checked::Write,
                false => Checked::Read,
            }
        }
        KvKind::KvPut => {
            let p = decode::<PbPutRequest>(body)?;
            cost = (p.key.len() as u64)
                .saturating_add(p.value.len() as u64)
                .max(1);
            Checked::Write
        }
        KvKind::KvDeleteRange => {
            decode::<PbDeleteRequest>(body)?;
            Checked::Write
        }
        KvKind::KvCompact => {
            if decode::<PbCompactionRequest>(body)?.revision <= 0 {
                return Err(invalid("compaction revision must be positive"));
            }
            Checked::Unstamped
        }
        KvKind::KvLeaseRevoke => {
            if decode::<PbLeaseRevokeRequest>(body)?.id == 0 {
                return Err(invalid("lease id must not be 0"));
            }
            Checked::Write
        }
        KvKind::KvLeaseGrant => {
            if decode::<strata_proto::etcd::PbLeaseGrantRequest>(body)?.id == 0 {
                return Err(invalid("lease id must not be 0"));
            }
            Checked::Write
        }
        KvKind::KvSplit => return Err(invalid("splits are proposed by the node itself")),
        KvKind::KvIngest => {
            crate::store::ingest::check_ingest(body).map_err(|e| invalid(&e))?;
            Checked::Unstamped
        }
        KvKind::KvTxnPrepare => {
            let p: TxnPrepare = decode(body)?;
            cost = txn_put_bytes(&decode::<PbTxnRequest>(&p.txn)?);
            if p.txn_id == 0
                || p.participants.is_empty()
                || p.participants.len() > MAX_TXN_PARTICIPANTS
            {
                return Err(invalid(
                    "a txn prepare needs a txn id and 1 to 65536 participants",
                ));
            }
            let wait = std::time::Duration::from_millis(p.wait_ms.into());
            let wait = wait.min(crate::txn::MAX_PREPARE_WAIT);
            Checked::Prepare(p.txn_id, wait, p.priority)
        }
        KvKind::KvTxnCommit | KvKind::KvTxnAbort => {
            let d: TxnDecision = decode(body)?;
            let commit = kind == KvKind::KvTxnCommit;
            if d.txn_id == 0 || d.commit != commit || (commit && d.revision <= 0) {
                return Err(invalid("a txn decision that does not match its kind"));
            }
            Checked::Decision(if commit { d.revision } else { 0 })
        }
        KvKind::KvTxnRead => {
            let p: TxnPart = decode(body)?;
            decode::<PbTxnRequest>(&p.txn)?;
            Checked::TxnRead
        }
        KvKind::KvTxnTouch => match decode::<TxnDecision>(body)?.txn_id {
            0 => return Err(invalid("a txn touch needs a txn id")),
            id => Checked::Touch(id),
        },
    };
    Ok((checked, cost))
}
