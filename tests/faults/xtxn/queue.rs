//! A range held by one cross-range txn queues another txn's prepare (first
//! come, first served) instead of refusing it, for as long as the prepare
//! may wait; and a txn whose coordinator keeps touching the range while it
//! waits elsewhere is not resolved under it (resolvers abort only txns
//! whose coordinator went quiet). Driven at the node's KV API, on range 1.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use etcd_client::{Txn, TxnOp};

use prost::Message as _;
use strata_proto::etcd::{PbPutRequest, PbTxnOpRequest, PbTxnRequest, PbTxnRequestOp};
use strata_proto::strata::node_client::NodeClient;
use strata_proto::strata::{
    KvKind, KvRequest, KvResponse, RouteErrorKind, TxnDecision, TxnPrepare,
};
use tonic::transport::Channel;

use super::{list, split_at, split_keys};
use crate::cluster::{eventually, Cluster, Opts};
use crate::within;

fn prepare(c: &Cluster, leader: u64, txn_id: u64, wait_ms: u32) -> KvRequest {
    let put = PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
            key: format!("q/{txn_id}").into_bytes(),
            value: b"v".to_vec(),
            ..Default::default()
        })),
    };
    let txn = PbTxnRequest {
        success: vec![put],
        ..Default::default()
    };
    let version = c
        .node(leader)
        .ranges
        .get(&1)
        .expect("range 1")
        .epoch()
        .version;
    KvRequest {
        range_id: 1,
        epoch: None,
        kind: KvKind::KvTxnPrepare as i32,
        request: TxnPrepare {
            txn_id,
            participants: vec![1],
            txn: txn.encode_to_vec(),
            version,
            lease_revoke: 0,
            wait_ms,
            priority: txn_id,
        }
        .encode_to_vec(),
        read_revision: 0,
    }
}

fn decision(kind: KvKind, txn_id: u64) -> KvRequest {
    KvRequest {
        range_id: 1,
        epoch: None,
        kind: kind as i32,
        request: TxnDecision {
            txn_id,
            ..Default::default()
        }
        .encode_to_vec(),
        read_revision: 0,
    }
}

async fn call(node: &mut NodeClient<Channel>, req: KvRequest) -> KvResponse {
    within(Duration::from_secs(15), "node kv call", node.kv(req))
        .await
        .expect("node kv call")
        .into_inner()
}

/// Txns resolved by ranges (not by their coordinator) in this process.
fn resolved() -> u64 {
    let m = &strata_node::metrics::TXN_RESOLVED;
    m.with_label_values(&["abort"]).get() + m.with_label_values(&["commit"]).get()
}

fn holder(c: &Cluster, leader: u64) -> Option<u64> {
    c.node(leader).ranges.get(&1).and_then(|r| r.intent_id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prepare_waits_for_a_held_range_and_a_touched_txn_is_not_resolved() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let l = c.wait_leader(1).await;
    let mut node = c.node_client(l).await;
    let (a, b, d) = (900_001, 900_002, 900_003);

    let r = call(&mut node, prepare(&c, l, a, 0)).await;
    assert!(r.error.is_none(), "prepare A: {:?}", r.error);
    assert_eq!(holder(&c, l), Some(a));

    // B may wait 6 s: it queues behind A instead of being refused.
    let started = Instant::now();
    let mut node_b = c.node_client(l).await;
    let waiting_b = prepare(&c, l, b, 6000);
    let b_answer = tokio::spawn(async move { call(&mut node_b, waiting_b).await });

    // A's coordinator is alive (it touches the range) for 3 s, past the
    // 2 s after which an untouched txn is resolved: A keeps the range.
    while started.elapsed() < Duration::from_secs(3) {
        let touch = node.kv(decision(KvKind::KvTxnTouch, a));
        let t = within(Duration::from_secs(15), "touch", touch).await;
        match t.map(|t| t.into_inner().error) {
            Ok(None) => {}
            other => panic!(
                "touch A at {:?}: {other:?} (resolved under its live coordinator?)",
                started.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(holder(&c, l), Some(a), "a touched txn was resolved");
    assert!(!b_answer.is_finished(), "B did not wait for the range");

    // D may wait only 300 ms: refused busy after about that long.
    let t0 = Instant::now();
    let r = call(&mut node, prepare(&c, l, d, 300)).await;
    let busy = r.error.as_ref().map(|e| e.kind);
    assert_eq!(
        busy,
        Some(RouteErrorKind::ServerBusy as i32),
        "{:?}",
        r.error
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );

    // A is aborted: the range goes to B, which was waiting.
    let r = call(&mut node, decision(KvKind::KvTxnAbort, a)).await;
    assert!(r.error.is_none(), "abort A: {:?}", r.error);
    let r = within(Duration::from_secs(10), "B's prepare", b_answer)
        .await
        .expect("B's task");
    assert!(r.error.is_none(), "prepare B after A: {:?}", r.error);
    assert_eq!(holder(&c, l), Some(b));

    // Nobody touches B: the range resolves it (an abort) by itself.
    eventually(Duration::from_secs(10), "B resolved", || {
        holder(&c, l).is_none().then_some(())
    })
    .await;
}

/// The worst overlap: 16 clients each running txns that write one key in
/// every one of 21 ranges, so every txn conflicts with every other. They
/// serialize, and every one of them succeeds (etcd gives no error here):
/// none starves past the request deadline, none is resolved under its
/// waiting coordinator. Each txn writes its own tag to all 21 keys, so
/// atomicity shows as every key carrying the same tag at one revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fully_overlapping_txns_from_16_clients_all_succeed() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    split_at(&c, &split_keys("o/", 20)).await;
    let keys: Vec<String> = (0..21).map(|i| format!("o/{i:02}")).collect();
    let resolved_before = resolved();
    let mut workers = Vec::new();
    for w in 0..16 {
        let (mut kv, keys) = (c.client().await, keys.clone());
        workers.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            for i in 0..6 {
                let tag = format!("w{w}-{i}");
                let ops: Vec<TxnOp> = keys
                    .iter()
                    .map(|k| TxnOp::put(k.as_str(), tag.as_str(), None))
                    .collect();
                let t = kv.txn(Txn::new().and_then(ops));
                match tokio::time::timeout(Duration::from_secs(30), t).await {
                    Ok(Ok(r)) if r.succeeded() => {}
                    Ok(Ok(_)) => errors.push(format!("{tag}: not succeeded")),
                    Ok(Err(e)) => errors.push(format!("{tag}: {e}")),
                    Err(_) => errors.push(format!("{tag}: no answer in 30 s")),
                }
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for w in workers {
        errors.extend(
            within(Duration::from_secs(300), "workers", w)
                .await
                .expect("worker"),
        );
    }
    assert!(errors.is_empty(), "client errors: {errors:?}");
    let mut kv = c.client().await;
    let all = list(&mut kv, "o/", 0).await;
    assert_eq!(all.len(), 21);
    let tags: BTreeSet<&str> = all.iter().map(|(_, v, _)| v.as_str()).collect();
    let revs: BTreeSet<i64> = all.iter().map(|(_, _, r)| *r).collect();
    assert!(tags.len() == 1 && revs.len() == 1, "{all:?}");
    assert_eq!(
        resolved(),
        resolved_before,
        "txns of live coordinators were resolved by their ranges"
    );
}
