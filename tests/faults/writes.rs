//! The write path under faults: stale-term stamps (bug 1), state published
//! before it is written (bug 2), bad input (bug 5), batched proposals.

use std::time::Duration;

use futures::StreamExt;
use prost::Message as _;
use strata_proto::etcd::{PbRangeRequest, PbRangeResponse};
use strata_proto::strata::{FeedRequest, KvKind, KvRequest, RangeCommand};
use tokio::sync::oneshot;

use crate::cluster::{Cluster, Opts};
use crate::{get_at, put, within};

/// Bug 1. B leads and stamps a write slowly; leadership moves to A, which
/// commits newer revisions and serves a read; B leads again (a new term).
/// The old stamp must not be proposed in B's new term: if it were, it would
/// commit after the newer revisions, and a read at a fixed revision would
/// change. The write must still succeed (the router retries it, stamped
/// afresh above everything A wrote).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stale_term_stamp_is_never_proposed() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let b = c.wait_leader(1).await;
    let a = c.others(b)[0];
    let mut kv = c.client().await;
    put(&mut kv, "warmup", "x").await;
    let refused_before = strata_node::metrics::REVISION_ORDER_REFUSED.get();

    // B stamps the write, then holds it for 1.5 s before proposing.
    fail::cfg(format!("sequencer_stamped.{b}"), "1*return(1500)").unwrap();
    let mut slow_kv = c.client().await;
    let slow = tokio::spawn(async move { put(&mut slow_kv, "slow", "late").await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    c.transfer_leader(1, a).await;
    let mut last = 0;
    for i in 0..10 {
        last = put(&mut kv, &format!("fast/{i}"), "v").await;
    }
    let (seen, _) = get_at(&mut kv, "slow", last).await;
    assert!(seen.is_empty(), "the slow write is not visible yet");
    c.transfer_leader(1, b).await;

    let slow_rev = within(Duration::from_secs(20), "the slow write", slow)
        .await
        .expect("slow write task");
    let (seen_after, _) = get_at(&mut kv, "slow", last).await;
    assert!(
        seen_after.is_empty(),
        "a read at revision {last} changed after the fact: it now sees {seen_after:?}, \
         an acknowledged write at revision {slow_rev} applied behind newer revisions"
    );
    assert!(
        slow_rev > last,
        "the slow write was acknowledged at revision {slow_rev}, below revision {last} \
         that was already read"
    );
    assert_eq!(
        strata_node::metrics::REVISION_ORDER_REFUSED.get(),
        refused_before,
        "a write stamped in an earlier term reached the log (apply had to refuse it)"
    );
    let (now, _) = get_at(&mut kv, "slow", 0).await;
    assert_eq!(now, vec!["late".to_string()]);
}

fn range_request(key: &str) -> Vec<u8> {
    PbRangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Bug 2. The leader's raft thread is held between deciding a write and
/// writing its batch. Meanwhile a serializable read and a feed start on
/// that node: neither may see the write's revision without its data, and
/// the feed must deliver the write's event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn applied_state_is_published_only_after_it_is_written() {
    let _fp = fail::FailScenario::setup();
    // Holding the raft thread must not cost the leadership: a 2 s election
    // timeout.
    let c = Cluster::start(Opts {
        raft_tick_ms: 200,
        ..Opts::default()
    })
    .await;
    let l = c.wait_leader(1).await;
    let mut kv = c.client().await;
    put(&mut kv, "warmup", "x").await;
    let mut node = c.node_client(l).await;

    fail::cfg(format!("apply_before_write.{l}"), "1*return(700)").unwrap();
    let mut kv2 = c.client().await;
    let write = tokio::spawn(async move { put(&mut kv2, "k", "v").await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A serializable read on the leader, inside the window.
    let resp = node
        .kv(KvRequest {
            range_id: 1,
            epoch: None,
            kind: KvKind::KvRange as i32,
            request: range_request("k"),
            read_revision: 0,
        })
        .await
        .expect("read")
        .into_inner();
    let read = PbRangeResponse::decode(&resp.response[..]).expect("range response");
    let read_rev = read.header.map_or(0, |h| h.revision);
    // A feed from "now", inside the window.
    let mut feed = node
        .feed(FeedRequest {
            range_id: 1,
            epoch: None,
            key: b"k".to_vec(),
            range_end: Vec::new(),
            start_revision: 0,
        })
        .await
        .expect("feed")
        .into_inner();

    let write_rev = within(Duration::from_secs(20), "the write", write)
        .await
        .expect("write task");
    assert!(
        read_rev < write_rev || !read.kvs.is_empty(),
        "a serializable read at revision {read_rev} (>= the write's {write_rev}) \
         did not see the write: the revision was published before its data was written"
    );
    let event = within(Duration::from_secs(5), "the feed's event", async {
        while let Some(m) = feed.next().await {
            let m = m.expect("feed message");
            if m.events
                .iter()
                .any(|e| e.kv.as_ref().is_some_and(|kv| kv.key == b"k"))
            {
                return Some(m.revision);
            }
        }
        None
    })
    .await;
    assert_eq!(
        event,
        Some(write_rev),
        "the feed started inside the window lost the event at revision {write_rev}"
    );
}

/// Bug 5. Garbage requests of internal kinds sent to a node's KV RPC, and a
/// committed entry that does not decode, must be refused or applied as an
/// error on every replica — never stop a node (today: every replica exits
/// with status 70 and crash-loops on restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_requests_and_entries_do_not_stop_nodes() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let l = c.wait_leader(1).await;
    let mut kv = c.client().await;
    put(&mut kv, "before", "x").await;

    let garbage = vec![0xff, 0x13, 0x37, 0x00, 0x99];
    let mut node = c.node_client(l).await;
    for kind in [
        KvKind::KvCompact,
        KvKind::KvSplit,
        KvKind::KvLeaseRevoke,
        KvKind::KvLeaseGrant,
        KvKind::KvPut,
        KvKind::KvTxn,
    ] {
        let err = node
            .kv(KvRequest {
                range_id: 1,
                epoch: None,
                kind: kind as i32,
                request: garbage.clone(),
                read_revision: 0,
            })
            .await
            .expect_err("a garbage request is refused");
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{kind:?}: {err:?}"
        );
    }
    // A split from the network is refused even when well-formed.
    let err = node
        .kv(KvRequest {
            range_id: 1,
            epoch: None,
            kind: KvKind::KvSplit as i32,
            request: strata_proto::strata::SplitCommand::default().encode_to_vec(),
            read_revision: 0,
        })
        .await
        .expect_err("a split from the network is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Entries that made it into the log anyway apply as errors everywhere.
    let r = c.node(l).ranges.get(&1).expect("range").clone();
    let term = r.lead_term.load(std::sync::atomic::Ordering::Acquire);
    for cmd in [
        RangeCommand {
            revision: 0,
            kind: KvKind::KvCompact as i32,
            request: garbage.clone(),
        },
        RangeCommand {
            revision: 0,
            kind: 42,
            request: garbage.clone(),
        },
        RangeCommand {
            revision: c.applied_rev(l, 1) + 1_000,
            kind: KvKind::KvPut as i32,
            request: garbage.clone(),
        },
    ] {
        let (tx, rx) = oneshot::channel();
        c.node(l)
            .store
            .send(strata_node::store::StoreMsg::Propose {
                range_id: 1,
                term,
                cmd,
                reply: tx,
            })
            .await
            .expect("store running");
        let res = within(Duration::from_secs(10), "garbage entry applies", rx)
            .await
            .expect("answered");
        assert!(res.is_err(), "a garbage entry applied as an error");
    }
    // Every node is still there: a write through each replica's leader works,
    // and every replica applied it.
    let rev = put(&mut kv, "after", &"y".repeat(10)).await;
    assert!(rev > 0);
    for n in &c.nodes {
        crate::cluster::eventually(Duration::from_secs(10), "every replica applies", || {
            (c.applied_rev(n.node_id, 1) >= rev).then_some(())
        })
        .await;
    }
    let (v, _) = get_at(&mut kv, "after", 0).await;
    assert_eq!(v.len(), 1);
}

/// Proposals a leader receives together enter raft as one batch
/// (`node/src/store/propose.rs`): each must still be answered with its own
/// entry's result. Many puts at once, and a leader transfer in the middle
/// (a batch may be dropped whole, or its entries replaced): every
/// acknowledged put's revision is its key's revision, and each key holds
/// its own value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_proposals_is_answered_entry_by_entry() {
    let c = Cluster::start(Opts::default()).await;
    let l = c.wait_leader(1).await;
    let kv = c.client().await;
    const N: usize = 400;
    let mut tasks = Vec::new();
    for i in 0..N {
        let mut kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("burst/{i:04}");
            let rev = put(&mut kv, &key, &format!("value-{i}")).await;
            (key, i, rev)
        }));
        if i == N / 2 {
            let to = c.others(l)[0];
            c.transfer_leader(1, to).await;
        }
    }
    let mut kv = kv.clone();
    let mut revs = std::collections::HashSet::new();
    for t in tasks {
        let (key, i, rev) = within(Duration::from_secs(30), "burst put", t)
            .await
            .expect("put task");
        assert!(revs.insert(rev), "two puts acknowledged at revision {rev}");
        let r = within(Duration::from_secs(15), "get", kv.get(key.as_str(), None))
            .await
            .expect("get");
        let got = &r.kvs()[0];
        assert_eq!(
            (got.mod_revision(), got.value_str().expect("utf-8")),
            (rev, format!("value-{i}").as_str()),
            "{key}: the put was answered with another entry's revision"
        );
    }
}
