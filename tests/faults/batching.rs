//! The write path's batching: Puts applied in one storage write must still
//! see each other, and a Ready round that only moved the commit index is not
//! fsynced.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::PutOptions;
use strata_proto::etcd::PbRangeRequest;

use crate::cluster::{eventually, Cluster, Opts};
use crate::{node_range, put, within};

const KEYS: usize = 6;

/// A Put's revision and the (mod_revision, version) of the key before it.
type PutSeen = (i64, Option<(i64, i64)>);
const PUTS: usize = 300;

/// The leader's raft thread is held while 300 Puts over 6 keys queue up, so
/// that they commit and apply together: consecutive Puts on distinct keys
/// share one storage write, and a Put of a key already in that write must
/// wait for it. If it did not, it would read the key's version from storage
/// without the earlier Put: two Puts would report the same previous version
/// and the key's version would count fewer Puts than were acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn puts_sharing_an_apply_batch_see_each_other() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts {
        raft_tick_ms: 200, // holding the raft thread must not cost the lead
        ..Opts::default()
    })
    .await;
    let l = c.wait_leader(1).await;
    let mut kv = c.client().await;
    put(&mut kv, "warmup", "x").await;
    let entries_before = strata_node::metrics::APPLIED_ENTRIES.get();
    let writes_before = strata_node::metrics::APPLY_WRITES.get();

    fail::cfg(format!("apply_before_write.{l}"), "1*return(600)").unwrap();
    let mut first = c.client().await;
    let held = tokio::spawn(async move { put(&mut first, "held", "x").await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let tasks: Vec<_> = (0..PUTS)
        .map(|i| {
            let mut kv = kv.clone();
            tokio::spawn(async move {
                let key = format!("k{}", i % KEYS);
                let opts = PutOptions::new().with_prev_key();
                let r = within(
                    Duration::from_secs(20),
                    "put",
                    kv.put(key.clone(), "v", Some(opts)),
                )
                .await
                .unwrap_or_else(|e| panic!("put {key}: {e}"));
                let rev = r.header().expect("header").revision();
                let prev = r.prev_key().map(|p| (p.mod_revision(), p.version()));
                (key, rev, prev)
            })
        })
        .collect();
    let mut by_key: BTreeMap<String, Vec<PutSeen>> = BTreeMap::new();
    for t in futures::future::join_all(tasks).await {
        let (key, rev, prev) = t.expect("put task");
        by_key.entry(key).or_default().push((rev, prev));
    }
    held.await.expect("held put");

    // Each key's Puts form one chain: every Put's previous version is the
    // Put just before it.
    for (key, mut puts) in by_key.clone() {
        puts.sort();
        let mut last: Option<(i64, i64)> = None;
        for (rev, prev) in &puts {
            assert_eq!(
                *prev, last,
                "{key}: the put at revision {rev} saw {prev:?} as the previous version, \
                 but the put before it was {last:?}"
            );
            last = Some((*rev, last.map_or(1, |(_, v)| v + 1)));
        }
    }
    let entries = strata_node::metrics::APPLIED_ENTRIES.get() - entries_before;
    let writes = strata_node::metrics::APPLY_WRITES.get() - writes_before;
    assert!(
        writes * 2 < entries,
        "{entries} entries applied in {writes} storage writes: the test did not batch"
    );

    // Every replica holds the same versions.
    let want: Vec<(i64, i64)> = by_key
        .values()
        .map(|puts| (puts.iter().map(|p| p.0).max().unwrap(), puts.len() as i64))
        .collect();
    let top = want.iter().map(|w| w.0).max().unwrap();
    for n in 1..=3 {
        eventually(Duration::from_secs(10), "replicas catch up", || {
            (c.applied_rev(n, 1) >= top).then_some(())
        })
        .await;
        let mut node = c.node_client(n).await;
        let req = PbRangeRequest {
            key: b"k".to_vec(),
            range_end: b"l".to_vec(),
            ..Default::default()
        };
        let got: Vec<(i64, i64)> = node_range(&mut node, 1, &req)
            .await
            .kvs
            .iter()
            .map(|kv| (kv.mod_revision, kv.version))
            .collect();
        assert_eq!(
            got, want,
            "node {n}: (mod_revision, version) of k0..k{KEYS}"
        );
    }
}

/// Raft needs a Ready round on disk before acting on it only when it holds
/// entries, a snapshot or a new term or vote; a round that only moved the
/// commit index is written without an fsync. Before, every put cost each
/// node two fsyncs (the append, then the commit index).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_round_that_only_moves_the_commit_index_is_not_fsynced() {
    let _fp = fail::FailScenario::setup(); // serializes the tests of this process
    let c = Cluster::start(Opts::default()).await;
    c.wait_leader(1).await;
    let mut kv = c.client().await;
    put(&mut kv, "warmup", "x").await;
    let fsyncs = || strata_node::metrics::WAL_FSYNC.get_sample_count();
    let before = fsyncs();
    const N: u64 = 50;
    for i in 0..N {
        put(&mut kv, &format!("seq/{i}"), "v").await;
    }
    let per_put = (fsyncs() - before) as f64 / N as f64;
    // 3 nodes in this process, one append fsync each per put; some slack
    // for rounds that raft or placement cause meanwhile.
    assert!(
        per_put < 3.6,
        "{per_put:.2} fsyncs per sequential put over 3 nodes: the commit index is fsynced"
    );
}

/// A leader tells followers a new commit index with its next append or
/// heartbeat, not in an empty append of its own after each commit (which
/// doubled the raft messages a write costs): 50 sequential puts send
/// (almost) no empty appends. And the last write still reaches every
/// follower with no write after it — the heartbeat carries its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_ride_on_the_next_append_and_still_reach_idle_followers() {
    use raft::eraftpb::MessageType;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use strata_node::transport::memory::Rule;

    let _fp = fail::FailScenario::setup(); // serializes the tests of this process
    let c = Cluster::start(Opts::default()).await;
    let l = c.wait_leader(1).await;
    let mut kv = c.client().await;
    put(&mut kv, "warmup", "x").await;
    let empty = Arc::new(AtomicUsize::new(0));
    let seen = empty.clone();
    // Counts; the condition never holds, so nothing is dropped.
    c.net.add(
        Rule::new()
            .range(1)
            .from(l)
            .msg_type(MessageType::MsgAppend)
            .when(move |s| {
                if s.msg.is_some_and(|m| m.entries.is_empty()) {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                false
            })
            .drop(),
    );
    const N: usize = 50;
    let mut last = 0;
    for i in 0..N {
        last = put(&mut kv, &format!("seq/{i}"), "v").await;
    }
    // With a commit broadcast: two per put (one per follower).
    let empty = empty.load(Ordering::SeqCst);
    assert!(
        empty <= N / 5,
        "{empty} empty appends for {N} puts: each commit is broadcast on its own"
    );
    for n in c.others(l) {
        eventually(
            Duration::from_secs(10),
            "the last put applied on a follower",
            || (c.applied_rev(n, 1) >= last).then_some(()),
        )
        .await;
    }
}
