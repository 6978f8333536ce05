//! The request shapes etcd's clientv3 recipes send (STM, mutex, election)
//! and `del --prefix`, over keys in 20 ranges.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions, SortOrder, SortTarget,
    Txn, TxnOp, WatchOptions,
};

use super::{get_int, list, put_all, split_at, split_keys, transfer};
use crate::cluster::{Cluster, Opts};
use crate::within;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bank_transfers_over_20_ranges_keep_the_total_with_no_client_errors() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    split_at(&c, &split_keys("bank/", 20)).await;
    let mut kv = c.client().await;
    let accounts: Vec<String> = (0..20).map(|i| format!("bank/{i:02}")).collect();
    let init: Vec<(String, String)> = accounts.iter().map(|a| (a.clone(), "100".into())).collect();
    let rev = put_all(&mut kv, &init).await;
    // One txn over 20 ranges: one revision.
    let all = list(&mut kv, "bank/", 0).await;
    assert_eq!(all.len(), 20);
    assert!(all.iter().all(|(_, _, r)| *r == rev), "{all:?}");

    let errors = Arc::new(AtomicUsize::new(0));
    let conflicts = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let (mut kv, accounts) = (c.client().await, accounts.clone());
        let (errors, conflicts) = (errors.clone(), conflicts.clone());
        workers.push(tokio::spawn(async move {
            let mut seed = w * 7919 + 17;
            let mut next = move |n: u64| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 33) % n
            };
            for _ in 0..25 {
                let a = next(20) as usize;
                let b = (a + 1 + next(19) as usize) % 20;
                let amount = 1 + next(10) as i64;
                for attempt in 0.. {
                    assert!(attempt < 200, "a transfer never got through");
                    let (va, ra) = get_int(&mut kv, &accounts[a]).await;
                    let (vb, rb) = get_int(&mut kv, &accounts[b]).await;
                    let t = transfer(&accounts[a], ra, va - amount, &accounts[b], rb, vb + amount);
                    match tokio::time::timeout(Duration::from_secs(15), kv.txn(t)).await {
                        Ok(Ok(r)) if r.succeeded() => break,
                        Ok(Ok(_)) => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => {
                            eprintln!("transfer error: {e}");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            eprintln!("transfer timed out");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    for w in workers {
        within(Duration::from_secs(240), "bank workers", w)
            .await
            .expect("worker");
    }
    assert_eq!(errors.load(Ordering::Relaxed), 0, "client errors");
    let all = list(&mut kv, "bank/", 0).await;
    let total: i64 = all.iter().map(|(_, v, _)| v.parse::<i64>().unwrap()).sum();
    assert_eq!(total, 2000, "{all:?}");
    eprintln!(
        "200 transfers, {} compare failures retried",
        conflicts.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delete_prefix_over_20_ranges_is_one_revision_and_one_watch_response() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    split_at(&c, &split_keys("del/", 20)).await;
    let mut kv = c.client().await;
    let kvs: Vec<(String, String)> = (0..21)
        .flat_map(|r| (0..3).map(move |i| (format!("del/{r:02}/{i}"), format!("v{r}.{i}"))))
        .collect();
    let put_rev = put_all(&mut kv, &kvs).await;
    let mut events = within(
        Duration::from_secs(10),
        "watch",
        kv.watch(
            "del/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        ),
    )
    .await
    .expect("watch");
    let del = within(
        Duration::from_secs(15),
        "delete",
        kv.delete(
            "del/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        ),
    )
    .await
    .expect("delete over 21 ranges");
    let rev = del.header().unwrap().revision();
    assert_eq!(del.deleted(), 63);
    let prev: Vec<(String, String)> = del
        .prev_kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().into(), kv.value_str().unwrap().into()))
        .collect();
    assert_eq!(prev, kvs, "prev_kvs: every key, in key order");
    // The watcher gets the whole delete in one response, at its revision.
    let resp = within(Duration::from_secs(10), "watch response", async {
        loop {
            let r = events
                .message()
                .await
                .expect("watch stream")
                .expect("a response");
            if !r.events().is_empty() {
                return r; // (the first answer only says the watch was created)
            }
        }
    })
    .await;
    assert_eq!(resp.events().len(), 63, "one response with every event");
    for e in resp.events() {
        assert_eq!(e.event_type(), EventType::Delete);
        assert_eq!(e.kv().unwrap().mod_revision(), rev);
        assert_eq!(e.prev_kv().unwrap().mod_revision(), put_rev);
    }
    assert!(list(&mut kv, "del/", rev).await.is_empty());
    assert_eq!(list(&mut kv, "del/", rev - 1).await.len(), 63);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cross_range_txn_has_etcds_response_shape() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    split_at(&c, &split_keys("shape/", 4)).await;
    let mut kv = c.client().await;
    let first = put_all(
        &mut kv,
        &[
            ("shape/00".into(), "a".into()),
            ("shape/03".into(), "b".into()),
        ],
    )
    .await;
    // A compare in one range picks the branch; a nested txn's compare in
    // another; ops read and write across ranges; a Range over all of them
    // with a limit and a sort.
    let inner = Txn::new()
        .when(vec![Compare::value("shape/03", CompareOp::Equal, "b")])
        .and_then(vec![TxnOp::put("shape/04", "n", None)]);
    let t = Txn::new()
        .when(vec![Compare::version("shape/00", CompareOp::Equal, 1)])
        .and_then(vec![
            TxnOp::put("shape/01", "x", Some(PutOptions::new().with_prev_key())),
            TxnOp::txn(inner),
            TxnOp::get(
                "shape/",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_limit(2)
                        .with_sort(SortTarget::Key, SortOrder::Descend),
                ),
            ),
            TxnOp::delete("shape/00", None),
        ])
        .or_else(vec![TxnOp::get("shape/00", None)]);
    let r = within(Duration::from_secs(15), "txn", kv.txn(t))
        .await
        .expect("txn");
    assert!(r.succeeded());
    let rev = r.header().unwrap().revision();
    let ops = r.op_responses();
    assert_eq!(ops.len(), 4);
    match &ops[1] {
        etcd_client::TxnOpResponse::Txn(t) => assert!(t.succeeded()),
        other => panic!("{other:?}"),
    }
    match &ops[2] {
        // Sees the txn's own writes; limit and sort over the whole prefix.
        etcd_client::TxnOpResponse::Get(g) => {
            let keys: Vec<&str> = g.kvs().iter().map(|k| k.key_str().unwrap()).collect();
            assert_eq!(keys, ["shape/04", "shape/03"]);
            assert_eq!(g.count(), 4);
            assert!(g.more());
        }
        other => panic!("{other:?}"),
    }
    match &ops[3] {
        etcd_client::TxnOpResponse::Delete(d) => assert_eq!(d.deleted(), 1),
        other => panic!("{other:?}"),
    }
    let now = list(&mut kv, "shape/", 0).await;
    let keys: Vec<(&str, i64)> = now.iter().map(|(k, _, r)| (k.as_str(), *r)).collect();
    assert_eq!(
        keys,
        [("shape/01", rev), ("shape/03", first), ("shape/04", rev)]
    );
    // A read-only txn over several ranges reads one revision.
    let ro = Txn::new()
        .when(vec![Compare::value("shape/01", CompareOp::Equal, "x")])
        .and_then(vec![TxnOp::get(
            "shape/",
            Some(GetOptions::new().with_prefix()),
        )]);
    let r = within(Duration::from_secs(15), "read txn", kv.txn(ro))
        .await
        .expect("read txn");
    assert!(r.succeeded());
    match &r.op_responses()[0] {
        etcd_client::TxnOpResponse::Get(g) => assert_eq!(g.count(), 3),
        other => panic!("{other:?}"),
    }
}

/// clientv3's `concurrency.Mutex`: each contender puts its key under the
/// lock prefix if absent and reads the prefix's first-created key in the
/// same txn; the owner of that key holds the lock. The prefix spans 21
/// ranges; the 8 contenders' keys lie in 8 of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutex_recipe_over_ranges_excludes() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    split_at(&c, &split_keys("lock/", 20)).await;
    let mut kv = c.client().await;
    kv.put("counter", "0", None).await.expect("put");
    let first_create = || {
        GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1)
    };
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut kv = c.client().await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                let lease = kv.lease_grant(30, None).await.expect("lease").id();
                let me = format!("lock/{w:02}");
                let t = Txn::new()
                    .when(vec![Compare::create_revision(
                        me.as_str(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then(vec![
                        TxnOp::put(me.as_str(), "", Some(PutOptions::new().with_lease(lease))),
                        TxnOp::get("lock/", Some(first_create())),
                    ])
                    .or_else(vec![
                        TxnOp::get(me.as_str(), None),
                        TxnOp::get("lock/", Some(first_create())),
                    ]);
                let r = kv.txn(t).await.expect("lock txn");
                assert!(r.succeeded());
                // Wait until our key is the oldest under the prefix.
                for i in 0.. {
                    assert!(i < 2000, "lock never acquired");
                    let owner = kv.get("lock/", Some(first_create())).await.expect("owner");
                    if owner.kvs()[0].key_str().unwrap() == me {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // The critical section: a read-modify-write no one else overlaps.
                let n: i64 = kv.get("counter", None).await.expect("get").kvs()[0]
                    .value_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                kv.put("counter", (n + 1).to_string(), None)
                    .await
                    .expect("put");
                kv.delete(me.as_str(), None).await.expect("unlock");
                kv.lease_revoke(lease).await.expect("revoke");
            }
        }));
    }
    for t in tasks {
        within(Duration::from_secs(180), "mutex contenders", t)
            .await
            .expect("contender");
    }
    let (n, _) = super::get_int(&mut kv, "counter").await;
    assert_eq!(n, 24, "every critical section ran alone");
}

/// The oldest key under `prefix` (clientv3's `WithFirstCreate`): the
/// election's leader. Its key and value.
async fn first_created(kv: &mut etcd_client::Client, prefix: &str) -> Option<(String, String)> {
    let opts = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Create, SortOrder::Ascend)
        .with_limit(1);
    let r = within(
        Duration::from_secs(15),
        "leader",
        kv.get(prefix, Some(opts)),
    )
    .await
    .expect("leader");
    r.kvs().first().map(|kv| {
        (
            kv.key_str().unwrap().to_string(),
            kv.value_str().unwrap().to_string(),
        )
    })
}

/// clientv3's `concurrency.Election` over a prefix spanning 21 ranges:
/// Campaign (put the candidate's key if absent, read the first-created key,
/// in one txn), Proclaim (`Txn(create_revision(key) == rev) Then Put`),
/// Leader (the first-created key), Resign (delete the key): the next
/// candidate leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn election_recipe_over_ranges() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    split_at(&c, &split_keys("elect/", 20)).await;
    let mut kv = c.client().await;
    let mut created = Vec::new();
    for cand in ["elect/17", "elect/03", "elect/11"] {
        let t = Txn::new()
            .when(vec![Compare::create_revision(cand, CompareOp::Equal, 0)])
            .and_then(vec![
                TxnOp::put(cand, format!("{cand} says hi"), None),
                TxnOp::get("elect/", Some(GetOptions::new().with_prefix())),
            ])
            .or_else(vec![TxnOp::get(cand, None)]);
        let r = within(Duration::from_secs(15), "campaign", kv.txn(t))
            .await
            .expect("campaign");
        assert!(r.succeeded());
        created.push((cand, r.header().unwrap().revision()));
    }
    // The first candidate leads (created first, although its key sorts last).
    let (leader, _) = first_created(&mut kv, "elect/").await.expect("a leader");
    assert_eq!(leader, "elect/17");
    // Proclaim: only while still holding the key created at that revision.
    let (key, rev) = created[0];
    let proclaim = |rev: i64| {
        Txn::new()
            .when(vec![Compare::create_revision(key, CompareOp::Equal, rev)])
            .and_then(vec![TxnOp::put(key, "new value", None)])
    };
    let r = kv.txn(proclaim(rev)).await.expect("proclaim");
    assert!(r.succeeded());
    assert_eq!(
        first_created(&mut kv, "elect/").await,
        Some(("elect/17".into(), "new value".into()))
    );
    // Resign: the next candidate leads; a stale proclaim does nothing.
    kv.delete(key, None).await.expect("resign");
    assert!(!kv
        .txn(proclaim(rev))
        .await
        .expect("stale proclaim")
        .succeeded());
    let (next, _) = first_created(&mut kv, "elect/").await.expect("a leader");
    assert_eq!(next, "elect/03");
}
