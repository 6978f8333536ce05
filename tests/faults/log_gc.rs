//! The raft log is bounded in bytes as well as in entries: with big values a
//! log bounded only by its entry count keeps a second copy of the data.

use std::sync::atomic::Ordering;
use std::time::Duration;

use strata_node::transport::memory::{FilterId, Rule};

use crate::cluster::{eventually, Cluster, Opts};
use crate::put;

/// A cluster whose logs keep 16 KiB, with one node cut off while 80 entries
/// of 16 KiB were written: far under the entry bound (5000), 80 times the
/// byte bound, past the hard bound (64 times) up to which a leader keeps
/// what a follower lacks.
struct CutOff {
    c: Cluster,
    /// Range 1's leader, and the node cut off.
    leader: u64,
    lagging: u64,
    kv: etcd_client::Client,
    value: String,
    /// The rule that cuts `lagging` off.
    cut: FilterId,
}

/// A cluster whose logs keep 16 KiB (80 puts of 16 KiB written while a node
/// is cut off send it a snapshot): it, range 1's leader, a follower, a client.
pub(crate) async fn small_log_cluster() -> (Cluster, u64, u64, etcd_client::Client) {
    let c = Cluster::start(Opts {
        raft_log_keep_bytes: 16 * 1024,
        ..Opts::default()
    })
    .await;
    let leader = c.wait_leader(1).await;
    let lagging = c.others(leader)[0];
    let kv = c.client().await;
    (c, leader, lagging, kv)
}

async fn cut_off_during_big_writes() -> CutOff {
    let (c, leader, lagging, mut kv) = small_log_cluster().await;
    put(&mut kv, "big/start", "x").await;
    let cut = c.net.add(Rule::new().touching(lagging).drop());
    let value = "v".repeat(16 * 1024);
    for i in 0..80 {
        put(&mut kv, &format!("big/{i:02}"), &value).await;
    }
    CutOff {
        c,
        leader,
        lagging,
        kv,
        value,
        cut,
    }
}

pub(crate) async fn caught_up(c: &Cluster, leader: u64, lagging: u64) {
    eventually(
        Duration::from_secs(30),
        "the cut-off node to catch up",
        || (c.applied_rev(lagging, 1) == c.applied_rev(leader, 1)).then_some(()),
    )
    .await;
}

/// The leader must truncate its log by bytes, so the cut-off follower
/// catches up from a snapshot, not from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_log_of_big_entries_is_truncated_by_its_bytes() {
    let _fp = fail::FailScenario::setup();
    let CutOff {
        c,
        leader,
        lagging,
        cut,
        ..
    } = cut_off_during_big_writes().await;
    let snapshots = c.count_snapshots(1, lagging, None);
    c.net.remove(cut);
    caught_up(&c, leader, lagging).await;
    assert!(
        snapshots.load(Ordering::SeqCst) > 0,
        "node {lagging} caught up from the leader's log: 1.25 MiB of entries were kept \
         although the log is bounded at 64 times 16 KiB"
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
    let CutOff {
        c,
        leader,
        lagging,
        mut kv,
        value,
        cut,
    } = cut_off_during_big_writes().await;
    let snapshots = c.count_snapshots(1, lagging, Some(Duration::from_millis(1500)));
    c.net.remove(cut);
    // Writes go on while the snapshot travels: 384 KiB of entries, 24 times
    // what the log keeps (and under the hard bound, 1 MiB).
    for i in 0..24 {
        put(&mut kv, &format!("big/more/{i:02}"), &value).await;
    }
    caught_up(&c, leader, lagging).await;
    assert_eq!(
        snapshots.load(Ordering::SeqCst),
        1,
        "node {lagging} needed more than one snapshot: the leader truncated its log past \
         the snapshot on its way"
    );
}
