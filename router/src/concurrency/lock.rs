//! etcd's Lock service: clientv3's mutex, run by the router for the caller.
//!
//! Lock puts `<name>/<lease hex>` if absent (with the caller's lease; a
//! lease of 0 gets a new session lease) and reads the key created first
//! under `<name>/` in the same txn; unless that is its own key, it waits
//! until every older key is deleted, then checks its key still exists (its
//! lease may have expired meanwhile). Locking again with the same lease
//! finds the key there and waits (or holds) under its original revision.
//! Unlock deletes the key.

use strata_proto::errors;
use strata_proto::etcd::PbTxnRequest;
use strata_proto::etcd_lock::{
    LockRequest, LockResponse, LockService, UnlockRequest, UnlockResponse,
};
use tonic::{Request, Response, Status};

use super::*;

pub struct LockSvc(pub Recipes);

#[tonic::async_trait]
impl LockService for LockSvc {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let who = Caller::of(&req);
        let r = req.into_inner();
        let rc = &self.0;
        let lease = rc.session_lease(&who, r.lease).await?;
        let prefix = prefix_of(&r.name);
        let my_key = key_of(&prefix, lease);
        let owner = get_by_create(&prefix, false, 0);
        let t = PbTxnRequest {
            compare: vec![created_at(&my_key, 0)],
            success: vec![
                op_put(&my_key, b"", lease),
                strata_proto::etcd::PbTxnRequestOp {
                    request: Some(strata_proto::etcd::PbTxnOpRequest::RequestRange(
                        owner.clone(),
                    )),
                },
            ],
            failure: vec![
                op_get(&my_key),
                strata_proto::etcd::PbTxnRequestOp {
                    request: Some(strata_proto::etcd::PbTxnOpRequest::RequestRange(owner)),
                },
            ],
        };
        let resp = rc.txn(&who, t).await?;
        let my_rev = if resp.succeeded {
            resp.header.map_or(0, |h| h.revision)
        } else {
            // The key was there (same lease locking again): its revision.
            match range_part(&resp, 0)?.kvs.first() {
                Some(kv) => kv.create_revision,
                None => return Err(Status::internal("strata: lock key vanished in its txn")),
            }
        };
        let first = range_part(&resp, 1)?.kvs.first();
        if first.is_none_or(|kv| kv.create_revision == my_rev) {
            return Ok(Response::new(LockResponse {
                header: header(resp.header),
                key: my_key,
            }));
        }
        // Waiting: if the caller goes away (or the wait fails) the key goes.
        let cleanup = Cleanup::new(
            rc,
            &who,
            PbTxnRequest {
                success: vec![op_delete(&my_key)],
                ..Default::default()
            },
        );
        if let Err(e) = rc.wait_deletes(&who, &prefix, my_rev - 1).await {
            let _ = cleanup.run_now().await;
            return Err(e);
        }
        // The session may have expired while waiting: the key must still be
        // there.
        let mine = match rc
            .range(
                &who,
                strata_proto::etcd::PbRangeRequest {
                    key: my_key.clone(),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(m) => m,
            Err(e) => {
                let _ = cleanup.run_now().await;
                return Err(e);
            }
        };
        cleanup.disarm();
        if mine.kvs.is_empty() {
            return Err(errors::mutex_session_expired());
        }
        Ok(Response::new(LockResponse {
            header: header(mine.header),
            key: my_key,
        }))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let who = Caller::of(&req);
        let r = req.into_inner();
        let h = self.0.delete(&who, &r.key).await?;
        Ok(Response::new(UnlockResponse { header: header(h) }))
    }
}
