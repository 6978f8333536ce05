//! Deterministic fault tests: a whole cluster in one process (`cluster.rs`),
//! raft messages through an in-memory network with filters, and failpoints
//! (the `fail` crate; node points are named `<point>.<node id>`) to hold one
//! node at a chosen step. Each test reproduces one known bug scenario.
//!
//! Failpoints are process-wide, so every test holds a `fail::FailScenario`
//! (which serializes them) for its whole run.

mod admin_split;
mod batching;
mod catchup;
mod cluster;
mod concurrency;
mod feeds;
mod latest;
mod leases;
mod log_gc;
mod partition;
mod planted;
mod pressure;
#[allow(dead_code)] // shared with tests/common
#[path = "../common/rawgrpc.rs"]
mod rawgrpc;
mod reads;
mod reqmeta;
mod stale;
mod writes;
mod xtxn;

use std::time::Duration;

use etcd_client::{Client, GetOptions};

/// Every request of a test has a deadline: nothing hangs.
pub async fn within<F: std::future::Future>(limit: Duration, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

pub async fn put(c: &mut Client, key: &str, value: &str) -> i64 {
    within(Duration::from_secs(15), "put", c.put(key, value, None))
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"))
        .header()
        .expect("header")
        .revision()
}

/// The values of `key` read at `revision` (0: latest), and the header revision.
pub async fn get_at(c: &mut Client, key: &str, revision: i64) -> (Vec<String>, i64) {
    let opts = GetOptions::new().with_revision(revision);
    let r = within(Duration::from_secs(15), "get", c.get(key, Some(opts)))
        .await
        .unwrap_or_else(|e| panic!("get {key} at {revision}: {e}"));
    let values = r
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .collect();
    (values, r.header().expect("header").revision())
}

/// A serializable read of `req` on one node's replica of `range_id`.
pub async fn node_range(
    node: &mut strata_proto::strata::node_client::NodeClient<tonic::transport::Channel>,
    range_id: u64,
    req: &strata_proto::etcd::PbRangeRequest,
) -> strata_proto::etcd::PbRangeResponse {
    use prost::Message as _;
    let resp = node
        .kv(strata_proto::strata::KvRequest {
            range_id,
            epoch: None,
            kind: strata_proto::strata::KvKind::KvRange as i32,
            request: req.encode_to_vec(),
            read_revision: 0,
        })
        .await
        .expect("node read")
        .into_inner();
    assert!(resp.error.is_none(), "node read: {:?}", resp.error);
    strata_proto::etcd::PbRangeResponse::decode(&resp.response[..]).expect("range response")
}
