//! The `partition` failpoint: a node that drops all its traffic (raft in and
//! out, held client requests) loses its leadership to the others, which go
//! on accepting writes; once healed it catches up.

use std::time::{Duration, Instant};

use prost::Message as _;
use strata_proto::etcd::{PbRangeRequest, PbRangeResponse};
use strata_proto::strata::{KvKind, KvRequest};

use crate::cluster::{eventually, Cluster, Opts};
use crate::within;

/// Puts through the router until one is acknowledged (a request that went to
/// the partitioned node times out); returns its revision.
pub async fn put_retrying(c: &Cluster, key: &str, value: &str) -> i64 {
    let start = Instant::now();
    loop {
        let mut kv = c.client().await;
        match tokio::time::timeout(Duration::from_secs(12), kv.put(key, value, None)).await {
            Ok(Ok(r)) => return r.header().expect("header").revision(),
            Ok(Err(e)) if start.elapsed() < Duration::from_secs(60) => {
                eprintln!("put {key}: {e}; retrying");
            }
            Err(_) if start.elapsed() < Duration::from_secs(60) => {
                eprintln!("put {key}: timed out; retrying");
            }
            other => panic!("put {key} never acknowledged: {:?}", other.map(|r| r.err())),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every key of range 1 with its value, mod and version, read from
/// `node_id`'s own replica (serializable: no leader involved).
pub async fn local_contents(c: &Cluster, node_id: u64) -> Vec<(String, String, i64)> {
    let mut node = c.node_client(node_id).await;
    let req = KvRequest {
        range_id: 1,
        epoch: None,
        kind: KvKind::KvRange as i32,
        request: PbRangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        }
        .encode_to_vec(),
        read_revision: 0,
    };
    let resp = within(Duration::from_secs(40), "a local read", node.kv(req))
        .await
        .expect("local read rpc")
        .into_inner();
    assert!(resp.error.is_none(), "local read: {:?}", resp.error);
    let got = PbRangeResponse::decode(&resp.response[..]).expect("range response");
    got.kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.mod_revision,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_leader_is_replaced_and_catches_up() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let l = c.wait_leader(1).await;
    for i in 0..5 {
        put_retrying(&c, &format!("before/{i}"), "v").await;
    }

    fail::cfg(format!("partition.{l}"), "return").unwrap();
    let others = c.others(l);
    let new_leader = eventually(Duration::from_secs(20), "a leader on another node", || {
        others
            .iter()
            .copied()
            .find(|n| c.node(*n).ranges.get(&1).is_some_and(|r| r.is_leader()))
    })
    .await;
    let mut last = 0;
    for i in 0..10 {
        last = put_retrying(&c, &format!("during/{i}"), "v").await;
    }
    assert!(
        c.applied_rev(l, 1) < last,
        "the partitioned node {l} applied writes made without it"
    );
    eprintln!(
        "partition: node {new_leader} leads instead of node {l}; writes acknowledged up to {last}"
    );

    fail::remove(format!("partition.{l}"));
    eventually(
        Duration::from_secs(30),
        "the healed node to catch up",
        || (c.applied_rev(l, 1) >= last).then_some(()),
    )
    .await;
    let healed = local_contents(&c, l).await;
    for n in others {
        assert_eq!(
            local_contents(&c, n).await,
            healed,
            "node {l}'s data after healing differs from node {n}'s"
        );
    }
    assert_eq!(healed.len(), 15, "{healed:?}");
    eprintln!("partition: node {l} caught up to revision {last}");
}
