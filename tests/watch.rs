//! etcd v3 Watch compatibility: one bidirectional stream carrying many watches,
//! history catch-up, prev_kv, filters, progress notifications, cancellation and
//! compaction.
//!
//! Every expectation here was checked against a real etcd 3.4
//! (`STRATA_TEST_TARGET=etcd cargo test --test watch`). Every receive is bounded.

mod common;

use std::time::Duration;

use common::*;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};

async fn client() -> Client {
    shared().client().await
}

fn rev_of(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.expect("response header").revision()
}

async fn put(c: &mut Client, key: &str, value: &str) -> i64 {
    rev_of(c.put(key, value, None).await.expect("put").header())
}

async fn del(c: &mut Client, key: &str) -> i64 {
    rev_of(c.delete(key, None).await.expect("delete").header())
}

/// The next response on the stream (bounded).
async fn recv(s: &mut WatchStream) -> WatchResponse {
    match tokio::time::timeout(RECV_TIMEOUT, s.message()).await {
        Err(_) => panic!("no watch response within {RECV_TIMEOUT:?}"),
        Ok(Err(e)) => panic!("watch stream error: {e}"),
        Ok(Ok(None)) => panic!("watch stream closed by the server"),
        Ok(Ok(Some(r))) => r,
    }
}

/// Asserts that nothing arrives on the stream for `d`.
async fn assert_quiet(s: &mut WatchStream, d: Duration) {
    if let Ok(r) = tokio::time::timeout(d, s.message()).await {
        panic!("expected no watch response, got {r:?}");
    }
}

fn assert_created(r: &WatchResponse) {
    assert!(r.created(), "expected a created response, got {r:?}");
    assert!(!r.canceled(), "{r:?}");
    assert!(r.events().is_empty(), "{r:?}");
    assert_eq!(r.compact_revision(), 0);
}

/// Opens a stream with one watch; returns it and the watch id.
async fn open(c: &mut Client, key: &str, opts: Option<WatchOptions>) -> (WatchStream, i64) {
    let mut s = within(RECV_TIMEOUT, "open watch stream", c.watch(key, opts))
        .await
        .expect("watch");
    let r = recv(&mut s).await;
    assert_created(&r);
    (s, r.watch_id())
}

/// Adds a watch to an existing (idle) stream; returns its id.
async fn add(s: &mut WatchStream, key: &str, opts: Option<WatchOptions>) -> i64 {
    s.watch(key, opts).await.expect("send watch create");
    let r = recv(s).await;
    assert_created(&r);
    r.watch_id()
}

/// A flattened event, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ev {
    watch_id: i64,
    typ: EventType,
    key: String,
    value: String,
    create: i64,
    modr: i64,
    version: i64,
    /// (value, mod revision) of prev_kv when present.
    prev: Option<(String, i64)>,
}

fn flatten(r: &WatchResponse) -> Vec<Ev> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().expect("event kv");
            Ev {
                watch_id: r.watch_id(),
                typ: e.event_type(),
                key: kv.key_str().unwrap().to_string(),
                value: kv.value_str().unwrap().to_string(),
                create: kv.create_revision(),
                modr: kv.mod_revision(),
                version: kv.version(),
                prev: e
                    .prev_kv()
                    .map(|p| (p.value_str().unwrap().to_string(), p.mod_revision())),
            }
        })
        .collect()
}

/// Reads responses until `n` events have arrived (bounded); every response must be
/// an event response with a header revision at or after its events.
async fn events(s: &mut WatchStream, n: usize) -> Vec<Ev> {
    collect_events(s, n, false).await
}

/// Like `events`, but skips progress notifications (empty responses), which may
/// interleave on watches created with `progress_notify`.
async fn events_skip_progress(s: &mut WatchStream, n: usize) -> Vec<Ev> {
    collect_events(s, n, true).await
}

async fn collect_events(s: &mut WatchStream, n: usize, skip_progress: bool) -> Vec<Ev> {
    let mut out = Vec::new();
    for _ in 0..n.max(1) * 4 + if skip_progress { 20 } else { 0 } {
        if out.len() >= n {
            break;
        }
        let r = recv(s).await;
        assert!(!r.created() && !r.canceled(), "unexpected {r:?}");
        if skip_progress && r.events().is_empty() {
            continue;
        }
        assert!(!r.events().is_empty(), "unexpected empty response {r:?}");
        let evs = flatten(&r);
        let last = evs.last().unwrap().modr;
        assert!(rev_of(r.header()) >= last, "header below its events: {r:?}");
        out.extend(evs);
    }
    assert_eq!(out.len(), n, "got {out:#?}");
    out
}

fn short(evs: &[Ev]) -> Vec<(EventType, &str, &str)> {
    evs.iter()
        .map(|e| (e.typ, e.key.as_str(), e.value.as_str()))
        .collect()
}

const PUT: EventType = EventType::Put;
const DELETE: EventType = EventType::Delete;

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

#[tokio::test]
async fn watch_many_on_one_stream() {
    let mut c = client().await;
    // '~' sorts after every other test's prefix, so "from key" sees only ours.
    let p = prefix("~watch_many");
    let k = |s: &str| format!("{p}{s}");
    let (mut s, w_a) = open(&mut c, &k("a"), None).await;
    let w_b = add(&mut s, &k("b"), None).await;
    let w_all = add(&mut s, &p, Some(WatchOptions::new().with_prefix())).await;
    let w_range = add(
        &mut s,
        &k("a"),
        Some(WatchOptions::new().with_range(k("c"))),
    )
    .await;
    let w_from = add(&mut s, &k("b"), Some(WatchOptions::new().with_from_key())).await;
    let ids = [w_a, w_b, w_all, w_range, w_from];
    let mut sorted = ids.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 5, "watch ids are distinct: {ids:?}");

    let ra = put(&mut c, &k("a"), "1").await;
    // a: w_a, w_all, w_range
    let ev = events(&mut s, 3).await;
    let mut got: Vec<i64> = ev.iter().map(|e| e.watch_id).collect();
    got.sort();
    let mut want = vec![w_a, w_all, w_range];
    want.sort();
    assert_eq!(got, want);
    assert!(ev.iter().all(|e| e.modr == ra && e.key == k("a")));

    let rc = put(&mut c, &k("c"), "1").await;
    // c: w_all, w_from (outside [a, c))
    let ev = events(&mut s, 2).await;
    let mut got: Vec<i64> = ev.iter().map(|e| e.watch_id).collect();
    got.sort();
    let mut want = vec![w_all, w_from];
    want.sort();
    assert_eq!(got, want);
    assert!(ev.iter().all(|e| e.modr == rc));

    let rb = put(&mut c, &k("b"), "1").await;
    // b: w_b, w_all, w_range, w_from
    let ev = events(&mut s, 4).await;
    let mut got: Vec<i64> = ev.iter().map(|e| e.watch_id).collect();
    got.sort();
    let mut want = vec![w_b, w_all, w_range, w_from];
    want.sort();
    assert_eq!(got, want);
    assert!(ev.iter().all(|e| e.modr == rb));
    assert_quiet(&mut s, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn watch_txn_events_in_one_response() {
    let mut c = client().await;
    let p = prefix("watch_txn");
    let k = |s: &str| format!("{p}{s}");
    put(&mut c, &k("c"), "old").await;
    let (mut s, w) = open(
        &mut c,
        &p,
        Some(WatchOptions::new().with_prefix().with_prev_key()),
    )
    .await;
    let r = c
        .txn(
            Txn::new()
                .when([Compare::version(k("c"), CompareOp::Equal, 1)])
                .and_then([
                    TxnOp::put(k("b"), "1", None),
                    TxnOp::put(k("a"), "1", None),
                    TxnOp::delete(k("c"), None),
                    TxnOp::put(k("d"), "1", None),
                    TxnOp::get(k("a"), None),
                ]),
        )
        .await
        .unwrap();
    assert!(r.succeeded());
    let rt = rev_of(r.header());
    let resp = recv(&mut s).await;
    assert_eq!(resp.watch_id(), w);
    let ev = flatten(&resp);
    // One response, the ops' events in op order, all at the txn's revision.
    assert_eq!(
        short(&ev),
        [
            (PUT, k("b").as_str(), "1"),
            (PUT, k("a").as_str(), "1"),
            (DELETE, k("c").as_str(), ""),
            (PUT, k("d").as_str(), "1"),
        ]
    );
    assert!(ev.iter().all(|e| e.modr == rt));
    assert_eq!(ev[2].prev.as_ref().map(|p| p.0.as_str()), Some("old"));

    // A delete of a whole prefix is one revision too.
    let rd = rev_of(
        c.delete(p.as_str(), Some(DeleteOptions::new().with_prefix()))
            .await
            .unwrap()
            .header(),
    );
    let resp = recv(&mut s).await;
    let ev = flatten(&resp);
    assert_eq!(
        short(&ev),
        [
            (DELETE, k("a").as_str(), ""),
            (DELETE, k("b").as_str(), ""),
            (DELETE, k("d").as_str(), ""),
        ]
    );
    assert!(ev.iter().all(|e| e.modr == rd));
}

#[tokio::test]
async fn watch_cancel() {
    let mut c = client().await;
    let p = prefix("watch_cancel");
    let k = |s: &str| format!("{p}{s}");
    let (mut s, w1) = open(&mut c, &k("1"), None).await;
    let w2 = add(&mut s, &k("2"), None).await;

    s.cancel(w1).await.unwrap();
    let r = recv(&mut s).await;
    assert!(r.canceled(), "{r:?}");
    assert_eq!(r.watch_id(), w1);
    assert!(r.events().is_empty());
    assert!(!r.created());
    assert_eq!(r.compact_revision(), 0);

    put(&mut c, &k("1"), "x").await;
    let r2 = put(&mut c, &k("2"), "y").await;
    let ev = events(&mut s, 1).await;
    assert_eq!((ev[0].watch_id, ev[0].modr), (w2, r2));
    assert_quiet(&mut s, Duration::from_millis(300)).await;

    // The stream stays usable after a cancel.
    let w3 = add(&mut s, &k("1"), None).await;
    let r3 = put(&mut c, &k("1"), "z").await;
    let ev = events(&mut s, 1).await;
    assert_eq!((ev[0].watch_id, ev[0].modr), (w3, r3));

    // Cancel the last watches; the stream itself stays open.
    s.cancel(w2).await.unwrap();
    let r = recv(&mut s).await;
    assert!(r.canceled() && r.watch_id() == w2, "{r:?}");
    s.cancel(w3).await.unwrap();
    let r = recv(&mut s).await;
    assert!(r.canceled() && r.watch_id() == w3, "{r:?}");
    put(&mut c, &k("1"), "after").await;
    put(&mut c, &k("2"), "after").await;
    assert_quiet(&mut s, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn watch_explicit_watch_id() {
    let mut c = client().await;
    let p = prefix("watch_explicit_id");
    let (mut s, w) = open(&mut c, &p, Some(WatchOptions::new().with_watch_id(100))).await;
    assert_eq!(w, 100);
    // A duplicate id on the same stream is refused with a created+canceled response.
    s.watch(p.as_str(), Some(WatchOptions::new().with_watch_id(100)))
        .await
        .unwrap();
    let r = recv(&mut s).await;
    assert!(r.created() && r.canceled(), "{r:?}");
    assert_eq!(r.watch_id(), -1);
    assert_eq!(
        r.cancel_reason(),
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    // Ids the server picks later skip the one in use.
    let w2 = add(&mut s, &p, None).await;
    assert_ne!(w2, 100);
    let r1 = put(&mut c, &p, "v").await;
    let ev = events(&mut s, 2).await;
    let mut ids: Vec<i64> = ev.iter().map(|e| e.watch_id).collect();
    ids.sort();
    let mut want = vec![100, w2];
    want.sort();
    assert_eq!(ids, want);
    assert!(ev.iter().all(|e| e.modr == r1));
}

#[tokio::test]
async fn watch_delete_of_nothing_sends_no_event() {
    let mut c = client().await;
    let p = prefix("watch_delete_nothing");
    let k = |s: &str| format!("{p}{s}");
    let (mut s, w) = open(&mut c, &p, Some(WatchOptions::new().with_prefix())).await;
    let r = c.delete(k("missing"), None).await.unwrap();
    assert_eq!(r.deleted(), 0);
    let r = c
        .delete(k("none/"), Some(DeleteOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(r.deleted(), 0);
    // A txn whose only write deletes nothing.
    c.txn(Txn::new().and_then([TxnOp::delete(k("missing2"), None)]))
        .await
        .unwrap();
    let r1 = put(&mut c, &k("a"), "1").await;
    let ev = events(&mut s, 1).await;
    assert_eq!((ev[0].watch_id, ev[0].typ, ev[0].modr), (w, PUT, r1));
    assert_quiet(&mut s, Duration::from_millis(300)).await;
}

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
