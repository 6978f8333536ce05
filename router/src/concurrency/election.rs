//! etcd's Election service: clientv3's election, run by the router for the
//! caller.
//!
//! Campaign puts `<name>/<lease hex>` with the value if absent (the same
//! lease campaigning again keeps its key and proclaims the new value), then
//! waits until every key under `<name>/` created before it is deleted: the
//! leader is the key created first. Proclaim and Resign act on a `LeaderKey`
//! only while that key still has the creation revision it names. Observe
//! streams the leader's key-value: now, at each change of its value, and the
//! next leader's once it is deleted.

use std::pin::Pin;

use futures::Stream;
use strata_proto::errors;
use strata_proto::etcd::PbTxnRequest;
use strata_proto::etcd_election::{
    CampaignRequest, CampaignResponse, ElectionService, LeaderKey, LeaderRequest, LeaderResponse,
    ProclaimRequest, ProclaimResponse, ResignRequest, ResignResponse,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::*;

/// Leader updates buffered per Observe stream before the observer waits.
const OBSERVE_BUF: usize = 16;

pub struct ElectionSvc(pub Recipes);

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

impl ElectionSvc {
    /// Puts `value` on the leader key if it still has creation revision
    /// `rev` (clientv3's `Proclaim`).
    async fn proclaim(
        &self,
        who: &Caller,
        key: &[u8],
        rev: i64,
        lease: i64,
        value: &[u8],
    ) -> Result<Option<PbResponseHeader>, Status> {
        let t = PbTxnRequest {
            compare: vec![created_at(key, rev)],
            success: vec![op_put(key, value, lease)],
            failure: Vec::new(),
        };
        let resp = self.0.txn(who, t).await?;
        if !resp.succeeded {
            return Err(errors::election_not_leader());
        }
        Ok(resp.header)
    }

    /// Deletes the leader key if it still has creation revision `rev`.
    fn resign_txn(key: &[u8], rev: i64) -> PbTxnRequest {
        PbTxnRequest {
            compare: vec![created_at(key, rev)],
            success: vec![op_delete(key)],
            failure: Vec::new(),
        }
    }
}

#[tonic::async_trait]
impl ElectionService for ElectionSvc {
    type ObserveStream = ObserveStream;

    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let who = Caller::of(&req);
        let r = req.into_inner();
        let rc = &self.0;
        let lease = rc.session_lease(&who, r.lease).await?;
        let prefix = prefix_of(&r.name);
        let key = key_of(&prefix, lease);
        let t = PbTxnRequest {
            compare: vec![created_at(&key, 0)],
            success: vec![op_put(&key, &r.value, lease)],
            failure: vec![op_get(&key)],
        };
        let resp = rc.txn(&who, t).await?;
        let mut rev = resp.header.map_or(0, |h| h.revision);
        if !resp.succeeded {
            let Some(kv) = range_part(&resp, 0)?.kvs.first() else {
                return Err(Status::internal("strata: campaign key vanished in its txn"));
            };
            rev = kv.create_revision;
            if kv.value != r.value {
                if let Err(e) = self.proclaim(&who, &key, rev, lease, &r.value).await {
                    let _ = rc.txn(&who, Self::resign_txn(&key, rev)).await;
                    return Err(e);
                }
            }
        }
        // Abandoned while waiting (caller gone, deadline passed): resign.
        let cleanup = Cleanup::new(rc, &who, Self::resign_txn(&key, rev));
        let waited = rc.wait_deletes(&who, &prefix, rev - 1).await;
        // A failed wait of a caller still there keeps the key (as etcd).
        cleanup.disarm();
        waited?;
        Ok(Response::new(CampaignResponse {
            header: header(resp.header),
            leader: Some(LeaderKey {
                name: r.name,
                key,
                rev,
                lease,
            }),
        }))
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let who = Caller::of(&req);
        let r = req.into_inner();
        let Some(l) = r.leader else {
            return Err(errors::election_missing_leader_key());
        };
        let lease = self.0.session_lease(&who, l.lease).await?;
        let h = self.proclaim(&who, &l.key, l.rev, lease, &r.value).await?;
        Ok(Response::new(ProclaimResponse { header: header(h) }))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let who = Caller::of(&req);
        let r = req.into_inner();
        let resp = self
            .0
            .range(&who, get_by_create(&prefix_of(&r.name), false, 0))
            .await?;
        let Some(kv) = resp.kvs.into_iter().next() else {
            return Err(errors::election_no_leader());
        };
        Ok(Response::new(LeaderResponse {
            header: header(resp.header),
            kv: Some(key_value(kv)),
        }))
    }

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let who = Caller::of(&req);
        let prefix = prefix_of(&req.into_inner().name);
        let (tx, rx) = mpsc::channel(OBSERVE_BUF);
        let rc = self.0.clone();
        // The stream ends (OK) when observing cannot go on, as etcd's.
        tokio::spawn(async move {
            tokio::select! {
                _ = observe(&rc, &who, &prefix, &tx) => {}
                _ = tx.closed() => {}
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let who = Caller::of(&req);
        let r = req.into_inner();
        let Some(l) = r.leader else {
            return Err(errors::election_missing_leader_key());
        };
        // etcd opens a session here too (a lease of 0 gets a new one).
        self.0.session_lease(&who, l.lease).await?;
        let resp = self.0.txn(&who, Self::resign_txn(&l.key, l.rev)).await?;
        Ok(Response::new(ResignResponse {
            header: header(resp.header),
        }))
    }
}

type Observer = mpsc::Sender<Result<LeaderResponse, Status>>;

/// clientv3's `observe`: the leader now (or the first key put under the
/// prefix), its value changes until it is deleted, then the next leader.
/// Returns when a read or watch fails or the observer went away.
async fn observe(rc: &Recipes, who: &Caller, prefix: &[u8], tx: &Observer) {
    let send = |h: Option<PbResponseHeader>, kv: PbKeyValue| {
        tx.send(Ok(LeaderResponse {
            header: header(h),
            kv: Some(key_value(kv)),
        }))
    };
    loop {
        let Ok(resp) = rc.range(who, get_by_create(prefix, false, 0)).await else {
            return;
        };
        let (hdr, kv) = match resp.kvs.into_iter().next() {
            Some(kv) => (resp.header, kv),
            None => {
                // No leader: the first key put under the prefix is one.
                let from = resp.header.map_or(0, |h| h.revision);
                let mut w = rc.watch(KeyRange::from_etcd(prefix, &prefix_end(prefix)), from);
                loop {
                    let Some(Ok(wr)) = w.rx.recv().await else {
                        return;
                    };
                    if wr.canceled {
                        return;
                    }
                    if let Some(kv) = wr
                        .events
                        .into_iter()
                        .find(|e| e.r#type == 0)
                        .and_then(|e| e.kv)
                    {
                        let mut h = wr.header;
                        if let Some(h) = h.as_mut() {
                            h.revision = kv.mod_revision;
                        }
                        break (h, kv);
                    }
                }
            }
        };
        let key = kv.key.clone();
        if send(hdr, kv).await.is_err() {
            return;
        }
        let from = hdr.map_or(0, |h| h.revision) + 1;
        let mut w = rc.watch(KeyRange::from_etcd(&key, &[]), from);
        'leader: loop {
            let Some(Ok(wr)) = w.rx.recv().await else {
                return;
            };
            if wr.canceled {
                return;
            }
            for ev in wr.events {
                if ev.r#type == 1 {
                    break 'leader;
                }
                if let Some(kv) = ev.kv {
                    if send(wr.header, kv).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
