//! A whole cluster in one process: placement, nodes and a router started
//! through their `run` entry points (real RocksDB in temporary directories,
//! real gRPC over loopback), with the nodes' raft messages carried by an
//! in-memory network whose filters a test sets (`strata_node::transport::memory`).
//! Leaders are placed by the test: placement's scheduler is off.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use etcd_client::Client;
use strata_node::transport::memory::MemNetwork;
use strata_node::{NodeConfig, NodeHandle, RaftNet};
use strata_placement::PlacementConfig;
use strata_proto::strata::node_client::NodeClient;
use strata_proto::strata::{AdminKind, AdminRequest, Peer};
use strata_router::RouterConfig;

/// How the cluster is set up.
#[derive(Clone)]
pub struct Opts {
    pub nodes: u64,
    pub raft_tick_ms: u64,
    pub range_split_keys: u64,
    pub raft_log_keep_entries: u64,
    pub raft_log_keep_bytes: u64,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            nodes: 3,
            raft_tick_ms: 20,
            range_split_keys: 500_000,
            raft_log_keep_entries: 5000,
            raft_log_keep_bytes: 16 * 1024 * 1024,
        }
    }
}

pub struct Cluster {
    pub net: MemNetwork,
    pub nodes: Vec<NodeHandle>,
    pub router: SocketAddr,
    pub placement: SocketAddr,
    _dirs: Vec<tempfile::TempDir>,
}

/// Polls `f` until it returns `Some`, failing the test after `limit`.
pub async fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

impl Cluster {
    pub async fn start(opts: Opts) -> Cluster {
        let mut dirs = Vec::new();
        let dir = tempfile::tempdir().expect("temp dir");
        let placement = strata_placement::run(PlacementConfig {
            data_dir: dir.path().to_path_buf(),
            listen: loopback(),
            id: 1,
            peers: Vec::new(),
            join: Vec::new(),
            replicas: opts.nodes.min(3) as usize,
            node_down_after: Duration::from_secs(600),
            metrics_addr: None,
            peer_tls: Default::default(),
            no_scheduler: true,
        })
        .await
        .expect("placement starts")
        .addr;
        dirs.push(dir);
        let net = MemNetwork::new();
        let mut nodes = Vec::new();
        for _ in 0..opts.nodes {
            let dir = tempfile::tempdir().expect("temp dir");
            let cfg = NodeConfig {
                data_dir: dir.path().to_path_buf(),
                listen: loopback(),
                placement: placement.to_string(),
                metrics_addr: None,
                peer_tls: Default::default(),
                raft_tick_ms: opts.raft_tick_ms,
                quiesce_after_ticks: 0,
                raft_bcast_commit: false,
                range_split_bytes: 64 * 1024 * 1024,
                range_split_write_rate: 0.0,
                range_split_keys: opts.range_split_keys,
                raft_log_keep_entries: opts.raft_log_keep_entries,
                raft_log_keep_bytes: opts.raft_log_keep_bytes,
                quota_backend_bytes: 0,
            };
            let node = strata_node::run_with(cfg, RaftNet::Memory(net.clone()))
                .await
                .expect("node starts");
            nodes.push(node);
            dirs.push(dir);
        }
        let router = strata_router::run(RouterConfig {
            listen_client: loopback(),
            placement: placement.to_string(),
            metrics_addr: None,
            watch_progress_notify_interval: Duration::from_secs(600),
            request_timeout: Duration::from_secs(10),
            advertise_client_urls: Vec::new(),
            auth_token: "simple".into(),
            auth_token_ttl: 300,
            bcrypt_cost: 10,
            client_threads: 0,
            client_tls: Default::default(),
            peer_tls: Default::default(),
        })
        .await
        .expect("router starts")
        .client_addr;
        let c = Cluster {
            net,
            nodes,
            router,
            placement,
            _dirs: dirs,
        };
        c.wait_leader(1).await;
        c
    }

    pub async fn client(&self) -> Client {
        Client::connect([self.router.to_string()], None)
            .await
            .expect("client connects")
    }

    pub fn node(&self, node_id: u64) -> &NodeHandle {
        self.nodes
            .iter()
            .find(|n| n.node_id == node_id)
            .unwrap_or_else(|| panic!("no node {node_id}"))
    }

    pub async fn node_client(&self, node_id: u64) -> NodeClient<tonic::transport::Channel> {
        NodeClient::connect(format!("http://{}", self.node(node_id).addr))
            .await
            .expect("node client connects")
    }

    /// The node whose replica of `range_id` leads, if one does.
    pub fn leader_of(&self, range_id: u64) -> Option<u64> {
        self.nodes.iter().find_map(|n| {
            let r = n.ranges.get(&range_id)?;
            r.is_leader().then_some(n.node_id)
        })
    }

    pub async fn wait_leader(&self, range_id: u64) -> u64 {
        eventually(Duration::from_secs(30), "a leader", || {
            self.leader_of(range_id)
        })
        .await
    }

    /// Counts the raft snapshots of range `range` sent to node `to`; they
    /// still go, `delay`ed when given.
    pub fn count_snapshots(
        &self,
        range: u64,
        to: u64,
        delay: Option<Duration>,
    ) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
        use raft::eraftpb::MessageType;
        use strata_node::transport::memory::Rule;
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        let rule = Rule::new()
            .range(range)
            .to(to)
            .msg_type(MessageType::MsgSnapshot)
            .when(move |_| {
                seen.fetch_add(1, Ordering::SeqCst);
                delay.is_some()
            });
        self.net.add(match delay {
            Some(d) => rule.delay(d),
            // The condition never holds: nothing is dropped.
            None => rule.drop(),
        });
        count
    }

    /// The nodes other than `node_id`.
    pub fn others(&self, node_id: u64) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| n.node_id)
            .filter(|n| *n != node_id)
            .collect()
    }

    /// The applied revision of `range_id` on `node_id`.
    pub fn applied_rev(&self, node_id: u64, range_id: u64) -> i64 {
        self.node(node_id)
            .ranges
            .get(&range_id)
            .map_or(0, |r| r.applied_rev.load(Ordering::Acquire))
    }

    /// Asks the current leader of `range_id` to hand leadership to `to`, and
    /// waits until `to` leads.
    pub async fn transfer_leader(&self, range_id: u64, to: u64) {
        let start = Instant::now();
        while self.leader_of(range_id) != Some(to) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "leadership of range {range_id} did not move to node {to}"
            );
            let Some(from) = self.leader_of(range_id) else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let peer = self.peer(from, range_id, to);
            let mut c = self.node_client(from).await;
            let _ = c
                .admin(AdminRequest {
                    range_id,
                    epoch: None,
                    kind: AdminKind::TransferLeader as i32,
                    peer: Some(peer),
                    split_key: Vec::new(),
                })
                .await;
            let asked = Instant::now();
            while self.leader_of(range_id) != Some(to) && asked.elapsed() < Duration::from_secs(2) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// The peer of `node_id` in `range_id`, as `on` knows the range.
    pub fn peer(&self, on: u64, range_id: u64, node_id: u64) -> Peer {
        let r = self.node(on).ranges.get(&range_id).expect("range").clone();
        let desc = r.desc.read();
        desc.peers
            .iter()
            .find(|p| p.node_id == node_id)
            .cloned()
            .unwrap_or_else(|| panic!("node {node_id} has no peer in range {range_id}"))
    }
}

impl Drop for Cluster {
    /// Stops every raft thread and waits for it, so no node outlives its
    /// test (the network's delivery functions hold the nodes' inboxes, so
    /// they are dropped first).
    fn drop(&mut self) {
        self.net.clear();
        let mut waits = Vec::new();
        for n in &self.nodes {
            self.net.unregister(n.node_id);
            let (tx, rx) = std::sync::mpsc::channel();
            if n.store
                .try_send(strata_node::store::StoreMsg::Stop(tx))
                .is_ok()
            {
                waits.push(rx);
            }
        }
        for rx in waits {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }
}
