//! A range feed opened while its range splits must not go on over the keys
//! the new range took.
//!
//! Found by the robustness suite (seed 6016, kill nemesis, etcd profile): a
//! watch on [e/k0, e/k1) never delivered an acknowledged put while later
//! revisions arrived. The node checked the feed request's epoch, then
//! subscribed to the range's events; a split applying in between ended the
//! range's feeds before this one listened, so it kept serving the old, wider
//! interval: its checkpoints promised revisions whose events for the moved
//! keys only the new range published.

use std::time::Duration;

use crate::admin_split::split_request;
use etcd_client::{EventType, WatchOptions};

use crate::cluster::{eventually, Cluster, Opts};
use crate::{put, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_feed_opened_during_a_split_does_not_lose_the_new_ranges_events() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let l = c.wait_leader(1).await;
    let mut kv = c.client().await;
    for i in 0..10 {
        put(&mut kv, &format!("w/{i:02}"), "v").await;
    }
    // The feed the watch opens on range 1 waits between its epoch check and
    // its subscription; the split applies meanwhile.
    fail::cfg(format!("feed_before_subscribe.{l}"), "1*return(1500)").unwrap();
    let mut watch_client = c.client().await;
    let opts = WatchOptions::new().with_prefix();
    let mut stream = within(
        Duration::from_secs(10),
        "watch",
        watch_client.watch("w/", Some(opts)),
    )
    .await
    .expect("watch");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let split = c
        .node_client(l)
        .await
        .admin(split_request(1, b"w/05"))
        .await
        .expect("admin split")
        .into_inner();
    assert!(split.error.is_none(), "split: {:?}", split.error);
    // Let the paused feed subscribe, then write to both halves.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let left = put(&mut kv, "w/01", "after-split").await;
    let right = put(&mut kv, "w/08", "after-split").await;

    let mut seen = Vec::new();
    let got_both = async {
        while let Some(resp) = stream.message().await.expect("watch stream") {
            for e in resp.events() {
                if e.event_type() == EventType::Put {
                    let kv = e.kv().expect("kv");
                    seen.push((
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        kv.mod_revision(),
                    ));
                }
            }
            if seen.iter().any(|(_, r)| *r == right) && seen.iter().any(|(_, r)| *r == left) {
                return true;
            }
        }
        false
    };
    let got_both = tokio::time::timeout(Duration::from_secs(15), got_both).await;
    assert!(
        matches!(got_both, Ok(true)),
        "the watch missed a put: w/01 at {left} and w/08 (in the new range) at {right} \
         were acknowledged, the watch delivered {seen:?}"
    );
}

/// Found by the robustness suite (seed 7079, `all` nemesis): a single-key
/// watch never delivered a put while later revisions arrived. The range's
/// leader was cut off (its feed held, unable to checkpoint), the others elected
/// a new leader and took the put; once healed, the old leader caught up by a
/// snapshot — which replaced the entries whose events its still-open feed
/// would have forwarded — and the feed went on with the events it applied
/// after the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_feed_ends_when_its_replica_catches_up_by_snapshot() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts {
        raft_log_keep_entries: 10,
        ..Opts::default()
    })
    .await;
    let l = c.wait_leader(1).await;
    let mut kv = c.client().await;
    put(&mut kv, "s/0", "v").await;
    let mut watch_client = c.client().await;
    let opts = WatchOptions::new().with_prefix();
    let mut stream = within(
        Duration::from_secs(10),
        "watch",
        watch_client.watch("s/", Some(opts)),
    )
    .await
    .expect("watch");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The feed's node is cut off; the others elect a leader and go on, far
    // enough for the cut-off replica to need a snapshot.
    fail::cfg(format!("partition.{l}"), "return").unwrap();
    eventually(Duration::from_secs(20), "a leader on another node", || {
        c.leader_of(1).filter(|&n| n != l)
    })
    .await;
    let lost = crate::partition::put_retrying(&c, "s/lost", "v").await;
    let mut last = lost;
    for i in 0..40 {
        last = crate::partition::put_retrying(&c, &format!("t/{i}"), "v").await;
    }
    fail::remove(format!("partition.{l}"));
    eventually(Duration::from_secs(30), "the old leader caught up", || {
        (c.applied_rev(l, 1) >= last).then_some(())
    })
    .await;
    let after = put(&mut kv, "s/after", "v").await;

    let mut seen = Vec::new();
    let got = async {
        while let Some(resp) = stream.message().await.expect("watch stream") {
            for e in resp.events() {
                let kv = e.kv().expect("kv");
                seen.push((
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.mod_revision(),
                ));
            }
            if seen.iter().any(|(_, r)| *r == after) {
                return seen.iter().any(|(_, r)| *r == lost);
            }
        }
        false
    };
    let got = tokio::time::timeout(Duration::from_secs(20), got).await;
    assert!(
        matches!(got, Ok(true)),
        "the watch skipped s/lost (acknowledged at {lost}) but delivered s/after at {after}: \
         {seen:?} ({got:?})"
    );
}

/// The next response with events (the first answer only says the watch was
/// created), as (type, key) pairs and their revision; bounded.
async fn next_events(s: &mut etcd_client::WatchStream) -> (Vec<(EventType, String)>, i64) {
    within(Duration::from_secs(10), "watch response", async {
        loop {
            let r = s
                .message()
                .await
                .expect("watch stream")
                .expect("a response");
            if let Some(e) = r.events().first() {
                let rev = e.kv().expect("kv").mod_revision();
                let evs = r
                    .events()
                    .iter()
                    .map(|e| {
                        let kv = e.kv().expect("kv");
                        assert_eq!(kv.mod_revision(), rev, "one revision per response");
                        (e.event_type(), kv.key_str().unwrap().to_string())
                    })
                    .collect();
                return (evs, rev);
            }
        }
    })
    .await
}

/// A txn over several ranges: a watch gets its events in op order over the
/// whole txn (as etcd, whose sub-revisions count the txn's writes), live
/// from the range feeds and when it replays them from history; a delete over
/// several ranges gives its keys in key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feeds_over_ranges_give_a_txns_events_in_op_order() {
    use crate::xtxn::{split_at, split_keys};
    use etcd_client::{DeleteOptions, Txn, TxnOp};
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    // Ranges [.., wo/01), [wo/01, wo/02), [wo/02, wo/03), [wo/03, ..).
    split_at(&c, &split_keys("wo/", 3)).await;
    let mut kv = c.client().await;
    for key in ["wo/00/c", "wo/01/c", "wo/03/c"] {
        put(&mut kv, key, "old").await;
    }
    let mut watch_client = c.client().await;
    let prefix = || Some(WatchOptions::new().with_prefix());
    let mut live = within(
        Duration::from_secs(10),
        "watch",
        watch_client.watch("wo/", prefix()),
    )
    .await
    .expect("watch");
    // The feeds are open (and caught up) once a put made now arrives.
    let probe = put(&mut kv, "wo/02/probe", "v").await;
    assert_eq!(next_events(&mut live).await.1, probe);

    let ops = [
        (EventType::Put, "wo/03/p"),
        (EventType::Delete, "wo/01/c"),
        (EventType::Put, "wo/00/p"),
        (EventType::Delete, "wo/03/c"),
        (EventType::Put, "wo/02/p"),
    ];
    let txn = Txn::new().and_then(ops.map(|(t, key)| match t {
        EventType::Put => TxnOp::put(key, "1", None),
        EventType::Delete => TxnOp::delete(key, None),
    }));
    let r = within(Duration::from_secs(15), "txn", kv.txn(txn))
        .await
        .expect("txn over four ranges");
    let rt = r.header().unwrap().revision();
    let want_txn: Vec<(EventType, String)> = ops.map(|(t, k)| (t, k.to_string())).to_vec();
    let del = within(
        Duration::from_secs(15),
        "delete",
        kv.delete("wo/", Some(DeleteOptions::new().with_prefix())),
    )
    .await
    .expect("delete over four ranges");
    let rd = del.header().unwrap().revision();
    let want_del: Vec<(EventType, String)> =
        ["wo/00/c", "wo/00/p", "wo/02/p", "wo/02/probe", "wo/03/p"]
            .map(|k| (EventType::Delete, k.to_string()))
            .to_vec();
    // Live, then from history (a watch created now, from the txn's revision).
    let mut hist = within(
        Duration::from_secs(10),
        "watch",
        watch_client.watch("wo/", prefix().map(|o| o.with_start_revision(rt))),
    )
    .await
    .expect("watch");
    for (what, s) in [("live", &mut live), ("history", &mut hist)] {
        assert_eq!(
            next_events(s).await,
            (want_txn.clone(), rt),
            "{what}: the txn"
        );
        assert_eq!(
            next_events(s).await,
            (want_del.clone(), rd),
            "{what}: the delete"
        );
    }
}
