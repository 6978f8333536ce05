//! The node's gRPC service: raft transport in, routed KV, range feeds, status.
//! Routing errors are produced here and only here.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use futures::Stream;
use prost::Message as _;
use strata_proto::errors;
use strata_proto::etcd::{PbRangeRequest, PbTxnRequest};
use strata_proto::etcdutil::{txn_writes, KeyRange};
use strata_proto::oracle::Oracle;
use strata_proto::strata::node_server::Node;
use strata_proto::strata::{
    AdminKind, AdminRequest, AdminResponse, FeedEvent, FeedMessage, FeedRequest, KvKind, KvRequest,
    KvResponse, NodeStatusRequest, NodeStatusResponse, RaftAck, RaftBatch, RangeStatus, RouteError,
    RouteErrorKind,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::{Code, Request, Response, Status};

use crate::apply::{read_txn, View};
use crate::mvcc::Mvcc;
use crate::sequencer::{SeqItem, Sequencer};
use crate::store::{desc_range, RangeShared, Ranges, StoreMsg};

/// How often a range feed sends a checkpoint (closed revision).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// Versions a feed replays from history before it gives up (bounded memory).
const HISTORY_MAX: usize = 1_000_000;
const WRITE_TIMEOUT: Duration = Duration::from_secs(8);

/// The raft thread's answer for "this replica is not the leader": never a
/// client-visible error, the service turns it into a `NotLeader` route error.
pub fn not_leader() -> Status {
    Status::new(Code::Aborted, "strata: not leader")
}

/// A write whose keys left the range (split) before it applied; it was not
/// applied, the service turns it into an `EpochNotMatch` route error.
pub fn epoch_not_match() -> Status {
    Status::new(Code::Aborted, "strata: epoch not match")
}

pub struct NodeService {
    pub node_id: u64,
    pub ranges: Ranges,
    pub store: mpsc::Sender<StoreMsg>,
    pub oracle: Oracle,
    pub mvcc: Mvcc,
    pub sequencers: Arc<DashMap<u64, Sequencer>>,
}

fn route_err(kind: RouteErrorKind, leader_node: u64, msg: &str) -> RouteError {
    RouteError {
        kind: kind as i32,
        leader_node,
        ranges: Vec::new(),
        message: msg.to_string(),
    }
}

fn route_resp(e: RouteError) -> Response<KvResponse> {
    Response::new(KvResponse {
        response: Vec::new(),
        error: Some(e),
    })
}

impl NodeService {
    fn sequencer(&self, range_id: u64) -> Sequencer {
        self.sequencers
            .entry(range_id)
            .or_insert_with(|| Sequencer::start(range_id, self.oracle.clone(), self.store.clone()))
            .clone()
    }

    /// Finds the replica and checks the epoch the caller believes.
    #[allow(clippy::result_large_err)]
    fn replica(
        &self,
        range_id: u64,
        epoch: Option<strata_proto::strata::Epoch>,
    ) -> Result<Arc<RangeShared>, RouteError> {
        let Some(r) = self.ranges.get(&range_id).map(|r| r.clone()) else {
            return Err(route_err(
                RouteErrorKind::RangeNotFound,
                0,
                "range not found",
            ));
        };
        if let Some(e) = epoch {
            if e != r.epoch() {
                let mut err = route_err(RouteErrorKind::EpochNotMatch, 0, "epoch not match");
                err.ranges.push(r.desc.read().clone());
                return Err(err);
            }
        }
        Ok(r)
    }

    fn epoch_err(r: &RangeShared) -> RouteError {
        let mut err = route_err(RouteErrorKind::EpochNotMatch, 0, "epoch not match");
        err.ranges.push(r.desc.read().clone());
        err
    }

    fn not_leader_err(r: &RangeShared) -> RouteError {
        route_err(RouteErrorKind::NotLeader, r.leader_node(), "not leader")
    }

    async fn write(
        &self,
        r: &RangeShared,
        item: impl FnOnce(crate::store::Reply) -> SeqItem,
    ) -> Result<Vec<u8>, Status> {
        let (tx, rx) = oneshot::channel();
        let range_id = r.desc.read().id;
        self.sequencer(range_id).submit(item(tx))?;
        match tokio::time::timeout(WRITE_TIMEOUT, rx).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(errors::leader_changed()),
            Err(_) => Err(errors::timeout()),
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        r: &Arc<RangeShared>,
        read_rev: i64,
        f: impl FnOnce(&View<'_>) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let rev = if read_rev > 0 {
            let range_id = r.desc.read().id;
            self.sequencer(range_id).barrier(read_rev).await?;
            read_rev
        } else {
            r.applied_rev.load(Ordering::Acquire)
        };
        let mvcc = self.mvcc.clone();
        let compacted = r.compacted.load(Ordering::Acquire);
        tokio::task::spawn_blocking(move || {
            let view = View {
                mvcc: &mvcc,
                rev,
                compacted,
                overlay: None,
            };
            f(&view)
        })
        .await
        .map_err(|e| Status::internal(format!("strata: read task failed: {e}")))?
    }
}

/// Are the keys of a routed request inside the range `kr`?
fn request_within(kind: KvKind, body: &[u8], kr: &KeyRange) -> Result<bool, Status> {
    let mut keys = Vec::new();
    match kind {
        KvKind::KvRange => {
            let r: PbRangeRequest = decode(body)?;
            keys.push(KeyRange::from_etcd(&r.key, &r.range_end));
        }
        KvKind::KvPut => {
            let p: strata_proto::etcd::PbPutRequest = decode(body)?;
            keys.push(KeyRange::from_etcd(&p.key, &[]));
        }
        KvKind::KvDeleteRange => {
            let d: strata_proto::etcd::PbDeleteRequest = decode(body)?;
            keys.push(KeyRange::from_etcd(&d.key, &d.range_end));
        }
        KvKind::KvTxn => {
            let t: PbTxnRequest = decode(body)?;
            strata_proto::etcdutil::txn_keys(&t, &mut keys);
        }
        _ => {}
    }
    Ok(keys.iter().all(|k| kr.covers(k)))
}

fn decode<M: prost::Message + Default>(b: &[u8]) -> Result<M, Status> {
    M::decode(b).map_err(|e| Status::invalid_argument(format!("strata: bad request encoding: {e}")))
}

type FeedStream = Pin<Box<dyn Stream<Item = Result<FeedMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Node for NodeService {
    async fn raft(&self, req: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        let batch = req.into_inner();
        let from_node = batch.from_node;
        for mut env in batch.msgs {
            env.from_node = from_node;
            crate::metrics::raft_in(env.message.len());
            // Full inbox: drop, raft retransmits.
            let _ = self.store.try_send(StoreMsg::Raft(env));
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn admin(&self, req: Request<AdminRequest>) -> Result<Response<AdminResponse>, Status> {
        let req = req.into_inner();
        let r = match self.replica(req.range_id, req.epoch) {
            Ok(r) => r,
            Err(e) => return Ok(Response::new(AdminResponse { error: Some(e) })),
        };
        if !r.is_leader() {
            return Ok(Response::new(AdminResponse {
                error: Some(Self::not_leader_err(&r)),
            }));
        }
        let kind = AdminKind::try_from(req.kind).unwrap_or(AdminKind::AdminNone);
        let peer = req.peer.unwrap_or_default();
        let (tx, rx) = oneshot::channel();
        self.store
            .send(StoreMsg::Admin {
                range_id: req.range_id,
                kind,
                peer,
                reply: tx,
            })
            .await
            .map_err(|_| Status::unavailable("strata: store stopped"))?;
        match rx.await {
            Ok(Ok(())) => Ok(Response::new(AdminResponse { error: None })),
            Ok(Err(s)) if s.code() == Code::Aborted => Ok(Response::new(AdminResponse {
                error: Some(Self::not_leader_err(&r)),
            })),
            Ok(Err(s)) => Err(s),
            Err(_) => Err(errors::leader_changed()),
        }
    }

    async fn kv(&self, req: Request<KvRequest>) -> Result<Response<KvResponse>, Status> {
        let req = req.into_inner();
        let r = match self.replica(req.range_id, req.epoch) {
            Ok(r) => r,
            Err(e) => return Ok(route_resp(e)),
        };
        let kind = KvKind::try_from(req.kind)
            .map_err(|_| Status::invalid_argument("strata: unknown request kind"))?;
        let linearizable = req.read_revision > 0;
        let is_read = match kind {
            KvKind::KvRange => true,
            KvKind::KvTxn => !txn_writes(&decode::<PbTxnRequest>(&req.request)?),
            _ => false,
        };
        if !request_within(kind, &req.request, &desc_range(&r.desc.read()))? {
            return Ok(route_resp(Self::epoch_err(&r)));
        }
        if (!is_read || linearizable) && !r.is_leader() {
            return Ok(route_resp(Self::not_leader_err(&r)));
        }
        let res = if is_read {
            let body = req.request.clone();
            if kind == KvKind::KvRange {
                let rr: PbRangeRequest = decode(&body)?;
                self.read(&r, req.read_revision, move |v| {
                    v.range(&rr).map(|x| x.encode_to_vec())
                })
                .await
            } else {
                let t: PbTxnRequest = decode(&body)?;
                self.read(&r, req.read_revision, move |v| {
                    read_txn(v, &t).map(|x| x.encode_to_vec())
                })
                .await
            }
        } else if kind == KvKind::KvCompact {
            let request = req.request;
            self.write(&r, |reply| SeqItem::Unstamped {
                kind,
                request,
                reply,
            })
            .await
        } else {
            let request = req.request;
            self.write(&r, |reply| SeqItem::Write {
                kind,
                request,
                reply,
            })
            .await
        };
        match res {
            Ok(body) => Ok(Response::new(KvResponse {
                response: body,
                error: None,
            })),
            Err(s) if s.code() == Code::Aborted && s.message() == epoch_not_match().message() => {
                Ok(route_resp(Self::epoch_err(&r)))
            }
            Err(s) if s.code() == Code::Aborted => Ok(route_resp(Self::not_leader_err(&r))),
            Err(s) => Err(s),
        }
    }

    type FeedStream = FeedStream;

    async fn feed(&self, req: Request<FeedRequest>) -> Result<Response<FeedStream>, Status> {
        let req = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<FeedMessage, Status>>(64);
        let end = |e: RouteError| FeedMessage {
            error: Some(e),
            ..Default::default()
        };
        let r = match self.replica(req.range_id, req.epoch) {
            Ok(r) if r.is_leader() => r,
            Ok(r) => {
                let _ = tx.try_send(Ok(end(Self::not_leader_err(&r))));
                return Ok(Response::new(Box::pin(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                )));
            }
            Err(e) => {
                let _ = tx.try_send(Ok(end(e)));
                return Ok(Response::new(Box::pin(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                )));
            }
        };
        let kr = KeyRange::from_etcd(&req.key, &req.range_end);
        let desc = r.desc.read().clone();
        let own = desc_range(&desc);
        let kr = kr.clamp(&own.start, own.end.as_deref().unwrap_or(&[]));
        let feed = Feed {
            r,
            kr,
            start: req.start_revision,
            tx,
            mvcc: self.mvcc.clone(),
            oracle: self.oracle.clone(),
            seq: self.sequencer(desc.id),
        };
        tokio::spawn(feed.run());
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn status(
        &self,
        _: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        let ranges = self
            .ranges
            .iter()
            .map(|r| RangeStatus {
                desc: Some(r.desc.read().clone()),
                leader_peer: r.leader_peer.load(Ordering::Acquire),
                term: r.term.load(Ordering::Acquire),
                applied_index: r.applied_index.load(Ordering::Acquire),
                applied_revision: r.applied_rev.load(Ordering::Acquire),
            })
            .collect();
        Ok(Response::new(NodeStatusResponse {
            node_id: self.node_id,
            ranges,
        }))
    }
}

struct Feed {
    r: Arc<RangeShared>,
    kr: KeyRange,
    start: i64,
    tx: mpsc::Sender<Result<FeedMessage, Status>>,
    mvcc: Mvcc,
    oracle: Oracle,
    seq: Sequencer,
}

impl Feed {
    fn filter(&self, m: &FeedMessage) -> Option<FeedMessage> {
        let events: Vec<FeedEvent> = m
            .events
            .iter()
            .filter(|e| e.kv.as_ref().is_some_and(|kv| self.kr.contains(&kv.key)))
            .cloned()
            .collect();
        (!events.is_empty()).then(|| FeedMessage {
            revision: m.revision,
            events,
            ..Default::default()
        })
    }

    async fn send(&self, m: FeedMessage) -> bool {
        self.tx.send(Ok(m)).await.is_ok()
    }

    async fn end(&self, kind: RouteErrorKind, msg: &str) {
        let _ = self
            .send(FeedMessage {
                error: Some(route_err(kind, self.r.leader_node(), msg)),
                ..Default::default()
            })
            .await;
    }

    async fn run(self) {
        let _open = crate::metrics::feed();
        // Subscribe before reading the applied revision: every event above it
        // is then delivered live, every event at or below it is in history.
        let mut sub = self.r.feed.subscribe();
        let head = self.r.applied_rev.load(Ordering::Acquire);
        let compacted = self.r.compacted.load(Ordering::Acquire);
        if self.start > 0 && self.start < compacted {
            let _ = self
                .send(FeedMessage {
                    compact_revision: compacted,
                    ..Default::default()
                })
                .await;
            return;
        }
        let start = if self.start > 0 { self.start } else { head + 1 };
        if start <= head {
            let (mvcc, kr) = (self.mvcc.clone(), self.kr.clone());
            let hist =
                tokio::task::spawn_blocking(move || mvcc.history(&kr, start, head, HISTORY_MAX))
                    .await;
            let hist = match hist {
                Ok(Ok(h)) => h,
                _ => {
                    return self
                        .end(RouteErrorKind::ServerBusy, "history replay failed")
                        .await
                }
            };
            let mut cur: Option<FeedMessage> = None;
            for (v, prev) in hist {
                let ev = FeedEvent {
                    delete: v.value.tombstone,
                    kv: Some(crate::apply::feed_kv(&v)),
                    prev_kv: prev.as_ref().map(crate::apply::feed_kv),
                };
                match &mut cur {
                    Some(m) if m.revision == v.mod_revision => m.events.push(ev),
                    _ => {
                        if let Some(m) = cur.take() {
                            if !self.send(m).await {
                                return;
                            }
                        }
                        cur = Some(FeedMessage {
                            revision: v.mod_revision,
                            events: vec![ev],
                            ..Default::default()
                        });
                    }
                }
            }
            if let Some(m) = cur.take() {
                if !self.send(m).await {
                    return;
                }
            }
        }
        let mut last = head.max(start - 1);
        let mut ticker = tokio::time::interval(CHECKPOINT_EVERY);
        loop {
            tokio::select! {
                ev = sub.recv() => match ev {
                    Ok(m) => {
                        if let Some(e) = &m.error {
                            let _ = self.send(FeedMessage { error: Some(e.clone()), ..Default::default() }).await;
                            return;
                        }
                        if m.revision > last {
                            last = m.revision;
                            if let Some(f) = self.filter(&m) {
                                if !self.send(f).await { return; }
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return self.end(RouteErrorKind::ServerBusy, "feed lagged").await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick() => {
                    // Closed revision: every write <= c that will ever apply here
                    // has applied (barrier), and was published before the barrier
                    // completed, so it is in `sub` now.
                    let asked = std::time::Instant::now();
                    let c = match self.oracle.current().await {
                        Ok(c) => c,
                        Err(_) => continue,
                    };
                    if let Err(e) = self.seq.barrier(c).await {
                        if e.code() == Code::Aborted || !self.r.is_leader() {
                            return self.end(RouteErrorKind::NotLeader, "leader moved").await;
                        }
                        continue;
                    }
                    crate::metrics::CLOSED_LAG.observe(asked.elapsed().as_secs_f64());
                    loop {
                        match sub.try_recv() {
                            Ok(m) => {
                                if let Some(e) = &m.error {
                                    let _ = self.send(FeedMessage { error: Some(e.clone()), ..Default::default() }).await;
                                    return;
                                }
                                if m.revision > last {
                                    last = m.revision;
                                    if let Some(f) = self.filter(&m) {
                                        if !self.send(f).await { return; }
                                    }
                                }
                            }
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                                return self.end(RouteErrorKind::ServerBusy, "feed lagged").await;
                            }
                            Err(broadcast::error::TryRecvError::Closed) => return,
                        }
                    }
                    if c >= start - 1 && !self.send(FeedMessage { checkpoint: c.max(last), ..Default::default() }).await {
                        return;
                    }
                }
                _ = self.tx.closed() => return,
            }
        }
    }
}
