//! Range cache and request routing: find the range for a key, send to its
//! leader, follow `NotLeader` hints, refresh on `EpochNotMatch` /
//! `RangeNotFound`, back off on `ServerBusy` — all inside the request deadline.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::RwLock;
use strata_proto::errors;
use strata_proto::etcdutil::KeyRange;
use strata_proto::oracle::PlacementConn;
use strata_proto::strata::node_client::NodeClient;
use strata_proto::strata::{
    GetRangesRequest, KvKind, KvRequest, RangeDescriptor, RouteError, RouteErrorKind,
};
use tokio::time::Instant;

use crate::mux::NodeMux;
use tonic::transport::Channel;
use tonic::{Code, Status};

#[derive(Clone, Debug)]
pub struct CachedRange {
    pub desc: RangeDescriptor,
    pub leader_node: u64,
}

impl CachedRange {
    pub fn key_range(&self) -> KeyRange {
        KeyRange {
            start: self.desc.start_key.clone(),
            end: (!self.desc.end_key.is_empty()).then(|| self.desc.end_key.clone()),
        }
    }
}

/// The cached ranges, without overlaps, in key order, with an index by id:
/// finding the ranges of a key range is a binary search, and a refresh with
/// thousands of ranges costs O(n log n).
#[derive(Default)]
struct RangeCache {
    by_start: Vec<CachedRange>,
    by_id: HashMap<u64, usize>,
}

impl RangeCache {
    /// Builds the cache from placement's list. Placement may briefly hold a
    /// split range's old descriptor beside its new halves: where descriptors
    /// overlap, the newest epoch wins. A range placement knows no leader for
    /// keeps the one `old` learned from a node.
    fn build(mut ranges: Vec<CachedRange>, old: &RangeCache) -> Self {
        ranges.sort_by_key(|r| {
            let e = r.desc.epoch.unwrap_or_default();
            std::cmp::Reverse((e.version, e.conf_ver))
        });
        // Kept ranges never overlap, so a candidate can only overlap the kept
        // range starting at or before its start, or the first one after it.
        let mut kept: BTreeMap<Vec<u8>, CachedRange> = BTreeMap::new();
        for mut r in ranges {
            let rk = r.key_range();
            let before = kept.range(..=rk.start.clone()).next_back();
            let after = kept
                .range((Bound::Excluded(rk.start.clone()), Bound::Unbounded))
                .next();
            if before
                .into_iter()
                .chain(after)
                .any(|(_, k)| overlaps(&k.key_range(), &rk))
            {
                continue;
            }
            if r.leader_node == 0 {
                if let Some(o) = old.get(r.desc.id) {
                    r.leader_node = o.leader_node;
                }
            }
            kept.insert(rk.start, r);
        }
        let by_start: Vec<CachedRange> = kept.into_values().collect();
        let by_id = by_start
            .iter()
            .enumerate()
            .map(|(i, r)| (r.desc.id, i))
            .collect();
        Self { by_start, by_id }
    }

    fn get(&self, range_id: u64) -> Option<&CachedRange> {
        self.by_id.get(&range_id).map(|i| &self.by_start[*i])
    }

    /// Ranges overlapping `kr`, in key order.
    fn overlapping(&self, kr: &KeyRange) -> Vec<CachedRange> {
        // The first candidate is the last range starting at or before kr.start.
        let first = self
            .by_start
            .partition_point(|r| r.desc.start_key <= kr.start)
            .saturating_sub(1);
        self.by_start[first..]
            .iter()
            .take_while(|r| kr.end.as_ref().is_none_or(|e| &r.desc.start_key < e))
            .filter(|r| r.desc.end_key.is_empty() || r.desc.end_key > kr.start)
            .cloned()
            .collect()
    }
}

pub struct Router {
    pub placement: PlacementConn,
    ranges: RwLock<RangeCache>,
    nodes: RwLock<HashMap<u64, String>>,
    clients: DashMap<u64, NodeClient<Channel>>,
    /// Per node and client thread (`threads::slot`): each client thread
    /// calls nodes on connections of its own, so a node's answers complete
    /// that thread's calls without waking another thread.
    muxes: DashMap<(u64, usize), NodeMux>,
    feed_clients: DashMap<u64, NodeClient<Channel>>,
    pub compacted: std::sync::atomic::AtomicI64,
    pub request_timeout: Duration,
    /// Placement's version of the cached answer (see `GetRangesRequest`).
    version: std::sync::atomic::AtomicU64,
    /// One refresh at a time: callers that waited for another's take its
    /// answer (a split fails every request in flight on the range at once;
    /// they must not each ask placement).
    refreshing: tokio::sync::Mutex<()>,
    refreshes: std::sync::atomic::AtomicU64,
}

/// Is this request safe to send twice? Reads are; a write is only when it
/// certainly never reached the node (connection not established).
#[derive(Clone, Copy, PartialEq)]
pub enum Retry {
    Read,
    Write,
    /// A cross-range txn's prepare: as `Write`, but a range held by another
    /// txn answers at once ([`is_busy`]) instead of being waited for.
    Prepare,
}

/// A range another cross-range txn holds (only with `Retry::Prepare`).
pub fn busy_range() -> Status {
    Status::aborted("strata: range held by another transaction")
}

pub fn is_busy(s: &Status) -> bool {
    s.code() == Code::Aborted && s.message() == busy_range().message()
}

fn overlaps(a: &KeyRange, b: &KeyRange) -> bool {
    let a_before_b_end = b.end.as_ref().is_none_or(|e| a.start < *e);
    let b_before_a_end = a.end.as_ref().is_none_or(|e| b.start < *e);
    a_before_b_end && b_before_a_end
}

/// Returned by [`Router::call`] when the range split or moved: nothing was
/// applied; re-resolve the keys and send again.
pub fn stale_range() -> Status {
    Status::new(Code::Aborted, "strata: stale range descriptor")
}

pub fn is_stale(s: &Status) -> bool {
    s.code() == Code::Aborted && s.message() == "strata: stale range descriptor"
}

pub(crate) fn connect_failure(s: &Status) -> bool {
    let m = s.message().to_ascii_lowercase();
    s.code() == Code::Unavailable
        && !m.starts_with("etcdserver")
        && (m.contains("connect") || m.contains("connection refused") || m.contains("dns"))
}

impl Router {
    pub fn new(placement: PlacementConn, request_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            placement,
            ranges: RwLock::new(RangeCache::default()),
            nodes: RwLock::new(HashMap::new()),
            clients: DashMap::new(),
            muxes: DashMap::new(),
            feed_clients: DashMap::new(),
            compacted: Default::default(),
            request_timeout,
            version: Default::default(),
            refreshing: tokio::sync::Mutex::new(()),
            refreshes: Default::default(),
        })
    }

    pub async fn refresh(&self) -> Result<(), Status> {
        use std::sync::atomic::Ordering;
        let asked = self.refreshes.load(Ordering::Acquire);
        let _one = self.refreshing.lock().await;
        if self.refreshes.load(Ordering::Acquire) != asked {
            return Ok(()); // another caller refreshed after we asked
        }
        let res = self.refresh_now().await;
        self.refreshes.fetch_add(1, Ordering::AcqRel);
        res
    }

    async fn refresh_now(&self) -> Result<(), Status> {
        let known_version = self.version.load(std::sync::atomic::Ordering::Acquire);
        let mut req = tonic::Request::new(GetRangesRequest { known_version });
        req.set_timeout(Duration::from_secs(2));
        let resp = self.placement.clone().get_ranges(req).await?.into_inner();
        if resp.unchanged && resp.version == known_version {
            return Ok(());
        }
        let version = resp.version;
        let ranges: Vec<CachedRange> = resp
            .ranges
            .into_iter()
            .filter_map(|r| {
                r.desc.map(|desc| CachedRange {
                    desc,
                    leader_node: r.leader_node,
                })
            })
            .collect();
        // Descriptors learned from nodes (see `learn`) stay where they are
        // newer than placement's: placement hears of a split a heartbeat
        // later.
        let mut cache = self.ranges.write();
        let mut ranges = ranges;
        ranges.extend(cache.by_start.iter().cloned());
        *cache = RangeCache::build(ranges, &cache);
        drop(cache);
        let mut nodes = self.nodes.write();
        for n in resp.nodes {
            if nodes.get(&n.id) != Some(&n.addr) {
                self.clients.remove(&n.id);
                self.muxes.retain(|(node, _), _| *node != n.id);
                self.feed_clients.remove(&n.id);
            }
            nodes.insert(n.id, n.addr);
        }
        drop(nodes);
        self.compacted
            .fetch_max(resp.compact_revision, std::sync::atomic::Ordering::AcqRel);
        self.version
            .store(version, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    pub async fn refresh_loop(self: Arc<Self>) {
        let mut iv = tokio::time::interval(Duration::from_secs(1));
        loop {
            iv.tick().await;
            if let Err(e) = self.refresh().await {
                tracing::debug!("range cache refresh failed: {}", e.message());
            }
        }
    }

    /// Do the cached ranges cover all of `kr` (no gap from a pending split)?
    pub fn covers(&self, kr: &KeyRange, ranges: &[CachedRange]) -> bool {
        let mut at = kr.start.clone();
        for r in ranges {
            if r.desc.start_key > at {
                return false;
            }
            if r.desc.end_key.is_empty() {
                return true;
            }
            at = at.max(r.desc.end_key.clone());
            if kr.end.as_ref().is_some_and(|e| at >= *e) {
                return true;
            }
        }
        false
    }

    /// Ranges overlapping `kr`, in key order.
    pub fn ranges_for(&self, kr: &KeyRange) -> Vec<CachedRange> {
        self.ranges.read().overlapping(kr)
    }

    /// The single range covering `kr`, or the cross-range error for `what`.
    pub async fn single_range(&self, kr: &KeyRange, what: &str) -> Result<CachedRange, Status> {
        let deadline = crate::reqmeta::deadline(self.request_timeout);
        loop {
            let rs = self.ranges_for(kr);
            let n = if self.covers(kr, &rs) { rs.len() } else { 0 };
            match n {
                1 => return Ok(rs.into_iter().next().expect("one")),
                0 if Instant::now() < deadline => {
                    // Cache empty (just started) or a split in progress.
                    let _ = self.refresh().await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                0 => return Err(errors::no_leader()),
                _ => return Err(errors::cross_range(what)),
            }
        }
    }

    /// Takes the current descriptors a node sent with `EpochNotMatch` (the
    /// range asked and the ranges split off it) into the cache; where they
    /// overlap cached ones, the newest epoch wins.
    pub fn learn(&self, descs: &[RangeDescriptor]) {
        if descs.is_empty() {
            return;
        }
        let mut cache = self.ranges.write();
        let mut all: Vec<CachedRange> = descs
            .iter()
            .map(|d| CachedRange {
                desc: d.clone(),
                leader_node: 0,
            })
            .collect();
        all.extend(cache.by_start.iter().cloned());
        *cache = RangeCache::build(all, &cache);
    }

    fn set_leader(&self, range_id: u64, node: u64) {
        let mut cache = self.ranges.write();
        if let Some(i) = cache.by_id.get(&range_id).copied() {
            cache.by_start[i].leader_node = node;
        }
    }

    pub fn cached(&self, range_id: u64) -> Option<CachedRange> {
        self.ranges.read().get(range_id).cloned()
    }

    pub fn client(&self, node: u64) -> Option<NodeClient<Channel>> {
        self.client_in(&self.clients, node)
    }

    /// The multiplexed Kv stream to `node` (see `mux.rs`), on the same
    /// connection as [`Router::client`].
    pub fn mux(&self, node: u64) -> Option<NodeMux> {
        let key = (node, crate::threads::slot());
        if let Some(m) = self.muxes.get(&key) {
            return Some(m.clone());
        }
        // A client thread's own connection (its tasks run on that thread).
        let client = match key.1 {
            0 => self.client(node)?,
            _ => self.connect(node)?,
        };
        Some(
            self.muxes
                .entry(key)
                .or_insert_with(|| NodeMux::start(node, client))
                .clone(),
        )
    }

    /// A client on a separate connection for range feeds: watches cancel feed
    /// streams often (splits, leader moves), and HTTP/2 limits how many streams
    /// one connection may reset, so feeds must not share KV's connection.
    pub fn feed_client(&self, node: u64) -> Option<NodeClient<Channel>> {
        self.client_in(&self.feed_clients, node)
    }

    fn client_in(
        &self,
        map: &DashMap<u64, NodeClient<Channel>>,
        node: u64,
    ) -> Option<NodeClient<Channel>> {
        if let Some(c) = map.get(&node) {
            return Some(c.clone());
        }
        let c = self.connect(node)?;
        map.insert(node, c.clone());
        Some(c)
    }

    /// A new (lazy) connection to `node`.
    fn connect(&self, node: u64) -> Option<NodeClient<Channel>> {
        let addr = self.nodes.read().get(&node)?.clone();
        let ep = strata_proto::tls::endpoint(&addr)
            .ok()?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true);
        Some(
            NodeClient::new(strata_proto::tls::connect_lazy(&ep))
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(64 * 1024 * 1024),
        )
    }

    /// The node to try for a range: its leader hint, else peers in turn.
    pub fn target(&self, r: &CachedRange, attempt: usize) -> u64 {
        if r.leader_node != 0 && attempt % 4 != 3 {
            return r.leader_node;
        }
        let peers = &r.desc.peers;
        if peers.is_empty() {
            return 0;
        }
        peers[attempt % peers.len()].node_id
    }

    /// Handles a routing error: updates the cache. Returns the backoff.
    pub async fn on_route_error(&self, range_id: u64, e: &RouteError) -> Duration {
        match RouteErrorKind::try_from(e.kind).unwrap_or(RouteErrorKind::RouteNone) {
            RouteErrorKind::NotLeader => {
                self.set_leader(range_id, e.leader_node);
                if e.leader_node == 0 {
                    Duration::from_millis(50) // election in progress
                } else {
                    Duration::ZERO
                }
            }
            RouteErrorKind::EpochNotMatch if !e.ranges.is_empty() => {
                self.learn(&e.ranges);
                Duration::ZERO
            }
            RouteErrorKind::EpochNotMatch | RouteErrorKind::RangeNotFound => {
                let _ = self.refresh().await;
                Duration::from_millis(20)
            }
            _ => Duration::from_millis(50),
        }
    }

    /// Sends a request whose keys `kr` must lie in one range, re-resolving the
    /// range after splits, until the request deadline.
    pub async fn call_single(
        &self,
        kr: &KeyRange,
        what: &str,
        kind: KvKind,
        request: Vec<u8>,
        read_revision: i64,
        retry: Retry,
    ) -> Result<Vec<u8>, Status> {
        let deadline = crate::reqmeta::deadline(self.request_timeout);
        let mut attempt = 0usize;
        loop {
            attempt += 1;
            let range = self.single_range(kr, what).await?;
            match self
                .call(&range, kind, request.clone(), read_revision, retry)
                .await
            {
                // The first retry goes at once: the error usually brought
                // the new descriptors (see `learn`).
                Err(s) if is_stale(&s) && Instant::now() < deadline => {
                    if attempt > 1 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                Err(s) if is_stale(&s) => return Err(errors::timeout()),
                other => return other,
            }
        }
    }

    /// Sends one request to a range, retrying routing errors until the deadline.
    pub async fn call(
        &self,
        range: &CachedRange,
        kind: KvKind,
        request: Vec<u8>,
        read_revision: i64,
        retry: Retry,
    ) -> Result<Vec<u8>, Status> {
        // The client's deadline bounds the retries and the node call;
        // `hasleader` makes a leaderless range fail at once.
        let deadline = crate::reqmeta::deadline(self.request_timeout);
        let require_leader = crate::reqmeta::require_leader();
        let mut unreachable = std::collections::HashSet::new();
        let mut range = range.clone();
        let mut last_err = errors::no_leader();
        for attempt in 0..10_000usize {
            if Instant::now() >= deadline {
                break;
            }
            let node = self.target(&range, attempt);
            let Some(mux) = self.mux(node) else {
                crate::metrics::retry("node_unknown");
                let _ = self.refresh().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                range = self.cached(range.desc.id).unwrap_or(range);
                continue;
            };
            let req = KvRequest {
                range_id: range.desc.id,
                epoch: range.desc.epoch,
                kind: kind as i32,
                request: request.clone(),
                read_revision,
            };
            match mux.call(req, deadline).await {
                Ok(resp) => {
                    match resp.error {
                        None => {
                            if range.leader_node != node {
                                self.set_leader(range.desc.id, node);
                            }
                            return Ok(resp.response);
                        }
                        Some(e) => {
                            crate::metrics::retry_route_error(e.kind);
                            if require_leader
                                && e.kind == RouteErrorKind::NotLeader as i32
                                && e.leader_node == 0
                            {
                                return Err(errors::no_leader());
                            }
                            let backoff = self.on_route_error(range.desc.id, &e).await;
                            let stale = e.kind == RouteErrorKind::EpochNotMatch as i32
                                || e.kind == RouteErrorKind::RangeNotFound as i32;
                            if stale {
                                // The range changed shape: the caller re-resolves.
                                return Err(stale_range());
                            }
                            if retry == Retry::Prepare
                                && e.kind == RouteErrorKind::ServerBusy as i32
                            {
                                return Err(busy_range());
                            }
                            tokio::time::sleep(backoff).await;
                            range = self.cached(range.desc.id).unwrap_or(range);
                            if e.kind == RouteErrorKind::NotLeader as i32 {
                                range.leader_node = e.leader_node;
                            }
                        }
                    }
                }
                Err(s) => {
                    let retryable = match retry {
                        Retry::Read => s.code() == Code::Unavailable || connect_failure(&s),
                        Retry::Write | Retry::Prepare => connect_failure(&s),
                    };
                    if !retryable {
                        // A broken connection is not the client's error: report
                        // it the way etcd reports a lost request.
                        if !s.message().starts_with("etcdserver")
                            && s.code() == Code::ResourceExhausted
                        {
                            return Err(errors::timeout());
                        }
                        return Err(s);
                    }
                    crate::metrics::retry("node_unavailable");
                    last_err = s;
                    // No replica of the range reachable: no leader either.
                    unreachable.insert(node);
                    if require_leader
                        && range
                            .desc
                            .peers
                            .iter()
                            .all(|p| unreachable.contains(&p.node_id))
                    {
                        return Err(errors::no_leader());
                    }
                    // That node is unreachable: forget it as leader, try others.
                    if range.leader_node == node {
                        range.leader_node = 0;
                        self.set_leader(range.desc.id, 0);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        if last_err.message().starts_with("etcdserver") {
            Err(last_err)
        } else {
            Err(errors::timeout())
        }
    }
}

#[cfg(test)]
mod tests;
