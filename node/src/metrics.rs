//! The node's Prometheus metrics (`strata_node_*`); served with the process metrics
//! and `strata_build_info` by `strata_proto::telemetry` on `--metrics-addr`. The
//! oracle client's `strata_oracle_client_*` metrics come from `strata_proto`.
//!
//! Gauges that describe live state (ranges and leaders hosted, RocksDB sizes) are
//! computed at scrape time by a hook (see [`serve`]); counters and histograms are
//! updated where things happen (one line at each call site).

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use strata_proto::telemetry::{byte_buckets, count_buckets, GaugeGuard, LATENCY_BUCKETS};

use crate::range::Ranges;
use crate::storage::{Cf, Engine, Property};

macro_rules! counter {
    ($name:ident, $metric:literal, $help:literal) => {
        pub static $name: LazyLock<IntCounter> =
            LazyLock::new(|| register_int_counter!($metric, $help).expect("register"));
    };
}

macro_rules! gauge {
    ($name:ident, $metric:literal, $help:literal) => {
        pub static $name: LazyLock<IntGauge> =
            LazyLock::new(|| register_int_gauge!($metric, $help).expect("register"));
    };
}

macro_rules! histogram {
    ($name:ident, $metric:literal, $help:literal, $buckets:expr) => {
        pub static $name: LazyLock<Histogram> =
            LazyLock::new(|| register_histogram!($metric, $help, $buckets).expect("register"));
    };
}

// --- proposals -------------------------------------------------------------------

counter!(
    PROPOSALS,
    "strata_node_proposals_total",
    "Commands proposed to raft by range leaders on this node."
);

pub static PROPOSALS_REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "strata_node_proposals_rejected_total",
        "Proposals refused before raft, by reason (not_leader, stale_term, busy, dropped, engine_busy).",
        &["reason"]
    )
    .expect("register")
});

/// Counts a proposal refused for `reason` (`not_leader`, `stale_term`, `busy`, `dropped`,
/// `engine_busy`: storage close to stalling, see `crate::pressure`).
pub fn proposal_rejected(reason: &'static str) {
    PROPOSALS_REJECTED.with_label_values(&[reason]).inc();
}

pub static TXN_RESOLVED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "strata_node_txn_resolved_total",
        "Cross-range txns this node's range leaders resolved after their coordinator went away, by outcome (commit, abort).",
        &["outcome"]
    )
    .expect("register")
});

/// Counts a txn resolved here (see `txn/resolver.rs`).
pub fn txn_resolved(commit: bool) {
    let outcome = if commit { "commit" } else { "abort" };
    TXN_RESOLVED.with_label_values(&[outcome]).inc();
}

gauge!(
    PROPOSALS_PENDING,
    "strata_node_proposals_pending",
    "Proposals waiting to be committed and applied, over all leaders on this node."
);

// --- the Ready loop ----------------------------------------------------------------

histogram!(
    READY_ENTRIES,
    "strata_node_raft_ready_entries",
    "Log entries appended per Ready round (all ranges); the count is the number of rounds.",
    count_buckets()
);

histogram!(
    READY_BYTES,
    "strata_node_raft_ready_bytes",
    "Bytes written (log entries and hard states) per Ready round, in one write batch.",
    byte_buckets()
);

histogram!(
    READY_RANGES,
    "strata_node_raft_ready_ranges",
    "Replicas with a Ready per round (how many ranges share one fsync).",
    count_buckets()
);

histogram!(
    WAL_FSYNC,
    "strata_node_wal_fsync_duration_seconds",
    "Time to write and fsync one Ready round's batch to the RocksDB WAL (rounds that only moved commit indexes are written without fsync and not counted).",
    LATENCY_BUCKETS.to_vec()
);

histogram!(
    APPLY,
    "strata_node_apply_duration_seconds",
    "Time to apply one replica's batch of committed entries to the state machine.",
    LATENCY_BUCKETS.to_vec()
);

counter!(
    APPLIED_ENTRIES,
    "strata_node_applied_entries_total",
    "Committed raft entries applied (every replica counts its own)."
);

gauge!(
    SATURATED,
    "strata_node_saturated",
    "1 while this node has used at least 80% of the CPU it may use (cgroup quota, else every CPU), or its raft thread 80% of one CPU, for a second."
);

counter!(
    SATURATION_SPLITS,
    "strata_node_saturation_splits_total",
    "Splits of a node's hottest range because the node was saturated (see strata_node_saturated)."
);

counter!(
    APPLY_WRITES,
    "strata_node_apply_writes_total",
    "Storage writes of applied entries: consecutive Puts on distinct keys share one."
);

// --- raft transport --------------------------------------------------------------

counter!(
    RAFT_SENT,
    "strata_node_raft_messages_sent_total",
    "Raft messages queued for other nodes."
);
counter!(
    RAFT_SENT_BYTES,
    "strata_node_raft_sent_bytes_total",
    "Bytes of raft messages queued for other nodes."
);
counter!(
    RAFT_DROPPED,
    "strata_node_raft_messages_dropped_total",
    "Raft messages dropped on the way out (queue full or peer address unknown or \
     unreachable); raft retransmits."
);
counter!(
    RAFT_RECEIVED,
    "strata_node_raft_messages_received_total",
    "Raft messages received from other nodes."
);
counter!(
    RAFT_RECEIVED_BYTES,
    "strata_node_raft_received_bytes_total",
    "Bytes of raft messages received from other nodes."
);

// --- leadership, snapshots, splits -----------------------------------------------

counter!(
    LEADER_CHANGES,
    "strata_node_leader_changes_total",
    "Leader changes seen by the replicas on this node (a new, known leader)."
);
counter!(
    SNAPSHOTS_SENT,
    "strata_node_snapshots_sent_total",
    "Raft snapshots sent to followers."
);
counter!(
    SNAPSHOTS_APPLIED,
    "strata_node_snapshots_applied_total",
    "Raft snapshots applied by replicas on this node."
);
counter!(
    SNAPSHOT_SENT_BYTES,
    "strata_node_snapshot_sent_bytes_total",
    "Bytes of MVCC data streamed in snapshot transfers to other nodes."
);
counter!(
    SNAPSHOT_RECEIVED_BYTES,
    "strata_node_snapshot_received_bytes_total",
    "Bytes of MVCC data received and staged in snapshot transfers."
);
counter!(
    SNAPSHOT_SEND_FAILURES,
    "strata_node_snapshot_send_failures_total",
    "Snapshot transfers to other nodes that failed (raft sends another)."
);
counter!(
    SNAPSHOT_RECEIVE_FAILURES,
    "strata_node_snapshot_receive_failures_total",
    "Snapshot transfers from other nodes that were refused or broke off."
);
counter!(
    REVISION_ORDER_REFUSED,
    "strata_node_revision_order_refused_total",
    "Committed writes refused at apply because their revision was not above the range's applied revision (a protocol violation caught; never expected to move)."
);
counter!(
    BAD_ENTRIES,
    "strata_node_bad_entries_total",
    "Committed entries or received snapshots that did not decode or were invalid (applied as errors or dropped)."
);
counter!(
    SPLITS,
    "strata_node_splits_total",
    "Range splits applied by replicas on this node."
);

gauge!(
    RANGES,
    "strata_node_ranges",
    "Range replicas hosted on this node."
);
gauge!(
    LEADERS,
    "strata_node_range_leaders",
    "Ranges whose leader replica is on this node."
);
gauge!(
    NO_LEADER,
    "strata_node_ranges_without_leader",
    "Replicas on this node that know no leader for their range (election running)."
);

// --- closed revisions, feeds -------------------------------------------------------

histogram!(
    CLOSED_LAG,
    "strata_node_closed_revision_lag_seconds",
    "Age of a range's closed revision when published: time from reading the oracle's \
     current revision to confirming it closed (range feed checkpoints).",
    LATENCY_BUCKETS.to_vec()
);

gauge!(
    FEEDS,
    "strata_node_range_feeds",
    "Open range feeds (watch streams from routers)."
);

/// Counts an open range feed until dropped.
pub fn feed() -> GaugeGuard {
    GaugeGuard::new(&FEEDS)
}

// --- RocksDB -----------------------------------------------------------------------

pub static ROCKSDB_SST_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "strata_node_rocksdb_sst_bytes",
        "Size of all SST and blob files of a RocksDB column family (rocksdb.total-sst-files-size + rocksdb.total-blob-file-size).",
        &["cf"]
    )
    .expect("register")
});

pub static ROCKSDB_MEMTABLE_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "strata_node_rocksdb_memtable_bytes",
        "Size of the memtables of a RocksDB column family (rocksdb.cur-size-all-mem-tables).",
        &["cf"]
    )
    .expect("register")
});

pub static ROCKSDB_LIVE_DATA_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "strata_node_rocksdb_live_data_bytes",
        "Estimated live data of a RocksDB column family (rocksdb.estimate-live-data-size + rocksdb.live-blob-file-size).",
        &["cf"]
    )
    .expect("register")
});

pub static ROCKSDB_LEVEL0_FILES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "strata_node_rocksdb_level0_files",
        format!(
            "Level-0 files of a RocksDB column family (rocksdb.num-files-at-level0); writes are refused as busy from {}, RocksDB slows them at {}.",
            crate::pressure::BUSY_LEVEL0_FILES,
            crate::storage::L0_SLOWDOWN_FILES
        ),
        &["cf"]
    )
    .expect("register")
});

pub static ROCKSDB_PENDING_COMPACTION_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "strata_node_rocksdb_pending_compaction_bytes",
        format!(
            "Bytes compaction estimates it must rewrite in a RocksDB column family (rocksdb.estimate-pending-compaction-bytes); writes are refused as busy from {} GiB.",
            crate::pressure::BUSY_PENDING_COMPACTION_BYTES >> 30
        ),
        &["cf"]
    )
    .expect("register")
});

pub static ROCKSDB_KEYS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "strata_node_rocksdb_estimated_keys",
        "Estimated keys in a RocksDB column family (rocksdb.estimate-num-keys).",
        &["cf"]
    )
    .expect("register")
});

/// Records one Ready round: entries appended, replicas in it, bytes in its batch.
pub fn ready_round(entries: usize, replicas: usize, bytes: usize) {
    READY_ENTRIES.observe(entries as f64);
    READY_RANGES.observe(replicas as f64);
    READY_BYTES.observe(bytes as f64);
}

/// Times the apply of a batch of `entries` committed entries (nothing when empty).
pub fn applying(entries: usize) -> Option<prometheus::HistogramTimer> {
    if entries == 0 {
        return None;
    }
    APPLIED_ENTRIES.inc_by(entries as u64);
    Some(APPLY.start_timer())
}

/// Counts a leader change when a replica learns of a new, known leader.
pub fn leader_seen(shared: &crate::range::RangeShared, leader_peer: u64) {
    if leader_peer != 0 && leader_peer != shared.leader_peer.load(Ordering::Acquire) {
        LEADER_CHANGES.inc();
    }
}

/// Looks at a raft message about to be sent (counts snapshots).
pub fn sending(m: &raft::eraftpb::Message) {
    if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
        SNAPSHOTS_SENT.inc();
    }
}

/// Counts a raft message queued for another node (`queued`) or dropped.
pub fn raft_out(bytes: usize, queued: bool) {
    if queued {
        RAFT_SENT.inc();
        RAFT_SENT_BYTES.inc_by(bytes as u64);
    } else {
        RAFT_DROPPED.inc();
    }
}

/// Counts a raft message received from another node.
pub fn raft_in(bytes: usize) {
    RAFT_RECEIVED.inc();
    RAFT_RECEIVED_BYTES.inc_by(bytes as u64);
}

/// The node's internal gRPC methods (called by routers, placement and other nodes).
pub static NODE_METHODS: &[strata_proto::telemetry::GrpcMethod] = &[
    ("strata.Node", "Raft", false),
    ("strata.Node", "RaftStream", true),
    ("strata.Node", "Snapshot", true),
    ("strata.Node", "Kv", false),
    ("strata.Node", "KvStream", true),
    ("strata.Node", "Feed", true),
    ("strata.Node", "Status", false),
];

/// `strata_node_grpc_requests_total{service,method,code}` and
/// `strata_node_grpc_request_duration_seconds{service,method}`.
pub fn grpc_layer() -> strata_proto::telemetry::GrpcMetricsLayer {
    static LAYER: LazyLock<strata_proto::telemetry::GrpcMetricsLayer> = LazyLock::new(|| {
        strata_proto::telemetry::GrpcMetricsLayer::new(
            "strata_node",
            "from routers, placement and other nodes",
            NODE_METHODS,
        )
    });
    LAYER.clone()
}

/// Registers every node metric (so all appear from the first scrape).
pub fn init() {
    grpc_layer();
    for c in [
        &PROPOSALS,
        &APPLIED_ENTRIES,
        &APPLY_WRITES,
        &SATURATION_SPLITS,
        &RAFT_SENT,
        &RAFT_SENT_BYTES,
        &RAFT_DROPPED,
        &RAFT_RECEIVED,
        &RAFT_RECEIVED_BYTES,
        &LEADER_CHANGES,
        &SNAPSHOTS_SENT,
        &SNAPSHOTS_APPLIED,
        &SNAPSHOT_SENT_BYTES,
        &SNAPSHOT_RECEIVED_BYTES,
        &SNAPSHOT_SEND_FAILURES,
        &SNAPSHOT_RECEIVE_FAILURES,
        &REVISION_ORDER_REFUSED,
        &BAD_ENTRIES,
        &SPLITS,
    ] {
        LazyLock::force(c);
    }
    for g in [
        &SATURATED,
        &PROPOSALS_PENDING,
        &RANGES,
        &LEADERS,
        &NO_LEADER,
        &FEEDS,
    ] {
        LazyLock::force(g);
    }
    for h in [
        &READY_ENTRIES,
        &READY_BYTES,
        &READY_RANGES,
        &WAL_FSYNC,
        &APPLY,
        &CLOSED_LAG,
    ] {
        LazyLock::force(h);
    }
    for r in ["not_leader", "busy", "dropped"] {
        PROPOSALS_REJECTED.with_label_values(&[r]);
    }
    for v in [
        &ROCKSDB_SST_BYTES,
        &ROCKSDB_MEMTABLE_BYTES,
        &ROCKSDB_LIVE_DATA_BYTES,
        &ROCKSDB_KEYS,
    ] {
        LazyLock::force(v);
    }
}

/// Refreshes the gauges computed from live state (runs before each scrape).
fn refresh(db: &dyn Engine, ranges: &Ranges) {
    let (mut hosted, mut leaders, mut leaderless) = (0, 0, 0);
    for r in ranges.iter() {
        hosted += 1;
        match r.leader_peer.load(Ordering::Acquire) {
            0 => leaderless += 1,
            l if l == r.peer_id => leaders += 1,
            _ => {}
        }
    }
    RANGES.set(hosted);
    LEADERS.set(leaders);
    NO_LEADER.set(leaderless);
    // An engine without a statistic leaves its gauge out.
    for cf in Cf::ALL {
        let sets: [(&IntGaugeVec, Property); 6] = [
            (&ROCKSDB_SST_BYTES, Property::SstBytes),
            (&ROCKSDB_MEMTABLE_BYTES, Property::MemtableBytes),
            (&ROCKSDB_LIVE_DATA_BYTES, Property::LiveDataBytes),
            (&ROCKSDB_KEYS, Property::EstimatedKeys),
            (&ROCKSDB_LEVEL0_FILES, Property::Level0Files),
            (
                &ROCKSDB_PENDING_COMPACTION_BYTES,
                Property::PendingCompactionBytes,
            ),
        ];
        for (g, p) in sets {
            if let Some(v) = db.property(cf, p) {
                g.with_label_values(&[cf.name()])
                    .set(v.min(i64::MAX as u64) as i64);
            }
        }
    }
}

/// Registers the metrics and, when `addr` is set, serves `/metrics`, `/health` and
/// `/ready` on it (`/ready` answers 503 until [`ready`]).
pub async fn serve(
    addr: Option<std::net::SocketAddr>,
) -> anyhow::Result<Option<strata_proto::telemetry::Telemetry>> {
    init();
    let tls = strata_proto::tls::internal_metrics_server();
    Ok(match addr {
        Some(a) => Some(strata_proto::telemetry::serve(a, "node", tls).await?),
        None => None,
    })
}

/// Computes the live-state gauges from `db` and `ranges` at every scrape (for as
/// long as the node keeps them: only weak references are held).
pub fn watch_state(db: Arc<dyn Engine>, ranges: Ranges) {
    let (db, ranges) = (Arc::downgrade(&db), Arc::downgrade(&ranges));
    strata_proto::telemetry::on_scrape(move || {
        if let (Some(db), Some(ranges)) = (db.upgrade(), ranges.upgrade()) {
            refresh(&*db, &ranges);
        }
    });
}

/// Makes `/ready` answer 200.
pub fn ready(t: &Option<strata_proto::telemetry::Telemetry>) {
    if let Some(t) = t {
        t.set_ready(true);
    }
}
