//! A range's part in cross-range transactions (the protocol and its
//! argument: docs/cross-range-txns.md).
//!
//! - **Prepare** (`KV_TXN_PREPARE`, unstamped, through the sequencer like a
//!   write): the range records the txn as its *intent* (meta CF
//!   `txn/<range>`, carried in snapshots) and answers how the txn's compares
//!   and ops look from its keys ([`prepare_eval`]). From then until the txn
//!   is decided the range is frozen: its sequencer holds every other write
//!   (`sequencer.rs`), apply refuses any that still arrives (a new leader's),
//!   it does not split, and no read barrier passes its applied revision
//!   (`store/read.rs`), so its closed revision stays below the commit
//!   revision, which the coordinator takes from the oracle only after every
//!   range prepared.
//! - **Commit** (`KV_TXN_COMMIT`, stamped with the decision's revision R):
//!   the range runs its share of the txn at R along the decided path
//!   ([`part`]) and drops the intent. **Abort** drops it.
//! - A range frozen for [`RESOLVE_AFTER`] asks placement for the decision
//!   (recording an abort if there is none) and applies it ([`resolver`]).

pub mod part;
pub mod resolver;

use prost::Message as _;
use strata_proto::etcd::{PbTxnOpRequest, PbTxnRequest};
use strata_proto::etcdutil::KeyRange;
use strata_proto::strata::{CompareEval, OpError, TxnIntent, TxnPrepared};
use strata_proto::xtxn::{self, KvFields};
use tonic::Status;

use crate::apply::View;
use crate::mvcc::Version;
use crate::storage::{Cf, Reader};

/// How long a txn may hold a range, since it was prepared or last touched
/// by its coordinator (`KV_TXN_TOUCH`: a coordinator waiting for other
/// ranges says it is alive), before the range resolves it itself.
pub const RESOLVE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// The longest a prepare waits in a range's queue for another txn to finish
/// (the coordinator asks for less: what is left of its request deadline).
pub const MAX_PREPARE_WAIT: std::time::Duration = std::time::Duration::from_secs(6);

/// The answer to a decision or touch for a txn that does not hold the range.
pub fn not_pending(txn_id: u64) -> crate::error::NodeError {
    Status::failed_precondition(format!("strata: txn {txn_id} is not pending in this range")).into()
}

pub(crate) fn intent_key(range_id: u64) -> Vec<u8> {
    let mut k = b"txn/".to_vec();
    k.extend_from_slice(&range_id.to_be_bytes());
    k
}

/// The intent recorded for `range_id`, if any.
pub fn load_intent(db: &dyn Reader, range_id: u64) -> anyhow::Result<Option<TxnIntent>> {
    match db.get(Cf::Meta, &intent_key(range_id))? {
        None => Ok(None),
        Some(b) => Ok(Some(TxnIntent::decode(&b[..]).map_err(|e| {
            anyhow::anyhow!("range {range_id}: corrupt txn intent: {e}")
        })?)),
    }
}

pub fn fields(v: &Version) -> KvFields<'_> {
    KvFields {
        value: &v.value.value,
        version: v.value.version,
        create_revision: v.value.create_revision,
        mod_revision: v.mod_revision,
        lease: v.value.lease,
    }
}

/// The part of `kr` inside `clip` (may be empty).
pub fn clip(kr: &KeyRange, clip: &KeyRange) -> KeyRange {
    kr.clamp(&clip.start, clip.end.as_deref().unwrap_or_default())
}

/// Every compare of the tree evaluated over this range's keys (`clip`),
/// against `view` (the state before the txn).
pub fn eval_compares(
    view: &View<'_>,
    t: &PbTxnRequest,
    span: &KeyRange,
) -> Result<Vec<CompareEval>, Status> {
    xtxn::compares(t)
        .into_iter()
        .map(|c| {
            let kr = clip(&KeyRange::from_etcd(&c.key, &c.range_end), span);
            if kr.is_empty() {
                return Ok(CompareEval::default());
            }
            let kvs = view.range_at(&kr, view.rev)?;
            Ok(CompareEval {
                keys: kvs.len() as u64,
                all_true: kvs.iter().all(|v| xtxn::compare_one(c, Some(&fields(v)))),
            })
        })
        .collect()
}

/// Phase one in this range: compares, and the ops that would fail here
/// (a Put on a revoked lease or, with `ignore_value`/`ignore_lease`, on a
/// missing key; a Range at a compacted revision). The state stays as it is
/// until the txn is decided, so what fails now fails at commit: the
/// coordinator aborts a txn whose path runs such an op, with its error,
/// and no range ever commits a part that fails.
pub fn prepare_eval(
    view: &View<'_>,
    t: &PbTxnRequest,
    span: &KeyRange,
    revoked: &crate::lease::Revoked<'_>,
) -> Result<TxnPrepared, Status> {
    let compares = eval_compares(view, t, span)?;
    let mut errors = Vec::new();
    for (i, op) in xtxn::ops(t).into_iter().enumerate() {
        let err = match &op.request {
            Some(PbTxnOpRequest::RequestPut(p)) if span.contains(&p.key) => {
                let lease = match p.lease {
                    0 => Ok(()),
                    l => revoked.check_put(l),
                };
                match lease {
                    Err(e) => Some(e),
                    Ok(()) if (p.ignore_value || p.ignore_lease) && view.get(&p.key)?.is_none() => {
                        Some(strata_proto::errors::key_not_found())
                    }
                    Ok(()) => None,
                }
            }
            Some(PbTxnOpRequest::RequestRange(r))
                if r.revision > 0
                    && r.revision < view.compacted
                    && !clip(&KeyRange::from_etcd(&r.key, &r.range_end), span).is_empty() =>
            {
                Some(strata_proto::errors::compacted())
            }
            _ => None,
        };
        if let Some(e) = err {
            errors.push(OpError {
                op: i as u32,
                code: e.code() as i32,
                message: e.message().to_string(),
            });
        }
    }
    Ok(TxnPrepared { compares, errors })
}

/// A read-only cross-range txn's part at `view.rev`: compares, and with a
/// `path`, this range's share of its ops.
pub fn read_part(
    view: &View<'_>,
    t: &PbTxnRequest,
    path: &[bool],
    span: &KeyRange,
) -> Result<strata_proto::strata::TxnPartResult, Status> {
    let compares = eval_compares(view, t, span)?;
    let response = if path.is_empty() {
        Vec::new()
    } else {
        let mut ex = crate::apply::WriteExec::new(view.mvcc, view.rev + 1, view.compacted);
        let mut resp = ex.txn_part(t, path, span)?;
        if !ex.overlay.is_empty() {
            return Err(Status::invalid_argument(
                "strata: a txn that writes is not read in parts",
            ));
        }
        crate::apply::fix_headers(&mut resp, view.rev);
        resp.encode_to_vec()
    };
    Ok(strata_proto::strata::TxnPartResult { compares, response })
}
