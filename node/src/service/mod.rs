//! The node's gRPC service: raft transport in, routed KV, range feeds, admin,
//! status. Routing errors become `RouteError`s here and only here
//! ([`route_error`]).
//!
//! The KV RPC takes requests from routers (on behalf of clients) and from
//! placement (lease revocation). Every request is decoded and checked before
//! anything is proposed; a split command is never accepted as a KV request
//! (the node's own split checker proposes them, and the leader on an `Admin`
//! SPLIT, see `admin.rs`, choosing the key itself or checking the one asked).

mod admin;
mod check;
mod feed;
mod maint;
mod stream;

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message as _;
use strata_proto::errors;
use strata_proto::etcd::{PbRangeRequest, PbTxnRequest};
use strata_proto::oracle::Oracle;
use strata_proto::strata::node_server::Node;
use strata_proto::strata::{
    AdminKind, AdminRequest, AdminResponse, CorruptRequest, CorruptResponse, DefragmentRequest,
    DefragmentResponse, Epoch, FeedMessage, FeedRequest, KvCalls, KvKind, KvRequest, KvResponse,
    NodeStatusRequest, NodeStatusResponse, RaftAck, RaftBatch, RangeDescriptor, RangeHashRequest,
    RangeHashResponse, RangeStatus, RouteError, RouteErrorKind, SnapshotAck, SnapshotChunk,
    TxnPart,
};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use self::check::{check_request, Checked};
use crate::apply::{read_txn, View};
use crate::error::{NodeError, NodeResult};
use crate::mvcc::Mvcc;
use crate::range::{desc_range, RangeShared, Ranges};
use crate::sequencer::{SeqItem, Sequencers};
use crate::store::{keys_within, StoreMsg};

const WRITE_TIMEOUT: Duration = Duration::from_secs(8);
/// At most this many ranges split off are named in one `EpochNotMatch`.
const SPLIT_OFF_MAX: usize = 16;

#[derive(Clone)]
pub struct NodeService {
    pub node_id: u64,
    pub ranges: Ranges,
    pub store: mpsc::Sender<StoreMsg>,
    pub oracle: Oracle,
    pub mvcc: Mvcc,
    pub sequencers: Sequencers,
    pub snapshots: Arc<crate::snapshot::SnapshotReceiver>,
    /// For the ids of a range an `Admin` SPLIT creates.
    pub placement: strata_proto::oracle::PlacementConn,
    /// The space quota and NOSPACE alarm (`crate::space`).
    pub space: Arc<crate::space::Space>,
    /// Write flow control (`crate::pressure`).
    pub pressure: Arc<crate::pressure::WritePressure>,
    /// The node's storage engine (defragment, the test-only corruption).
    pub db: Arc<dyn crate::storage::Engine>,
}

fn route_err(kind: RouteErrorKind, leader_node: u64, msg: &str) -> RouteError {
    RouteError {
        kind: kind as i32,
        leader_node,
        ranges: Vec::new(),
        message: msg.to_string(),
    }
}

/// The one place a routing error becomes a `RouteError` for the router;
/// other errors stay gRPC errors for the client.
fn route_error(r: Option<&RangeShared>, e: NodeError) -> Result<RouteError, Status> {
    Ok(match (e, r) {
        (NodeError::NotLeader, Some(r)) => {
            route_err(RouteErrorKind::NotLeader, r.leader_node(), "not leader")
        }
        (NodeError::NotLeader, None) => route_err(RouteErrorKind::NotLeader, 0, "not leader"),
        (NodeError::EpochNotMatch, r) => {
            let mut err = route_err(RouteErrorKind::EpochNotMatch, 0, "epoch not match");
            err.ranges.extend(r.map(|r| r.desc.read().clone()));
            err
        }
        (NodeError::RangeNotFound, _) => {
            route_err(RouteErrorKind::RangeNotFound, 0, "range not found")
        }
        (NodeError::Busy(why), _) => route_err(RouteErrorKind::ServerBusy, 0, why),
        (NodeError::Etcd(s), _) => return Err(s),
    })
}

fn kv_answer(r: Option<&RangeShared>, res: NodeResult<Vec<u8>>) -> Result<KvResponse, Status> {
    let (response, error) = match res {
        Ok(body) => (body, None),
        Err(e) => (Vec::new(), Some(route_error(r, e)?)),
    };
    Ok(KvResponse { response, error })
}

/// The raft thread's answer to a proposal, within [`WRITE_TIMEOUT`].
async fn answer(rx: oneshot::Receiver<NodeResult<Vec<u8>>>) -> NodeResult<Vec<u8>> {
    match tokio::time::timeout(WRITE_TIMEOUT, rx).await {
        Ok(Ok(res)) => res,
        Ok(Err(_)) => Err(errors::leader_changed().into()),
        Err(_) => Err(errors::timeout().into()),
    }
}

fn decode<M: prost::Message + Default>(b: &[u8]) -> NodeResult<M> {
    M::decode(b)
        .map_err(|e| Status::invalid_argument(format!("strata: bad request encoding: {e}")).into())
}

fn invalid(msg: &str) -> NodeError {
    Status::invalid_argument(format!("strata: {msg}")).into()
}

impl NodeService {
    /// Finds the replica and checks the epoch the caller believes.
    fn replica(&self, range_id: u64, epoch: Option<Epoch>) -> NodeResult<Arc<RangeShared>> {
        let r = self
            .ranges
            .get(&range_id)
            .map(|r| r.clone())
            .ok_or(NodeError::RangeNotFound)?;
        if epoch.is_some_and(|e| e != r.epoch()) {
            return Err(NodeError::EpochNotMatch);
        }
        Ok(r)
    }

    /// Are the request's keys inside the range as it is now?
    fn within(r: &RangeShared, kind: KvKind, body: &[u8]) -> NodeResult<()> {
        if kind == KvKind::KvTxnRead {
            // Its keys span ranges: it is this range's part as the router
            // saw the range; a split since then changed that part.
            let p: TxnPart = decode(body)?;
            return match r.epoch().version == p.version {
                true => Ok(()),
                false => Err(NodeError::EpochNotMatch),
            };
        }
        match keys_within(kind, body, &desc_range(&r.desc.read())) {
            Ok(true) => Ok(()),
            Ok(false) => Err(NodeError::EpochNotMatch),
            Err(e) => Err(invalid(&format!("bad request encoding: {e}"))),
        }
    }

    async fn submit(
        &self,
        r: &RangeShared,
        item: impl FnOnce(crate::store::Reply) -> SeqItem,
    ) -> NodeResult<Vec<u8>> {
        let (tx, rx) = oneshot::channel();
        let range_id = r.desc.read().id;
        self.sequencers.get(range_id).submit(item(tx))?;
        answer(rx).await
    }

    /// Reads at `read_rev` after a barrier (linearizable), or at the applied
    /// revision (serializable, `read_rev == 0`). `stale_by` > 0 only with the
    /// planted bug `plant_stale_read`: MVCC is read that many revisions
    /// behind (never below the compaction floor). A `point` read (one key)
    /// runs on this task; others on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        r: &Arc<RangeShared>,
        kind: KvKind,
        body: &[u8],
        (read_rev, stale_by): (i64, i64),
        point: bool,
        f: impl FnOnce(&View<'_>) -> Result<T, Status> + Send + 'static,
    ) -> NodeResult<T> {
        let rev = if read_rev > 0 {
            let range_id = r.desc.read().id;
            self.sequencers.get(range_id).barrier(read_rev).await?;
            // A split may have applied during the barrier: keys that left
            // now belong to a range whose replica here may lag its leader,
            // so they must be read there instead.
            Self::within(r, kind, body)?;
            read_rev
        } else {
            r.applied_rev.load(Ordering::Acquire)
        };
        // A replica whose data a snapshot is replacing serves no reads; one
        // that began meanwhile is refused after the fact (the router retries
        // either elsewhere).
        let gen = r.data_stable().ok_or(NodeError::NotLeader)?;
        let (mvcc, r2) = (self.mvcc.clone(), r.clone());
        let job = move || {
            // The compaction floor is raised before history is removed, so
            // checking it after the read tells whether the read may have
            // missed compacted versions.
            let compacted = r2.compacted.load(Ordering::Acquire);
            let rev = match stale_by {
                0 => rev,
                lag => (rev - lag).max(compacted).max(1),
            };
            let view = View {
                mvcc: &mvcc,
                rev,
                compacted,
                overlay: None,
                latest: None,
            };
            let out = f(&view)?;
            if rev < r2.compacted.load(Ordering::Acquire) {
                return Err(errors::compacted());
            }
            Ok(out)
        };
        let out = if point {
            // One key: a few memtable or block-cache lookups, cheaper than
            // the hop to a blocking thread and back.
            crate::failpoint::pause(self.node_id, "read_before_mvcc").await;
            job()
        } else {
            let node_id = self.node_id;
            tokio::task::spawn_blocking(move || {
                crate::failpoint::pause_blocking(node_id, "read_before_mvcc");
                job()
            })
            .await
            .map_err(|e| Status::internal(format!("strata: read task failed: {e}")))?
        };
        out.map_err(NodeError::from)
            .and_then(|out| match r.data_stable() {
                Some(g) if g == gen => Ok(out),
                _ => Err(NodeError::NotLeader),
            })
    }

    async fn kv_request(&self, r: &Arc<RangeShared>, req: KvRequest) -> NodeResult<Vec<u8>> {
        let kind = KvKind::try_from(req.kind).map_err(|_| invalid("unknown request kind"))?;
        let (checked, cost) = check_request(kind, &req.request)?;
        Self::within(r, kind, &req.request)?;
        let linearizable = req.read_revision > 0;
        if (!matches!(checked, Checked::Read) || linearizable) && !r.is_leader() {
            return Err(NodeError::NotLeader);
        }
        self.space.check(cost)?;
        // New writes wait while storage is close to stalling; compaction
        // (frees space) and a txn's decision (releases its ranges) go on.
        if matches!(checked, Checked::Write | Checked::Prepare(..)) {
            self.pressure.check()?;
        }
        let request = req.request;
        match checked {
            Checked::Read if kind == KvKind::KvRangePage => {
                let rr: PbRangeRequest = decode(&request)?;
                self.read(r, kind, &request, (req.read_revision, 0), false, move |v| {
                    v.range_page(&rr).map(|x| x.encode_to_vec())
                })
                .await
            }
            Checked::Read if kind == KvKind::KvRange => {
                let rr: PbRangeRequest = decode(&request)?;
                // Planted bug: a linearizable read of "now" answered from
                // state 20 revisions old, reported at the revision asked.
                let stale = linearizable
                    && rr.revision == 0
                    && crate::failpoint::on(self.node_id, "plant_stale_read");
                let (asked, stale_by) = (req.read_revision, if stale { 20 } else { 0 });
                let point = rr.range_end.is_empty();
                self.read(r, kind, &request, (asked, stale_by), point, move |v| {
                    v.range(&rr).map(|mut x| {
                        if stale {
                            x.header = crate::apply::header(asked);
                        }
                        x.encode_to_vec()
                    })
                })
                .await
            }
            Checked::Read => {
                let t: PbTxnRequest = decode(&request)?;
                self.read(r, kind, &request, (req.read_revision, 0), false, move |v| {
                    read_txn(v, &t).map(|x| x.encode_to_vec())
                })
                .await
            }
            Checked::TxnRead => {
                let p: TxnPart = decode(&request)?;
                let t: PbTxnRequest = decode(&p.txn)?;
                let span = desc_range(&r.desc.read());
                let rr = req.read_revision;
                if rr <= 0 {
                    return Err(invalid("a txn part is read at a revision"));
                }
                self.read(r, kind, &request, (rr, 0), false, move |v| {
                    crate::txn::read_part(v, &t, &p.path, &span).map(|x| x.encode_to_vec())
                })
                .await
            }
            Checked::Prepare(txn_id, wait, priority) => {
                let wait_until = tokio::time::Instant::now() + wait;
                self.submit(r, |reply| SeqItem::Prepare {
                    txn_id,
                    priority,
                    wait_until,
                    request,
                    reply,
                })
                .await
            }
            Checked::Touch(txn_id) => match r.intent_id() == Some(txn_id) {
                true => {
                    *r.touched.lock() = Some((txn_id, std::time::Instant::now()));
                    Ok(Vec::new())
                }
                false => Err(crate::txn::not_pending(txn_id)),
            },
            Checked::Decision(revision) => {
                let (tx, rx) = oneshot::channel();
                self.sequencers
                    .get(r.desc.read().id)
                    .decide(crate::sequencer::Decision {
                        kind,
                        revision,
                        request,
                        reply: tx,
                    })?;
                answer(rx).await
            }
            Checked::Unstamped | Checked::Write => {
                let stamped = matches!(checked, Checked::Write);
                self.submit(r, |reply| match stamped {
                    true => SeqItem::Write {
                        kind,
                        request,
                        reply,
                    },
                    false => SeqItem::Unstamped {
                        kind,
                        request,
                        reply,
                    },
                })
                .await
            }
        }
    }
}

impl NodeService {
    /// Hands a batch of raft messages to the store (a full inbox drops
    /// them: raft retransmits).
    fn deliver(&self, batch: RaftBatch) {
        if crate::failpoint::partitioned(self.node_id) {
            return; // lost on the way
        }
        let from_node = batch.from_node;
        for mut env in batch.msgs {
            env.from_node = from_node;
            crate::metrics::raft_in(env.message.len());
            let _ = self.store.try_send(StoreMsg::Raft(env));
        }
    }

    /// One KV request, as the unary `Kv` and every call of a `KvStream`
    /// run it.
    async fn kv_unary(&self, req: KvRequest) -> Result<KvResponse, Status> {
        crate::failpoint::hold_while_partitioned(self.node_id).await?;
        let mut answer = match self.replica(req.range_id, req.epoch) {
            Ok(r) => {
                let res = self.kv_request(&r, req).await;
                kv_answer(Some(&r), res)?
            }
            Err(e) => {
                let r = self.ranges.get(&req.range_id).map(|r| r.clone());
                kv_answer(r.as_deref(), Err(e))?
            }
        };
        if let Some(e) = answer.error.as_mut() {
            if e.kind == RouteErrorKind::EpochNotMatch as i32 {
                self.add_split_off(&mut e.ranges);
            }
        }
        Ok(answer)
    }

    /// To an `EpochNotMatch` that names a range, adds the ranges hosted here
    /// that continue it to the right (the halves a split gave it: a split's
    /// new range starts where the old one now ends, on the same nodes), up
    /// to [`SPLIT_OFF_MAX`], so the router learns where the keys went
    /// without asking placement, which hears of a split a heartbeat later.
    fn add_split_off(&self, ranges: &mut Vec<RangeDescriptor>) {
        let Some(first) = ranges.first() else {
            return;
        };
        let by_start: std::collections::BTreeMap<Vec<u8>, RangeDescriptor> = self
            .ranges
            .iter()
            .map(|r| {
                let d = r.desc.read().clone();
                (d.start_key.clone(), d)
            })
            .collect();
        let mut end = first.end_key.clone();
        for _ in 0..SPLIT_OFF_MAX {
            if end.is_empty() {
                break;
            }
            let Some(next) = by_start.get(&end) else {
                break;
            };
            end = next.end_key.clone();
            ranges.push(next.clone());
        }
    }
}

type FeedStream = Pin<Box<dyn Stream<Item = Result<FeedMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Node for NodeService {
    async fn raft(&self, req: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        self.deliver(req.into_inner());
        Ok(Response::new(RaftAck {}))
    }

    async fn raft_stream(
        &self,
        req: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<RaftAck>, Status> {
        let mut batches = req.into_inner();
        while let Some(batch) = batches.message().await? {
            self.deliver(batch);
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        crate::failpoint::refuse_while_partitioned(self.node_id).await?;
        self.snapshots.receive(req.into_inner()).await?;
        Ok(Response::new(SnapshotAck {}))
    }

    async fn admin(&self, req: Request<AdminRequest>) -> Result<Response<AdminResponse>, Status> {
        crate::failpoint::hold_while_partitioned(self.node_id).await?;
        let req = req.into_inner();
        let r = self.replica(req.range_id, req.epoch);
        let kind = AdminKind::try_from(req.kind).unwrap_or(AdminKind::AdminNone);
        let res = match &r {
            Err(e) => Err(e.clone()),
            Ok(r) if !r.is_leader() => Err(NodeError::NotLeader),
            Ok(r) if kind == AdminKind::Split => self.admin_split(r, req.split_key).await,
            Ok(_) => {
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
                rx.await
                    .unwrap_or_else(|_| Err(errors::leader_changed().into()))
            }
        };
        let error = match res {
            Ok(()) => None,
            Err(e) => Some(route_error(r.as_deref().ok(), e)?),
        };
        Ok(Response::new(AdminResponse { error }))
    }

    async fn kv(&self, req: Request<KvRequest>) -> Result<Response<KvResponse>, Status> {
        self.kv_unary(req.into_inner()).await.map(Response::new)
    }

    type KvStreamStream = stream::KvReplyStream;

    async fn kv_stream(
        &self,
        req: Request<Streaming<KvCalls>>,
    ) -> Result<Response<Self::KvStreamStream>, Status> {
        Ok(Response::new(self.serve_kv_stream(req.into_inner())))
    }

    type FeedStream = FeedStream;

    async fn feed(&self, req: Request<FeedRequest>) -> Result<Response<FeedStream>, Status> {
        crate::failpoint::hold_while_partitioned(self.node_id).await?;
        let req = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<FeedMessage, Status>>(64);
        let stream = |rx| -> Response<FeedStream> {
            Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
        };
        let r = match self.replica(req.range_id, req.epoch) {
            Ok(r) if r.is_leader() => r,
            res => {
                let e = res.err().unwrap_or(NodeError::NotLeader);
                let r = self.ranges.get(&req.range_id).map(|r| r.clone());
                let error = route_error(r.as_deref(), e)?;
                let _ = tx.try_send(Ok(FeedMessage {
                    error: Some(error),
                    ..Default::default()
                }));
                return Ok(stream(rx));
            }
        };
        let seq = self.sequencers.get(r.desc.read().id);
        let feed = feed::Feed::new(r, &req, tx, self.mvcc.clone(), self.oracle.clone(), seq)
            .on_node(self.node_id);
        tokio::spawn(feed.run());
        Ok(stream(rx))
    }

    async fn status(
        &self,
        req: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        crate::failpoint::hold_while_partitioned(self.node_id).await?;
        let sizes_only = req.get_ref().sizes_only;
        let ranges = self
            .ranges
            .iter()
            .filter(|_| !sizes_only)
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
            db_size_bytes: self.space.db_size(),
            db_size_in_use_bytes: self.space.db_size_in_use(),
            quota_backend_bytes: self.space.quota_bytes(),
        }))
    }

    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        crate::failpoint::hold_while_partitioned(self.node_id).await?;
        self.defragment_all().await.map(Response::new)
    }

    async fn range_hash(
        &self,
        req: Request<RangeHashRequest>,
    ) -> Result<Response<RangeHashResponse>, Status> {
        crate::failpoint::hold_while_partitioned(self.node_id).await?;
        self.hash_range(req.into_inner()).await.map(Response::new)
    }

    async fn corrupt(
        &self,
        req: Request<CorruptRequest>,
    ) -> Result<Response<CorruptResponse>, Status> {
        self.corrupt_value(req.into_inner()).await?;
        Ok(Response::new(CorruptResponse {}))
    }
}
