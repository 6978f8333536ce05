//! Events of one watch: live puts and deletes, history from a start revision,
//! prev_kv, filters.

use super::*;

#[tokio::test]
async fn watch_live_put_and_delete() {
    let mut c = client().await;
    let p = prefix("watch_live");
    let k = format!("{p}k");
    let before = put(&mut c, &format!("{p}other"), "x").await;
    let (mut s, w) = open(&mut c, &k, None).await;

    let r1 = put(&mut c, &k, "v1").await;
    let r = recv(&mut s).await;
    assert_eq!(r.watch_id(), w);
    assert!(rev_of(r.header()) >= r1);
    let ev = flatten(&r);
    assert_eq!(
        ev,
        [Ev {
            watch_id: w,
            typ: PUT,
            key: k.clone(),
            value: "v1".into(),
            create: r1,
            modr: r1,
            version: 1,
            prev: None,
        }]
    );
    assert!(r1 > before);

    let r2 = put(&mut c, &k, "v2").await;
    let ev = events(&mut s, 1).await;
    assert_eq!(
        (
            ev[0].typ,
            ev[0].value.as_str(),
            ev[0].create,
            ev[0].modr,
            ev[0].version
        ),
        (PUT, "v2", r1, r2, 2)
    );

    // A delete event carries the key, the delete's revision as mod_revision, and
    // zero create revision, version and value.
    let rd = del(&mut c, &k).await;
    let ev = events(&mut s, 1).await;
    assert_eq!(
        ev[0],
        Ev {
            watch_id: w,
            typ: DELETE,
            key: k.clone(),
            value: String::new(),
            create: 0,
            modr: rd,
            version: 0,
            prev: None,
        }
    );

    // Writes to other keys are not delivered.
    put(&mut c, &format!("{p}other"), "y").await;
    put(&mut c, &format!("{k}0"), "y").await;
    let r3 = put(&mut c, &k, "v3").await;
    let ev = events(&mut s, 1).await;
    assert_eq!(
        (ev[0].key.as_str(), ev[0].modr, ev[0].version),
        (k.as_str(), r3, 1)
    );
    assert_quiet(&mut s, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn watch_start_revision_history_then_live() {
    let mut c = client().await;
    let p = prefix("watch_history");
    let k = |s: &str| format!("{p}{s}");
    let r1 = put(&mut c, &k("a"), "a1").await;
    let r2 = put(&mut c, &k("b"), "b1").await;
    let r3 = put(&mut c, &k("a"), "a2").await;
    let r4 = del(&mut c, &k("b")).await;

    // From r2: b1, a2, delete b; then live.
    let opts = WatchOptions::new().with_prefix().with_start_revision(r2);
    let (mut s, w) = open(&mut c, &p, Some(opts)).await;
    let ev = events(&mut s, 3).await;
    assert_eq!(
        short(&ev),
        [
            (PUT, k("b").as_str(), "b1"),
            (PUT, k("a").as_str(), "a2"),
            (DELETE, k("b").as_str(), "")
        ]
    );
    assert_eq!(ev.iter().map(|e| e.modr).collect::<Vec<_>>(), [r2, r3, r4]);
    assert!(ev.iter().all(|e| e.watch_id == w));
    assert_eq!((ev[1].create, ev[1].version), (r1, 2));

    let r5 = put(&mut c, &k("c"), "c1").await;
    let ev = events(&mut s, 1).await;
    assert_eq!((ev[0].key.as_str(), ev[0].modr), (k("c").as_str(), r5));

    // A second watch on the same stream from r1 replays everything, including r5.
    let opts = WatchOptions::new().with_prefix().with_start_revision(r1);
    let w2 = add(&mut s, &p, Some(opts)).await;
    assert_ne!(w2, w);
    let ev = events(&mut s, 5).await;
    assert!(ev.iter().all(|e| e.watch_id == w2));
    assert_eq!(
        ev.iter().map(|e| e.modr).collect::<Vec<_>>(),
        [r1, r2, r3, r4, r5]
    );

    // A start revision between writes starts at the next write.
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(r4 + 1);
    let w3 = add(&mut s, &p, Some(opts)).await;
    let ev = events(&mut s, 1).await;
    assert_eq!((ev[0].watch_id, ev[0].modr), (w3, r5));

    // Live events now reach all three watches, in one response each.
    let r6 = put(&mut c, &k("d"), "d1").await;
    let ev = events(&mut s, 3).await;
    let mut ids: Vec<i64> = ev.iter().map(|e| e.watch_id).collect();
    ids.sort();
    let mut want = vec![w, w2, w3];
    want.sort();
    assert_eq!(ids, want);
    assert!(ev.iter().all(|e| e.modr == r6));
    assert_quiet(&mut s, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn watch_prev_kv() {
    let mut c = client().await;
    let p = prefix("watch_prev_kv");
    let k = format!("{p}k");
    let (mut s, _w) = open(
        &mut c,
        &p,
        Some(WatchOptions::new().with_prefix().with_prev_key()),
    )
    .await;
    let r1 = put(&mut c, &k, "v1").await;
    let r2 = put(&mut c, &k, "v2").await;
    let r3 = del(&mut c, &k).await;
    let ev = events(&mut s, 3).await;
    assert_eq!(ev[0].prev, None, "a created key has no prev_kv");
    assert_eq!((ev[0].modr, ev[0].value.as_str()), (r1, "v1"));
    assert_eq!(ev[1].prev, Some(("v1".into(), r1)));
    assert_eq!(ev[1].modr, r2);
    assert_eq!(ev[2].prev, Some(("v2".into(), r2)));
    assert_eq!((ev[2].typ, ev[2].modr), (DELETE, r3));

    // prev_kv also works for history catch-up.
    let opts = WatchOptions::new()
        .with_prefix()
        .with_prev_key()
        .with_start_revision(r1);
    let w2 = add(&mut s, &p, Some(opts)).await;
    let ev2 = events(&mut s, 3).await;
    assert!(ev2.iter().all(|e| e.watch_id == w2));
    type Brief = (EventType, i64, Option<(String, i64)>);
    let strip =
        |v: &[Ev]| -> Vec<Brief> { v.iter().map(|e| (e.typ, e.modr, e.prev.clone())).collect() };
    assert_eq!(strip(&ev2), strip(&ev));

    // Without prev_kv: none.
    let (mut s2, _) = open(&mut c, &k, None).await;
    put(&mut c, &k, "v3").await;
    put(&mut c, &k, "v4").await;
    let ev = events(&mut s2, 2).await;
    assert!(ev.iter().all(|e| e.prev.is_none()));
}

#[tokio::test]
async fn watch_filters() {
    let mut c = client().await;
    let p = prefix("watch_filters");
    let k = format!("{p}k");
    let opts = |f: WatchFilterType| Some(WatchOptions::new().with_prefix().with_filters([f]));
    let (mut s, no_put) = open(&mut c, &p, opts(WatchFilterType::NoPut)).await;
    let no_delete = add(&mut s, &p, opts(WatchFilterType::NoDelete)).await;

    let r1 = put(&mut c, &k, "v1").await;
    let r2 = del(&mut c, &k).await;
    let r3 = put(&mut c, &k, "v2").await;
    let ev = events(&mut s, 3).await;
    // (Sorted by revision: the order of responses of different watches on one stream
    // is not part of the contract.)
    let mut got: Vec<(i64, EventType, i64)> =
        ev.iter().map(|e| (e.watch_id, e.typ, e.modr)).collect();
    got.sort_by_key(|e| e.2);
    // Responses with every event filtered out are not sent at all.
    assert_eq!(
        got,
        [
            (no_delete, PUT, r1),
            (no_put, DELETE, r2),
            (no_delete, PUT, r3)
        ]
    );
    assert_quiet(&mut s, Duration::from_millis(300)).await;

    // Both filters: nothing, ever.
    let both = Some(
        WatchOptions::new()
            .with_prefix()
            .with_filters([WatchFilterType::NoPut, WatchFilterType::NoDelete]),
    );
    let (mut s2, _) = open(&mut c, &p, both).await;
    put(&mut c, &k, "v3").await;
    del(&mut c, &k).await;
    assert_quiet(&mut s2, Duration::from_millis(500)).await;
}
