use std::net::SocketAddr;
use std::path::PathBuf;

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 500ms, 30s, 10m"))?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => return Err(format!("invalid duration {s:?}: use e.g. 500ms, 30s, 10m")),
    };
    Ok(std::time::Duration::from_millis(ms))
}

/// Command-line configuration of the placement service (`strata-placement`).
#[derive(clap::Args, Debug, Clone)]
pub struct PlacementConfig {
    /// Directory for placement's RocksDB (its raft log and state).
    #[arg(long, default_value = "./strata-placement-data")]
    pub data_dir: PathBuf,
    /// Address to serve the placement gRPC API on (clients and the other
    /// placement replicas).
    #[arg(long, default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// This replica's id in placement's raft group (1.. ; unique, never reused).
    /// With --join and no --id, the group assigns one.
    #[arg(long, default_value_t = 0)]
    pub id: u64,
    /// The initial members of placement's raft group, `ID=HOST:PORT,...`
    /// (this replica among them), the same on every initial replica; only
    /// read when the data directory is new. Default: this replica alone
    /// (`1=LISTEN`).
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Join a running placement group through any of these replicas
    /// (`HOST:PORT,...`) as a new member, with a new data directory: it is
    /// added as a learner, sent the state, and promoted to voter once caught
    /// up. Ignored when the data directory already holds this replica.
    #[arg(long, value_delimiter = ',')]
    pub join: Vec<String>,
    /// Replicas per range; the first range is created once this many nodes registered.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// A node without heartbeats this long is considered dead: its replicas are
    /// re-created on other nodes (e.g. 30s, 10m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub node_down_after: std::time::Duration,
    /// Address to serve Prometheus /metrics, /health and /ready on (optional).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Mutual TLS on internal links (etcd's peer flags).
    #[command(flatten)]
    pub peer_tls: strata_proto::tls::PeerFlags,
    /// Do not run the scheduler: no replica repair, no balancing, no leader
    /// moves (for maintenance, and for tests that place leaders themselves).
    #[arg(long)]
    pub no_scheduler: bool,
}
