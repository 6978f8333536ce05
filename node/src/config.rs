use std::net::SocketAddr;
use std::path::PathBuf;

/// Command-line configuration of a storage node (`strata-node`, `strata node`).
#[derive(clap::Args, Debug, Clone)]
pub struct NodeConfig {
    /// Directory for this node's RocksDB (raft log, MVCC data, metadata).
    #[arg(long, default_value = "./strata-node-data")]
    pub data_dir: PathBuf,
    /// Address to serve the internal gRPC API (raft transport, routed KV, feeds) on.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: SocketAddr,
    /// Placement service addresses: a comma-separated list of placement's
    /// replicas (HOST:PORT[,HOST:PORT...]); requests follow its leader from any
    /// of them.
    #[arg(
        long,
        value_name = "HOST:PORT[,HOST:PORT...]",
        default_value = "127.0.0.1:7100",
        value_parser = placement_addrs
    )]
    pub placement: String,
    /// Address to serve Prometheus /metrics, /health and /ready on (optional).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Mutual TLS on internal links (etcd's peer flags).
    #[command(flatten)]
    pub peer_tls: strata_proto::tls::PeerFlags,
    /// Raft tick interval in milliseconds (election timeout is 10 ticks).
    #[arg(long, default_value_t = 100)]
    pub raft_tick_ms: u64,
    /// An idle range stops ticking (no heartbeats, no elections) after this many
    /// idle ticks, until any message or request wakes it; 0 disables quiescence.
    #[arg(long, default_value_t = 20)]
    pub quiesce_after_ticks: u32,
    /// Send followers an empty append as soon as a range's commit index
    /// moves (etcd's default). Without it a follower learns the commit index
    /// with the leader's next append or heartbeat (at most 2 ticks later),
    /// which about halves the raft messages a write costs; only followers'
    /// apply is later (reads are served by leaders). A split's commit, and
    /// a pending conf change's, are broadcast either way.
    #[arg(long)]
    pub raft_bcast_commit: bool,
    /// Split a range once its data (all MVCC versions) passes this many bytes.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub range_split_bytes: u64,
    /// Split a range (at its median key) once it takes more than this many
    /// writes per second; 0 (the default) disables this threshold.
    /// Independently, a node that has used 80% of its CPU (cgroup quota,
    /// else every CPU), or whose raft thread has used 80% of one CPU, for a
    /// second splits the hottest range it leads if that range takes a
    /// quarter or more of the writes it leads (and the node leads more than
    /// its share of the cluster's writes): splitting by load helps only a
    /// leader that cannot keep up. A fixed rate also splits ranges whose
    /// nodes have CPU to spare, and every range adds raft and apply work
    /// (one box, 1000 clients: 12,001 puts/s after splits at 3000 writes/s
    /// against 15,571 in one range).
    #[arg(long, default_value_t = 0.0)]
    pub range_split_write_rate: f64,
    /// Split a range once it holds more than this many live keys.
    #[arg(long, default_value_t = 500_000)]
    pub range_split_keys: u64,
    /// Raft log entries a replica keeps behind its applied index; a follower
    /// further behind catches up from a snapshot.
    #[arg(long, default_value_t = 5000)]
    pub raft_log_keep_entries: u64,
    /// Bytes of raft log entries a replica keeps behind its applied index (the
    /// log is truncated once it holds twice this), so big values do not keep
    /// a second copy of the data in the log.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub raft_log_keep_bytes: u64,
    /// etcd's space quota, per node: once this node's MVCC storage (RocksDB
    /// `data` and `meta`, not the raft log) would pass this many bytes, writes
    /// that add data are refused with `database space exceeded` and a NOSPACE
    /// alarm is raised cluster-wide; 0 means etcd's default, 2 GiB.
    #[arg(long, default_value_t = 0)]
    pub quota_backend_bytes: u64,
}

/// Checks a `--placement` list (see `strata_proto::placement_client::parse_addrs`).
fn placement_addrs(s: &str) -> Result<String, String> {
    strata_proto::placement_client::parse_addrs(s)
        .map(|_| s.to_string())
        .map_err(|e| e.message().to_string())
}
