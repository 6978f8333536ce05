//! etcd's Watch service: one bidirectional stream carries many watches. Each
//! watch reads a range feed from the leader of the range it covers; a feed
//! that ends for a routing reason (leader moved, lagged) is reopened from the
//! last delivered revision + 1, so nothing is lost, duplicated or reordered.
//!
//! A revision's events go out in etcd's order (its sub-revisions): by the op
//! of the request that wrote them, then by key. Ops are numbered over the
//! whole txn tree in pre-order (`strata_proto::xtxn`), the same in every
//! range, so a txn over several ranges gives op order over the whole txn,
//! as etcd; one op's keys (a delete of many, a lease's keys) in key order.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use parking_lot::Mutex;
use strata_proto::etcd::{
    PbEvent, PbKeyValue, PbResponseHeader, PbWatchRequest, PbWatchRequestUnion, PbWatchResponse,
    PbWatchService,
};
use strata_proto::etcdutil::KeyRange;
use strata_proto::oracle::Oracle;
use strata_proto::strata::{FeedEvent, FeedKv, FeedMessage, FeedRequest};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::routing::Router;

/// Responses buffered per client stream before watchers wait.
const STREAM_BUF: usize = 1024;
const FILTER_NOPUT: i32 = 0;
/// Feed messages buffered between a watch's range feeds and its merger.
const FEED_MERGE_BUF: usize = 1024;
/// A progress request waits at most this many 20 ms rounds for lagging watches.
const PROGRESS_WAIT_ROUNDS: usize = 250;
const FILTER_NODELETE: i32 = 1;
/// Under `hasleader`, how long a watch's range may stay without a leader
/// before the stream ends with "etcdserver: no leader" (etcd ends such
/// streams once its member has had no leader for about three election
/// timeouts).
const NO_LEADER_GRACE: Duration = Duration::from_secs(3);

pub struct Watch {
    pub router: Arc<Router>,
    pub auth: Arc<crate::auth::Auth>,
    pub oracle: Oracle,
    pub member_id: u64,
    pub cluster_id: u64,
    pub progress_every: Duration,
}

#[derive(Clone, Copy)]
struct Hdr {
    member_id: u64,
    cluster_id: u64,
}

impl Hdr {
    /// etcd's answer to a watch it refuses to create.
    fn refused(&self, revision: i64, reason: String) -> PbWatchResponse {
        PbWatchResponse {
            header: self.h(revision),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        }
    }

    fn h(&self, revision: i64) -> Option<PbResponseHeader> {
        Some(PbResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: 1,
        })
    }
}

/// A feed refused because its range has no leader (none known to the node).
fn is_no_leader(e: &strata_proto::strata::RouteError) -> bool {
    e.kind == strata_proto::strata::RouteErrorKind::NotLeader as i32 && e.leader_node == 0
}

struct WatcherState {
    /// Every event at or below this revision has been sent (or never will be).
    progress: AtomicI64,
    synced: AtomicBool,
}

struct Watcher {
    state: Arc<WatcherState>,
    task: tokio::task::JoinHandle<()>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<PbWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbWatchService for Watch {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<PbWatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let (md, cert_cn) = (req.metadata().clone(), crate::tls_cn(&req));
        let auth = self.auth.clone();
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<PbWatchResponse, Status>>(STREAM_BUF);
        let router = self.router.clone();
        let oracle = self.oracle.clone();
        let hdr = Hdr {
            member_id: self.member_id,
            cluster_id: self.cluster_id,
        };
        let progress_every = self.progress_every;
        let require_leader = md
            .get(crate::reqmeta::HAS_LEADER_KEY)
            .is_some_and(|v| v.as_bytes() == crate::reqmeta::HAS_LEADER_VALUE.as_bytes());
        tokio::spawn(async move {
            let _open = crate::metrics::watch_stream();
            let watchers: Arc<Mutex<HashMap<i64, Watcher>>> = Arc::new(Mutex::new(HashMap::new()));
            let mut next_id: i64 = 0;
            // Whether the client only closed its side of the stream: etcd
            // keeps its watches then, until the client goes.
            let mut half_closed = false;
            loop {
                let msg = match inbound.next().await {
                    Some(Ok(msg)) => msg,
                    Some(Err(_)) => break,
                    None => {
                        half_closed = true;
                        break;
                    }
                };
                match msg.request_union {
                    Some(PbWatchRequestUnion::CreateRequest(c)) => {
                        let current = match oracle.current().await {
                            Ok(c) => c,
                            Err(e) => {
                                let _ = tx.send(Err(e)).await;
                                break;
                            }
                        };
                        let id = if c.watch_id > 0 {
                            c.watch_id
                        } else {
                            while watchers.lock().contains_key(&next_id) {
                                next_id += 1;
                            }
                            next_id
                        };
                        let refusal = if watchers.lock().contains_key(&id) {
                            // etcd: a duplicate watch id is refused.
                            Some("mvcc: duplicate watch ID provided on the WatchStream".into())
                        } else if c.key.is_empty() {
                            Some("etcdserver: key is not provided".into())
                        } else {
                            // etcd checks read permission once, at creation;
                            // its reason is the gRPC error's text.
                            auth.caller(&md, cert_cn.clone())
                                .and_then(|who| who.read(&c.key, &c.range_end))
                                .err()
                                .map(|e| {
                                    format!(
                                        "rpc error: code = {:?} desc = {}",
                                        e.code(),
                                        e.message()
                                    )
                                })
                        };
                        if let Some(reason) = refusal {
                            let _ = tx.send(Ok(hdr.refused(current, reason))).await;
                            continue;
                        }
                        let start = if c.start_revision > 0 {
                            c.start_revision
                        } else {
                            current + 1
                        };
                        let state = Arc::new(WatcherState {
                            progress: AtomicI64::new(start - 1),
                            synced: AtomicBool::new(start > current),
                        });
                        if tx
                            .send(Ok(PbWatchResponse {
                                header: hdr.h(current),
                                watch_id: id,
                                created: true,
                                ..Default::default()
                            }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                        let w = WatchTask {
                            id,
                            kr: KeyRange::from_etcd(&c.key, &c.range_end),
                            start,
                            prev_kv: c.prev_kv,
                            noput: c.filters.contains(&FILTER_NOPUT),
                            nodelete: c.filters.contains(&FILTER_NODELETE),
                            progress_notify: c.progress_notify,
                            progress_every,
                            caught_up_at: current,
                            state: state.clone(),
                            router: router.clone(),
                            tx: tx.clone(),
                            hdr,
                            watchers: watchers.clone(),
                            require_leader,
                        };
                        let task = tokio::spawn(w.run());
                        watchers.lock().insert(id, Watcher { state, task });
                        next_id = next_id.max(id + 1);
                    }
                    Some(PbWatchRequestUnion::CancelRequest(c)) => {
                        let removed = watchers.lock().remove(&c.watch_id);
                        if let Some(w) = removed {
                            w.task.abort();
                            let rev = w.state.progress.load(Ordering::Acquire);
                            let _ = tx
                                .send(Ok(PbWatchResponse {
                                    header: hdr.h(rev),
                                    watch_id: c.watch_id,
                                    canceled: true,
                                    ..Default::default()
                                }))
                                .await;
                        }
                    }
                    Some(PbWatchRequestUnion::ProgressRequest(_)) => {
                        // Answered once every watch on the stream has reached the
                        // current revision, with that revision: every event at or
                        // below it was sent before this response.
                        let states: Vec<Arc<WatcherState>> =
                            watchers.lock().values().map(|w| w.state.clone()).collect();
                        let (oracle, tx) = (oracle.clone(), tx.clone());
                        tokio::spawn(async move {
                            let Ok(current) = oracle.current().await else {
                                return;
                            };
                            let min = || {
                                states
                                    .iter()
                                    .map(|s| s.progress.load(Ordering::Acquire))
                                    .min()
                                    .unwrap_or(current)
                            };
                            for _ in 0..PROGRESS_WAIT_ROUNDS {
                                if min() >= current {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            let _ = tx
                                .send(Ok(PbWatchResponse {
                                    header: hdr.h(min().min(current)),
                                    watch_id: -1,
                                    ..Default::default()
                                }))
                                .await;
                        });
                    }
                    None => {}
                }
            }
            if half_closed {
                tx.closed().await;
            }
            for (_, w) in watchers.lock().drain() {
                w.task.abort();
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// A watch the router opens for itself (etcd's Lock and Election services
/// wait on one): `rx` gets what a client's watch of `kr` from revision
/// `start` would (events, or a cancel with `compact_revision` when `start`
/// is compacted). It stops when dropped.
pub struct OwnWatch {
    pub rx: mpsc::Receiver<Result<PbWatchResponse, Status>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OwnWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an [`OwnWatch`] on the same merged range feeds a client's watch uses.
pub fn own_watch(
    router: Arc<Router>,
    kr: KeyRange,
    start: i64,
    member_id: u64,
    cluster_id: u64,
) -> OwnWatch {
    let (tx, rx) = mpsc::channel(16);
    let start = start.max(1);
    let state = Arc::new(WatcherState {
        progress: AtomicI64::new(start - 1),
        synced: AtomicBool::new(false),
    });
    let w = WatchTask {
        id: 0,
        kr,
        start,
        prev_kv: false,
        noput: false,
        nodelete: false,
        progress_notify: false,
        progress_every: Duration::from_secs(3600),
        caught_up_at: start,
        state,
        router,
        tx,
        hdr: Hdr {
            member_id,
            cluster_id,
        },
        watchers: Default::default(),
        require_leader: false,
    };
    OwnWatch {
        rx,
        task: tokio::spawn(w.run()),
    }
}

struct WatchTask {
    id: i64,
    kr: KeyRange,
    start: i64,
    prev_kv: bool,
    noput: bool,
    nodelete: bool,
    progress_notify: bool,
    progress_every: Duration,
    /// The current revision when the watch was created: once progress reaches
    /// it the watch is synced (history replayed).
    caught_up_at: i64,
    state: Arc<WatcherState>,
    router: Arc<Router>,
    tx: mpsc::Sender<Result<PbWatchResponse, Status>>,
    hdr: Hdr,
    watchers: Arc<Mutex<HashMap<i64, Watcher>>>,
    /// The stream asked `hasleader`: a range without a leader for
    /// [`NO_LEADER_GRACE`] ends it.
    require_leader: bool,
}

fn to_kv(f: FeedKv) -> PbKeyValue {
    PbKeyValue {
        key: f.key,
        create_revision: f.create_revision,
        mod_revision: f.mod_revision,
        version: f.version,
        value: f.value,
        lease: f.lease,
    }
}

/// Orders one revision's events, gathered from every range's feed, as etcd
/// does (see the module doc): by op, then key. Each feed's own events are in
/// that order already; the sort is stable.
fn in_etcd_order(events: &mut [FeedEvent]) {
    fn key(e: &FeedEvent) -> &[u8] {
        e.kv.as_ref().map_or(&[], |kv| kv.key.as_slice())
    }
    events.sort_by(|a, b| (a.op, key(a)).cmp(&(b.op, key(b))));
}

impl WatchTask {
    fn advance(&self, rev: i64) {
        self.state.progress.fetch_max(rev, Ordering::AcqRel);
        if rev >= self.caught_up_at {
            self.state.synced.store(true, Ordering::Release);
        }
    }

    async fn send(&self, r: PbWatchResponse) -> bool {
        self.tx.send(Ok(r)).await.is_ok()
    }

    async fn cancel_compacted(&self, compact_revision: i64) {
        self.watchers.lock().remove(&self.id);
        let _ = self
            .send(PbWatchResponse {
                header: self.hdr.h(self.state.progress.load(Ordering::Acquire)),
                watch_id: self.id,
                canceled: true,
                compact_revision,
                cancel_reason: "etcdserver: mvcc: required revision has been compacted".into(),
                ..Default::default()
            })
            .await;
    }

    /// Events of one revision as the client asked for them (filters, prev_kv).
    fn convert(&self, events: Vec<FeedEvent>) -> Vec<PbEvent> {
        events
            .into_iter()
            .filter(|e| !(e.delete && self.nodelete || !e.delete && self.noput))
            .map(|e| PbEvent {
                r#type: if e.delete { 1 } else { 0 },
                kv: e.kv.map(to_kv),
                prev_kv: if self.prev_kv {
                    e.prev_kv.map(to_kv)
                } else {
                    None
                },
            })
            .collect()
    }

    /// Opens one feed per range overlapping the watched keys; every message
    /// goes to `out` tagged with the feed's index; `None` marks a feed's end.
    fn open_feeds(
        &self,
        ranges: &[crate::routing::CachedRange],
        from: i64,
        out: &mpsc::Sender<(usize, Option<FeedMessage>)>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for (i, range) in ranges.iter().enumerate() {
            let part = self.kr.clamp(&range.desc.start_key, &range.desc.end_key);
            let (router, range, out) = (self.router.clone(), range.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                let node = router.target(&range, 0);
                let Some(mut client) = router.feed_client(node) else {
                    let _ = out.send((i, None)).await;
                    return;
                };
                let req = FeedRequest {
                    range_id: range.desc.id,
                    epoch: range.desc.epoch,
                    key: part.start.clone(),
                    range_end: part.end.clone().unwrap_or_else(|| vec![0]),
                    start_revision: from,
                };
                match client.feed(req).await {
                    Ok(stream) => {
                        let mut stream = stream.into_inner();
                        while let Some(Ok(m)) = stream.next().await {
                            if let Some(e) = &m.error {
                                let _ = router.on_route_error(range.desc.id, e).await;
                                if is_no_leader(e) {
                                    let _ = out.send((i, Some(m))).await;
                                }
                                break;
                            }
                            if out.send((i, Some(m))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(_) => {
                        let _ = router.refresh().await;
                    }
                }
                let _ = out.send((i, None)).await;
            }));
        }
        tasks
    }

    /// Merges the range feeds: an event is released once every feed has
    /// promised (by a checkpoint or a later event) that nothing at or below its
    /// revision is still to come, so events leave in revision order, a whole
    /// revision per response. Any feed break restarts all feeds after the last
    /// released revision: nothing is lost, duplicated or reordered.
    async fn run(self) {
        let _live = crate::metrics::watcher();
        let mut notify = tokio::time::interval(self.progress_every);
        notify.tick().await;
        let mut backoff = Duration::from_millis(20);
        // Since when a range of the watch has had no leader (feeds refused).
        let mut no_leader_since: Option<std::time::Instant> = None;
        loop {
            let from = (self.state.progress.load(Ordering::Acquire) + 1).max(self.start);
            let ranges = self.router.ranges_for(&self.kr);
            if ranges.is_empty() || !self.router.covers(&self.kr, &ranges) {
                let _ = self.router.refresh().await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
            let (out, mut inbox) = mpsc::channel(FEED_MERGE_BUF);
            let tasks = self.open_feeds(&ranges, from, &out);
            drop(out);
            let mut promised = vec![from - 1; ranges.len()];
            let mut pending: std::collections::BTreeMap<i64, Vec<FeedEvent>> = Default::default();
            let over = loop {
                tokio::select! {
                    m = inbox.recv() => {
                        let Some((i, Some(m))) = m else { break false };
                        if m.error.is_some() {
                            // A range without a leader: under `hasleader`,
                            // past the grace the stream ends, as etcd's.
                            let since = *no_leader_since.get_or_insert_with(std::time::Instant::now);
                            if self.require_leader && since.elapsed() >= NO_LEADER_GRACE {
                                let _ = self.tx.send(Err(strata_proto::errors::no_leader())).await;
                                break true;
                            }
                            continue;
                        }
                        no_leader_since = None;
                        backoff = Duration::from_millis(20);
                        if m.compact_revision > 0 {
                            self.cancel_compacted(m.compact_revision).await;
                            break true;
                        }
                        if m.checkpoint > 0 {
                            promised[i] = promised[i].max(m.checkpoint);
                        } else if m.revision > 0 {
                            promised[i] = promised[i].max(m.revision);
                            if m.revision > self.state.progress.load(Ordering::Acquire) {
                                pending.entry(m.revision).or_default().extend(m.events);
                            }
                        }
                        let bound = promised.iter().copied().min().unwrap_or(0);
                        while let Some(entry) = pending.first_entry() {
                            if *entry.key() > bound {
                                break;
                            }
                            let (rev, mut events) = entry.remove_entry();
                            in_etcd_order(&mut events);
                            let mut events = self.convert(events);
                            // Planted bug: an event silently lost.
                            events.retain(|_| !crate::failpoint::on("plant_drop_watch_event"));
                            crate::metrics::WATCH_EVENTS_SENT.inc_by(events.len() as u64);
                            if !events.is_empty() && !self.send(PbWatchResponse {
                                header: self.hdr.h(rev),
                                watch_id: self.id,
                                events,
                                ..Default::default()
                            }).await {
                                break;
                            }
                        }
                        self.advance(bound);
                    }
                    _ = notify.tick(), if self.progress_notify => {
                        if self.state.synced.load(Ordering::Acquire) {
                            let rev = self.state.progress.load(Ordering::Acquire);
                            if !self.send(PbWatchResponse {
                                header: self.hdr.h(rev),
                                watch_id: self.id,
                                ..Default::default()
                            }).await {
                                break true;
                            }
                        }
                    }
                }
                if self.tx.is_closed() {
                    break true;
                }
            };
            for t in tasks {
                t.abort();
            }
            if over {
                return;
            }
            // A feed ended (split, leader move, lag): re-resolve and resume.
            crate::metrics::WATCH_FEED_RESTARTS.inc();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}
