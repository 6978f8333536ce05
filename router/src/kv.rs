//! etcd's KV service over ranges.

use std::sync::Arc;

use prost::Message;
use strata_proto::errors;
use strata_proto::etcd::{
    PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbDeleteResponse, PbKvService,
    PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse, PbResponseHeader, PbTxnOpRequest,
    PbTxnRequest, PbTxnResponse,
};
use strata_proto::etcdutil::{check_put, check_txn, txn_keys, txn_writes, KeyRange};
use strata_proto::oracle::Oracle;
use strata_proto::strata::{KvKind, LeaseIdRequest};
use tonic::{Request, Response, Status};

use crate::routing::{is_stale, stale_range, CachedRange, Retry, Router};

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;
/// etcd's default `--max-request-bytes` (1.5 MiB).
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// gRPC's own receive limit: etcd allows `max-request-bytes` plus 512 KiB.
pub const GRPC_MAX_RECV_BYTES: usize = MAX_REQUEST_BYTES + 512 * 1024;

#[derive(Clone)]
pub struct Kv {
    pub router: Arc<Router>,
    pub auth: Arc<crate::auth::Auth>,
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

    /// Every Put of the txn (nested too) names an existing lease the caller
    /// may attach keys to.
    async fn txn_leases(
        &self,
        t: &PbTxnRequest,
        caller: &crate::auth::Caller,
    ) -> Result<(), Status> {
        for op in t.success.iter().chain(t.failure.iter()) {
            match &op.request {
                Some(PbTxnOpRequest::RequestPut(p)) => {
                    self.lease_puts_allowed(caller, p.lease).await?;
                    self.lease_exists(p.lease).await?
                }
                Some(PbTxnOpRequest::RequestTxn(inner)) => {
                    Box::pin(self.txn_leases(inner, caller)).await?
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The keys attached to lease `id`: a scan of every key (leases keep no
    /// key index yet).
    pub async fn lease_keys(&self, id: i64) -> Result<Vec<Vec<u8>>, Status> {
        let all = self
            .do_range(PbRangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            })
            .await?;
        Ok(all
            .kvs
            .into_iter()
            .filter(|kv| kv.lease == id)
            .map(|kv| kv.key)
            .collect())
    }

    /// etcd's `checkLeasePuts`: a non-admin attaching a key to a lease needs
    /// write permission on every key already attached to it.
    async fn lease_puts_allowed(
        &self,
        caller: &crate::auth::Caller,
        lease: i64,
    ) -> Result<(), Status> {
        if lease == 0 || !caller.state.enabled || caller.is_admin() {
            return Ok(());
        }
        for key in self.lease_keys(lease).await? {
            caller.need(&key, &[], strata_proto::auth::Access::Write)?;
        }
        Ok(())
    }

    /// Who sent `req` (see `auth::Auth::caller`).
    pub fn caller<T>(&self, req: &Request<T>) -> Result<crate::auth::Caller, Status> {
        self.auth.caller(req.metadata(), crate::tls_cn(req))
    }

    pub(crate) fn range_allowed(
        &self,
        caller: &crate::auth::Caller,
        r: &PbRangeRequest,
    ) -> Result<(), Status> {
        if r.key.is_empty() {
            return Err(errors::empty_key());
        }
        caller.read(&r.key, &r.range_end)
    }

    /// Revision for a linearizable read: at or after every write that completed
    /// before the read began. 0 means a serializable read.
    pub(crate) async fn read_revision(&self, serializable: bool) -> Result<i64, Status> {
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
        let rr = self.read_revision(r.serializable).await?;
        if rr > 0 && r.revision > rr {
            return Err(errors::future_rev());
        }
        let deadline = crate::reqmeta::deadline(self.router.request_timeout);
        loop {
            let ranges = self.router.ranges_for(&kr);
            let res = match ranges.len() {
                _ if !self.router.covers(&kr, &ranges) => Err(stale_range()),
                1 => self.range_one(&ranges[0], &r, rr).await,
                _ => self.range_many(&ranges, &kr, &r, rr).await,
            };
            match res {
                Err(s) if is_stale(&s) && tokio::time::Instant::now() < deadline => {
                    let _ = self.router.refresh().await;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(s) if is_stale(&s) => return Err(errors::timeout()),
                Err(s) => return Err(s),
                Ok(mut resp) => {
                    let rev = resp.header.map_or(rr, |h| h.revision);
                    resp.header = self.header(rev);
                    return Ok(resp);
                }
            }
        }
    }

    async fn range_one(
        &self,
        range: &CachedRange,
        r: &PbRangeRequest,
        rr: i64,
    ) -> Result<PbRangeResponse, Status> {
        let body = self
            .router
            .call(range, KvKind::KvRange, r.encode_to_vec(), rr, Retry::Read)
            .await?;
        decode(&body)
    }

    /// A read over several ranges: every range is read at the same revision
    /// `rr` (each range first closes it), and the parts are merged here: counts
    /// add up, sort and limit apply to the whole. A limited read in key order
    /// reads ranges one after another only until the limit is reached (and
    /// counts the rest), a `count_only` read fetches no keys: neither
    /// materialises the interval (`crate::scan`).
    async fn range_many(
        &self,
        ranges: &[CachedRange],
        kr: &KeyRange,
        r: &PbRangeRequest,
        rr: i64,
    ) -> Result<PbRangeResponse, Status> {
        // Serializable reads still need one revision for all parts.
        let rr = if rr == 0 {
            self.oracle.current().await?
        } else {
            rr
        };
        if r.limit > 0 && !r.count_only && crate::scan::key_order(r) {
            return crate::scan::limited(self, kr, r, rr).await;
        }
        let mut out = self.range_parts(ranges, kr, r, rr).await?;
        finish_range(&mut out, r);
        Ok(out)
    }

    /// Every part of `kr` read at once (without limit or sort; `count_only`
    /// kept), concatenated in key order.
    pub(crate) async fn range_parts(
        &self,
        ranges: &[CachedRange],
        kr: &KeyRange,
        r: &PbRangeRequest,
        rr: i64,
    ) -> Result<PbRangeResponse, Status> {
        let mut parts = Vec::with_capacity(ranges.len());
        for range in ranges {
            let part_kr = kr.clamp(&range.desc.start_key, &range.desc.end_key);
            let mut q = r.clone();
            q.key = part_kr.start.clone();
            q.range_end = part_kr.end.clone().unwrap_or_else(|| vec![0]);
            q.limit = 0;
            q.sort_order = 0;
            q.sort_target = 0;
            let router = self.router.clone();
            let range = range.clone();
            parts.push(tokio::spawn(crate::reqmeta::inherit(async move {
                let body = router
                    .call(&range, KvKind::KvRange, q.encode_to_vec(), rr, Retry::Read)
                    .await?;
                // Decoded here, so the encoded copy goes at once.
                decode::<PbRangeResponse>(&body)
            })));
        }
        let mut out = PbRangeResponse::default();
        for p in parts {
            let part = p.await.map_err(|e| Status::internal(e.to_string()))??;
            out.count += part.count;
            out.kvs.extend(part.kvs);
            out.header = out.header.or(part.header);
        }
        Ok(out)
    }
}

/// A Range's parts, gathered in key order, made one answer: sort, limit
/// and `count_only` apply to the whole.
pub fn finish_range(out: &mut PbRangeResponse, r: &PbRangeRequest) {
    sort_kvs(&mut out.kvs, r.sort_order, r.sort_target);
    if r.limit > 0 && !r.count_only && out.kvs.len() > r.limit as usize {
        out.kvs.truncate(r.limit as usize);
        out.more = true;
    }
    if r.count_only {
        out.kvs.clear();
    }
}

/// etcd's sort (see node's `apply.rs`): NONE with a non-key target ascends.
fn sort_kvs(kvs: &mut [strata_proto::etcd::PbKeyValue], order: i32, target: i32) {
    let order = if order == 0 && target != 0 { 1 } else { order };
    if order == 0 || (order == 1 && target == 0) {
        return; // parts arrive in key order
    }
    match target {
        1 => kvs.sort_by_key(|v| v.version),
        2 => kvs.sort_by_key(|v| v.create_revision),
        3 => kvs.sort_by_key(|v| v.mod_revision),
        4 => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        _ => {}
    }
    if order == 2 {
        kvs.reverse();
    }
}

pub(crate) type RangeStream = std::pin::Pin<
    Box<
        dyn futures::Stream<Item = Result<strata_proto::etcd::PbRangeStreamResponse, Status>>
            + Send,
    >,
>;

#[tonic::async_trait]
impl PbKvService for Kv {
    type RangeStreamStream = RangeStream;

    /// etcd 3.7's streaming Range: the result in chunks of bounded size
    /// (`crate::range_stream`).
    async fn range_stream(
        &self,
        req: Request<PbRangeRequest>,
    ) -> Result<Response<RangeStream>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        check_size(&r)?;
        self.range_allowed(&caller, &r)?;
        Ok(Response::new(crate::range_stream::serve(self.clone(), r)))
    }

    async fn range(
        &self,
        req: Request<PbRangeRequest>,
    ) -> Result<Response<PbRangeResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        check_size(&r)?;
        self.range_allowed(&caller, &r)?;
        Ok(Response::new(self.do_range(r).await?))
    }

    async fn put(&self, req: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        check_size(&r)?;
        check_put(&r.key, &r.value, r.lease, r.ignore_value, r.ignore_lease)?;
        caller.put(&r)?;
        self.lease_puts_allowed(&caller, r.lease).await?;
        self.lease_exists(r.lease).await?;
        let body = self
            .router
            .call_single(
                &KeyRange::from_etcd(&r.key, &[]),
                "a put",
                KvKind::KvPut,
                r.encode_to_vec(),
                0,
                Retry::Write,
            )
            .await?;
        let mut resp: PbPutResponse = decode(&body)?;
        resp.header = self.header(resp.header.map_or(0, |h| h.revision));
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        req: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        check_size(&r)?;
        if r.key.is_empty() {
            return Err(errors::empty_key());
        }
        caller.delete(&r)?;
        let kr = KeyRange::from_etcd(&r.key, &r.range_end);
        let single = match self.participants(std::slice::from_ref(&kr)) {
            Some(p) if p.len() > 1 => Err(errors::cross_range("a delete")),
            _ => {
                self.router
                    .call_single(
                        &kr,
                        "a delete",
                        KvKind::KvDeleteRange,
                        r.encode_to_vec(),
                        0,
                        Retry::Write,
                    )
                    .await
            }
        };
        let mut resp: PbDeleteResponse = match single {
            // Over several ranges: a txn of that one delete, at one revision.
            Err(s) if errors::is_cross_range(&s) => {
                let t = PbTxnRequest {
                    success: vec![strata_proto::etcd::PbTxnRequestOp {
                        request: Some(PbTxnOpRequest::RequestDeleteRange(r)),
                    }],
                    ..Default::default()
                };
                let resp = self.txn_cross(&t, &[kr]).await?;
                let rev = resp.header.map_or(0, |h| h.revision);
                match resp.responses.into_iter().next().and_then(|o| o.response) {
                    Some(strata_proto::etcd::PbTxnOpResponse::ResponseDeleteRange(mut d)) => {
                        d.header = self.header(rev);
                        d
                    }
                    _ => return Err(Status::internal("strata: a delete answered no delete")),
                }
            }
            other => decode(&other?)?,
        };
        resp.header = self.header(resp.header.map_or(0, |h| h.revision));
        Ok(Response::new(resp))
    }

    async fn txn(&self, req: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        let caller = self.caller(&req)?;
        let t = req.into_inner();
        check_size(&t)?;
        check_txn(&t, MAX_TXN_OPS)?;
        caller.txn(&t)?;
        let mut keys = Vec::new();
        txn_keys(&t, &mut keys);
        let writes = txn_writes(&t);
        // The txn's keys as one interval: from the smallest start to the
        // largest end; it must fall in one range.
        let span = keys.iter().fold(None::<KeyRange>, |acc, k| {
            Some(match acc {
                None => k.clone(),
                Some(a) => KeyRange {
                    start: a.start.clone().min(k.start.clone()),
                    end: match (a.end, &k.end) {
                        (Some(x), Some(y)) => Some(x.max(y.clone())),
                        _ => None,
                    },
                },
            })
        });
        let span = span.unwrap_or_else(|| KeyRange::from_etcd(b"\0", &[]));
        let (rr, retry) = if writes {
            self.txn_leases(&t, &caller).await?;
            (0, Retry::Write)
        } else {
            (self.oracle.current().await?, Retry::Read)
        };
        let single = match self.participants(&keys) {
            Some(p) if p.len() > 1 => Err(errors::cross_range("a txn")),
            _ => {
                self.router
                    .call_single(&span, "a txn", KvKind::KvTxn, t.encode_to_vec(), rr, retry)
                    .await
            }
        };
        let mut resp = match single {
            Err(s) if errors::is_cross_range(&s) && writes => self.txn_cross(&t, &keys).await?,
            Err(s) if errors::is_cross_range(&s) => self.txn_read_cross(&t, &keys, rr).await?,
            other => decode(&other?)?,
        };
        let rev = resp.header.map_or(rr, |h| h.revision);
        set_headers(&mut resp, self.header(rev));
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        req: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        // etcd checks no permission for a compaction, only a token given.
        self.caller(&req)?;
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
            .compact(strata_proto::strata::CompactRequest {
                revision: r.revision,
            })
            .await?;
        self.router.refresh().await?;
        // Every range drops its history (idempotent, so retried whole after
        // a split re-shapes the ranges).
        let everything = KeyRange::from_etcd(b"\0", b"\0");
        let deadline = crate::reqmeta::deadline(self.router.request_timeout);
        'again: loop {
            anyhow_deadline(deadline)?;
            let all = self.router.ranges_for(&everything);
            if !self.router.covers(&everything, &all) {
                let _ = self.router.refresh().await;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            for range in &all {
                match self
                    .router
                    .call(range, KvKind::KvCompact, r.encode_to_vec(), 0, Retry::Read)
                    .await
                {
                    Err(s) if is_stale(&s) => continue 'again,
                    Err(s) => return Err(s),
                    Ok(_) => {}
                }
            }
            break;
        }
        Ok(Response::new(PbCompactionResponse {
            header: self.header(current),
        }))
    }
}

fn anyhow_deadline(deadline: tokio::time::Instant) -> Result<(), Status> {
    if tokio::time::Instant::now() >= deadline {
        return Err(errors::timeout());
    }
    Ok(())
}

/// The txn's header is the whole `h`; its ops' (nested txns' too) carry only
/// the revision, as etcd's do.
fn set_headers(resp: &mut PbTxnResponse, h: Option<PbResponseHeader>) {
    use strata_proto::etcd::PbTxnOpResponse as R;
    resp.header = h;
    let op_header = h.map(|h| PbResponseHeader {
        revision: h.revision,
        ..Default::default()
    });
    for op in &mut resp.responses {
        match &mut op.response {
            Some(R::ResponseRange(x)) => x.header = op_header,
            Some(R::ResponsePut(x)) => x.header = op_header,
            Some(R::ResponseDeleteRange(x)) => x.header = op_header,
            Some(R::ResponseTxn(x)) => {
                set_headers(x, op_header);
            }
            None => {}
        }
    }
}
