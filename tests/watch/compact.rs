//! Watches from a compacted start revision.

use super::*;

#[tokio::test]
async fn watch_compacted_start_revision() {
    // Compaction is global: a private server.
    let cluster = start();
    let mut c = cluster.client().await;
    let r1 = put(&mut c, "w/a", "1").await;
    let r2 = put(&mut c, "w/a", "2").await;
    let r3 = put(&mut c, "w/b", "1").await;
    let r4 = put(&mut c, "w/a", "3").await;
    c.compact(r3, None).await.unwrap();

    // Below the compaction revision: created, then canceled with compact_revision.
    let (mut s, w) = open(
        &mut c,
        "w/",
        Some(WatchOptions::new().with_prefix().with_start_revision(r2)),
    )
    .await;
    let r = recv(&mut s).await;
    assert_eq!(r.watch_id(), w);
    assert!(r.canceled(), "{r:?}");
    assert_eq!(r.compact_revision(), r3);
    assert!(r.events().is_empty());
    assert!(!r.created());

    // The stream stays usable: a watch at exactly the compaction revision replays
    // from there.
    let w2 = add(
        &mut s,
        "w/",
        Some(WatchOptions::new().with_prefix().with_start_revision(r3)),
    )
    .await;
    let ev = events(&mut s, 2).await;
    assert!(ev.iter().all(|e| e.watch_id == w2));
    assert_eq!(
        ev.iter()
            .map(|e| (e.key.as_str(), e.modr))
            .collect::<Vec<_>>(),
        [("w/b", r3), ("w/a", r4)]
    );
    // With prev_kv across the compaction boundary: the update at r4 still has its
    // previous version (r2, kept because it is the latest at or below r3).
    let w3 = add(
        &mut s,
        "w/a",
        Some(WatchOptions::new().with_prev_key().with_start_revision(r4)),
    )
    .await;
    let ev = events(&mut s, 1).await;
    assert_eq!(ev[0].watch_id, w3);
    assert_eq!(ev[0].prev, Some(("2".into(), r2)));

    // The canceled watch gets nothing more.
    let r5 = put(&mut c, "w/a", "4").await;
    let ev = events(&mut s, 2).await;
    let mut ids: Vec<i64> = ev.iter().map(|e| e.watch_id).collect();
    ids.sort();
    let mut want = vec![w2, w3];
    want.sort();
    assert_eq!(ids, want);
    assert!(ev.iter().all(|e| e.modr == r5));
    assert_quiet(&mut s, Duration::from_millis(300)).await;
    let _ = r1;

    // A new stream from revision 1 is compacted too.
    let (mut s2, w4) = open(
        &mut c,
        "w/",
        Some(WatchOptions::new().with_prefix().with_start_revision(1)),
    )
    .await;
    let r = recv(&mut s2).await;
    assert!(r.canceled() && r.watch_id() == w4, "{r:?}");
    assert_eq!(r.compact_revision(), r3);
}
