//! Txn operations: branches and responses, nesting, duplicate keys, op limits,
//! Kubernetes-style updates, errors inside a txn.

use super::*;

#[tokio::test]
async fn txn_branches_and_responses() {
    let mut c = client().await;
    let p = prefix("txn_branches");
    let k = |s: &str| format!("{p}{s}");
    let r0 = put(&mut c, &k("flag"), "on").await;
    put(&mut c, &k("old"), "x").await;
    put(&mut c, &k("del1"), "d").await;
    let rlast = put(&mut c, &k("del2"), "d").await;

    let txn = |expect: &str| {
        Txn::new()
            .when([Compare::value(k("flag"), CompareOp::Equal, expect)])
            .and_then([
                TxnOp::put(k("new"), "n1", Some(PutOptions::new().with_prev_key())),
                TxnOp::put(k("old"), "x2", Some(PutOptions::new().with_prev_key())),
                TxnOp::get(k("new"), None),
                TxnOp::delete(
                    k("del"),
                    Some(DeleteOptions::new().with_prefix().with_prev_key()),
                ),
                TxnOp::get(p.as_str(), Some(GetOptions::new().with_prefix())),
            ])
            .or_else([TxnOp::get(k("flag"), None)])
    };

    // Failure branch: reads only; nothing changes.
    let r = c.txn(txn("off")).await.unwrap();
    assert!(!r.succeeded());
    assert!(rev_of(r.header()) >= rlast);
    match &r.op_responses()[..] {
        [TxnOpResponse::Get(g)] => {
            assert_eq!(kv_str(&g.kvs()[0]).1, "on");
            assert_eq!(g.kvs()[0].mod_revision(), r0);
            assert_eq!(g.count(), 1);
        }
        other => panic!("unexpected responses {other:?}"),
    }
    assert_eq!(c.get(k("new"), None).await.unwrap().count(), 0);

    // Success branch: all writes at one revision; reads see earlier ops.
    let r = c.txn(txn("on")).await.unwrap();
    assert!(r.succeeded());
    let rt = rev_of(r.header());
    assert!(rt > rlast);
    let resps = r.op_responses();
    assert_eq!(resps.len(), 5);
    match &resps[0] {
        TxnOpResponse::Put(pr) => assert!(pr.prev_key().is_none()),
        other => panic!("{other:?}"),
    }
    match &resps[1] {
        TxnOpResponse::Put(pr) => assert_eq!(pr.prev_key().unwrap().value(), b"x"),
        other => panic!("{other:?}"),
    }
    match &resps[2] {
        TxnOpResponse::Get(g) => {
            let kv = &g.kvs()[0];
            assert_eq!(
                kv.value(),
                b"n1",
                "a read in a txn sees the txn's own write"
            );
            assert_eq!(
                (kv.create_revision(), kv.mod_revision(), kv.version()),
                (rt, rt, 1)
            );
        }
        other => panic!("{other:?}"),
    }
    match &resps[3] {
        TxnOpResponse::Delete(d) => {
            assert_eq!(d.deleted(), 2);
            let prev: Vec<&str> = d.prev_kvs().iter().map(|kv| kv_str(kv).1).collect();
            assert_eq!(prev, ["d", "d"]);
        }
        other => panic!("{other:?}"),
    }
    match &resps[4] {
        TxnOpResponse::Get(g) => {
            assert_eq!(strip(&p, &keys(g)), ["flag", "new", "old"]);
            assert_eq!(g.count(), 3);
        }
        other => panic!("{other:?}"),
    }

    // After the txn: every written key carries the txn's revision.
    let r = c
        .get(p.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let got: Vec<(String, i64)> = r
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
        .collect();
    assert_eq!(got, [(k("flag"), r0), (k("new"), rt), (k("old"), rt)]);
    // The old key's version went up by one.
    assert_eq!(r.kvs()[2].version(), 2);
    // The deleted keys are gone at rt and present at rt - 1.
    let before = c
        .get(
            k("del"),
            Some(GetOptions::new().with_prefix().with_revision(rt - 1)),
        )
        .await
        .unwrap();
    assert_eq!(before.count(), 2);

    // An empty txn succeeds (no compares) and changes nothing.
    let r = c.txn(Txn::new()).await.unwrap();
    assert!(r.succeeded());
    assert!(r.op_responses().is_empty());
    assert!(rev_of(r.header()) >= rt);
    let r2 = put(&mut c, &k("flag"), "on").await;
    assert!(r2 > rt);
}

#[tokio::test]
async fn txn_nested() {
    let mut c = client().await;
    let p = prefix("txn_nested");
    let k = |s: &str| format!("{p}{s}");
    put(&mut c, &k("x"), "1").await;

    let inner = |v: &str| {
        Txn::new()
            .when([Compare::value(k("x"), CompareOp::Equal, v)])
            .and_then([
                TxnOp::put(k("inner"), "then", None),
                TxnOp::get(k("outer"), None),
            ])
            .or_else([TxnOp::put(k("inner"), "else", None)])
    };
    let r = c
        .txn(
            Txn::new()
                .when([Compare::version(k("x"), CompareOp::Greater, 0)])
                .and_then([TxnOp::put(k("outer"), "o", None), TxnOp::txn(inner("1"))])
                .or_else([TxnOp::txn(inner("2"))]),
        )
        .await
        .unwrap();
    assert!(r.succeeded());
    let rt = rev_of(r.header());
    let resps = r.op_responses();
    assert_eq!(resps.len(), 2);
    assert!(matches!(resps[0], TxnOpResponse::Put(_)));
    match &resps[1] {
        TxnOpResponse::Txn(t) => {
            assert!(t.succeeded());
            let inner = t.op_responses();
            assert_eq!(inner.len(), 2);
            assert!(matches!(inner[0], TxnOpResponse::Put(_)));
            match &inner[1] {
                TxnOpResponse::Get(g) => {
                    assert_eq!(g.kvs()[0].value(), b"o", "nested txn sees outer writes");
                    assert_eq!(g.kvs()[0].mod_revision(), rt);
                }
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    let r = c.get(k("inner"), None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"then");
    assert_eq!(
        r.kvs()[0].mod_revision(),
        rt,
        "nested writes share the revision"
    );

    // The nested else-branch.
    let r = c
        .txn(Txn::new().and_then([TxnOp::txn(inner("nope"))]))
        .await
        .unwrap();
    assert!(r.succeeded());
    match &r.op_responses()[..] {
        [TxnOpResponse::Txn(t)] => {
            assert!(!t.succeeded());
            assert!(matches!(t.op_responses()[..], [TxnOpResponse::Put(_)]));
        }
        other => panic!("{other:?}"),
    }
    let kv = c.get(k("inner"), None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.value(), kv.version()), (&b"else"[..], 2));
}

#[tokio::test]
async fn txn_duplicate_keys() {
    let mut c = client().await;
    let p = prefix("txn_duplicate");
    let k = |s: &str| format!("{p}{s}");
    put(&mut c, &k("a"), "0").await;
    let put_op = |s: &str| TxnOp::put(k(s), "v", None);

    let bad: Vec<(&str, Txn)> = vec![
        ("two puts", Txn::new().and_then([put_op("a"), put_op("a")])),
        (
            "two puts in else",
            Txn::new().or_else([put_op("b"), put_op("b")]),
        ),
        (
            "put and delete",
            Txn::new().and_then([put_op("a"), TxnOp::delete(k("a"), None)]),
        ),
        (
            "delete range covering a put",
            Txn::new().and_then([
                TxnOp::delete(p.as_str(), Some(DeleteOptions::new().with_prefix())),
                put_op("a"),
            ]),
        ),
        (
            "put in outer and nested txn",
            Txn::new().and_then([put_op("a"), TxnOp::txn(Txn::new().and_then([put_op("a")]))]),
        ),
    ];
    for (what, txn) in bad {
        assert_grpc_err(c.txn(txn).await, "InvalidArgument", DUPLICATE_KEY);
        let _ = what;
    }
    // Nothing was applied.
    let kv = c.get(k("a"), None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.value(), kv.version()), (&b"0"[..], 1));
    assert_eq!(c.get(k("b"), None).await.unwrap().count(), 0);

    let good: Vec<(&str, Txn)> = vec![
        (
            "same key in then and else",
            Txn::new().and_then([put_op("a")]).or_else([put_op("a")]),
        ),
        (
            "get and put of one key",
            Txn::new().and_then([
                TxnOp::get(k("a"), None),
                put_op("a"),
                TxnOp::get(k("a"), None),
            ]),
        ),
        (
            "two deletes of one key",
            Txn::new().and_then([TxnOp::delete(k("x"), None), TxnOp::delete(k("x"), None)]),
        ),
        (
            "puts in both branches of a nested txn",
            Txn::new().and_then([TxnOp::txn(
                Txn::new().and_then([put_op("a")]).or_else([put_op("a")]),
            )]),
        ),
    ];
    for (what, txn) in good {
        let r = c.txn(txn).await;
        assert!(r.is_ok(), "{what}: {r:?}");
    }
}

#[tokio::test]
async fn txn_too_many_ops() {
    let mut c = client().await;
    let p = prefix("txn_many_ops");
    let puts = |n: usize| -> Vec<TxnOp> {
        (0..n)
            .map(|i| TxnOp::put(format!("{p}{i:03}"), "v", None))
            .collect()
    };
    assert_grpc_err(
        c.txn(Txn::new().and_then(puts(129))).await,
        "InvalidArgument",
        TOO_MANY_OPS,
    );
    assert_grpc_err(
        c.txn(Txn::new().or_else(puts(129))).await,
        "InvalidArgument",
        TOO_MANY_OPS,
    );
    let compares: Vec<Compare> = (0..129)
        .map(|i| Compare::version(format!("{p}{i:03}"), CompareOp::Equal, 0))
        .collect();
    assert_grpc_err(
        c.txn(Txn::new().when(compares)).await,
        "InvalidArgument",
        TOO_MANY_OPS,
    );
    assert_eq!(
        c.get(
            p.as_str(),
            Some(GetOptions::new().with_prefix().with_count_only())
        )
        .await
        .unwrap()
        .count(),
        0
    );

    // Exactly 128 is allowed, in each part.
    let compares: Vec<Compare> = (0..128)
        .map(|i| Compare::version(format!("{p}{i:03}"), CompareOp::Equal, 0))
        .collect();
    let r = c
        .txn(
            Txn::new()
                .when(compares)
                .and_then(puts(128))
                .or_else(puts(128)),
        )
        .await
        .unwrap();
    assert!(r.succeeded());
    let rt = rev_of(r.header());
    let r = c
        .get(p.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(r.count(), 128);
    assert!(r.kvs().iter().all(|kv| kv.mod_revision() == rt));
}

#[tokio::test]
async fn txn_kubernetes_style_update() {
    // Kubernetes' optimistic concurrency: If mod_revision(key) == rev Then Put Else Get.
    let mut c = client().await;
    let p = prefix("txn_k8s");
    let k = format!("{p}pod");
    let r1 = put(&mut c, &k, "v1").await;
    let update = |rev: i64, v: &str| {
        Txn::new()
            .when([Compare::mod_revision(k.as_str(), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(k.as_str(), v, None)])
            .or_else([TxnOp::get(k.as_str(), None)])
    };
    let r = c.txn(update(r1, "v2")).await.unwrap();
    assert!(r.succeeded());
    let r2 = rev_of(r.header());
    match &r.op_responses()[..] {
        [TxnOpResponse::Put(pr)] => assert_eq!(rev_of(pr.header()), r2),
        other => panic!("{other:?}"),
    }
    // A stale writer loses and learns the current state.
    let r = c.txn(update(r1, "stale")).await.unwrap();
    assert!(!r.succeeded());
    match &r.op_responses()[..] {
        [TxnOpResponse::Get(g)] => {
            let kv = &g.kvs()[0];
            assert_eq!(
                (kv.value(), kv.mod_revision(), kv.version()),
                (&b"v2"[..], r2, 2)
            );
        }
        other => panic!("{other:?}"),
    }
    // Delete guarded the same way.
    let r = c
        .txn(
            Txn::new()
                .when([Compare::mod_revision(k.as_str(), CompareOp::Equal, r2)])
                .and_then([TxnOp::delete(
                    k.as_str(),
                    Some(DeleteOptions::new().with_prev_key()),
                )]),
        )
        .await
        .unwrap();
    assert!(r.succeeded());
    match &r.op_responses()[..] {
        [TxnOpResponse::Delete(d)] => {
            assert_eq!(d.deleted(), 1);
            assert_eq!(d.prev_kvs()[0].value(), b"v2");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn txn_errors_inside() {
    let mut c = client().await;
    let p = prefix("txn_errors");
    let r1 = put(&mut c, &format!("{p}k"), "v").await;
    // A read at a future revision inside a txn.
    let r = c
        .txn(Txn::new().and_then([TxnOp::get(
            format!("{p}k"),
            Some(GetOptions::new().with_revision(r1 + 1_000_000)),
        )]))
        .await;
    assert_grpc_err(r, "OutOfRange", FUTURE_REV);
    // A put with a missing lease inside a txn.
    let r = c
        .txn(Txn::new().and_then([TxnOp::put(
            format!("{p}k"),
            "v2",
            Some(PutOptions::new().with_lease(0x1234_5678_9abc)),
        )]))
        .await;
    assert_grpc_err(r, "NotFound", LEASE_NOT_FOUND);
    // ignore_value on a missing key inside a txn.
    let r = c
        .txn(Txn::new().and_then([TxnOp::put(
            format!("{p}missing"),
            "",
            Some(PutOptions::new().with_ignore_value()),
        )]))
        .await;
    assert_grpc_err(r, "InvalidArgument", KEY_NOT_FOUND);
    // An empty key inside a txn.
    let r = c
        .txn(Txn::new().and_then([TxnOp::put("", "v", None)]))
        .await;
    assert_grpc_err(r, "InvalidArgument", EMPTY_KEY);
    // Nothing changed.
    let kv = c.get(format!("{p}k"), None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.value(), kv.mod_revision()), (&b"v"[..], r1));
}

/// etcd evaluates every compare of the tree, nested txns' included, against
/// the state before the txn, then runs the ops along that path: a nested
/// compare does not see the outer txn's earlier Put (a Range op does).
#[tokio::test]
async fn txn_nested_compares_see_the_state_before_the_txn() {
    let mut c = client().await;
    let p = prefix("txn_nested_before");
    let k = |s: &str| format!("{p}{s}");
    let inner = Txn::new()
        .when([Compare::value(k("flag"), CompareOp::Equal, "new")])
        .and_then([TxnOp::put(k("seen"), "the txn's own put", None)])
        .or_else([TxnOp::put(k("seen"), "the state before", None)]);
    let r = c
        .txn(Txn::new().and_then([
            TxnOp::put(k("flag"), "new", None),
            TxnOp::get(k("flag"), None),
            TxnOp::txn(inner),
        ]))
        .await
        .expect("txn");
    assert!(r.succeeded());
    match &r.op_responses()[1] {
        etcd_client::TxnOpResponse::Get(g) => {
            assert_eq!(kv_str(&g.kvs()[0]), (k("flag").as_str(), "new"));
        }
        other => panic!("expected a range response, got {other:?}"),
    }
    match &r.op_responses()[2] {
        etcd_client::TxnOpResponse::Txn(t) => assert!(!t.succeeded(), "{t:?}"),
        other => panic!("expected a txn response, got {other:?}"),
    }
    let got = c.get(k("seen"), None).await.expect("get");
    assert_eq!(kv_str(&got.kvs()[0]).1, "the state before");
}
