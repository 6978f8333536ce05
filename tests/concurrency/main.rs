//! etcd's Lock and Election services (v3lock, v3election) and etcdctl's
//! `lock` and `elect`: contenders wait their turn, leaders hand over, errors
//! as etcd gives them, an abandoned waiter leaves no key.
//!
//! Every expectation here was checked against a real etcd 3.4
//! (`STRATA_TEST_TARGET=etcd cargo test --features strata/failpoints --test concurrency`).
//! A cluster split into many ranges runs the same services in
//! `tests/faults/concurrency.rs`. Helpers here; `lock.rs`, `election.rs` and
//! `etcdctl.rs` hold the tests.

#[path = "../common/mod.rs"]
mod common;
mod election;
mod etcdctl;
mod lock;

use std::time::Duration;

use common::*;
use etcd_client::GetOptions;
use strata_proto::etcd_election::LeaderResponse;
use tonic::transport::Channel;

pub async fn channel(c: &Cluster) -> Channel {
    within(
        Duration::from_secs(10),
        "connect",
        tonic::transport::Endpoint::from_shared(format!("http://{}", c.endpoint))
            .expect("endpoint")
            .connect(),
    )
    .await
    .expect("connect")
}

/// The next message of an Observe stream (bounded).
pub async fn next_leader(o: &mut tonic::Streaming<LeaderResponse>) -> LeaderResponse {
    within(RECV_TIMEOUT, "observe message", o.message())
        .await
        .expect("observe stream")
        .expect("an observed leader")
}

pub fn code_msg(s: &tonic::Status) -> (tonic::Code, &str) {
    (s.code(), s.message())
}

pub async fn grant(c: &Cluster, ttl: i64) -> i64 {
    let mut kv = c.client().await;
    within(REQUEST_TIMEOUT, "grant", kv.lease_grant(ttl, None))
        .await
        .expect("grant")
        .id()
}

/// Keys under `prefix` in create order.
pub async fn keys_under(c: &Cluster, prefix: &str) -> Vec<String> {
    let mut kv = c.client().await;
    let opts = GetOptions::new().with_prefix().with_sort(
        etcd_client::SortTarget::Create,
        etcd_client::SortOrder::Ascend,
    );
    within(REQUEST_TIMEOUT, "get", kv.get(prefix, Some(opts)))
        .await
        .expect("get")
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_string())
        .collect()
}
