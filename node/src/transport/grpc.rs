//! The gRPC raft transport: one sender task per destination node batches every
//! message queued for it into one `RaftBatch` (at most [`BATCH_MAX`] messages
//! and about [`BATCH_BYTES_MAX`] bytes, under the receiver's decode limit) and
//! sends it on one long-lived `RaftStream` to that node (re-opened when it
//! breaks; no per-batch call and answer).
//! Queues are bounded; when one is full the message is dropped (raft
//! retransmits), never buffered without limit.
//!
//! Snapshots stream in a `Node.Snapshot` RPC of their own, on a connection of
//! their own (a long transfer neither delays raft messages nor is cut by
//! their 2 s deadline); at most [`crate::snapshot::SENDS_MAX`] at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use strata_proto::strata::node_client::NodeClient;
use strata_proto::strata::{RaftBatch, RaftEnvelope};
use tokio::sync::{mpsc, Semaphore};

use crate::snapshot::{Outgoing, SnapshotSource, CHUNK_TIMEOUT, SENDS_MAX};

const QUEUE_CAP: usize = 8192;
const BATCH_MAX: usize = 1024;
/// A batch stops growing past this many message bytes (the receiver
/// refuses RPCs over 64 MiB; a raft append carries up to about 1 MiB).
const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Batches queued on a stream before newer ones are dropped.
const STREAM_CAP: usize = 256;
/// A broken stream is re-opened at most this often.
const REOPEN_EVERY: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct GrpcTransport {
    from_node: u64,
    rt: tokio::runtime::Handle,
    addrs: Arc<DashMap<u64, String>>,
    queues: Arc<DashMap<u64, mpsc::Sender<RaftEnvelope>>>,
    snapshot_sends: Arc<Semaphore>,
}

impl GrpcTransport {
    pub fn new(from_node: u64, addrs: Arc<DashMap<u64, String>>) -> Self {
        Self {
            from_node,
            rt: tokio::runtime::Handle::current(),
            addrs,
            queues: Arc::new(DashMap::new()),
            snapshot_sends: Arc::new(Semaphore::new(SENDS_MAX)),
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
        let mut stream: Option<mpsc::Sender<RaftBatch>> = None;
        let mut next_open = Instant::now();
        while let Some(first) = rx.recv().await {
            let mut bytes = first.message.len();
            let mut msgs = vec![first];
            while msgs.len() < BATCH_MAX && bytes < BATCH_BYTES_MAX {
                match rx.try_recv() {
                    Ok(m) => {
                        bytes += m.message.len();
                        msgs.push(m);
                    }
                    Err(_) => break,
                }
            }
            if stream.as_ref().is_none_or(|s| s.is_closed()) {
                stream = None;
                // At most one attempt per REOPEN_EVERY: a dead peer costs
                // dropped messages (raft retries), not a connect loop.
                let addr = self.addrs.get(&node_id).map(|a| a.clone());
                match addr {
                    Some(addr) if Instant::now() >= next_open => {
                        next_open = Instant::now() + REOPEN_EVERY;
                        stream = open_stream(&addr);
                    }
                    _ => {}
                }
            }
            let n = msgs.len() as u64;
            let batch = RaftBatch {
                from_node: self.from_node,
                msgs,
            };
            // Full or broken: dropped, raft retransmits.
            if stream.as_ref().is_none_or(|s| s.try_send(batch).is_err()) {
                crate::metrics::RAFT_DROPPED.inc_by(n);
            }
        }
    }
}

/// Opens a `RaftStream` to `addr`: batches sent into the returned queue go
/// out in order on one HTTP/2 stream until it breaks (the queue then
/// reports closed, and the sender opens another).
fn open_stream(addr: &str) -> Option<mpsc::Sender<RaftBatch>> {
    let ep = strata_proto::tls::endpoint(addr)
        .ok()?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        // A peer that stopped answering (paused, cut off) breaks the
        // stream within a few seconds instead of holding it.
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2));
    let (tx, rx) = mpsc::channel(STREAM_CAP);
    tokio::spawn(async move {
        let mut client = NodeClient::new(strata_proto::tls::connect_lazy(&ep));
        if let Err(e) = client
            .raft_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            tracing::debug!(%e, "raft stream ended");
        }
    });
    Some(tx)
}

/// Streams one snapshot to the node at `addr`, on a new connection.
async fn stream_snapshot(
    addr: &str,
    head: RaftEnvelope,
    source: SnapshotSource,
) -> Result<(), String> {
    let ep = strata_proto::tls::endpoint(addr)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(CHUNK_TIMEOUT);
    let channel = strata_proto::tls::connect(&ep)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut client = NodeClient::new(channel);
    let (stream, progress) = Outgoing::start(head, source);
    match progress.watch(client.snapshot(stream)).await? {
        Ok(_) => Ok(()),
        Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
    }
}

impl super::RaftTransport for GrpcTransport {
    fn send(&self, to_node: u64, env: RaftEnvelope) {
        self.queue(to_node, env);
    }

    fn send_snapshot(&self, snap: super::OutgoingSnapshot) {
        let super::OutgoingSnapshot {
            to_node,
            head,
            source,
            done,
        } = snap;
        let Ok(permit) = self.snapshot_sends.clone().try_acquire_owned() else {
            tracing::info!(
                to = to_node,
                "too many snapshot transfers; raft retries later"
            );
            done(raft::SnapshotStatus::Failure);
            return;
        };
        let addr = self.addrs.get(&to_node).map(|a| a.clone());
        self.rt.spawn(async move {
            let _permit = permit;
            let res = match addr {
                Some(addr) => stream_snapshot(&addr, head, source).await,
                None => Err("address unknown".into()),
            };
            match res {
                Ok(()) => done(raft::SnapshotStatus::Finish),
                Err(e) => {
                    tracing::warn!(to = to_node, "snapshot transfer failed: {e}");
                    done(raft::SnapshotStatus::Failure);
                }
            }
        });
    }
}
