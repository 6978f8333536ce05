use std::net::SocketAddr;
use std::path::PathBuf;

/// Command-line configuration of the placement service (`strata-placement`).
#[derive(clap::Args, Debug, Clone)]
pub struct PlacementConfig {
    /// Directory for placement's RocksDB (its raft log and state).
    #[arg(long, default_value = "./strata-placement-data")]
    pub data_dir: PathBuf,
    /// Address to serve the placement gRPC API on.
    #[arg(long, default_value = "127.0.0.1:7100")]
    pub listen: SocketAddr,
    /// Replicas per range; the first range is created once this many nodes registered.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Address to serve Prometheus /metrics, /health and /ready on (optional).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
}
