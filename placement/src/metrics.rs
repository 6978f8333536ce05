//! Placement's Prometheus metrics (`strata_placement_*`); served with the process
//! metrics and `strata_build_info` by `strata_proto::telemetry` on `--metrics-addr`.
//!
//! Gauges describing the cluster (nodes by state, ranges, under-replicated and
//! leaderless ranges, leases, revisions) are computed from placement's state at
//! scrape time (see [`watch_state`]); oracle counters are updated as it allocates.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use strata_proto::telemetry::{GrpcMethod, GrpcMetricsLayer, Telemetry};

use crate::service::PlacementService;

/// A node that has not heartbeated for this long counts as down (as in `nodes()`
/// of the service, which routers and nodes see).
pub const NODE_DOWN_AFTER: Duration = Duration::from_secs(5);

pub static NODES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "strata_placement_nodes",
        "Registered storage nodes by state: up (heartbeat within 5 s) or down.",
        &["state"]
    )
    .expect("register")
});

pub static RANGES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("strata_placement_ranges", "Ranges in the range directory.")
        .expect("register")
});

pub static UNDER_REPLICATED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "strata_placement_ranges_under_replicated",
        "Ranges with fewer voting replicas on up nodes than the replication factor."
    )
    .expect("register")
});

pub static UNAVAILABLE: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "strata_placement_ranges_unavailable",
        "Ranges without a quorum (majority) of their voting replicas on up nodes."
    )
    .expect("register")
});

pub static LEADERLESS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "strata_placement_ranges_without_leader",
        "Ranges with no leader reported, or whose reported leader's node is down."
    )
    .expect("register")
});

pub static REPLICAS_MISSING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "strata_placement_replicas_missing",
        "Voting replicas that a range descriptor lists on an up node which has not reported \
         hosting them for over 2 s: phantom voters, counted in their range's quorum but holding \
         nothing. The node is told to create them; the scheduler replaces those it does not."
    )
    .expect("register")
});

pub static REPLICATION_FACTOR: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "strata_placement_replication_factor",
        "Replicas each range should have (--replicas)."
    )
    .expect("register")
});

pub static LEASES: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("strata_placement_leases", "Granted, unexpired leases.").expect("register")
});

pub static TXN_RECORDS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "strata_placement_txn_records",
        "Cross-range txn decision records kept (each until every participant range applied \
         it; past 100,000 new decisions are refused)."
    )
    .expect("register")
});

pub static REVISION: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "strata_placement_oracle_revision",
        "Highest revision the oracle has handed out (the cluster's current revision)."
    )
    .expect("register")
});

pub static COMPACTED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "strata_placement_compacted_revision",
        "Revision of the last compaction (0 if none)."
    )
    .expect("register")
});

pub static ALLOCATIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "strata_placement_oracle_allocations_total",
        "Alloc requests served by the oracle (each one a batch from a node or router)."
    )
    .expect("register")
});

pub static REVISIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "strata_placement_oracle_revisions_total",
        "Revisions handed out by the oracle (one per write transaction)."
    )
    .expect("register")
});

pub static BATCH_SIZE: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "strata_placement_oracle_batch_size",
        "Revisions asked for per Alloc request (0: a read asking for the current revision).",
        std::iter::once(0.0)
            .chain(strata_proto::telemetry::count_buckets())
            .collect()
    )
    .expect("register")
});

pub static ALLOC_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "strata_placement_oracle_alloc_duration_seconds",
        "Time placement takes to answer one Alloc request (a window persisted through \
         the raft log included, when one is).",
        prometheus::exponential_buckets(0.000_05, 2.0, 16).expect("buckets")
    )
    .expect("register")
});

pub static LEADER_CHANGES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "strata_placement_leader_changes_total",
        "Times this placement replica became the serving leader."
    )
    .expect("register")
});

pub static IS_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "strata_placement_is_leader",
        "1 while this placement replica is the serving leader (leads, holds its lease), else 0."
    )
    .expect("register")
});

pub static HAS_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "strata_placement_has_leader",
        "1 while this placement replica knows a leader of its raft group, else 0."
    )
    .expect("register")
});

pub static MEMBERS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "strata_placement_members",
        "Members of placement's raft group as this replica sees them, by role (voter, learner).",
        &["role"]
    )
    .expect("register")
});

pub static CHECKPOINTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "strata_placement_state_checkpoints_total",
        "Placement state checkpoints written (each lets the raft log be truncated)."
    )
    .expect("register")
});

pub static WINDOWS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "strata_placement_oracle_windows_persisted_total",
        "Oracle high-water windows persisted through placement's raft log."
    )
    .expect("register")
});

/// Scheduler operators (see `operator.rs`) by kind and outcome.
pub static OPERATORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "strata_placement_operators_total",
        "Scheduler operators carried out, by kind (add_learner, remove_replica, \
         transfer_leader) and outcome (success, failure).",
        &["kind", "outcome"]
    )
    .expect("register")
});

/// Operator kinds as labelled in `strata_placement_operators_total`.
pub const OPERATOR_KINDS: &[&str] = &["add_learner", "remove_replica", "transfer_leader"];

/// Runs one scheduler operator and counts it by kind and outcome.
pub async fn operator<T, E>(
    op: &crate::scheduler::Op,
    run: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    use crate::scheduler::Op;
    let kind = match op {
        Op::AddLearner { .. } => "add_learner",
        Op::RemovePeer { .. } => "remove_replica",
        Op::TransferLeader { .. } => "transfer_leader",
    };
    let result = run.await;
    let outcome = if result.is_ok() { "success" } else { "failure" };
    OPERATORS.with_label_values(&[kind, outcome]).inc();
    result
}

/// Counts one oracle allocation of `count` revisions, after which `next` is the
/// next revision to hand out.
pub fn alloc(count: i64, next: i64, began: std::time::Instant) {
    ALLOC_SECONDS.observe(began.elapsed().as_secs_f64());
    ALLOCATIONS.inc();
    REVISIONS.inc_by(count.max(0) as u64);
    BATCH_SIZE.observe(count as f64);
    REVISION.set(next - 1);
}

/// Placement's gRPC methods (called by nodes and routers).
pub static PLACEMENT_METHODS: &[GrpcMethod] = &[
    ("strata.Placement", "RegisterNode", false),
    ("strata.Placement", "Heartbeat", false),
    ("strata.Placement", "GetRanges", false),
    ("strata.Placement", "Alloc", false),
    ("strata.Placement", "AllocIds", false),
    ("strata.Placement", "Compact", false),
    ("strata.Placement", "LeaseGrant", false),
    ("strata.Placement", "LeaseRevoke", false),
    ("strata.Placement", "LeaseKeepAlive", false),
    ("strata.Placement", "LeaseTimeToLive", false),
    ("strata.Placement", "LeaseList", false),
    ("strata.Placement", "Raft", true),
    ("strata.Placement", "Members", false),
    ("strata.Placement", "AddMember", false),
    ("strata.Placement", "RemoveMember", false),
    ("strata.Placement", "RouterHeartbeat", false),
    ("strata.Placement", "ListRouters", false),
];

/// `strata_placement_grpc_requests_total{service,method,code}` and
/// `strata_placement_grpc_request_duration_seconds{service,method}`.
pub fn grpc_layer() -> GrpcMetricsLayer {
    static LAYER: LazyLock<GrpcMetricsLayer> = LazyLock::new(|| {
        GrpcMetricsLayer::new(
            "strata_placement",
            "from nodes and routers",
            PLACEMENT_METHODS,
        )
    });
    LAYER.clone()
}

/// The gauges computed from the leader's view of the cluster.
static CLUSTER_GAUGES: [&LazyLock<IntGauge>; 5] = [
    &RANGES,
    &UNDER_REPLICATED,
    &UNAVAILABLE,
    &LEADERLESS,
    &REPLICAS_MISSING,
];

/// Registers every placement metric (so all appear from the first scrape).
pub fn init() {
    grpc_layer();
    for s in ["up", "down"] {
        NODES.with_label_values(&[s]);
    }
    for g in CLUSTER_GAUGES.into_iter().chain([
        &REPLICATION_FACTOR,
        &LEASES,
        &TXN_RECORDS,
        &REVISION,
        &COMPACTED,
    ]) {
        LazyLock::force(g);
    }
    for c in [
        &ALLOCATIONS,
        &REVISIONS,
        &WINDOWS,
        &LEADER_CHANGES,
        &CHECKPOINTS,
    ] {
        LazyLock::force(c);
    }
    for g in [&IS_LEADER, &HAS_LEADER] {
        LazyLock::force(g);
    }
    for role in ["voter", "learner"] {
        MEMBERS.with_label_values(&[role]);
    }
    LazyLock::force(&BATCH_SIZE);
    LazyLock::force(&ALLOC_SECONDS);
    for kind in OPERATOR_KINDS {
        for outcome in ["success", "failure"] {
            OPERATORS.with_label_values(&[kind, outcome]);
        }
    }
}

/// Refreshes the gauges computed from placement's state (runs before each scrape).
fn refresh(svc: &PlacementService) {
    let serving = svc.serving().is_ok();
    let lead = svc.rep.leadership();
    IS_LEADER.set(serving as i64);
    HAS_LEADER.set((lead.leader_id != 0) as i64);
    MEMBERS
        .with_label_values(&["voter"])
        .set(lead.voters as i64);
    MEMBERS
        .with_label_values(&["learner"])
        .set(lead.learners as i64);
    if !serving {
        // The cluster gauges come from the leader's view (followers hold no
        // heartbeats): 0 here, so sums and maxima over replicas stay right.
        for g in CLUSTER_GAUGES {
            g.set(0);
        }
        NODES.with_label_values(&["up"]).set(0);
        NODES.with_label_values(&["down"]).set(0);
        return;
    }
    let up = svc.up_nodes();
    let leaders: std::collections::HashMap<u64, u64> = svc
        .leaders
        .lock()
        .iter()
        .map(|(range, h)| (*range, h.node))
        .collect();
    let factor = svc.replicas;
    let st = svc.rep.state();
    let nodes_up = st.nodes.keys().filter(|n| up.contains(n)).count();
    NODES.with_label_values(&["up"]).set(nodes_up as i64);
    NODES
        .with_label_values(&["down"])
        .set((st.nodes.len() - nodes_up) as i64);
    let (mut under, mut unavailable, mut leaderless) = (0, 0, 0);
    for r in st.ranges.values() {
        // Voters only: a learner being added does not count yet.
        let voters: Vec<u64> = r
            .peers
            .iter()
            .filter(|(peer, _)| !r.learners.contains(peer))
            .map(|(_, node)| *node)
            .collect();
        let live = voters.iter().filter(|node| up.contains(node)).count();
        if live < factor.max(1) {
            under += 1;
        }
        if live <= voters.len() / 2 {
            unavailable += 1;
        }
        match leaders.get(&r.id) {
            Some(&n) if n != 0 && up.contains(&n) => {}
            _ => leaderless += 1,
        }
    }
    let missing = svc
        .hosting
        .lock()
        .missing(std::time::Instant::now(), |n| up.contains(&n));
    REPLICAS_MISSING.set(missing as i64);
    RANGES.set(st.ranges.len() as i64);
    UNDER_REPLICATED.set(under);
    UNAVAILABLE.set(unavailable);
    LEADERLESS.set(leaderless);
    REPLICATION_FACTOR.set(factor as i64);
    LEASES.set(st.leases.len() as i64);
    TXN_RECORDS.set(st.txns.len() as i64);
    COMPACTED.set(st.compacted);
}

/// Registers the metrics and, when `addr` is set, serves `/metrics`, `/health` and
/// `/ready` on it (`/ready` answers 503 until [`ready`]).
pub async fn serve(addr: Option<std::net::SocketAddr>) -> anyhow::Result<Option<Telemetry>> {
    init();
    let tls = strata_proto::tls::internal_metrics_server();
    Ok(match addr {
        Some(a) => Some(strata_proto::telemetry::serve(a, "placement", tls).await?),
        None => None,
    })
}

/// Computes the cluster gauges from `svc` at every scrape (for as long as it lives:
/// only a weak reference is held).
pub fn watch_state(svc: Arc<PlacementService>) {
    let svc = Arc::downgrade(&svc);
    strata_proto::telemetry::on_scrape(move || {
        if let Some(svc) = svc.upgrade() {
            refresh(&svc);
        }
    });
}

/// Makes `/ready` answer 200.
pub fn ready(t: &Option<Telemetry>) {
    if let Some(t) = t {
        t.set_ready(true);
    }
}
