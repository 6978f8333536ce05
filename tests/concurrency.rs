//! etcd's Lock and Election services (v3lock, v3election) and etcdctl's
//! `lock` and `elect`: contenders wait their turn, leaders hand over, errors
//! as etcd gives them, an abandoned waiter leaves no key.
//!
//! Every expectation here was checked against a real etcd 3.4
//! (`STRATA_TEST_TARGET=etcd cargo test --features strata/failpoints --test concurrency`).
//! A cluster split into many ranges runs the same services in
//! `tests/faults/concurrency.rs`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use etcd_client::GetOptions;
use strata_proto::etcd_auth::v3electionpb::election_client::ElectionClient;
use strata_proto::etcd_auth::v3lockpb::lock_client::LockClient;
use strata_proto::etcd_election::{
    CampaignRequest, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ResignRequest,
};
use strata_proto::etcd_lock::{LockRequest, UnlockRequest};
use tonic::transport::Channel;

async fn channel(c: &Cluster) -> Channel {
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
async fn next_leader(o: &mut tonic::Streaming<LeaderResponse>) -> LeaderResponse {
    within(RECV_TIMEOUT, "observe message", o.message())
        .await
        .expect("observe stream")
        .expect("an observed leader")
}

fn code_msg(s: &tonic::Status) -> (tonic::Code, &str) {
    (s.code(), s.message())
}

async fn grant(c: &Cluster, ttl: i64) -> i64 {
    let mut kv = c.client().await;
    within(REQUEST_TIMEOUT, "grant", kv.lease_grant(ttl, None))
        .await
        .expect("grant")
        .id()
}

/// Keys under `prefix` in create order.
async fn keys_under(c: &Cluster, prefix: &str) -> Vec<String> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_campaign_proclaim_observe_resign() {
    let c = shared();
    let name = prefix("elect").trim_end_matches('/').to_string();
    let mut el = ElectionClient::new(channel(c).await);
    let (l1, l2) = (grant(c, 60).await, grant(c, 60).await);

    let e = within(
        REQUEST_TIMEOUT,
        "leader of nothing",
        el.leader(LeaderRequest {
            name: name.clone().into(),
        }),
    )
    .await
    .expect_err("no leader yet");
    assert_eq!(code_msg(&e), (tonic::Code::Unknown, "election: no leader"));

    // An observer from before any leader (etcd sends the stream's headers
    // with its first message: the call returns once there is a leader).
    let mut el_obs = el.clone();
    let n_obs = name.clone();
    let observing =
        tokio::spawn(async move { el_obs.observe(LeaderRequest { name: n_obs.into() }).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let won = within(
        REQUEST_TIMEOUT,
        "campaign 1",
        el.campaign(CampaignRequest {
            name: name.clone().into(),
            lease: l1,
            value: b"one".to_vec(),
        }),
    )
    .await
    .expect("campaign 1")
    .into_inner();
    let leader1 = won.leader.expect("leader key");
    assert_eq!(leader1.name, name.as_bytes());
    assert_eq!(leader1.key, format!("{name}/{l1:x}").into_bytes());
    assert_eq!(leader1.lease, l1);
    assert_eq!(leader1.rev, won.header.expect("header").revision);

    let mut observe = within(REQUEST_TIMEOUT, "observe", observing)
        .await
        .expect("join")
        .expect("observe")
        .into_inner();
    let seen = next_leader(&mut observe).await;
    let kv = seen.kv.expect("kv");
    assert_eq!(
        (kv.key.as_slice(), kv.value.as_slice()),
        (leader1.key.as_slice(), &b"one"[..])
    );

    // Proclaim: the leader's value changes; observers see it.
    within(
        REQUEST_TIMEOUT,
        "proclaim",
        el.proclaim(ProclaimRequest {
            leader: Some(leader1.clone()),
            value: b"uno".to_vec(),
        }),
    )
    .await
    .expect("proclaim");
    let seen = next_leader(&mut observe).await;
    assert_eq!(seen.kv.expect("kv").value, b"uno");
    let now = within(
        REQUEST_TIMEOUT,
        "leader",
        el.leader(LeaderRequest {
            name: name.clone().into(),
        }),
    )
    .await
    .expect("leader")
    .into_inner();
    let kv = now.kv.expect("kv");
    assert_eq!(
        (kv.key, kv.value, kv.lease),
        (leader1.key.clone(), b"uno".to_vec(), l1)
    );

    // A second candidate waits while the first leads.
    let mut el2 = el.clone();
    let n2 = name.clone();
    let second = tokio::spawn(async move {
        el2.campaign(CampaignRequest {
            name: n2.into(),
            lease: l2,
            value: b"two".to_vec(),
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!second.is_finished(), "the second candidate waits");

    // Resign: the second wins; the observer sees it.
    within(
        REQUEST_TIMEOUT,
        "resign",
        el.resign(ResignRequest {
            leader: Some(leader1.clone()),
        }),
    )
    .await
    .expect("resign");
    let leader2 = within(REQUEST_TIMEOUT, "campaign 2", second)
        .await
        .expect("join")
        .expect("campaign 2")
        .into_inner()
        .leader
        .expect("leader key");
    assert_eq!(leader2.key, format!("{name}/{l2:x}").into_bytes());
    assert!(leader2.rev > leader1.rev);
    let seen = next_leader(&mut observe).await;
    let kv = seen.kv.expect("kv");
    assert_eq!((kv.key, kv.value), (leader2.key.clone(), b"two".to_vec()));

    // The old leader key can no longer proclaim; resigning it again is a no-op.
    let e = within(
        REQUEST_TIMEOUT,
        "stale proclaim",
        el.proclaim(ProclaimRequest {
            leader: Some(leader1.clone()),
            value: b"stale".to_vec(),
        }),
    )
    .await
    .expect_err("not the leader");
    assert_eq!(code_msg(&e), (tonic::Code::Unknown, "election: not leader"));
    within(
        REQUEST_TIMEOUT,
        "resign again",
        el.resign(ResignRequest {
            leader: Some(leader1),
        }),
    )
    .await
    .expect("resign of a gone key");
    for e in [
        within(
            REQUEST_TIMEOUT,
            "proclaim without leader",
            el.proclaim(ProclaimRequest {
                leader: None,
                value: b"x".to_vec(),
            }),
        )
        .await
        .expect_err("no leader field"),
        within(
            REQUEST_TIMEOUT,
            "resign without leader",
            el.resign(ResignRequest { leader: None }),
        )
        .await
        .expect_err("no leader field"),
    ] {
        assert_eq!(
            code_msg(&e),
            (tonic::Code::Unknown, "\"leader\" field must be provided")
        );
    }
    // A stale LeaderKey with the right key but another revision.
    let e = within(
        REQUEST_TIMEOUT,
        "proclaim at a wrong rev",
        el.proclaim(ProclaimRequest {
            leader: Some(LeaderKey {
                rev: leader2.rev + 1000,
                ..leader2.clone()
            }),
            value: b"x".to_vec(),
        }),
    )
    .await
    .expect_err("wrong rev");
    assert_eq!(code_msg(&e), (tonic::Code::Unknown, "election: not leader"));
    within(
        REQUEST_TIMEOUT,
        "resign 2",
        el.resign(ResignRequest {
            leader: Some(leader2),
        }),
    )
    .await
    .expect("resign 2");
    assert!(keys_under(c, &format!("{name}/")).await.is_empty());
}

fn sigint(b: &Background) {
    if let Some(pid) = b.pid() {
        // SAFETY: a signal to a child we spawned and have not reaped.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGINT);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lock_second_contender_runs_after_the_first() {
    let c = shared();
    let name = prefix("ctllock").trim_end_matches('/').to_string();
    let dir = tempfile::tempdir().expect("tmp");
    let a_end = dir.path().join("a_end");
    let b_start = dir.path().join("b_start");
    // A holds the lock for 2 s, recording when it let go; B records when it
    // got it. (`date +%s%N`: nanoseconds.)
    let a = c.etcdctl_spawn(&[
        "lock",
        &name,
        "--",
        "sh",
        "-c",
        &format!("echo A-in; sleep 2; date +%s%N > {}", a_end.display()),
    ]);
    assert!(
        a.wait_stdout(Duration::from_secs(20), |s| s.contains("A-in")),
        "A never got the lock: {}",
        a.stderr()
    );
    let mut b = c.etcdctl_spawn(&[
        "lock",
        &name,
        "--",
        "sh",
        "-c",
        &format!("date +%s%N > {}; echo B-in", b_start.display()),
    ]);
    assert!(
        b.wait_stdout(Duration::from_secs(20), |s| s.contains("B-in")),
        "B never got the lock: {}",
        b.stderr()
    );
    let read = |p: &std::path::Path| -> u128 {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .parse()
            .expect("a time")
    };
    assert!(
        read(&b_start) >= read(&a_end),
        "B held the lock before A let go"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.try_wait().is_none() {
        assert!(Instant::now() < deadline, "etcdctl lock did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(a);
    // Both sessions ended: their lock keys are gone (leases revoked).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !keys_under(c, &format!("{name}/")).await.is_empty() {
        assert!(Instant::now() < deadline, "lock keys left behind");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_and_listen_see_the_leader_change() {
    let c = shared();
    let name = prefix("ctlelect").trim_end_matches('/').to_string();
    let listen = c.etcdctl_spawn(&["elect", "--listen", &name]);
    let p1 = c.etcdctl_spawn(&["elect", &name, "first"]);
    assert!(
        p1.wait_stdout(Duration::from_secs(20), |s| s.contains("first")),
        "first candidate not elected: {}",
        p1.stderr()
    );
    assert!(
        listen.wait_stdout(Duration::from_secs(20), |s| s.contains("first")),
        "listener did not see the first leader: {}",
        listen.stderr()
    );
    let p2 = c.etcdctl_spawn(&["elect", &name, "second"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!p2.stdout().contains("second"), "two leaders at once");

    // The first leader stops (SIGINT: it resigns); the second takes over.
    sigint(&p1);
    assert!(
        p2.wait_stdout(Duration::from_secs(20), |s| s.contains("second")),
        "second candidate not elected: {}",
        p2.stderr()
    );
    assert!(
        listen.wait_stdout(Duration::from_secs(20), |s| s.contains("second")),
        "listener did not see the second leader: {}",
        listen.stdout()
    );
    // The listener prints `KEY\nVALUE` per leader: first's then second's.
    let out = listen.stdout();
    let first_at = out.find("first").expect("first");
    let second_at = out.find("second").expect("second");
    assert!(first_at < second_at, "{out}");
    assert!(out.contains(&format!("{name}/")), "{out}");
    sigint(&p2);
    let (_o, _e) = p1.finish();
    let _ = p2.finish();
    let _ = listen.finish();
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
