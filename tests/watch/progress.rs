//! Progress notifications and requests; require-leader watches.

use super::*;

#[tokio::test]
async fn watch_progress_notify() {
    let mut c = client().await;
    let p = prefix("watch_progress_notify");
    let r0 = put(&mut c, &format!("{p}unwatched"), "x").await;
    let (mut s, w) = open(
        &mut c,
        &format!("{p}k"),
        Some(WatchOptions::new().with_progress_notify()),
    )
    .await;
    // With the server's interval at 1 s, an idle synced watch gets empty responses
    // carrying a revision at or after every write made before it was created.
    let mut seen = 0;
    for _ in 0..20 {
        let r = recv(&mut s).await;
        assert_eq!(r.watch_id(), w, "{r:?}");
        assert!(r.events().is_empty(), "{r:?}");
        assert!(!r.created() && !r.canceled(), "{r:?}");
        if rev_of(r.header()) >= r0 {
            seen += 1;
            if seen == 2 {
                break;
            }
        }
    }
    assert_eq!(seen, 2, "expected periodic progress notifications");

    // Events still flow, and later notifications are at or after them.
    let r1 = put(&mut c, &format!("{p}k"), "v").await;
    let ev = events_skip_progress(&mut s, 1).await;
    assert_eq!(ev[0].modr, r1);
    let r = recv(&mut s).await;
    assert!(r.events().is_empty(), "{r:?}");
    assert!(rev_of(r.header()) >= r1, "{r:?}");

    // A watch without progress_notify on another stream gets nothing while idle.
    let (mut s2, _) = open(&mut c, &format!("{p}k2"), None).await;
    assert_quiet(
        &mut s2,
        Duration::from_secs(PROGRESS_NOTIFY_INTERVAL_SECS * 2 + 1),
    )
    .await;
}

#[tokio::test]
async fn watch_progress_request() {
    let mut c = client().await;
    let p = prefix("watch_progress_request");
    let (mut s, w) = open(&mut c, &format!("{p}k"), None).await;
    let w2 = add(&mut s, &format!("{p}j"), None).await;
    let r0 = put(&mut c, &format!("{p}unwatched"), "x").await;

    // WatchProgressRequest: an empty response with watch_id -1 whose header revision
    // says every watch on the stream is synced up to it. It must reach every write
    // made before the request (allow a bounded number of re-requests for lag).
    let mut ok = false;
    for _ in 0..20 {
        s.request_progress().await.unwrap();
        let r = recv(&mut s).await;
        assert_eq!(r.watch_id(), -1, "{r:?}");
        assert!(
            r.events().is_empty() && !r.created() && !r.canceled(),
            "{r:?}"
        );
        if rev_of(r.header()) >= r0 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "progress never reached {r0}");

    // Events delivered before a progress response are at or below its revision.
    let r1 = put(&mut c, &format!("{p}k"), "v").await;
    let ev = events(&mut s, 1).await;
    assert_eq!((ev[0].watch_id, ev[0].modr), (w, r1));
    s.request_progress().await.unwrap();
    let r = recv(&mut s).await;
    assert_eq!(r.watch_id(), -1, "{r:?}");
    assert!(rev_of(r.header()) >= r1);
    let _ = w2;
    assert_quiet(&mut s, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn watch_with_require_leader() {
    // Kubernetes sets the `hasleader` metadata on watches.
    let cluster = shared();
    let mut c = cluster
        .client_with(ConnectOptions::new().with_require_leader(true))
        .await;
    let p = prefix("watch_require_leader");
    let (mut s, w) = open(
        &mut c,
        &p,
        Some(
            WatchOptions::new()
                .with_prefix()
                .with_prev_key()
                .with_progress_notify(),
        ),
    )
    .await;
    let r1 = rev_of(
        c.put(format!("{p}k"), "v", Some(PutOptions::new()))
            .await
            .unwrap()
            .header(),
    );
    // Skip progress notifications that may come first.
    let mut got = None;
    for _ in 0..10 {
        let r = recv(&mut s).await;
        if !r.events().is_empty() {
            got = Some(flatten(&r));
            break;
        }
    }
    let ev = got.expect("event");
    assert_eq!((ev[0].watch_id, ev[0].modr), (w, r1));
    let g = c
        .get(p.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(g.count(), 1);
}
