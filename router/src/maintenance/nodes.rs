//! Maintenance calls to every storage node: sizes (for `Status`) and
//! `Defragment`. The nodes are those placement lists as up; each is asked
//! once, all at once, each call bounded.

use std::time::Duration;

use futures::future::join_all;
use strata_proto::strata::node_client::NodeClient;
use strata_proto::strata::{DefragmentRequest, GetRangesRequest, NodeInfo, NodeStatusRequest};
use tonic::transport::Channel;
use tonic::Status;

use crate::routing::Router;

/// A node's answer to a sizes-only status.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// One node's defragmentation (a whole RocksDB rewritten).
const DEFRAG_TIMEOUT: Duration = Duration::from_secs(120);

/// The nodes placement lists as up.
async fn up_nodes(router: &Router) -> Result<Vec<NodeInfo>, Status> {
    let mut req = tonic::Request::new(GetRangesRequest { known_version: 0 });
    req.set_timeout(Duration::from_secs(2));
    let resp = router.placement.clone().get_ranges(req).await?.into_inner();
    Ok(resp.nodes.into_iter().filter(|n| n.up).collect())
}

fn client(n: &NodeInfo) -> Result<NodeClient<Channel>, Status> {
    let ep = strata_proto::tls::endpoint(&n.addr)
        .map_err(|e| Status::internal(format!("strata: node {} address: {e}", n.id)))?
        .connect_timeout(Duration::from_millis(500));
    Ok(NodeClient::new(strata_proto::tls::connect_lazy(&ep)))
}

/// The cluster's storage as `Status` reports it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sizes {
    pub db_size: u64,
    pub db_size_in_use: u64,
    /// The smallest node quota (0: no node answered).
    pub quota: u64,
}

/// Sums the up nodes' sizes (a node that does not answer in time counts 0).
pub async fn sizes(router: &Router) -> Sizes {
    let Ok(nodes) = up_nodes(router).await else {
        return Sizes::default();
    };
    let asks = nodes.iter().map(|n| async move {
        let mut c = client(n).ok()?;
        let mut req = tonic::Request::new(NodeStatusRequest { sizes_only: true });
        req.set_timeout(STATUS_TIMEOUT);
        let s = tokio::time::timeout(STATUS_TIMEOUT, c.status(req))
            .await
            .ok()?
            .ok()?
            .into_inner();
        Some((
            s.db_size_bytes,
            s.db_size_in_use_bytes,
            s.quota_backend_bytes,
        ))
    });
    let mut out = Sizes::default();
    for (size, in_use, quota) in join_all(asks).await.into_iter().flatten() {
        out.db_size = out.db_size.saturating_add(size);
        out.db_size_in_use = out.db_size_in_use.saturating_add(in_use);
        out.quota = match out.quota {
            0 => quota,
            q => q.min(quota),
        };
    }
    out
}

/// Defragments every up node; the first failure (naming its node) is the
/// answer, after all were asked.
pub async fn defragment(router: &Router) -> Result<(), Status> {
    let nodes = up_nodes(router).await?;
    let asks = nodes.iter().map(|n| async move {
        let mut req = tonic::Request::new(DefragmentRequest {});
        req.set_timeout(DEFRAG_TIMEOUT);
        let res = client(n)?.defragment(req).await;
        res.map_err(|e| {
            Status::new(
                e.code(),
                format!("strata: defragmenting node {}: {}", n.id, e.message()),
            )
        })
    });
    for res in join_all(asks).await {
        res?;
    }
    Ok(())
}
