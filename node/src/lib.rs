//! strata-node: hosts range replicas. See ARCHITECTURE.md for the map.
//!
//! - `storage`: the storage engine trait (RocksDB, in-memory) and write batches;
//! - `engine`: raft log storage over it;
//! - `mvcc`: versioned keys in the `data` column family;
//! - `apply`: etcd request semantics over MVCC;
//! - `store`: the raft thread (batched Ready loop, one fsync per round);
//! - `sequencer`: per-range revision stamping (log order == revision order);
//! - `transport`: raft messages to other nodes (gRPC, or in memory for tests);
//! - `snapshot`: raft snapshots in transit (chunks, staging, crash-safe install);
//! - `service`: the node's gRPC API.

pub mod apply;
mod config;
pub mod cpu;
pub mod engine;
pub mod error;
pub mod failpoint;
pub mod lease;
pub mod metrics;
pub mod mvcc;
pub mod pressure;
pub mod range;
pub mod sequencer;
pub mod service;
pub mod snapshot;
pub mod space;
pub mod split_check;
pub mod storage;
pub mod store;
pub mod transport;
pub mod txn;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
pub use config::*;
use dashmap::DashMap;
use strata_proto::oracle::{placement_client, Oracle};
use strata_proto::strata::node_server::NodeServer;
use strata_proto::strata::{HeartbeatRequest, RangeReport, RegisterNodeRequest};
use tokio::sync::mpsc;

use crate::storage::{Cf, WriteBatch};
use crate::store::{Ranges, Store, StoreMsg};

const NODE_ID_KEY: &[u8] = b"node_id";
const HEARTBEAT_EVERY: Duration = Duration::from_millis(300);
/// Led ranges' stats are re-sent this often, when they changed.
const STATS_EVERY: Duration = Duration::from_secs(3);
/// Every led range is re-reported this often even when nothing changed (a
/// restarted placement relearns leaders and stats within this time).
const FULL_REPORT_EVERY: Duration = Duration::from_secs(30);

/// A running node.
pub struct NodeHandle {
    pub node_id: u64,
    pub addr: SocketAddr,
    /// The replicas' published state (for tests and tools in-process).
    pub ranges: Ranges,
    /// The raft thread's inbox (for tests in-process).
    pub store: mpsc::Sender<StoreMsg>,
}

impl Drop for NodeHandle {
    /// Stops the raft thread and waits (up to 10 s) until every replica is
    /// closed, so a node shutting down does not leave the process exiting
    /// under a raft thread still writing to RocksDB (which aborts the exit).
    /// A handle whose raft thread already stopped returns at once.
    fn drop(&mut self) {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut msg = StoreMsg::Stop(tx);
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.store.try_send(msg) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(mpsc::error::TrySendError::Full(m)) if std::time::Instant::now() < until => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(mpsc::error::TrySendError::Full(_)) => return,
            }
        }
        let _ = rx.recv_timeout(until.saturating_duration_since(std::time::Instant::now()));
    }
}

/// How a node's raft messages travel.
#[derive(Clone, Default)]
pub enum RaftNet {
    /// `Node.Raft` RPCs to the other nodes' addresses (production).
    #[default]
    Grpc,
    /// A test's in-memory network, with filters (see `transport::memory`).
    Memory(transport::memory::MemNetwork),
}

/// Starts a node: opens its RocksDB, registers with placement, starts the raft
/// thread and serves gRPC. Returns once the gRPC listener is bound.
pub async fn run(cfg: NodeConfig) -> anyhow::Result<NodeHandle> {
    run_with(cfg, RaftNet::Grpc).await
}

/// [`run`], with raft messages carried by `net`.
pub async fn run_with(cfg: NodeConfig, net: RaftNet) -> anyhow::Result<NodeHandle> {
    strata_proto::tls::set_internal(&cfg.peer_tls).map_err(anyhow::Error::msg)?;
    let telemetry = metrics::serve(cfg.metrics_addr).await?;
    let db = engine::open_db(&cfg.data_dir)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let mut placement =
        placement_client(&cfg.placement).map_err(|e| anyhow::anyhow!("{}", e.message()))?;

    // Identity: persisted on first registration, reused after restarts.
    let known_id = match db.get(Cf::Meta, NODE_ID_KEY)? {
        Some(b) => <[u8; 8]>::try_from(&b[..]).map_or(0, u64::from_be_bytes),
        None => 0,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let node_id = loop {
        let req = RegisterNodeRequest {
            node_id: known_id,
            addr: addr.to_string(),
        };
        match placement.register_node(req).await {
            Ok(r) => break r.into_inner().node_id,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::info!(
                    "waiting for placement at {}: {}",
                    cfg.placement,
                    e.message()
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => anyhow::bail!(
                "cannot register with placement at {}: {}",
                cfg.placement,
                e.message()
            ),
        }
    };
    if known_id == 0 {
        let mut wb = WriteBatch::new();
        wb.put(Cf::Meta, NODE_ID_KEY, node_id.to_be_bytes());
        db.write(&wb, false)?;
    }

    tracing::info!(node_id, %addr, "node registered");

    let addrs = Arc::new(DashMap::new());
    let transport: transport::SharedTransport = match &net {
        RaftNet::Grpc => Arc::new(transport::grpc::GrpcTransport::new(node_id, addrs.clone())),
        RaftNet::Memory(n) => n.transport(node_id),
    };
    let ranges: Ranges = Arc::new(DashMap::new());
    metrics::watch_state(db.clone(), ranges.clone());
    let (store_tx, store_rx) = mpsc::channel(store::INBOX_CAP);
    let mut store = Store::new(
        node_id,
        db.clone(),
        ranges.clone(),
        transport,
        Duration::from_millis(cfg.raft_tick_ms),
    );
    store.quiesce_after_ticks = cfg.quiesce_after_ticks;
    store.bcast_commit = cfg.raft_bcast_commit;
    store.log_keep_entries = cfg.raft_log_keep_entries;
    store.log_keep_bytes = cfg.raft_log_keep_bytes;
    store.set_inbox(&store_tx);
    let suspects = store.suspects();
    let snapshots = Arc::new(snapshot::SnapshotReceiver {
        db: db.clone(),
        ranges: ranges.clone(),
        store: store_tx.clone(),
        slots: snapshot::Slots::default(),
    });
    if let RaftNet::Memory(n) = &net {
        let inbox = store_tx.clone();
        n.register(
            node_id,
            Arc::new(move |env| {
                if failpoint::partitioned(node_id) {
                    return; // lost on the way
                }
                // Full inbox: drop, raft retransmits.
                let _ = inbox.try_send(StoreMsg::Raft(env));
            }),
        );
        let rx = snapshots.clone();
        n.register_snapshots(
            node_id,
            Arc::new(move |stream| {
                let rx = rx.clone();
                Box::pin(async move {
                    failpoint::refuse_while_partitioned(node_id)
                        .await
                        .map_err(|s| s.message().to_string())?;
                    rx.receive(stream)
                        .await
                        .map_err(|s| s.message().to_string())
                })
            }),
        );
    }
    store.load()?;
    let raft_cpu = store.raft_cpu.clone();
    std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || store.run(store_rx))?;

    // Ticks enter the inbox like any other message.
    let tick_tx = store_tx.clone();
    let tick_every = Duration::from_millis(cfg.raft_tick_ms.max(1));
    tokio::spawn(async move {
        let mut iv = tokio::time::interval(tick_every);
        loop {
            iv.tick().await;
            if tick_tx.is_closed() {
                return;
            }
            let _ = tick_tx.try_send(StoreMsg::Tick);
        }
    });

    let oracle = Oracle::new(placement.clone());
    let sequencers = sequencer::Sequencers {
        node_id,
        ranges: ranges.clone(),
        oracle: oracle.clone(),
        store: store_tx.clone(),
        by_range: Arc::new(DashMap::new()),
    };
    let space = space::Space::new(
        node_id,
        db.clone(),
        cfg.quota_backend_bytes,
        placement.clone(),
    );
    let svc = service::NodeService {
        node_id,
        ranges: ranges.clone(),
        store: store_tx.clone(),
        oracle,
        mvcc: mvcc::Mvcc::new(db.clone()),
        sequencers: sequencers.clone(),
        snapshots,
        placement: placement.clone(),
        space: space.clone(),
        pressure: pressure::WritePressure::new(node_id, db.clone()),
        db: db.clone(),
    };
    let lead_share = split_check::LeadShare::default();
    let checker = split_check::SplitChecker {
        ranges: ranges.clone(),
        mvcc: mvcc::Mvcc::new(db.clone()),
        placement: placement.clone(),
        sequencers,
        max_keys: cfg.range_split_keys.max(2),
        max_bytes: cfg.range_split_bytes.max(1024),
        max_write_rate: cfg.range_split_write_rate.max(0.0),
        lead_share: lead_share.clone(),
        raft_cpu,
    };
    tokio::spawn(checker.run());
    tokio::spawn(txn::resolver::run(
        ranges.clone(),
        svc.sequencers.clone(),
        placement.clone(),
    ));
    let server = tonic::transport::Server::builder()
        .layer(metrics::grpc_layer())
        .add_service(
            NodeServer::new(svc)
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(64 * 1024 * 1024),
        )
        .serve_with_incoming(strata_proto::tls::incoming(
            listener,
            strata_proto::tls::internal_server(),
        ));
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!("node gRPC server stopped: {e}");
        }
    });

    tokio::spawn(heartbeat(
        node_id,
        placement,
        ranges.clone(),
        addrs,
        store_tx.clone(),
        Told { space, lead_share },
        suspects,
    ));
    metrics::ready(&telemetry);
    Ok(NodeHandle {
        node_id,
        addr,
        ranges,
        store: store_tx,
    })
}

/// What heartbeat answers tell the rest of the node: the cluster's alarms,
/// and this node's share of the writes the nodes lead.
struct Told {
    space: Arc<space::Space>,
    lead_share: split_check::LeadShare,
}

/// Reports the ranges this node leads; learns node addresses and the ranges it
/// must host.
async fn heartbeat(
    node_id: u64,
    mut placement: strata_proto::oracle::PlacementConn,
    ranges: Ranges,
    addrs: Arc<DashMap<u64, String>>,
    store: mpsc::Sender<StoreMsg>,
    told: Told,
    suspects: store::Suspects,
) {
    let Told { space, lead_share } = told;
    let mut iv = tokio::time::interval(HEARTBEAT_EVERY);
    let mut last_writes: std::collections::HashMap<u64, (u64, std::time::Instant)> =
        Default::default();
    let mut sent: std::collections::HashMap<u64, (u64, u64, bool, u64)> = Default::default();
    // Per led range: (keys, bytes, writes) last reported, and whether the
    // reported write rate was non-zero (then a zero rate is still owed).
    let mut sent_stats: std::collections::HashMap<u64, ((u64, u64, u64), bool)> =
        Default::default();
    let mut last_stats = std::time::Instant::now() - STATS_EVERY;
    let mut last_full = std::time::Instant::now() - FULL_REPORT_EVERY;
    let mut last_down: Vec<u64> = Vec::new();
    loop {
        iv.tick().await;
        let now = std::time::Instant::now();
        // Only what changed since the last acknowledged heartbeat is reported
        // (a split, a membership change, a new leader or term), plus led
        // ranges whose stats changed every few seconds, plus everything now
        // and then: an idle node with thousands of ranges sends almost nothing.
        let full = last_full.elapsed() >= FULL_REPORT_EVERY;
        let stats_round = full || last_stats.elapsed() >= STATS_EVERY;
        let mut pending = Vec::new();
        let mut pending_stats = Vec::new();
        let leader_ranges = ranges
            .iter()
            .filter_map(|r| {
                let (id, e) = {
                    let d = r.desc.read();
                    (d.id, d.epoch.unwrap_or_default())
                };
                let leader = r.is_leader();
                let state = (
                    e.conf_ver,
                    e.version,
                    leader,
                    r.term.load(std::sync::atomic::Ordering::Acquire),
                );
                let stats = (
                    r.approx_keys.load(std::sync::atomic::Ordering::Relaxed),
                    r.approx_bytes.load(std::sync::atomic::Ordering::Relaxed),
                    r.writes.load(std::sync::atomic::Ordering::Relaxed),
                );
                let stats_due = leader
                    && (full
                        || (stats_round
                            && sent_stats
                                .get(&id)
                                .is_none_or(|(s, moving)| *s != stats || *moving)));
                if sent.get(&id) == Some(&state) && !stats_due {
                    return None;
                }
                pending.push((id, state));
                if leader {
                    pending_stats.push((id, stats));
                }
                // The report carries exactly the values recorded as sent.
                let (keys, bytes, writes) = stats;
                let (w0, t0) = last_writes
                    .insert(id, (writes, now))
                    .unwrap_or((writes, now));
                let secs = now.duration_since(t0).as_secs_f64();
                Some(RangeReport {
                    desc: Some(r.desc.read().clone()),
                    leader_node: if leader { node_id } else { 0 },
                    term: state.3,
                    stats: leader.then(|| strata_proto::strata::RangeStats {
                        approx_keys: keys,
                        approx_bytes: bytes,
                        writes_per_sec: if secs > 0.0 {
                            (writes - w0) as f64 / secs
                        } else {
                            0.0
                        },
                    }),
                })
            })
            .collect();
        // The full report lists every initialized replica (`ranges` holds
        // only those): placement learns what this node does not host.
        let hosted_range_ids = if full {
            ranges.iter().map(|r| *r.key()).collect()
        } else {
            Vec::new()
        };
        // Replicas whose span kept a snapshot out, or whose range sent to a
        // newer peer of this node, since the last heartbeat (see
        // `store/gc.rs`); asked about again if that happens again.
        let check_range_ids: Vec<u64> = std::mem::take(&mut *suspects.lock())
            .into_iter()
            .filter(|id| ranges.contains_key(id))
            .collect();
        let mut req = tonic::Request::new(HeartbeatRequest {
            node_id,
            leader_ranges,
            full_report: full,
            hosted_range_ids,
            check_range_ids,
        });
        req.set_timeout(Duration::from_secs(2));
        let answer = match failpoint::placement_reachable(node_id).await {
            Ok(()) => placement.heartbeat(req).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(resp) => {
                sent.extend(pending);
                for (id, stats) in pending_stats {
                    // The rate just reported is non-zero iff writes moved.
                    let moving = sent_stats.get(&id).is_none_or(|(s, _)| s.2 != stats.2);
                    sent_stats.insert(id, (stats, moving));
                }
                if full {
                    last_full = now;
                    // Forget ranges no longer here (split away, moved, removed).
                    sent.retain(|id, _| ranges.contains_key(id));
                    sent_stats.retain(|id, _| ranges.contains_key(id));
                    last_writes.retain(|id, _| ranges.contains_key(id));
                }
                if stats_round {
                    last_stats = now;
                }
                let resp = resp.into_inner();
                space.learn(&resp.alarms);
                lead_share.set(resp.leader_writes_per_sec, resp.mean_leader_writes_per_sec);
                let down: Vec<u64> = resp.nodes.iter().filter(|n| !n.up).map(|n| n.id).collect();
                for n in resp.nodes {
                    addrs.insert(n.id, n.addr);
                }
                // Only news: quiesced followers of a leader on a down node
                // wake on the first report.
                if down != last_down && store.try_send(StoreMsg::NodesDown(down.clone())).is_ok() {
                    last_down = down;
                }
                // Replicas here asked about, or that placement's directory
                // does not place here: the store destroys those removed from
                // their range.
                for d in resp.checked {
                    if store.send(StoreMsg::Checked(d)).await.is_err() {
                        return;
                    }
                }
                for d in resp.ranges {
                    // Ranges that list this node but that it did not report
                    // hosting: the first range at bootstrap, learners being
                    // added, and ranges whose split this node never applied
                    // (it caught up past it by a snapshot). The store creates
                    // the replica, uninitialized unless bootstrapping (see
                    // `store/catchup.rs`), and ignores one it already has.
                    let listed = d.peers.iter().any(|p| p.node_id == node_id);
                    if listed
                        && !ranges.contains_key(&d.id)
                        && store.send(StoreMsg::Create(d)).await.is_err()
                    {
                        return;
                    }
                }
            }
            Err(e) => tracing::debug!("heartbeat failed: {}", e.message()),
        }
    }
}
