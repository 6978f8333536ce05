//! Merging the participants' shares of a cross-range txn into etcd's one
//! response: a Put's answer from the range holding its key, a Delete's
//! counts and previous values added up in key order, a Range's parts merged
//! as a Range over several ranges is (count, sort, limit over the whole).

use strata_proto::etcd::{
    PbDeleteResponse, PbRangeResponse, PbResponseOp, PbTxnOpRequest, PbTxnOpResponse, PbTxnRequest,
    PbTxnResponse,
};
use tonic::Status;

fn bad() -> Status {
    Status::internal("strata: a txn participant answered a different shape")
}

/// `parts[i]` is the share of the range at `spans[i]` (in key order);
/// `owner(key)` is the index of the range holding `key`.
pub fn merge(
    t: &PbTxnRequest,
    parts: &[PbTxnResponse],
    owner: &dyn Fn(&[u8]) -> Option<usize>,
) -> Result<PbTxnResponse, Status> {
    let first = parts.first().ok_or_else(bad)?;
    let ok = first.succeeded;
    if parts.iter().any(|p| p.succeeded != ok) {
        return Err(bad());
    }
    let ops = if ok { &t.success } else { &t.failure };
    if parts.iter().any(|p| p.responses.len() != ops.len()) {
        return Err(bad());
    }
    let mut responses = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let nth = |p: &PbTxnResponse| p.responses[i].response.clone();
        let resp = match &op.request {
            Some(PbTxnOpRequest::RequestPut(p)) => {
                let at = owner(&p.key).ok_or_else(bad)?;
                nth(&parts[at]).ok_or_else(bad)?
            }
            Some(PbTxnOpRequest::RequestDeleteRange(_)) => {
                let mut out = PbDeleteResponse::default();
                for p in parts {
                    match nth(p) {
                        Some(PbTxnOpResponse::ResponseDeleteRange(d)) => {
                            out.deleted += d.deleted;
                            out.prev_kvs.extend(d.prev_kvs);
                        }
                        _ => return Err(bad()),
                    }
                }
                PbTxnOpResponse::ResponseDeleteRange(out)
            }
            Some(PbTxnOpRequest::RequestRange(r)) => {
                let mut out = PbRangeResponse::default();
                for p in parts {
                    match nth(p) {
                        Some(PbTxnOpResponse::ResponseRange(x)) => {
                            out.count += x.count;
                            out.kvs.extend(x.kvs);
                        }
                        _ => return Err(bad()),
                    }
                }
                crate::kv::finish_range(&mut out, r);
                PbTxnOpResponse::ResponseRange(out)
            }
            Some(PbTxnOpRequest::RequestTxn(inner)) => {
                let mut nested = Vec::with_capacity(parts.len());
                for p in parts {
                    match nth(p) {
                        Some(PbTxnOpResponse::ResponseTxn(x)) => nested.push(x),
                        _ => return Err(bad()),
                    }
                }
                PbTxnOpResponse::ResponseTxn(merge(inner, &nested, owner)?)
            }
            None => return Err(Status::invalid_argument("etcdserver: empty request op")),
        };
        responses.push(PbResponseOp {
            response: Some(resp),
        });
    }
    Ok(PbTxnResponse {
        header: None,
        succeeded: ok,
        responses,
    })
}
