//! `Admin` SPLIT: the range leader splits its range on request.

use std::time::Duration;

use etcd_client::GetOptions;
use strata_proto::strata::{AdminKind, AdminRequest, KvKind, KvRequest, RouteErrorKind};

use crate::cluster::{eventually, Cluster, Opts};
use crate::{put, within};

/// An admin split of `range_id` at `split_key` (empty: its median key).
pub fn split_request(range_id: u64, split_key: &[u8]) -> AdminRequest {
    AdminRequest {
        range_id,
        epoch: None,
        kind: AdminKind::Split as i32,
        peer: None,
        split_key: split_key.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_split_makes_two_ranges() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let l = c.wait_leader(1).await;
    let mut leader = c.node_client(l).await;

    // Too small: one live key.
    let mut kv = c.client().await;
    put(&mut kv, "split/00", "v").await;
    let small = within(
        Duration::from_secs(20),
        "split",
        leader.admin(split_request(1, b"")),
    )
    .await
    .expect_err("a range with one key does not split");
    assert_eq!(small.code(), tonic::Code::FailedPrecondition, "{small:?}");
    assert!(small.message().contains("too small"), "{small:?}");

    for i in 1..10 {
        put(&mut kv, &format!("split/{i:02}"), "v").await;
    }
    // Not the leader: a routing error, as for the other admin kinds.
    let follower = c.others(l)[0];
    let resp = c
        .node_client(follower)
        .await
        .admin(split_request(1, b""))
        .await
        .expect("admin on a follower")
        .into_inner();
    assert_eq!(
        resp.error.map(|e| e.kind),
        Some(RouteErrorKind::NotLeader as i32)
    );
    let old_epoch = c.node(l).ranges.get(&1).expect("range 1").epoch();
    let resp = leader.admin(split_request(1, b"")).await;
    let resp = resp.expect("admin split").into_inner();
    assert!(resp.error.is_none(), "{:?}", resp.error);

    let ranges = eventually(Duration::from_secs(20), "two ranges on every node", || {
        let all: Vec<Vec<_>> = c
            .nodes
            .iter()
            .map(|n| {
                let mut d: Vec<_> = n.ranges.iter().map(|r| r.desc.read().clone()).collect();
                d.sort_by_key(|d| d.id);
                d
            })
            .collect();
        all.iter().all(|d| d.len() == 2).then(|| all[0].clone())
    })
    .await;
    let split_key = ranges[0].end_key.clone();
    assert_eq!(ranges[1].start_key, split_key);
    assert!(
        split_key.as_slice() > b"split/00".as_slice()
            && split_key.as_slice() <= b"split/09".as_slice(),
        "split at {:?}",
        String::from_utf8_lossy(&split_key)
    );
    // A request under the old epoch learns both halves from the answer
    // (routers then need not wait for placement to hear of the split).
    let put_body = strata_proto::etcd::PbPutRequest {
        key: b"split/05".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    };
    let stale = leader
        .kv(KvRequest {
            range_id: 1,
            epoch: Some(old_epoch),
            kind: KvKind::KvPut as i32,
            request: prost::Message::encode_to_vec(&put_body),
            read_revision: 0,
        })
        .await
        .expect("kv under the old epoch")
        .into_inner();
    let e = stale.error.expect("refused under the old epoch");
    assert_eq!(e.kind, RouteErrorKind::EpochNotMatch as i32);
    assert_eq!(
        e.ranges.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![ranges[0].id, ranges[1].id],
        "the answer names the range as it is now and the range split off it"
    );
    let got = within(
        Duration::from_secs(15),
        "read both ranges",
        kv.get("split/", Some(GetOptions::new().with_prefix())),
    )
    .await
    .expect("get");
    assert_eq!(got.kvs().len(), 10);
    // A key outside range 1 now.
    let bad = leader.admin(split_request(1, b"zzz")).await;
    assert!(
        matches!(&bad, Err(s) if s.code() == tonic::Code::InvalidArgument),
        "{bad:?}"
    );
    eprintln!(
        "admin split: ranges {} and {} split at {:?}",
        ranges[0].id,
        ranges[1].id,
        String::from_utf8_lossy(&split_key)
    );
}

/// A split's commit reaches the followers at once, not with the leader's next
/// append or heartbeat: they apply the split with the leader, so the new
/// range has its replicas as soon as its leader does (applied up to two ticks
/// later, splits under load stalled a watch across them for 30 s).
/// Heartbeats of the range are dropped and nothing else is written, so only
/// that broadcast can tell the followers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn followers_apply_a_split_without_waiting_for_a_heartbeat() {
    use raft::eraftpb::MessageType;
    use strata_node::transport::memory::Rule;

    let _fp = fail::FailScenario::setup();
    // Election timeout 3 s: the 2 s without heartbeats below elect no one.
    let c = Cluster::start(Opts {
        raft_tick_ms: 300,
        ..Opts::default()
    })
    .await;
    let l = c.wait_leader(1).await;
    let mut kv = c.client().await;
    for i in 0..10 {
        put(&mut kv, &format!("bsplit/{i:02}"), "v").await;
    }
    let quiet = c.net.add(
        Rule::new()
            .range(1)
            .from(l)
            .msg_type(MessageType::MsgHeartbeat)
            .drop(),
    );
    let resp = within(
        Duration::from_secs(10),
        "split",
        c.node_client(l).await.admin(split_request(1, b"")),
    )
    .await
    .expect("admin split")
    .into_inner();
    assert!(resp.error.is_none(), "{:?}", resp.error);
    eventually(
        Duration::from_secs(2),
        "the split applied on every node",
        || c.nodes.iter().all(|n| n.ranges.len() == 2).then_some(()),
    )
    .await;
    c.net.remove(quiet);
}
