//! The router's Prometheus metrics (`strata_router_*`); served with the process
//! metrics and `strata_build_info` by `strata_proto::telemetry` on `--metrics-addr`.
//! The oracle client's `strata_oracle_client_*` metrics come from `strata_proto`.

use std::sync::LazyLock;

use prometheus::{register_int_counter, register_int_counter_vec, register_int_gauge};
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use strata_proto::telemetry::{GaugeGuard, GrpcMethod, GrpcMetricsLayer};

/// Every etcd v3 gRPC method, with whether it streams; other paths are counted as
/// `unknown` (label values stay bounded whatever clients send).
pub static ETCD_METHODS: &[GrpcMethod] = &[
    ("etcdserverpb.KV", "Range", false),
    ("etcdserverpb.KV", "Put", false),
    ("etcdserverpb.KV", "DeleteRange", false),
    ("etcdserverpb.KV", "Txn", false),
    ("etcdserverpb.KV", "Compact", false),
    ("etcdserverpb.KV", "RangeStream", true),
    ("etcdserverpb.Watch", "Watch", true),
    ("etcdserverpb.Lease", "LeaseGrant", false),
    ("etcdserverpb.Lease", "LeaseRevoke", false),
    ("etcdserverpb.Lease", "LeaseKeepAlive", true),
    ("etcdserverpb.Lease", "LeaseTimeToLive", false),
    ("etcdserverpb.Lease", "LeaseLeases", false),
    ("etcdserverpb.Cluster", "MemberAdd", false),
    ("etcdserverpb.Cluster", "MemberRemove", false),
    ("etcdserverpb.Cluster", "MemberUpdate", false),
    ("etcdserverpb.Cluster", "MemberList", false),
    ("etcdserverpb.Cluster", "MemberPromote", false),
    ("etcdserverpb.Maintenance", "Alarm", false),
    ("etcdserverpb.Maintenance", "Status", false),
    ("etcdserverpb.Maintenance", "Defragment", false),
    ("etcdserverpb.Maintenance", "Hash", false),
    ("etcdserverpb.Maintenance", "HashKV", false),
    ("etcdserverpb.Maintenance", "Snapshot", true),
    ("etcdserverpb.Maintenance", "MoveLeader", false),
    ("etcdserverpb.Maintenance", "Downgrade", false),
    ("etcdserverpb.Auth", "AuthEnable", false),
    ("etcdserverpb.Auth", "AuthDisable", false),
    ("etcdserverpb.Auth", "AuthStatus", false),
    ("etcdserverpb.Auth", "Authenticate", false),
    ("etcdserverpb.Auth", "UserAdd", false),
    ("etcdserverpb.Auth", "UserGet", false),
    ("etcdserverpb.Auth", "UserList", false),
    ("etcdserverpb.Auth", "UserDelete", false),
    ("etcdserverpb.Auth", "UserChangePassword", false),
    ("etcdserverpb.Auth", "UserGrantRole", false),
    ("etcdserverpb.Auth", "UserRevokeRole", false),
    ("etcdserverpb.Auth", "RoleAdd", false),
    ("etcdserverpb.Auth", "RoleGet", false),
    ("etcdserverpb.Auth", "RoleList", false),
    ("etcdserverpb.Auth", "RoleDelete", false),
    ("etcdserverpb.Auth", "RoleGrantPermission", false),
    ("etcdserverpb.Auth", "RoleRevokePermission", false),
    ("v3lockpb.Lock", "Lock", false),
    ("v3lockpb.Lock", "Unlock", false),
    ("v3electionpb.Election", "Campaign", false),
    ("v3electionpb.Election", "Proclaim", false),
    ("v3electionpb.Election", "Leader", false),
    ("v3electionpb.Election", "Observe", true),
    ("v3electionpb.Election", "Resign", false),
];

/// `strata_router_grpc_requests_total{service,method,code}` and
/// `strata_router_grpc_request_duration_seconds{service,method}` for the etcd
/// endpoint: add with `Server::builder().layer(metrics::grpc_layer())`.
pub fn grpc_layer() -> GrpcMetricsLayer {
    static LAYER: LazyLock<GrpcMetricsLayer> =
        LazyLock::new(|| GrpcMetricsLayer::new("strata_router", "from etcd clients", ETCD_METHODS));
    LAYER.clone()
}

/// Open Watch streams (gRPC streams, each carrying any number of watchers).
pub static WATCH_STREAMS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "strata_router_watch_streams",
        "Open etcd Watch streams (each carries any number of watchers)."
    )
    .expect("register")
});

/// Live watchers over all streams.
pub static WATCHERS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "strata_router_watchers",
        "Live watchers over all Watch streams."
    )
    .expect("register")
});

/// Watch events delivered to clients.
pub static WATCH_EVENTS_SENT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "strata_router_watch_events_sent_total",
        "Watch events (puts and deletes) sent to clients."
    )
    .expect("register")
});

/// Range feeds a watcher (re)opened after the first.
pub static WATCH_FEED_RESTARTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "strata_router_watch_feed_restarts_total",
        "Range feeds reopened by watchers after a feed ended (leader moved, lagged, node down)."
    )
    .expect("register")
});

/// Retries of routed requests, by reason.
pub static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "strata_router_retries_total",
        "Requests to nodes retried by the router, by reason (not_leader, epoch_not_match, \
         range_not_found, server_busy, node_unavailable, node_unknown).",
        &["reason"]
    )
    .expect("register")
});

/// All retry reasons (pre-created so their rates start at zero).
pub const RETRY_REASONS: &[&str] = &[
    "not_leader",
    "epoch_not_match",
    "range_not_found",
    "server_busy",
    "node_unavailable",
    "node_unknown",
];

/// Counts one retry because of a routing error from a node.
pub fn retry_route_error(kind: i32) {
    use strata_proto::strata::RouteErrorKind as K;
    let reason = match K::try_from(kind).unwrap_or(K::RouteNone) {
        K::NotLeader => "not_leader",
        K::EpochNotMatch => "epoch_not_match",
        K::RangeNotFound => "range_not_found",
        _ => "server_busy",
    };
    RETRIES.with_label_values(&[reason]).inc();
}

/// Counts one retry for `reason` (one of [`RETRY_REASONS`]).
pub fn retry(reason: &'static str) {
    RETRIES.with_label_values(&[reason]).inc();
}

/// Registers every router metric (so all appear from the first scrape).
pub fn init() {
    grpc_layer();
    LazyLock::force(&WATCH_STREAMS);
    LazyLock::force(&WATCHERS);
    LazyLock::force(&WATCH_EVENTS_SENT);
    LazyLock::force(&WATCH_FEED_RESTARTS);
    for r in RETRY_REASONS {
        RETRIES.with_label_values(&[r]);
    }
}

/// Registers the metrics and, when `addr` is set, serves `/metrics`, `/health` and
/// `/ready` on it (`/ready` answers 503 until [`ready`]), over TLS with `tls`.
pub async fn serve(
    addr: Option<std::net::SocketAddr>,
    tls: Option<strata_proto::tls::ServerTls>,
) -> anyhow::Result<Option<strata_proto::telemetry::Telemetry>> {
    init();
    Ok(match addr {
        Some(a) => Some(strata_proto::telemetry::serve(a, "router", tls).await?),
        None => None,
    })
}

/// Makes `/ready` answer 200.
pub fn ready(t: &Option<strata_proto::telemetry::Telemetry>) {
    if let Some(t) = t {
        t.set_ready(true);
    }
}

/// Counts an open Watch stream until dropped.
pub fn watch_stream() -> GaugeGuard {
    GaugeGuard::new(&WATCH_STREAMS)
}

/// Counts a live watcher until dropped.
pub fn watcher() -> GaugeGuard {
    GaugeGuard::new(&WATCHERS)
}
