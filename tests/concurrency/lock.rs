//! Lock and Unlock through a client generated from `proto/etcd/v3lock.proto`.

use std::time::{Duration, Instant};

use strata_proto::etcd_auth::v3electionpb::election_client::ElectionClient;
use strata_proto::etcd_auth::v3lockpb::lock_client::LockClient;
use strata_proto::etcd_election::CampaignRequest;
use strata_proto::etcd_lock::{LockRequest, UnlockRequest};

use crate::common::*;
use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waits_for_the_holder_and_unlock_hands_over() {
    let c = shared();
    let name = prefix("lock").trim_end_matches('/').to_string();
    let mut lock = LockClient::new(channel(c).await);
    let (l1, l2) = (grant(c, 60).await, grant(c, 60).await);

    let first = within(
        REQUEST_TIMEOUT,
        "lock 1",
        lock.lock(LockRequest {
            name: name.clone().into(),
            lease: l1,
        }),
    )
    .await
    .expect("lock 1")
    .into_inner();
    assert_eq!(first.key, format!("{name}/{l1:x}").into_bytes());
    let rev1 = first.header.expect("header").revision;
    assert!(rev1 > 0);

    // Locking again with the same lease holds at once, same key.
    let again = within(
        REQUEST_TIMEOUT,
        "lock 1 again",
        lock.lock(LockRequest {
            name: name.clone().into(),
            lease: l1,
        }),
    )
    .await
    .expect("relock")
    .into_inner();
    assert_eq!(again.key, first.key);

    // A second contender waits...
    let mut lock2 = lock.clone();
    let n2 = name.clone();
    let waiter = tokio::spawn(async move {
        let r = lock2
            .lock(LockRequest {
                name: n2.into(),
                lease: l2,
            })
            .await;
        (r, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiter.is_finished(), "the second lock waits for the first");
    assert_eq!(
        keys_under(c, &format!("{name}/")).await,
        vec![format!("{name}/{l1:x}"), format!("{name}/{l2:x}")]
    );

    // ...until the first unlocks.
    let unlocked_at = Instant::now();
    let u = within(
        REQUEST_TIMEOUT,
        "unlock",
        lock.unlock(UnlockRequest {
            key: first.key.clone(),
        }),
    )
    .await
    .expect("unlock")
    .into_inner();
    assert!(u.header.expect("header").revision > rev1);
    let (second, got_at) = within(REQUEST_TIMEOUT, "lock 2", waiter)
        .await
        .expect("join");
    let second = second.expect("lock 2").into_inner();
    assert!(got_at >= unlocked_at);
    assert_eq!(second.key, format!("{name}/{l2:x}").into_bytes());
    assert_eq!(
        keys_under(c, &format!("{name}/")).await,
        vec![format!("{name}/{l2:x}")]
    );
    within(
        REQUEST_TIMEOUT,
        "unlock 2",
        lock.unlock(UnlockRequest { key: second.key }),
    )
    .await
    .expect("unlock 2");
    assert!(keys_under(c, &format!("{name}/")).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_past_its_deadline_leaves_no_key() {
    let c = shared();
    let name = prefix("lockdl").trim_end_matches('/').to_string();
    let mut lock = LockClient::new(channel(c).await);
    let (l1, l2) = (grant(c, 60).await, grant(c, 60).await);
    let held = within(
        REQUEST_TIMEOUT,
        "lock",
        lock.lock(LockRequest {
            name: name.clone().into(),
            lease: l1,
        }),
    )
    .await
    .expect("lock")
    .into_inner();
    // Sent over plain HTTP/2: the answer is the server's (tonic's client
    // would answer the deadline itself).
    let started = Instant::now();
    let req = LockRequest {
        name: name.clone().into(),
        lease: l2,
    };
    let e = rawgrpc::unary(
        &c.endpoint,
        "/v3lockpb.Lock/Lock",
        prost::Message::encode_to_vec(&req),
        &[("grpc-timeout", "800m")],
        REQUEST_TIMEOUT,
    )
    .await;
    // etcd's handler returns Go's context error: Unknown.
    assert_eq!(
        (e.code, e.message.as_str()),
        (2, "context deadline exceeded")
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The waiter's key is deleted: only the holder's is left.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = keys_under(c, &format!("{name}/")).await;
        if keys == vec![format!("{name}/{l1:x}")] {
            break;
        }
        assert!(Instant::now() < deadline, "waiter's key left: {keys:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A waiter whose client cancels the call is cleaned up too.
    let mut lock3 = lock.clone();
    let n3 = name.clone();
    let waiter = tokio::spawn(async move {
        lock3
            .lock(LockRequest {
                name: n3.into(),
                lease: l2,
            })
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while keys_under(c, &format!("{name}/")).await.len() < 2 {
        assert!(Instant::now() < deadline, "the second waiter never queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    waiter.abort();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = keys_under(c, &format!("{name}/")).await;
        if keys == vec![format!("{name}/{l1:x}")] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cancelled waiter's key left: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    within(
        REQUEST_TIMEOUT,
        "unlock",
        lock.unlock(UnlockRequest { key: held.key }),
    )
    .await
    .expect("unlock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_errors_as_etcd() {
    let c = shared();
    let name = prefix("lockerr").trim_end_matches('/').to_string();
    let mut lock = LockClient::new(channel(c).await);
    let e = within(
        REQUEST_TIMEOUT,
        "lock on a missing lease",
        lock.lock(LockRequest {
            name: name.clone().into(),
            lease: 0x7eadbeef,
        }),
    )
    .await
    .expect_err("no such lease");
    // Through clientv3 inside etcd's server, etcd's errors lose their code.
    assert_eq!(code_msg(&e), (tonic::Code::Unknown, LEASE_NOT_FOUND));
    let e = within(
        REQUEST_TIMEOUT,
        "unlock of nothing",
        lock.unlock(UnlockRequest { key: Vec::new() }),
    )
    .await
    .expect_err("empty key");
    assert_eq!(code_msg(&e), (tonic::Code::Unknown, EMPTY_KEY));
    // Unlocking a key that is not there is fine.
    within(
        REQUEST_TIMEOUT,
        "unlock",
        lock.unlock(UnlockRequest {
            key: format!("{name}/none").into_bytes(),
        }),
    )
    .await
    .expect("unlock of a missing key");
}

/// A Lock or Campaign without a lease runs under a new session lease of
/// etcd's default TTL (60 s), which the key is attached to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lease_means_a_new_session_lease() {
    let c = shared();
    let name = prefix("nolease").trim_end_matches('/').to_string();
    let mut lock = LockClient::new(channel(c).await);
    let held = within(
        REQUEST_TIMEOUT,
        "lock without lease",
        lock.lock(LockRequest {
            name: name.clone().into(),
            lease: 0,
        }),
    )
    .await
    .expect("lock")
    .into_inner();
    let key = String::from_utf8(held.key.clone()).expect("utf-8 key");
    let hex = key
        .strip_prefix(&format!("{name}/"))
        .unwrap_or_else(|| panic!("key {key} not under {name}/"));
    let lease = i64::from_str_radix(hex, 16).expect("hex lease id");
    assert!(lease > 0, "{key}");
    let mut kv = c.client().await;
    let ttl = within(REQUEST_TIMEOUT, "ttl", kv.lease_time_to_live(lease, None))
        .await
        .expect("time to live");
    assert!(
        ttl.granted_ttl() == 60 && ttl.ttl() > 0 && ttl.ttl() <= 60,
        "lease {lease}: granted {} ttl {}",
        ttl.granted_ttl(),
        ttl.ttl()
    );
    let got = within(REQUEST_TIMEOUT, "get", kv.get(key.as_str(), None))
        .await
        .expect("get");
    assert_eq!(got.kvs()[0].lease(), lease);

    let mut el = ElectionClient::new(channel(c).await);
    let won = within(
        REQUEST_TIMEOUT,
        "campaign without lease",
        el.campaign(CampaignRequest {
            name: format!("{name}-e").into(),
            lease: 0,
            value: b"v".to_vec(),
        }),
    )
    .await
    .expect("campaign")
    .into_inner()
    .leader
    .expect("leader");
    assert!(won.lease > 0 && won.lease != lease);
    assert_eq!(won.key, format!("{name}-e/{:x}", won.lease).into_bytes());
    for id in [lease, won.lease] {
        within(REQUEST_TIMEOUT, "revoke", kv.lease_revoke(id))
            .await
            .expect("revoke");
    }
}
