//! The apply path's newest versions (`node/src/apply/latest.rs`) must not
//! outlive the data they describe: a replica whose data a snapshot replaced
//! writes the next version of a key from the snapshot's state (its create
//! revision and version number), not from what it had cached before.

use std::sync::atomic::Ordering;
use std::time::Duration;

use strata_node::transport::memory::Rule;
use strata_proto::etcd::PbRangeRequest;

use crate::cluster::{eventually, Cluster};
use crate::log_gc::{caught_up, small_log_cluster};
use crate::{node_range, put, within};

const KEY: &str = "cached/k";

/// (create revision, version, value) of [`KEY`] on each node's replica.
async fn on_every_node(c: &Cluster) -> Vec<(u64, i64, i64, String)> {
    let req = PbRangeRequest {
        key: KEY.as_bytes().to_vec(),
        ..Default::default()
    };
    let mut out = Vec::new();
    for n in &c.nodes {
        let mut client = c.node_client(n.node_id).await;
        let resp = node_range(&mut client, 1, &req).await;
        let kv = resp.kvs.first().expect("the key");
        out.push((
            n.node_id,
            kv.create_revision,
            kv.version,
            String::from_utf8_lossy(&kv.value).into_owned(),
        ));
    }
    out
}

async fn all_applied(c: &Cluster, rev: i64) {
    eventually(Duration::from_secs(30), "every replica to apply", || {
        c.nodes
            .iter()
            .all(|n| c.applied_rev(n.node_id, 1) >= rev)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_replaced_by_a_snapshot_forgets_its_newest_versions() {
    let _fp = fail::FailScenario::setup();
    let (c, leader, lagging, mut kv) = small_log_cluster().await;
    let mut rev = 0;
    for v in ["1", "2", "3"] {
        rev = put(&mut kv, KEY, v).await;
    }
    // Every node applied (and cached) version 3.
    all_applied(&c, rev).await;

    let cut = c.net.add(Rule::new().touching(lagging).drop());
    within(Duration::from_secs(15), "delete", kv.delete(KEY, None))
        .await
        .expect("delete");
    let created = put(&mut kv, KEY, "4").await;
    let big = "v".repeat(16 * 1024);
    for i in 0..80 {
        put(&mut kv, &format!("cached/big/{i:02}"), &big).await;
    }
    let snapshots = c.count_snapshots(1, lagging, None);
    c.net.remove(cut);
    caught_up(&c, leader, lagging).await;
    assert!(
        snapshots.load(Ordering::SeqCst) > 0,
        "node {lagging} caught up from the log: the test needs a snapshot"
    );

    let last = put(&mut kv, KEY, "5").await;
    all_applied(&c, last).await;
    let want: Vec<_> = c
        .nodes
        .iter()
        .map(|n| (n.node_id, created, 2, "5".to_string()))
        .collect();
    assert_eq!(
        on_every_node(&c).await,
        want,
        "(node, create revision, version, value) of {KEY} after node {lagging} \
         installed a snapshot"
    );
}
