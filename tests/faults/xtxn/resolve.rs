//! A coordinator (router) that stops between the protocol's steps: the
//! participants resolve the txn themselves within seconds, the same way in
//! every range, and nothing stays frozen.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{list, put_all, split_at, split_keys};
use crate::cluster::{Cluster, Opts};
use crate::{put, within};

async fn stalled_txn(c: &Cluster, point: &str) -> Vec<(String, String)> {
    split_at(c, &split_keys("x/", 20)).await;
    let mut kv = c.client().await;
    let before: Vec<(String, String)> = (0..21)
        .map(|i| (format!("x/{i:02}"), "old".into()))
        .collect();
    put_all(&mut kv, &before).await;
    fail::cfg(point, "1*return").unwrap();
    let after: Vec<(String, String)> = (0..21)
        .map(|i| (format!("x/{i:02}"), "new".into()))
        .collect();
    // The router stops inside the protocol: the client gives up.
    let stuck = tokio::time::timeout(Duration::from_secs(1), put_all(&mut kv, &after)).await;
    assert!(
        stuck.is_err(),
        "the txn returned although its coordinator stalled"
    );
    before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinator_gone_after_prepare_aborts_everywhere() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let before = stalled_txn(&c, "txn_stall_after_prepare").await;
    let mut kv = c.client().await;
    // Every range is frozen until resolved: a write to each one gets
    // through within a few seconds, and the txn left nothing.
    within(Duration::from_secs(20), "writes after resolution", async {
        for (k, _) in &before {
            put(&mut kv, &format!("{k}/after"), "v").await;
        }
    })
    .await;
    let now = list(&mut kv, "x/", 0).await;
    let values: BTreeSet<&str> = now
        .iter()
        .filter(|(k, _, _)| !k.ends_with("/after"))
        .map(|(_, v, _)| v.as_str())
        .collect();
    assert_eq!(values, BTreeSet::from(["old"]), "{now:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinator_gone_after_deciding_commits_everywhere_at_one_revision() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    stalled_txn(&c, "txn_stall_after_decide").await;
    let mut kv = c.client().await;
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = within(Duration::from_secs(20), "list", list(&mut kv, "x/", 0)).await;
        if seen.iter().all(|(_, v, _)| v == "new") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.len(), 21);
    assert!(seen.iter().all(|(_, v, _)| v == "new"), "{seen:?}");
    let revs: BTreeSet<i64> = seen.iter().map(|(_, _, r)| *r).collect();
    assert_eq!(revs.len(), 1, "one revision: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_participant_leader_change_keeps_the_intent_and_it_is_resolved() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let before = stalled_txn(&c, "txn_stall_after_prepare").await;
    let range_of = |n: &strata_node::NodeHandle| {
        n.ranges
            .iter()
            .find(|r| r.desc.read().start_key == b"x/05")
            .map(|r| r.clone())
            .expect("the range of x/05")
    };
    // The intent is replicated: every replica of a participant holds it.
    let rid = range_of(&c.nodes[0]).desc.read().id;
    for n in &c.nodes {
        assert!(
            range_of(n).intent_id().is_some(),
            "replica without the intent"
        );
    }
    let l = c.wait_leader(rid).await;
    let to = c.others(l)[0];
    c.transfer_leader(rid, to).await;
    let mut kv = c.client().await;
    within(Duration::from_secs(20), "writes after resolution", async {
        for (k, _) in &before {
            put(&mut kv, &format!("{k}/after"), "v").await;
        }
    })
    .await;
    for n in &c.nodes {
        assert!(range_of(n).intent_id().is_none(), "intent left behind");
    }
    let old = list(&mut kv, "x/", 0).await;
    assert!(
        old.iter()
            .filter(|(k, _, _)| !k.ends_with("/after"))
            .all(|(_, v, _)| v == "old"),
        "{old:?}"
    );
}
