//! etcd's Lock and Election services (`v3lockpb`, `v3electionpb`): the
//! server side of clientv3's concurrency recipes, run on the router's own
//! KV, Txn and Watch paths — the keys under a name may lie in several
//! ranges (cross-range txns, merged watches), and auth applies as for the
//! caller's own requests (every call carries the caller's metadata).
//!
//! A lock or a campaign is the key `<name>/<lease id in hex>`, created with
//! the caller's lease by a put-if-absent txn; it holds once every key under
//! `<name>/` created before it is deleted (waited for with watches, never
//! polled). A caller that goes away while waiting (cancelled call, passed
//! deadline) has its key deleted, as etcd's server does.
//!
//! `lock.rs`: Lock, Unlock. `election.rs`: Campaign, Proclaim, Leader,
//! Observe, Resign.

pub mod election;
pub mod lock;

use std::sync::Arc;
use std::time::Duration;

use strata_proto::errors;
use strata_proto::etcd::{
    PbCompare, PbCompareTarget, PbDeleteRequest, PbKeyValue, PbKvService, PbLeaseService,
    PbPutRequest, PbRangeRequest, PbRangeResponse, PbResponseHeader, PbTargetUnion, PbTxnOpRequest,
    PbTxnOpResponse, PbTxnRequest, PbTxnRequestOp, PbTxnResponse, PbWatchResponse,
};
use strata_proto::etcd_auth::ResponseHeader;
use strata_proto::etcd_election::KeyValue;
use strata_proto::etcdutil::KeyRange;
use tonic::metadata::MetadataMap;
use tonic::{Extensions, Request, Status};

use crate::kv::Kv;
use crate::misc::Lease;

/// etcd's session TTL (clientv3/concurrency `defaultSessionTTL`): a Lock or
/// Campaign without a lease runs under a new lease of this many seconds.
pub const DEFAULT_SESSION_TTL_SECS: i64 = 60;
/// How long the clean-up of an abandoned lock or campaign may take.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What the services share: the router's KV and Lease services and its
/// watch feeds.
#[derive(Clone)]
pub struct Recipes {
    pub kv: Arc<Kv>,
    pub lease: Arc<Lease>,
}

/// Who asked: the caller's metadata and connection info, given to every
/// call made for it (its token, its client certificate).
#[derive(Clone)]
pub struct Caller {
    md: MetadataMap,
    ext: Extensions,
}

impl Caller {
    pub fn of<T>(req: &Request<T>) -> Caller {
        Caller {
            md: req.metadata().clone(),
            ext: req.extensions().clone(),
        }
    }

    fn req<T>(&self, m: T) -> Request<T> {
        Request::from_parts(self.md.clone(), self.ext.clone(), m)
    }
}

/// `name/`: the prefix every key of a lock or election lies under.
pub fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// `prefix<lease in hex>`, as Go's `%x` prints a signed lease id.
pub fn key_of(prefix: &[u8], lease: i64) -> Vec<u8> {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    let mut k = prefix.to_vec();
    k.extend_from_slice(hex.as_bytes());
    k
}

/// The end of the prefix range starting at `p` (etcd's `GetPrefixRangeEnd`).
pub fn prefix_end(p: &[u8]) -> Vec<u8> {
    let mut end = p.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Our header as the generated `etcdserverpb.ResponseHeader`.
pub fn header(h: Option<PbResponseHeader>) -> Option<ResponseHeader> {
    h.map(|h| ResponseHeader {
        cluster_id: h.cluster_id,
        member_id: h.member_id,
        revision: h.revision,
        raft_term: h.raft_term,
    })
}

/// A key-value as the generated `mvccpb.KeyValue`.
pub fn key_value(kv: PbKeyValue) -> KeyValue {
    KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

/// Compare `create_revision(key) == rev`.
pub fn created_at(key: &[u8], rev: i64) -> PbCompare {
    PbCompare {
        result: 0, // EQUAL
        target: PbCompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(PbTargetUnion::CreateRevision(rev)),
    }
}

pub fn op_put(key: &[u8], value: &[u8], lease: i64) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

pub fn op_get(key: &[u8]) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestRange(PbRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

pub fn op_delete(key: &[u8]) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestDeleteRange(PbDeleteRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

/// clientv3's `WithFirstCreate` (`descend` false) or `WithLastCreate`
/// (true): the key under `prefix` created first (last), at most
/// `max_create_rev` when not 0.
pub fn get_by_create(prefix: &[u8], descend: bool, max_create_rev: i64) -> PbRangeRequest {
    PbRangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: if descend { 2 } else { 1 },
        sort_target: 2, // CREATE
        max_create_revision: max_create_rev,
        ..Default::default()
    }
}

/// The range response of op `i` of a txn response.
pub fn range_part(resp: &PbTxnResponse, i: usize) -> Result<&PbRangeResponse, Status> {
    match resp.responses.get(i).and_then(|r| r.response.as_ref()) {
        Some(PbTxnOpResponse::ResponseRange(r)) => Ok(r),
        _ => Err(Status::internal("strata: a txn answered without its range")),
    }
}

/// An error of a call etcd's server makes through its own client: clientv3
/// turns every etcd error into a plain Go error, which gRPC reports with
/// code Unknown (same message). Others pass unchanged.
pub fn as_client_error(s: Status) -> Status {
    if s.message().starts_with("etcdserver: ") {
        Status::unknown(s.message().to_string())
    } else {
        s
    }
}

impl Recipes {
    pub async fn txn(&self, who: &Caller, t: PbTxnRequest) -> Result<PbTxnResponse, Status> {
        Ok(PbKvService::txn(&*self.kv, who.req(t))
            .await
            .map_err(as_client_error)?
            .into_inner())
    }

    pub async fn range(&self, who: &Caller, r: PbRangeRequest) -> Result<PbRangeResponse, Status> {
        Ok(PbKvService::range(&*self.kv, who.req(r))
            .await
            .map_err(as_client_error)?
            .into_inner())
    }

    pub async fn delete(
        &self,
        who: &Caller,
        key: &[u8],
    ) -> Result<Option<PbResponseHeader>, Status> {
        let r = PbDeleteRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        Ok(PbKvService::delete_range(&*self.kv, who.req(r))
            .await
            .map_err(as_client_error)?
            .into_inner()
            .header)
    }

    /// A session's lease (clientv3's `NewSession` with `WithLease`): the
    /// caller's, or for 0 a new lease of the default session TTL.
    pub async fn session_lease(&self, who: &Caller, lease: i64) -> Result<i64, Status> {
        if lease != 0 {
            return Ok(lease);
        }
        let g = strata_proto::etcd::PbLeaseGrantRequest {
            ttl: DEFAULT_SESSION_TTL_SECS,
            id: 0,
        };
        Ok(PbLeaseService::lease_grant(&*self.lease, who.req(g))
            .await
            .map_err(as_client_error)?
            .into_inner()
            .id)
    }

    fn watch(&self, kr: KeyRange, start: i64) -> crate::watch::OwnWatch {
        crate::watch::own_watch(
            self.kv.router.clone(),
            kr,
            start,
            self.kv.member_id,
            self.kv.cluster_id,
        )
    }

    /// Waits until every key under `prefix` created at or below
    /// `max_create_rev` is deleted (clientv3's `waitDeletes`): the newest of
    /// them is waited for with a watch, then the next, until none is left.
    /// Returns the header of the read that found none.
    pub async fn wait_deletes(
        &self,
        who: &Caller,
        prefix: &[u8],
        max_create_rev: i64,
    ) -> Result<Option<PbResponseHeader>, Status> {
        // A revision of 0 would lift the bound: nothing is older than 1.
        if max_create_rev < 1 {
            let r = self
                .range(
                    who,
                    PbRangeRequest {
                        count_only: true,
                        ..get_by_create(prefix, true, 0)
                    },
                )
                .await?;
            return Ok(r.header);
        }
        loop {
            let r = self
                .range(who, get_by_create(prefix, true, max_create_rev))
                .await?;
            let Some(last) = r.kvs.first() else {
                return Ok(r.header);
            };
            let rev = r.header.map_or(0, |h| h.revision);
            self.wait_delete(&last.key, rev).await?;
        }
    }

    /// Waits for `key` to be deleted at or after revision `rev`.
    pub async fn wait_delete(&self, key: &[u8], rev: i64) -> Result<(), Status> {
        let mut w = self.watch(KeyRange::from_etcd(key, &[]), rev);
        while let Some(resp) = w.rx.recv().await {
            let resp: PbWatchResponse = resp?;
            if resp.canceled {
                return Err(watch_ended(&resp));
            }
            if resp.events.iter().any(|e| e.r#type == 1) {
                return Ok(());
            }
        }
        Err(errors::lost_watcher())
    }
}

/// The error a watch ended with (compaction, or a refusal's reason).
fn watch_ended(resp: &PbWatchResponse) -> Status {
    if resp.compact_revision > 0 {
        as_client_error(errors::compacted())
    } else {
        Status::unknown(resp.cancel_reason.clone())
    }
}

/// Deletes a key when dropped armed: a lock or campaign abandoned while
/// waiting (its caller went away, its deadline passed, the wait failed)
/// leaves no key behind to block the others. The delete runs on its own
/// task, outside the abandoned request and its deadline.
pub struct Cleanup {
    armed: Option<(Recipes, Caller, PbTxnRequest)>,
}

impl Cleanup {
    /// Arms a clean-up running txn `t` (a delete, maybe guarded).
    pub fn new(r: &Recipes, who: &Caller, t: PbTxnRequest) -> Cleanup {
        Cleanup {
            armed: Some((r.clone(), who.clone(), t)),
        }
    }

    /// Runs the clean-up now and waits for it.
    pub async fn run_now(mut self) -> Result<(), Status> {
        match self.armed.take() {
            Some((r, who, t)) => r.txn(&who, t).await.map(|_| ()),
            None => Ok(()),
        }
    }

    pub fn disarm(mut self) {
        self.armed = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some((r, who, t)) = self.armed.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    match tokio::time::timeout(CLEANUP_TIMEOUT, r.txn(&who, t)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!("abandoned lock/campaign key not deleted: {e}")
                        }
                        Err(_) => tracing::warn!("abandoned lock/campaign key: delete timed out"),
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_as_etcd_names_them() {
        assert_eq!(prefix_of(b"lk"), b"lk/".to_vec());
        assert_eq!(
            key_of(b"lk/", 0x694d_8a3b_1c2d_0e0f),
            b"lk/694d8a3b1c2d0e0f".to_vec()
        );
        assert_eq!(key_of(b"lk/", 10), b"lk/a".to_vec());
        assert_eq!(key_of(b"lk/", -10), b"lk/-a".to_vec());
        assert_eq!(key_of(b"", i64::MIN), b"-8000000000000000".to_vec());
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn etcd_errors_come_back_as_clientv3_gives_them() {
        let e = as_client_error(errors::lease_not_found());
        assert_eq!(
            (e.code(), e.message()),
            (
                tonic::Code::Unknown,
                "etcdserver: requested lease not found"
            )
        );
        let e = as_client_error(Status::unavailable("strata: no route"));
        assert_eq!(e.code(), tonic::Code::Unavailable);
    }
}
