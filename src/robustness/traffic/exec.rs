//! Runs one recorded `Request` through the etcd client and converts the answer
//! into the history's `Response`.

use etcd_client::{
    Client, Compare as ECompare, CompareOp, DeleteOptions, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp as ETxnOp, TxnOpResponse,
};

use crate::robustness::history::*;

fn kv(k: &KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(k.key()).into_owned(),
        value: String::from_utf8_lossy(k.value()).into_owned(),
        create_revision: k.create_revision(),
        mod_revision: k.mod_revision(),
        version: k.version(),
        lease: k.lease(),
    }
}

pub fn kvs(list: &[KeyValue]) -> Vec<Kv> {
    list.iter().map(kv).collect()
}

pub fn opt_kv(k: Option<&KeyValue>) -> Option<Kv> {
    k.map(kv)
}

fn get_options(r: &RangeReq) -> GetOptions {
    let mut o = GetOptions::new();
    if !r.end.is_empty() {
        o = o.with_range(r.end.as_bytes().to_vec());
    }
    if r.revision > 0 {
        o = o.with_revision(r.revision);
    }
    if r.limit > 0 {
        o = o.with_limit(r.limit);
    }
    if r.serializable {
        o = o.with_serializable();
    }
    o
}

fn put_options(p: &PutReq) -> PutOptions {
    let mut o = PutOptions::new();
    if p.lease != 0 {
        o = o.with_lease(p.lease);
    }
    if p.prev_kv {
        o = o.with_prev_key();
    }
    o
}

fn delete_options(d: &DeleteReq) -> DeleteOptions {
    let mut o = DeleteOptions::new();
    if !d.end.is_empty() {
        o = o.with_range(d.end.as_bytes().to_vec());
    }
    if d.prev_kv {
        o = o.with_prev_key();
    }
    o
}

fn compare(c: &Compare) -> ECompare {
    let op = match c.result {
        CompareResult::Equal => CompareOp::Equal,
        CompareResult::Greater => CompareOp::Greater,
        CompareResult::Less => CompareOp::Less,
        CompareResult::NotEqual => CompareOp::NotEqual,
    };
    let k = c.key.as_bytes().to_vec();
    match &c.target {
        CompareTarget::Version(v) => ECompare::version(k, op, *v),
        CompareTarget::CreateRevision(v) => ECompare::create_revision(k, op, *v),
        CompareTarget::ModRevision(v) => ECompare::mod_revision(k, op, *v),
        CompareTarget::Value(v) => ECompare::value(k, op, v.as_bytes().to_vec()),
        CompareTarget::Lease(v) => ECompare::lease(k, op, *v),
    }
}

fn txn_op(op: &TxnOp) -> ETxnOp {
    match op {
        TxnOp::Range(r) => ETxnOp::get(r.key.as_bytes().to_vec(), Some(get_options(r))),
        TxnOp::Put(p) => ETxnOp::put(
            p.key.as_bytes().to_vec(),
            p.value.as_bytes().to_vec(),
            Some(put_options(p)),
        ),
        TxnOp::Delete(d) => ETxnOp::delete(d.key.as_bytes().to_vec(), Some(delete_options(d))),
    }
}

fn rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map(|h| h.revision()).unwrap_or(0)
}

/// Sends `req`; an error is returned as its message.
pub async fn exec(c: &mut Client, req: &Request) -> Result<Response, String> {
    let r = async {
        Ok::<_, etcd_client::Error>(match req {
            Request::Range(r) => {
                let resp = c.get(r.key.as_bytes(), Some(get_options(r))).await?;
                Response {
                    revision: rev(resp.header()),
                    body: ResponseBody::Range(RangeResp {
                        kvs: kvs(resp.kvs()),
                        count: resp.count(),
                        more: resp.more(),
                    }),
                }
            }
            Request::Put(p) => {
                let resp = c
                    .put(p.key.as_bytes(), p.value.as_bytes(), Some(put_options(p)))
                    .await?;
                Response {
                    revision: rev(resp.header()),
                    body: ResponseBody::Put {
                        prev_kv: opt_kv(resp.prev_key()),
                    },
                }
            }
            Request::Delete(d) => {
                let resp = c.delete(d.key.as_bytes(), Some(delete_options(d))).await?;
                Response {
                    revision: rev(resp.header()),
                    body: ResponseBody::Delete(DeleteResp {
                        deleted: resp.deleted(),
                        prev_kvs: kvs(resp.prev_kvs()),
                    }),
                }
            }
            Request::Txn(t) => {
                let txn = Txn::new()
                    .when(t.compares.iter().map(compare).collect::<Vec<_>>())
                    .and_then(t.success.iter().map(txn_op).collect::<Vec<_>>())
                    .or_else(t.failure.iter().map(txn_op).collect::<Vec<_>>());
                let resp = c.txn(txn).await?;
                let responses = resp
                    .op_responses()
                    .into_iter()
                    .map(|r| match r {
                        TxnOpResponse::Get(g) => TxnOpResp::Range(RangeResp {
                            kvs: kvs(g.kvs()),
                            count: g.count(),
                            more: g.more(),
                        }),
                        TxnOpResponse::Put(p) => TxnOpResp::Put {
                            prev_kv: opt_kv(p.prev_key()),
                        },
                        TxnOpResponse::Delete(d) => TxnOpResp::Delete(DeleteResp {
                            deleted: d.deleted(),
                            prev_kvs: kvs(d.prev_kvs()),
                        }),
                        // The traffic never nests transactions.
                        TxnOpResponse::Txn(_) => TxnOpResp::Range(RangeResp::default()),
                    })
                    .collect();
                Response {
                    revision: rev(resp.header()),
                    body: ResponseBody::Txn {
                        succeeded: resp.succeeded(),
                        responses,
                    },
                }
            }
            Request::LeaseGrant { ttl } => {
                let resp = c.lease_grant(*ttl, None).await?;
                Response {
                    revision: rev(resp.header()),
                    body: ResponseBody::LeaseGrant { id: resp.id() },
                }
            }
            Request::LeaseRevoke { id } => {
                let resp = c.lease_revoke(*id).await?;
                Response {
                    revision: rev(resp.header()),
                    body: ResponseBody::LeaseRevoke,
                }
            }
            Request::Compact { revision } => {
                let resp = c.compact(*revision, None).await?;
                Response {
                    revision: rev(resp.header()),
                    body: ResponseBody::Compact,
                }
            }
        })
    };
    r.await.map_err(|e| e.to_string())
}
