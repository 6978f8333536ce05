//! Batching client of placement's revision oracle.
//!
//! One RPC is in flight at a time; every request that arrives meanwhile is
//! served by the next RPC, which allocates the sum of their counts. A request
//! for 0 revisions ("what is the next unallocated revision?") is answered with
//! the first revision after that RPC's allocation, which is at or after every
//! revision allocated before the request was made.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::strata::placement_client::PlacementClient;
use crate::strata::AllocRequest;

const QUEUE_CAP: usize = 65_536;
const RPC_TIMEOUT: Duration = Duration::from_secs(3);

type Waiter = (u64, oneshot::Sender<Result<i64, Status>>);

#[derive(Clone)]
pub struct Oracle {
    tx: mpsc::Sender<Waiter>,
}

impl Oracle {
    pub fn new(placement: PlacementClient<tonic::transport::Channel>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAP);
        tokio::spawn(run(placement, rx));
        Self { tx }
    }

    /// Allocates `count` revisions and returns the first; `count == 0` returns
    /// the next unallocated revision without consuming it.
    pub async fn alloc(&self, count: u64) -> Result<i64, Status> {
        let _wait = crate::telemetry::ORACLE_WAIT.start_timer();
        let (tx, rx) = oneshot::channel();
        self.tx
            .try_send((count, tx))
            .map_err(|_| crate::errors::too_many_requests())?;
        rx.await
            .map_err(|_| Status::unavailable("strata: oracle client stopped"))?
    }

    /// The current revision: every write completed before this call has a
    /// revision at or below it.
    pub async fn current(&self) -> Result<i64, Status> {
        Ok(self.alloc(0).await? - 1)
    }
}

async fn run(
    mut client: PlacementClient<tonic::transport::Channel>,
    mut rx: mpsc::Receiver<Waiter>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        let total: u64 = waiters.iter().map(|w| w.0).sum();
        crate::telemetry::ORACLE_BATCH.observe(waiters.len() as f64);
        let mut req = tonic::Request::new(AllocRequest { count: total });
        req.set_timeout(RPC_TIMEOUT);
        match client.alloc(req).await {
            Ok(resp) => {
                crate::telemetry::oracle_rpc_done(true);
                let start = resp.into_inner().start;
                let mut next = start;
                let after = start + total as i64;
                for (count, tx) in waiters {
                    if count == 0 {
                        let _ = tx.send(Ok(after));
                    } else {
                        let _ = tx.send(Ok(next));
                        next += count as i64;
                    }
                }
            }
            Err(e) => {
                crate::telemetry::oracle_rpc_done(false);
                let st = Status::unavailable(format!(
                    "strata: revision oracle unavailable: {}",
                    e.message()
                ));
                for (_, tx) in waiters {
                    let _ = tx.send(Err(st.clone()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Connects lazily to a placement address (`host:port`).
pub fn placement_client(addr: &str) -> Result<PlacementClient<tonic::transport::Channel>, Status> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Status::invalid_argument(format!("bad placement address {addr}: {e}")))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    Ok(PlacementClient::new(ep.connect_lazy()))
}
