//! A lease revoke racing a split must delete the lease's keys in both halves.
//!
//! Found by the robustness suite (seed 2011, leader-transfer nemesis): a
//! revoke answered ok while a key attached to the lease stayed visible. The
//! revoke passed the range's epoch check while a split of that range was
//! proposed but not yet applied, so it applied after the split, to the left
//! half only; placement, walking the descriptors it had read before the split,
//! never sent it to the new right half.

use std::time::Duration;

use crate::admin_split::split_request;
use etcd_client::{GetOptions, PutOptions};
use raft::eraftpb::MessageType;
use strata_node::transport::memory::Rule;

use crate::cluster::{Cluster, Opts};
use crate::within;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoke_racing_a_split_deletes_the_keys_of_both_halves() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let l = c.wait_leader(1).await;
    let mut kv = c.client().await;
    let lease = within(Duration::from_secs(15), "grant", kv.lease_grant(60, None))
        .await
        .expect("lease grant")
        .id();
    for i in 0..10 {
        let opts = PutOptions::new().with_lease(lease);
        within(
            Duration::from_secs(15),
            "put",
            kv.put(format!("lz/{i:02}"), "v", Some(opts)),
        )
        .await
        .expect("put with lease");
    }

    // The split is proposed but cannot commit yet: the leader's appends of
    // range 1 are dropped.
    let hold = c.net.add(
        Rule::new()
            .range(1)
            .from(l)
            .msg_type(MessageType::MsgAppend)
            .drop(),
    );
    let mut leader = c.node_client(l).await;
    let split = tokio::spawn(async move { leader.admin(split_request(1, b"lz/05")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The revoke passes the epoch check (the split has not applied) and is
    // appended behind the split.
    let mut kv2 = c.client().await;
    let revoke = tokio::spawn(async move { kv2.lease_revoke(lease).await });
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.net.remove(hold);

    let split = within(Duration::from_secs(20), "split", split).await;
    let split = split
        .expect("split task")
        .expect("admin split")
        .into_inner();
    assert!(split.error.is_none(), "split: {:?}", split.error);
    within(Duration::from_secs(30), "revoke", revoke)
        .await
        .expect("revoke task")
        .expect("lease revoke");

    let left = within(
        Duration::from_secs(15),
        "get",
        kv.get("lz/", Some(GetOptions::new().with_prefix())),
    )
    .await
    .expect("get");
    let keys: Vec<String> = left
        .kvs()
        .iter()
        .map(|k| String::from_utf8_lossy(k.key()).into_owned())
        .collect();
    assert!(
        keys.is_empty(),
        "the revoke answered ok, but keys attached to the lease are left: {keys:?}"
    );
    assert_eq!(c.node(l).ranges.len(), 2, "the range split");
}
