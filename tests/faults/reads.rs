//! The read path under faults: ReadIndex contexts (bug 4), compaction
//! racing a read (bug 6), a split during a linearizable read (bug 7).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{CompactionOptions, GetOptions};
use prost::Message as _;
use raft::eraftpb::MessageType;
use strata_node::transport::memory::{Rule, Sent};
use strata_proto::etcd::{PbRangeRequest, PbRangeResponse};
use strata_proto::strata::{KvKind, KvRequest, RangeCommand, RouteErrorKind};

use crate::cluster::{eventually, Cluster, Opts};
use crate::{get_at, put, within};

/// Bug 4. Heartbeat responses (which answer ReadIndex) reach the leader a
/// few ticks late. Every linearizable read must still complete: a read's
/// ReadIndex context must not be replaced while its answer is in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_index_survives_slow_heartbeat_responses() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let l = c.wait_leader(1).await;
    let mut kv = c.client().await;
    put(&mut kv, "k", "v").await;
    // 5 ticks late: longer than a tick, well inside the election timeout.
    c.net.add(
        Rule::new()
            .range(1)
            .to(l)
            .msg_type(MessageType::MsgHeartbeatResponse)
            .delay(Duration::from_millis(100)),
    );
    for i in 0..5 {
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(4), kv.get("k", None)).await;
        let ok = matches!(&r, Ok(Ok(g)) if g.kvs().len() == 1);
        assert!(
            ok,
            "linearizable read {i} with slow heartbeat responses did not complete \
             ({:?} after {:?})",
            r.map(|x| x.map(|g| g.kvs().len())),
            started.elapsed()
        );
    }
}

/// Bug 6. A read at an old revision is held just before it reads MVCC data;
/// a compaction past that revision applies meanwhile. The read must answer
/// "compacted" (or the old value), never a silently missing key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_during_a_read_is_reported() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let l = c.wait_leader(1).await;
    let mut kv = c.client().await;
    let old = put(&mut kv, "k", "v1").await;
    let new = put(&mut kv, "k", "v2").await;

    fail::cfg(format!("read_before_mvcc.{l}"), "1*return(1000)").unwrap();
    let mut kv2 = c.client().await;
    let read = tokio::spawn(async move {
        kv2.get("k", Some(GetOptions::new().with_revision(old)))
            .await
            .map(|r| {
                r.kvs()
                    .iter()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                    .collect::<Vec<_>>()
            })
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    within(
        Duration::from_secs(10),
        "compact",
        kv.compact(new, Some(CompactionOptions::new().with_physical())),
    )
    .await
    .expect("compact");
    let got = within(Duration::from_secs(10), "the read", read)
        .await
        .expect("read task");
    match got {
        Ok(values) => assert_eq!(
            values,
            vec!["v1".to_string()],
            "a read at revision {old} raced a compaction to {new} and answered \
             {values:?} instead of 'compacted'"
        ),
        Err(e) => assert!(
            e.to_string()
                .contains("required revision has been compacted"),
            "unexpected error: {e}"
        ),
    }
}

/// Is this raft message an append carrying a split command?
fn carries_split(s: &Sent<'_>) -> bool {
    s.msg.is_some_and(|m| {
        m.get_msg_type() == MessageType::MsgAppend
            && m.get_entries().iter().any(|e| {
                RangeCommand::decode(e.get_data()).is_ok_and(|c| c.kind == KvKind::KvSplit as i32)
            })
    })
}

/// Bug 7. Node A leads the range with a split in its log that it has not
/// applied yet (it never learned the split committed), while the other
/// replicas applied it and the new range acknowledged a write W. A
/// linearizable read of W's key arrives at A, at a revision after W: it
/// passes A's key check, and the split applies on A during its read
/// barrier; A's replica of the new range never received W. The read must
/// not answer from A without W.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_during_a_linearizable_read_is_not_missed() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts {
        range_split_keys: 12,
        // A 2 s election timeout: A keeps leading while it cannot hear back.
        raft_tick_ms: 200,
        ..Opts::default()
    })
    .await;
    let b = c.wait_leader(1).await;
    let a = c.others(b)[0];
    let mut kv = c.client().await;

    // A receives the append carrying the split, and nothing more of range 1
    // (so it never learns that the split committed), except what it needs to
    // take leadership.
    let got_split = Arc::new(AtomicBool::new(false));
    let seen = got_split.clone();
    let hold_a = c.net.add(
        Rule::new()
            .range(1)
            .to(a)
            .when(move |s| {
                use MessageType::*;
                if seen.load(Ordering::SeqCst) {
                    let campaign = matches!(
                        s.msg_type(),
                        Some(MsgTimeoutNow | MsgRequestVoteResponse | MsgRequestPreVoteResponse)
                    );
                    return !campaign;
                }
                if carries_split(s) {
                    seen.store(true, Ordering::SeqCst);
                }
                false
            })
            .drop(),
    );
    // A's replica of any new range hears nothing.
    c.net
        .add(Rule::new().to(a).when(|s| s.env.range_id != 1).drop());

    for i in 0..20 {
        put(&mut kv, &format!("key/{i:02}"), "v").await;
    }
    eventually(Duration::from_secs(30), "the split on node B", || {
        (c.node(b).ranges.len() >= 2 && got_split.load(Ordering::SeqCst)).then_some(())
    })
    .await;
    let child = c
        .node(b)
        .ranges
        .iter()
        .map(|r| r.desc.read().clone())
        .find(|d| d.id != 1)
        .expect("the new range");
    let key = format!("{}~", String::from_utf8_lossy(&child.start_key));
    let w = put(&mut kv, &key, "acknowledged").await;
    let (_, r) = get_at(&mut kv, "key/00", 0).await;
    assert!(r >= w);
    assert!(
        c.node(a).ranges.get(&child.id).is_none(),
        "A has not applied the split"
    );

    c.transfer_leader(1, a).await;
    let mut node_a = c.node_client(a).await;
    let read = tokio::spawn(async move {
        node_a
            .kv(KvRequest {
                range_id: 1,
                epoch: None,
                kind: KvKind::KvRange as i32,
                request: PbRangeRequest {
                    key: key.clone().into_bytes(),
                    ..Default::default()
                }
                .encode_to_vec(),
                read_revision: r,
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.net.remove(hold_a);
    let resp = within(Duration::from_secs(20), "the read on A", read)
        .await
        .expect("read task")
        .expect("read rpc")
        .into_inner();
    match resp.error {
        Some(e) => assert_eq!(e.kind, RouteErrorKind::EpochNotMatch as i32, "{e:?}"),
        None => {
            let got = PbRangeResponse::decode(&resp.response[..]).expect("range response");
            assert_eq!(
                got.kvs.len(),
                1,
                "a linearizable read at revision {r} on node {a} missed the write \
                 acknowledged at revision {w} by the new range {}",
                child.id
            );
        }
    }
}
