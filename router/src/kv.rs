//! etcd's KV service over ranges.

use std::sync::Arc;

use prost::Message;
use strata_proto::errors;
use strata_proto::etcd::{
    PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbDeleteResponse, PbKvService,
    PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse, PbResponseHeader,
    PbTxnOpRequest, PbTxnRequest, PbTxnResponse,
};
use strata_proto::etcdutil::{check_put, check_txn, txn_keys, txn_writes, KeyRange};
use strata_proto::oracle::Oracle;
use strata_proto::strata::{KvKind, LeaseIdRequest};
use tonic::{Request, Response, Status};

use crate::routing::{Retry, Router};

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// gRPC's own receive limit: etcd allows `max-request-bytes` plus 512 KiB.
pub const GRPC_MAX_RECV_BYTES: usize = MAX_REQUEST_BYTES + 512 * 1024;

pub struct Kv {
    pub router: Arc<Router>,
    pub oracle: Oracle,
    pub member_id: u64,
    pub cluster_id: u64,
}

fn decode<M: Message + Default>(b: &[u8]) -> Result<M, Status> {
    M::decode(b).map_err(|e| Status::internal(format!("strata: bad node response: {e}")))
}

pub fn check_size<M: Message>(m: &M) -> Result<(), Status> {
    if m.encoded_len() > MAX_REQUEST_BYTES {
        return Err(errors::request_too_large());
    }
    Ok(())
}

impl Kv {
    pub fn header(&self, revision: i64) -> Option<PbResponseHeader> {
        Some(PbResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: 1,
        })
    }

    async fn lease_exists(&self, id: i64) -> Result<(), Status> {
        if id == 0 {
            return Ok(());
        }
        let info = self
            .router
            .placement
            .clone()
            .lease_time_to_live(LeaseIdRequest { id })
            .await?
            .into_inner();
        if !info.found {
            return Err(errors::lease_not_found());
        }
        Ok(())
    }

    async fn txn_leases(&self, t: &PbTxnRequest) -> Result<(), Status> {
        for op in t.success.iter().chain(t.failure.iter()) {
            match &op.request {
                Some(PbTxnOpRequest::RequestPut(p)) => self.lease_exists(p.lease).await?,
                Some(PbTxnOpRequest::RequestTxn(inner)) => Box::pin(self.txn_leases(inner)).await?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Revision for a linearizable read: at or after every write that completed
    /// before the read began. 0 means a serializable read.
    async fn read_revision(&self, serializable: bool) -> Result<i64, Status> {
        if serializable {
            Ok(0)
        } else {
            self.oracle.current().await
        }
    }

    pub async fn do_range(&self, r: PbRangeRequest) -> Result<PbRangeResponse, Status> {
        if r.key.is_empty() {
            return Err(errors::empty_key());
        }
        let kr = KeyRange::from_etcd(&r.key, &r.range_end);
        let range = self.router.single_range(&kr, "a range read").await?;
        let rr = self.read_revision(r.serializable).await?;
        if rr > 0 && r.revision > rr {
            return Err(errors::future_rev());
        }
        let body = self
            .router
            .call(&range, KvKind::KvRange, r.encode_to_vec(), rr, Retry::Read)
            .await?;
        let mut resp: PbRangeResponse = decode(&body)?;
        let rev = resp.header.map_or(rr, |h| h.revision);
        resp.header = self.header(rev);
        Ok(resp)
    }
}

type RangeStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<strata_proto::etcd::PbRangeStreamResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl PbKvService for Kv {
    type RangeStreamStream = RangeStream;

    /// The streaming Range of newer etcd versions: one chunk with the whole result.
    async fn range_stream(&self, req: Request<PbRangeRequest>) -> Result<Response<RangeStream>, Status> {
        let r = req.into_inner();
        check_size(&r)?;
        let resp = self.do_range(r).await?;
        let chunk = strata_proto::etcd::PbRangeStreamResponse {
            range_response: Some(resp),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(chunk)]))))
    }

    async fn range(&self, req: Request<PbRangeRequest>) -> Result<Response<PbRangeResponse>, Status> {
        let r = req.into_inner();
        check_size(&r)?;
        Ok(Response::new(self.do_range(r).await?))
    }

    async fn put(&self, req: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        let r = req.into_inner();
        check_size(&r)?;
        check_put(&r.key, &r.value, r.lease, r.ignore_value, r.ignore_lease)?;
        self.lease_exists(r.lease).await?;
        let range = self
            .router
            .single_range(&KeyRange::from_etcd(&r.key, &[]), "a put")
            .await?;
        let body = self
            .router
            .call(&range, KvKind::KvPut, r.encode_to_vec(), 0, Retry::Write)
            .await?;
        let mut resp: PbPutResponse = decode(&body)?;
        resp.header = self.header(resp.header.map_or(0, |h| h.revision));
        Ok(Response::new(resp))
    }

    async fn delete_range(&self, req: Request<PbDeleteRequest>) -> Result<Response<PbDeleteResponse>, Status> {
        let r = req.into_inner();
        check_size(&r)?;
        if r.key.is_empty() {
            return Err(errors::empty_key());
        }
        let kr = KeyRange::from_etcd(&r.key, &r.range_end);
        let range = self.router.single_range(&kr, "a delete").await?;
        let body = self
            .router
            .call(&range, KvKind::KvDeleteRange, r.encode_to_vec(), 0, Retry::Write)
            .await?;
        let mut resp: PbDeleteResponse = decode(&body)?;
        resp.header = self.header(resp.header.map_or(0, |h| h.revision));
        Ok(Response::new(resp))
    }

    async fn txn(&self, req: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        let t = req.into_inner();
        check_size(&t)?;
        check_txn(&t, MAX_TXN_OPS)?;
        let mut keys = Vec::new();
        txn_keys(&t, &mut keys);
        let writes = txn_writes(&t);
        let mut target = None;
        for kr in &keys {
            let r = self.router.single_range(kr, "a txn").await?;
            match &target {
                None => target = Some(r),
                Some(t) if t.desc.id == r.desc.id => {}
                Some(_) => return Err(errors::cross_range("a txn")),
            }
        }
        let range = match target {
            Some(r) => r,
            // No compares and no ops: any range answers.
            None => self.router.single_range(&KeyRange::from_etcd(b"\0", &[]), "a txn").await?,
        };
        let (rr, retry) = if writes {
            self.txn_leases(&t).await?;
            (0, Retry::Write)
        } else {
            (self.oracle.current().await?, Retry::Read)
        };
        let body = self
            .router
            .call(&range, KvKind::KvTxn, t.encode_to_vec(), rr, retry)
            .await?;
        let mut resp: PbTxnResponse = decode(&body)?;
        let rev = resp.header.map_or(rr, |h| h.revision);
        set_headers(&mut resp, self.header(rev));
        Ok(Response::new(resp))
    }

    async fn compact(&self, req: Request<PbCompactionRequest>) -> Result<Response<PbCompactionResponse>, Status> {
        let r = req.into_inner();
        let current = self.oracle.current().await?;
        if r.revision > current {
            return Err(errors::future_rev());
        }
        // Placement records it (and refuses a revision at or below the current
        // compaction); then every range drops its history below it.
        self.router
            .placement
            .clone()
            .compact(strata_proto::strata::CompactRequest { revision: r.revision })
            .await?;
        self.router.refresh().await?;
        let all = self.router.ranges_for(&KeyRange::from_etcd(b"\0", b"\0"));
        for range in all {
            self.router
                .call(&range, KvKind::KvCompact, r.encode_to_vec(), 0, Retry::Read)
                .await?;
        }
        Ok(Response::new(PbCompactionResponse {
            header: self.header(current),
        }))
    }
}

fn set_headers(resp: &mut PbTxnResponse, h: Option<PbResponseHeader>) {
    use strata_proto::etcd::PbTxnOpResponse as R;
    resp.header = h;
    for op in &mut resp.responses {
        match &mut op.response {
            Some(R::ResponseRange(x)) => x.header = h,
            Some(R::ResponsePut(x)) => x.header = h,
            Some(R::ResponseDeleteRange(x)) => x.header = h,
            Some(R::ResponseTxn(x)) => set_headers(x, h),
            None => {}
        }
    }
}
