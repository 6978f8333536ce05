//! A range's share of a cross-range txn, run along a decided path: each op
//! over this range's keys only. Puts of other ranges' keys answer an empty
//! response; Deletes and Ranges cover the range's part of their interval,
//! Ranges without limit or sort (the coordinator merges the parts, as it
//! merges a Range over several ranges).

use strata_proto::etcd::{
    PbDeleteRequest, PbDeleteResponse, PbPutResponse, PbRangeResponse, PbResponseOp,
    PbTxnOpRequest, PbTxnOpResponse, PbTxnRequest, PbTxnResponse,
};
use strata_proto::etcdutil::KeyRange;
use strata_proto::xtxn::{self, to_etcd};
use tonic::Status;

use super::clip;
use crate::apply::{header, Walk, WriteExec};

impl WriteExec<'_> {
    /// Runs this range's share of `t` at `self.rev` along `path` (whether
    /// each txn of the tree succeeded, pre-order).
    pub fn txn_part(
        &mut self,
        t: &PbTxnRequest,
        path: &[bool],
        span: &KeyRange,
    ) -> Result<PbTxnResponse, Status> {
        if path.len() != xtxn::nodes(t) {
            return Err(Status::invalid_argument(
                "strata: a txn path does not match its txn",
            ));
        }
        self.part_at(t, path, span, &mut Walk::default())
    }

    fn part_at(
        &mut self,
        t: &PbTxnRequest,
        path: &[bool],
        span: &KeyRange,
        at: &mut Walk,
    ) -> Result<PbTxnResponse, Status> {
        let ok = path[at.node];
        at.node += 1;
        let mut responses = Vec::new();
        for (branch, ops) in [(true, &t.success), (false, &t.failure)] {
            for op in ops {
                let runs = branch == ok;
                // Numbered over the whole txn, as every range sees it: the
                // router orders a revision's events from all ranges by it.
                self.op = at.next_op();
                let resp = match &op.request {
                    Some(PbTxnOpRequest::RequestTxn(inner)) if runs => {
                        PbTxnOpResponse::ResponseTxn(self.part_at(inner, path, span, at)?)
                    }
                    Some(PbTxnOpRequest::RequestTxn(inner)) => {
                        at.skip(inner);
                        continue;
                    }
                    _ if !runs => continue,
                    Some(PbTxnOpRequest::RequestPut(p)) if span.contains(&p.key) => {
                        PbTxnOpResponse::ResponsePut(self.put(p)?)
                    }
                    Some(PbTxnOpRequest::RequestPut(_)) => {
                        PbTxnOpResponse::ResponsePut(PbPutResponse {
                            header: header(self.rev),
                            prev_kv: None,
                        })
                    }
                    Some(PbTxnOpRequest::RequestDeleteRange(d)) => {
                        let kr = clip(&KeyRange::from_etcd(&d.key, &d.range_end), span);
                        PbTxnOpResponse::ResponseDeleteRange(if kr.is_empty() {
                            PbDeleteResponse {
                                header: header(self.rev),
                                ..Default::default()
                            }
                        } else {
                            let (key, range_end) = to_etcd(&kr);
                            self.delete(&PbDeleteRequest {
                                key,
                                range_end,
                                prev_kv: d.prev_kv,
                            })?
                        })
                    }
                    Some(PbTxnOpRequest::RequestRange(r)) => {
                        let kr = clip(&KeyRange::from_etcd(&r.key, &r.range_end), span);
                        PbTxnOpResponse::ResponseRange(if kr.is_empty() {
                            PbRangeResponse {
                                header: header(self.rev),
                                ..Default::default()
                            }
                        } else {
                            let mut q = r.clone();
                            (q.key, q.range_end) = to_etcd(&kr);
                            q.limit = 0;
                            q.sort_order = 0;
                            q.sort_target = 0;
                            q.count_only = false;
                            let mut x = self.view().range(&q)?;
                            x.header = header(self.rev);
                            x
                        })
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
