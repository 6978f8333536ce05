//! etcd's Lock and Election services (the router's `concurrency/`) over a
//! lock name whose keys lie in several ranges: every contender's key in a
//! range of its own (leases chosen so), so each lock and campaign is a
//! cross-range txn and each wait a watch on another range.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::LeaseGrantOptions;
use strata_proto::etcd_auth::v3electionpb::election_client::ElectionClient;
use strata_proto::etcd_auth::v3lockpb::lock_client::LockClient;
use strata_proto::etcd_election::{CampaignRequest, LeaderRequest, ResignRequest};
use strata_proto::etcd_lock::{LockRequest, UnlockRequest};
use tonic::transport::Channel;

use crate::cluster::{Cluster, Opts};
use crate::within;
use crate::xtxn::split_at;

const T: Duration = Duration::from_secs(20);

async fn channel(c: &Cluster) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", c.router))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// Leases 0x10, 0x20, ...: their lock keys `NAME/10`, `NAME/20`, ... fall
/// in the ranges split at `NAME/15`, `NAME/25`, ...
async fn split_by_lease(c: &Cluster, name: &str, n: u64) -> Vec<i64> {
    let splits: Vec<String> = (1..=n).map(|i| format!("{name}/{i}5")).collect();
    split_at(c, &splits).await;
    let mut kv = c.client().await;
    let mut leases = Vec::new();
    for i in 1..=n {
        let id = (i * 16) as i64;
        let g = within(
            T,
            "grant",
            kv.lease_grant(60, Some(LeaseGrantOptions::new().with_id(id))),
        )
        .await
        .expect("grant");
        assert_eq!(g.id(), id);
        leases.push(id);
    }
    leases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_over_several_ranges_excludes_and_hands_over() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let leases = split_by_lease(&c, "mtx", 4).await;
    let ch = channel(&c).await;
    let inside = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for lease in leases {
        let (mut lock, inside) = (LockClient::new(ch.clone()), inside.clone());
        workers.push(tokio::spawn(async move {
            for _ in 0..3 {
                let held = within(
                    Duration::from_secs(60),
                    "lock",
                    lock.lock(LockRequest {
                        name: b"mtx".to_vec(),
                        lease,
                    }),
                )
                .await
                .expect("lock")
                .into_inner();
                assert_eq!(held.key, format!("mtx/{lease:x}").into_bytes());
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                tokio::time::sleep(Duration::from_millis(100)).await;
                inside.store(false, Ordering::SeqCst);
                within(T, "unlock", lock.unlock(UnlockRequest { key: held.key }))
                    .await
                    .expect("unlock");
            }
        }));
    }
    for w in workers {
        within(Duration::from_secs(120), "worker", w)
            .await
            .expect("worker");
    }
    let mut kv = c.client().await;
    let left = kv
        .get("mtx/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert!(left.kvs().is_empty(), "{:?}", left.kvs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn election_over_several_ranges_hands_over_on_resign() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let leases = split_by_lease(&c, "el", 3).await;
    let ch = channel(&c).await;
    let mut el = ElectionClient::new(ch.clone());
    // The candidate whose key sorts last campaigns first: it leads.
    let (first, second) = (leases[2], leases[0]);
    let won = within(
        T,
        "campaign",
        el.campaign(CampaignRequest {
            name: b"el".to_vec(),
            lease: first,
            value: b"a".to_vec(),
        }),
    )
    .await
    .expect("campaign")
    .into_inner();
    let leader = won.leader.expect("leader");
    assert_eq!(leader.key, format!("el/{first:x}").into_bytes());
    let mut observe = within(
        T,
        "observe",
        el.observe(LeaderRequest {
            name: b"el".to_vec(),
        }),
    )
    .await
    .expect("observe")
    .into_inner();
    let seen = within(T, "observed", observe.message())
        .await
        .expect("stream")
        .expect("a leader");
    assert_eq!(seen.kv.expect("kv").value, b"a");

    let mut el2 = el.clone();
    let waiting = tokio::spawn(async move {
        el2.campaign(CampaignRequest {
            name: b"el".to_vec(),
            lease: second,
            value: b"b".to_vec(),
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !waiting.is_finished(),
        "a second leader while the first leads"
    );
    within(
        T,
        "resign",
        el.resign(ResignRequest {
            leader: Some(leader),
        }),
    )
    .await
    .expect("resign");
    let next = within(T, "second campaign", waiting)
        .await
        .expect("join")
        .expect("campaign")
        .into_inner()
        .leader
        .expect("leader");
    assert_eq!(next.key, format!("el/{second:x}").into_bytes());
    let seen = within(T, "observed", observe.message())
        .await
        .expect("stream")
        .expect("a leader");
    let kv = seen.kv.expect("kv");
    assert_eq!((kv.key, kv.value), (next.key, b"b".to_vec()));
}
