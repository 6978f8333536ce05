//! Stale replicas: a node removed from a range while it heard nothing keeps
//! its replica, with the range's old span. After the range splits, that span
//! covers the new range too, so a snapshot of the new range is refused there
//! (initialized replicas never overlap); and if the node is added to the
//! range again, its old replica ignores the new peer's messages. Either way
//! the node must learn its replica was removed and destroy it
//! (`node/src/store/gc.rs`).

use std::time::{Duration, Instant};

use strata_proto::strata::placement_client::PlacementClient;
use strata_proto::strata::{AdminKind, AdminRequest, AdminResponse, AllocIdsRequest, Peer};

use crate::admin_split::split_request;
use crate::catchup::caught_up;
use crate::cluster::{eventually, Cluster, Opts};
use crate::{put, within};
use strata_node::transport::memory::{FilterId, Rule};

/// One membership change asked of node `on` (no retry).
async fn admin(
    c: &Cluster,
    on: u64,
    range_id: u64,
    kind: AdminKind,
    peer: Peer,
) -> Result<tonic::Response<AdminResponse>, tonic::Status> {
    let req = AdminRequest {
        range_id,
        epoch: None,
        kind: kind as i32,
        peer: Some(peer),
        split_key: Vec::new(),
    };
    let mut client = c.node_client(on).await;
    within(Duration::from_secs(10), "admin", client.admin(req)).await
}

/// Asks `range_id`'s leader for a membership change, retrying until it is
/// accepted (the range may be busy with the previous one for a moment).
async fn change(c: &Cluster, range_id: u64, kind: AdminKind, peer: Peer) {
    let start = Instant::now();
    loop {
        let leader = c.wait_leader(range_id).await;
        let resp = admin(c, leader, range_id, kind, peer).await;
        match resp.map(|r| r.into_inner().error) {
            Ok(None) => return,
            other => assert!(
                start.elapsed() < Duration::from_secs(20),
                "range {range_id}: {kind:?} of {peer:?} refused: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A new peer id from placement, as its scheduler would allocate it.
async fn new_peer(c: &Cluster, node_id: u64) -> Peer {
    let mut pc = PlacementClient::connect(format!("http://{}", c.placement))
        .await
        .expect("placement");
    let ids = pc
        .alloc_ids(AllocIdsRequest {
            ranges: 0,
            peers: 1,
        })
        .await
        .expect("peer id")
        .into_inner();
    Peer {
        id: ids.first_peer_id,
        node_id,
        learner: true,
    }
}

/// Waits until `range_id`'s leader lists `peer` as a voter (`true`) or not
/// at all (`false`).
async fn wait_membership(c: &Cluster, range_id: u64, peer: u64, voter: bool) {
    eventually(
        Duration::from_secs(30),
        "a membership change to apply",
        || {
            let leader = c.leader_of(range_id)?;
            let r = c.node(leader).ranges.get(&range_id)?.clone();
            let desc = r.desc.read();
            let p = desc.peers.iter().find(|p| p.id == peer);
            (p.is_some_and(|p| !p.learner) == voter && p.is_some() == voter).then_some(())
        },
    )
    .await;
}

/// Range 1 is on nodes A, B and C of four. C is cut off while D replaces it
/// and range 1 splits; healed, C still holds range 1's old replica (over the
/// whole keyspace) and is then given a replica of the new range. Its
/// snapshot must get in: C destroys the stale replica, hosts the new range
/// with its leader's data, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_replica_does_not_keep_a_new_range_out() {
    let _fp = fail::FailScenario::setup();
    let (c, leader, spare) = four_nodes().await;
    let stale = c
        .others(leader)
        .into_iter()
        .find(|n| *n != spare)
        .expect("a follower");
    let mut kv = c.client().await;
    for i in 0..30 {
        put(&mut kv, &format!("k/{i:02}"), "before").await;
    }

    let cut = remove_while_cut_off(&c, stale).await;
    let added = new_peer(&c, spare).await;
    change(&c, 1, AdminKind::AddLearner, added).await;
    wait_membership(&c, 1, added.id, true).await;
    for i in 0..30 {
        put(&mut kv, &format!("k/{i:02}"), &format!("after {i}")).await;
    }
    let l = c.wait_leader(1).await;
    let resp = c
        .node_client(l)
        .await
        .admin(split_request(1, b"k/15"))
        .await
        .expect("admin split")
        .into_inner();
    assert!(resp.error.is_none(), "{:?}", resp.error);
    let new_range = eventually(Duration::from_secs(20), "the split's new range", || {
        c.node(l)
            .ranges
            .iter()
            .map(|r| *r.key())
            .find(|id| *id != 1)
    })
    .await;
    c.net.remove(cut);
    assert!(
        c.node(stale).ranges.contains_key(&1),
        "node {stale} still holds range 1's old replica (else this test checks nothing)"
    );

    let given = new_peer(&c, stale).await;
    change(&c, new_range, AdminKind::AddLearner, given).await;
    assert_eq!(
        hosts_what_it_should(&c, stale, new_range).await,
        2,
        "two ranges"
    );
    wait_membership(&c, new_range, given.id, true).await;
    assert!(
        !c.node(stale).ranges.contains_key(&1),
        "node {stale}'s stale replica of range 1 is gone"
    );
}

/// Range 1 is on nodes A, B and C. C is cut off while it is removed, and
/// writes go on; healed, C is added to range 1 again, under a new peer. C's
/// old replica must give way to the new peer, which catches up with exactly
/// its leader's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_added_again_replaces_its_removed_replica() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let leader = c.wait_leader(1).await;
    let stale = c.others(leader)[0];
    let mut kv = c.client().await;
    for i in 0..10 {
        put(&mut kv, &format!("k/{i:02}"), "before").await;
    }
    let cut = remove_while_cut_off(&c, stale).await;
    for i in 0..10 {
        put(&mut kv, &format!("k/{i:02}"), &format!("after {i}")).await;
    }
    c.net.remove(cut);
    let old_peer = c.node(stale).ranges.get(&1).map(|r| r.peer_id);
    assert!(
        old_peer.is_some(),
        "node {stale} still holds its old replica"
    );

    let given = new_peer(&c, stale).await;
    change(&c, 1, AdminKind::AddLearner, given).await;
    assert_eq!(hosts_what_it_should(&c, stale, 1).await, 1, "one range");
    wait_membership(&c, 1, given.id, true).await;
    assert_eq!(
        c.node(stale).ranges.get(&1).map(|r| r.peer_id),
        Some(given.id),
        "node {stale} hosts range 1 as its new peer"
    );
}

/// Placement may ask for a learner again before the first request applied
/// (it did under load: its cool-down ended first). A range must never get a
/// second peer on a node: the leader refuses a membership change while one
/// is in flight, and a learner on a node that already has a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_never_gets_two_peers_in_one_range() {
    let _fp = fail::FailScenario::setup();
    let (c, leader, spare) = four_nodes().await;
    let ask = |peer: Peer| admin(&c, leader, 1, AdminKind::AddLearner, peer);
    let first = new_peer(&c, spare).await;
    let again = new_peer(&c, spare).await;
    ask(first).await.expect("the first learner is accepted");
    // At once, before the first applied: refused as in progress; or, if it
    // applied already, refused because the node has a replica.
    let e = ask(again)
        .await
        .expect_err("a second peer on the same node");
    assert!(
        e.message().contains("still in progress") || e.message().contains("already has a replica"),
        "{e:?}"
    );
    wait_membership(&c, 1, first.id, true).await;
    let e = ask(again)
        .await
        .expect_err("a second peer on the same node");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("already has a replica"), "{e:?}");
    let r = c.node(leader).ranges.get(&1).expect("range 1").clone();
    let on_spare = r
        .desc
        .read()
        .peers
        .iter()
        .filter(|p| p.node_id == spare)
        .count();
    assert_eq!(on_spare, 1, "one peer of range 1 on node {spare}");
}

/// A 4-node cluster: range 1's leader, and the node outside range 1.
async fn four_nodes() -> (Cluster, u64, u64) {
    let c = Cluster::start(Opts {
        nodes: 4,
        ..Opts::default()
    })
    .await;
    let leader = c.wait_leader(1).await;
    let in_range: Vec<u64> = {
        let r = c.node(leader).ranges.get(&1).expect("range 1").clone();
        let d = r.desc.read();
        d.peers.iter().map(|p| p.node_id).collect()
    };
    let spare = c
        .nodes
        .iter()
        .map(|n| n.node_id)
        .find(|n| !in_range.contains(n))
        .expect("a node outside range 1");
    (c, leader, spare)
}

/// Cuts `node` off and removes it from range 1 (it hears of neither);
/// returns the rule to heal it with.
async fn remove_while_cut_off(c: &Cluster, node: u64) -> FilterId {
    let cut = c.net.add(Rule::new().touching(node).drop());
    let removed = c.peer(c.wait_leader(1).await, 1, node);
    change(c, 1, AdminKind::RemovePeer, removed).await;
    wait_membership(c, 1, removed.id, false).await;
    cut
}

/// Waits until `node` hosts exactly what the descriptors say, with its
/// leaders' data (`catchup::caught_up`), after it was given `range_id`;
/// returns the number of ranges.
async fn hosts_what_it_should(c: &Cluster, node: u64, range_id: u64) -> usize {
    let added_at = Instant::now();
    let limit = Duration::from_secs(60);
    loop {
        match caught_up(c, node).await {
            Ok(n) => return n,
            Err(e) if added_at.elapsed() > limit => panic!(
                "node {node} was not given range {range_id} {limit:?} after it was added: {e}"
            ),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
