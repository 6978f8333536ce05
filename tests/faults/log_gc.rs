//! The raft log is bounded in bytes as well as in entries: with big values a
//! log bounded only by its entry count keeps a second copy of the data.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// While the leader generates and sends a snapshot, and until the follower
/// has caught up after it, the leader keeps the entries after the snapshot's
/// index, though its log bound says to truncate (up to a hard bound): the
/// follower needs them once it installs the snapshot. Without that, a range
/// taking writes truncates past every snapshot before it arrives, and its
/// new replica gets snapshot after snapshot, never catching up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_snapshot_on_its_way_keeps_the_log_after_it() {
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
    let snapshots = Arc::new(AtomicUsize::new(0));
    let seen = snapshots.clone();
    c.net.add(
        Rule::new()
            .range(1)
            .to(lagging)
            .msg_type(MessageType::MsgSnapshot)
            .when(move |_| {
                seen.fetch_add(1, Ordering::SeqCst);
                true
            })
            .delay(Duration::from_millis(1500)),
    );
    c.net.remove(cut);
    // Writes go on while the snapshot travels: 384 KiB of entries, six
    // times what the log keeps (and under the hard bound, eight times).
    for i in 0..24 {
        put(&mut kv, &format!("big/more/{i:02}"), &value).await;
    }
    eventually(
        Duration::from_secs(30),
        "the cut-off node to catch up",
        || (c.applied_rev(lagging, 1) == c.applied_rev(leader, 1)).then_some(()),
    )
    .await;
    assert_eq!(
        snapshots.load(Ordering::SeqCst),
        1,
        "node {lagging} needed more than one snapshot: the leader truncated its log past \
         the snapshot on its way"
    );
}
