//! The gRPC raft transport: one sender task per destination node batches every
//! message queued for it into one `Raft` RPC. Queues are bounded; when one is
//! full the message is dropped (raft retransmits), never buffered without limit.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use strata_proto::strata::node_client::NodeClient;
use strata_proto::strata::{RaftBatch, RaftEnvelope};
use tokio::sync::mpsc;

const QUEUE_CAP: usize = 8192;
const BATCH_MAX: usize = 1024;

#[derive(Clone)]
pub struct GrpcTransport {
    from_node: u64,
    rt: tokio::runtime::Handle,
    addrs: Arc<DashMap<u64, String>>,
    queues: Arc<DashMap<u64, mpsc::Sender<RaftEnvelope>>>,
}

impl GrpcTransport {
    pub fn new(from_node: u64, addrs: Arc<DashMap<u64, String>>) -> Self {
        Self {
            from_node,
            rt: tokio::runtime::Handle::current(),
            addrs,
            queues: Arc::new(DashMap::new()),
        }
    }

    /// Queues a message; never blocks (called from the raft thread).
    fn queue(&self, node_id: u64, env: RaftEnvelope) {
        let tx = match self.queues.get(&node_id) {
            Some(tx) => tx.clone(),
            None => {
                let (tx, rx) = mpsc::channel(QUEUE_CAP);
                self.queues.insert(node_id, tx.clone());
                let me = self.clone();
                self.rt.spawn(me.sender(node_id, rx));
                tx
            }
        };
        let bytes = env.message.len();
        crate::metrics::raft_out(bytes, tx.try_send(env).is_ok());
    }

    async fn sender(self, node_id: u64, mut rx: mpsc::Receiver<RaftEnvelope>) {
        let mut client: Option<NodeClient<tonic::transport::Channel>> = None;
        let mut buf = Vec::with_capacity(BATCH_MAX);
        while rx.recv_many(&mut buf, BATCH_MAX).await > 0 {
            let msgs = std::mem::take(&mut buf);
            if client.is_none() {
                let Some(addr) = self.addrs.get(&node_id).map(|a| a.clone()) else {
                    crate::metrics::RAFT_DROPPED.inc_by(msgs.len() as u64);
                    continue; // address not known yet: drop, raft retries
                };
                match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
                    Ok(ep) => {
                        let ep = ep
                            .connect_timeout(Duration::from_millis(500))
                            .timeout(Duration::from_secs(2))
                            .tcp_nodelay(true);
                        client = Some(NodeClient::new(ep.connect_lazy()));
                    }
                    Err(_) => continue,
                }
            }
            let c = client.as_mut().expect("client");
            let batch = RaftBatch {
                from_node: self.from_node,
                msgs,
            };
            if let Err(e) = c.raft(batch).await {
                tracing::debug!(to = node_id, "raft send failed: {e}");
                client = None;
                // Back off a little so a dead peer does not spin this task.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl super::RaftTransport for GrpcTransport {
    fn send(&self, to_node: u64, env: RaftEnvelope) {
        self.queue(to_node, env);
    }
}
