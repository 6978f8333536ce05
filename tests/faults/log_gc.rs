//! The raft log is bounded in bytes as well as in entries: with big values a
//! log bounded only by its entry count keeps a second copy of the data.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::MessageType;
use strata_node::transport::memory::Rule;

use crate::cluster::{eventually, Cluster, Opts};
use crate::put;

/// 40 entries of 16 KiB are far under the entry bound (5000) but ten times
/// the byte bound (64 KiB): the leader must truncate its log, so a follower
/// cut off meanwhile catches up from a snapshot, not from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_log_of_big_entries_is_truncated_by_its_bytes() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts {
        raft_log_keep_bytes: 64 * 1024,
        ..Opts::default()
    })
    .await;
    let leader = c.wait_leader(1).await;
    let lagging = c.others(leader)[0];
    let mut kv = c.client().await;
    put(&mut kv, "big/start", "x").await;

    let cut = c.net.add(Rule::new().touching(lagging).drop());
    let value = "v".repeat(16 * 1024);
    for i in 0..40 {
        put(&mut kv, &format!("big/{i:02}"), &value).await;
    }
    let snapshot_sent = Arc::new(AtomicBool::new(false));
    let seen = snapshot_sent.clone();
    c.net.add(
        Rule::new()
            .range(1)
            .to(lagging)
            .msg_type(MessageType::MsgSnapshot)
            .when(move |_| {
                seen.store(true, Ordering::SeqCst);
                false
            })
            .drop(),
    );
    c.net.remove(cut);
    eventually(
        Duration::from_secs(30),
        "the cut-off node to catch up",
        || (c.applied_rev(lagging, 1) == c.applied_rev(leader, 1)).then_some(()),
    )
    .await;
    assert!(
        snapshot_sent.load(Ordering::SeqCst),
        "node {lagging} caught up from the leader's log: 640 KiB of entries were kept \
         although the log is bounded at twice 64 KiB"
    );
}
