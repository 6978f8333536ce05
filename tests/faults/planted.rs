//! Planted bugs (default off): each point, once on, has the effect a
//! robustness checker must catch — a stale linearizable read, a lost watch
//! event, a revision handed out twice.

use std::time::Duration;

use etcd_client::WatchOptions;

use crate::cluster::{eventually, Cluster, Opts};
use crate::{get_at, put, within};

/// `plant_stale_read`: a linearizable read right after a write misses it,
/// while reporting a revision at or after the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plant_stale_read_misses_an_acknowledged_write() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let mut kv = c.client().await;
    put(&mut kv, "stale/k", "old").await;
    let w = put(&mut kv, "stale/k", "new").await;

    fail::cfg("plant_stale_read", "return").unwrap();
    let (values, rev) = get_at(&mut kv, "stale/k", 0).await;
    fail::remove("plant_stale_read");
    assert!(rev >= w, "the stale read reports revision {rev} < {w}");
    assert_ne!(
        values,
        vec!["new".to_string()],
        "plant_stale_read had no effect: the read at {rev} saw the write at {w}"
    );
    eprintln!("plant_stale_read: read reported revision {rev} (write at {w}) and saw {values:?}");
    let (values, _) = get_at(&mut kv, "stale/k", 0).await;
    assert_eq!(values, vec!["new".to_string()], "without the point");
}

/// `plant_drop_watch_event`: events a watch should deliver never arrive;
/// once the point is off, later events do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plant_drop_watch_event_loses_events() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let mut kv = c.client().await;
    let mut w = c.client().await;
    let mut s = within(
        Duration::from_secs(10),
        "open watch",
        w.watch("dropped/", Some(WatchOptions::new().with_prefix())),
    )
    .await
    .expect("watch");
    let created = within(Duration::from_secs(10), "created", s.message())
        .await
        .expect("watch stream")
        .expect("created response");
    assert!(created.created());

    fail::cfg("plant_drop_watch_event", "return").unwrap();
    for i in 0..5 {
        put(&mut kv, &format!("dropped/{i}"), "v").await;
    }
    let quiet = tokio::time::timeout(Duration::from_secs(2), s.message()).await;
    assert!(
        quiet.is_err(),
        "plant_drop_watch_event had no effect: {quiet:?}"
    );
    fail::remove("plant_drop_watch_event");
    let last = put(&mut kv, "dropped/after", "v").await;
    let r = within(Duration::from_secs(10), "the event after", s.message())
        .await
        .expect("watch stream")
        .expect("a response");
    let revs: Vec<i64> = r
        .events()
        .iter()
        .filter_map(|e| e.kv())
        .map(|kv| kv.mod_revision())
        .collect();
    assert_eq!(
        revs,
        vec![last],
        "only the event after the point was removed"
    );
    eprintln!("plant_drop_watch_event: 5 events dropped, then revision {last} delivered");
}

/// `plant_reuse_revision`: two different ranges acknowledge writes at the
/// same revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plant_reuse_revision_gives_two_ranges_one_revision() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts {
        range_split_keys: 12,
        ..Opts::default()
    })
    .await;
    let l = c.wait_leader(1).await;
    let mut kv = c.client().await;
    for i in 0..20 {
        put(&mut kv, &format!("key/{i:02}"), "v").await;
    }
    let child = eventually(Duration::from_secs(30), "a split", || {
        c.node(l)
            .ranges
            .iter()
            .map(|r| r.desc.read().clone())
            .find(|d| d.id != 1)
    })
    .await;
    let right = format!("{}~", String::from_utf8_lossy(&child.start_key));
    // Both ranges serve (the router learned the split).
    put(&mut kv, &right, "first").await;
    let left = put(&mut kv, "key/00", "left").await;

    fail::cfg("plant_reuse_revision", "return").unwrap();
    let reused = put(&mut kv, &right, "reused").await;
    fail::remove("plant_reuse_revision");
    assert_eq!(
        reused, left,
        "plant_reuse_revision had no effect: range {} wrote at {reused}, range 1 at {left}",
        child.id
    );
    eprintln!(
        "plant_reuse_revision: ranges 1 and {} both acknowledged revision {left}",
        child.id
    );
}
