//! Many watches on one stream, txn events, cancellation, explicit watch ids,
//! deletes of nothing.

use super::*;

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

/// The events of one txn come in op order (etcd orders a revision's events
/// by sub-revision) also when a watch replays them from history: a watch
/// created after the txn, from its revision. Nested txns count their ops in
/// the tree's pre-order, a branch not taken included; one delete's keys come
/// in key order.
#[tokio::test]
async fn watch_from_history_gives_a_txns_events_in_op_order() {
    let mut c = client().await;
    let p = prefix("watch_txn_hist");
    let k = |s: &str| format!("{p}{s}");
    for key in ["c", "x1", "x2"] {
        put(&mut c, &k(key), "old").await;
    }
    let not_taken = Txn::new()
        .when([Compare::version(k("c"), CompareOp::Equal, 5)])
        .and_then([
            TxnOp::txn(Txn::new().and_then([TxnOp::put(k("q"), "1", None)])),
            TxnOp::put(k("r"), "1", None),
        ])
        .or_else([
            TxnOp::put(k("f"), "1", None),
            TxnOp::delete(k("x"), Some(DeleteOptions::new().with_prefix())),
        ]);
    let r = c
        .txn(
            Txn::new()
                .when([Compare::version(k("c"), CompareOp::Equal, 1)])
                .and_then([
                    TxnOp::put(k("b"), "1", None),
                    TxnOp::put(k("a"), "1", None),
                    TxnOp::txn(not_taken),
                    TxnOp::delete(k("c"), None),
                    TxnOp::put(k("d"), "1", None),
                ]),
        )
        .await
        .unwrap();
    assert!(r.succeeded());
    let rt = rev_of(r.header());
    let want = [
        (PUT, k("b")),
        (PUT, k("a")),
        (PUT, k("f")),
        (DELETE, k("x1")),
        (DELETE, k("x2")),
        (DELETE, k("c")),
        (PUT, k("d")),
    ];
    // Twice: a watch starting at the txn (its events in one response), and
    // one from before it (etcd may send both revisions in one response).
    for start in [rt, rt - 1] {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(start);
        let (mut s, w) = open(&mut c, &p, Some(opts)).await;
        let ev = if start == rt {
            let resp = recv(&mut s).await;
            assert_eq!(resp.watch_id(), w);
            flatten(&resp)
        } else {
            let mut ev = events(&mut s, want.len() + 1).await;
            // The put of x2 at rt - 1 comes first.
            let first = ev.remove(0);
            assert_eq!((first.key, first.modr), (k("x2"), rt - 1));
            ev
        };
        let got: Vec<(EventType, String)> = ev.iter().map(|e| (e.typ, e.key.clone())).collect();
        assert_eq!(got, want, "from revision {start}");
        assert!(ev.iter().all(|e| e.modr == rt));
        let prev: Vec<Option<&str>> = ev
            .iter()
            .map(|e| e.prev.as_ref().map(|p| p.0.as_str()))
            .collect();
        assert_eq!(
            prev,
            [
                None,
                None,
                None,
                Some("old"),
                Some("old"),
                Some("old"),
                None
            ]
        );
    }
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

/// A client that half-closes its side of the stream (sends no more
/// requests) still gets its watches' events, as etcd keeps them until the
/// client goes: here a raw gRPC stream whose request side ends after one
/// create.
#[tokio::test]
async fn watch_survives_the_client_half_closing_its_stream() {
    use strata_proto::etcd::PbWatchResponse;
    // etcd's WatchRequest { create_request (1): WatchCreateRequest { key (1) } }
    // (the etcd-client crate does not export the create request type).
    #[derive(Clone, PartialEq, prost::Message)]
    struct Create {
        #[prost(bytes = "vec", tag = "1")]
        key: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct WatchRequest {
        #[prost(message, optional, tag = "1")]
        create_request: Option<Create>,
    }
    let mut c = client().await;
    let key = prefix("half_closed");
    let url = format!("http://{}", shared().endpoint);
    let ch = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let create = WatchRequest {
        create_request: Some(Create {
            key: key.clone().into_bytes(),
        }),
    };
    // One request, then the request stream ends: a half-close.
    let requests = futures::stream::iter(vec![create]);
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch");
    let codec = tonic_prost::ProstCodec::<_, PbWatchResponse>::default();
    let mut s = within(
        RECV_TIMEOUT,
        "open",
        grpc.streaming(tonic::Request::new(requests), path, codec),
    )
    .await
    .expect("watch")
    .into_inner();
    assert!(next_raw(&mut s).await.created);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rev = put(&mut c, &key, "after half-close").await;
    let r = next_raw(&mut s).await;
    assert_eq!(r.events.len(), 1, "{r:?}");
    assert_eq!(r.events[0].kv.as_ref().map(|kv| kv.mod_revision), Some(rev));
}

async fn next_raw(
    s: &mut tonic::Streaming<strata_proto::etcd::PbWatchResponse>,
) -> strata_proto::etcd::PbWatchResponse {
    match tokio::time::timeout(RECV_TIMEOUT, s.message()).await {
        Ok(Ok(Some(r))) => r,
        other => panic!("watch response: {other:?}"),
    }
}
