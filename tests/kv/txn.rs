//! Txn compares: version, create, mod, value, lease, missing keys, ranges.

use super::*;

async fn holds(c: &mut Client, cmp: Compare) -> bool {
    let r = c.txn(Txn::new().when([cmp.clone()])).await;
    r.unwrap_or_else(|e| panic!("txn {cmp:?}: {e}")).succeeded()
}

#[tokio::test]
async fn txn_compare_version_create_mod() {
    use CompareOp::*;
    let mut c = client().await;
    let p = prefix("txn_compare_rev");
    let k = format!("{p}k");
    let r1 = put(&mut c, &k, "v1").await;
    let r2 = put(&mut c, &k, "v2").await; // version 2, create r1, mod r2
    let k = k.as_str();

    let cases = [
        (Compare::version(k, Equal, 2), true),
        (Compare::version(k, Equal, 1), false),
        (Compare::version(k, NotEqual, 1), true),
        (Compare::version(k, NotEqual, 2), false),
        (Compare::version(k, Greater, 1), true),
        (Compare::version(k, Greater, 2), false),
        (Compare::version(k, Less, 3), true),
        (Compare::version(k, Less, 2), false),
        (Compare::create_revision(k, Equal, r1), true),
        (Compare::create_revision(k, Equal, r2), false),
        (Compare::create_revision(k, NotEqual, r2), true),
        (Compare::create_revision(k, Less, r2), true),
        (Compare::create_revision(k, Greater, r1), false),
        (Compare::create_revision(k, Greater, r1 - 1), true),
        (Compare::mod_revision(k, Equal, r2), true),
        (Compare::mod_revision(k, Equal, r1), false),
        (Compare::mod_revision(k, NotEqual, r1), true),
        (Compare::mod_revision(k, Greater, r1), true),
        (Compare::mod_revision(k, Greater, r2), false),
        (Compare::mod_revision(k, Less, r2 + 1), true),
        (Compare::mod_revision(k, Less, r2), false),
    ];
    for (cmp, want) in cases {
        assert_eq!(holds(&mut c, cmp.clone()).await, want, "{cmp:?}");
    }
    // Several compares: all must hold.
    let r = c
        .txn(Txn::new().when([
            Compare::version(k, Equal, 2),
            Compare::mod_revision(k, Equal, r2),
        ]))
        .await
        .unwrap();
    assert!(r.succeeded());
    let r = c
        .txn(Txn::new().when([
            Compare::version(k, Equal, 2),
            Compare::mod_revision(k, Equal, r1),
        ]))
        .await
        .unwrap();
    assert!(!r.succeeded());
}

#[tokio::test]
async fn txn_compare_value_and_lease() {
    use CompareOp::*;
    let mut c = client().await;
    let p = prefix("txn_compare_value");
    let k = format!("{p}k");
    put(&mut c, &k, "bbb").await;
    let k = k.as_str();
    let cases = [
        (Compare::value(k, Equal, "bbb"), true),
        (Compare::value(k, Equal, "bb"), false),
        (Compare::value(k, NotEqual, "aaa"), true),
        (Compare::value(k, NotEqual, "bbb"), false),
        (Compare::value(k, Greater, "bba"), true),
        (Compare::value(k, Greater, "bbb"), false),
        (Compare::value(k, Greater, "bb"), true), // byte-wise, a prefix is smaller
        (Compare::value(k, Less, "c"), true),
        (Compare::value(k, Less, "bbba"), true),
        (Compare::value(k, Less, "bbb"), false),
        (Compare::lease(k, Equal, 0), true),
        (Compare::lease(k, NotEqual, 0), false),
    ];
    for (cmp, want) in cases {
        assert_eq!(holds(&mut c, cmp.clone()).await, want, "{cmp:?}");
    }

    let lease = c.lease_grant(600, None).await.unwrap().id();
    c.put(k, "bbb", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let cases = [
        (Compare::lease(k, Equal, lease), true),
        (Compare::lease(k, Equal, 0), false),
        (Compare::lease(k, NotEqual, 0), true),
        (Compare::lease(k, Greater, lease - 1), true),
        (Compare::lease(k, Greater, lease), false),
        (Compare::lease(k, Less, lease + 1), true),
        (Compare::lease(k, Less, lease), false),
    ];
    for (cmp, want) in cases {
        assert_eq!(holds(&mut c, cmp.clone()).await, want, "{cmp:?}");
    }
    c.lease_revoke(lease).await.unwrap();
}

#[tokio::test]
async fn txn_compare_missing_key() {
    use CompareOp::*;
    let mut c = client().await;
    let p = prefix("txn_compare_missing");
    let k = format!("{p}missing");
    let k = k.as_str();
    // A missing key compares as version 0, create 0, mod 0, lease 0 ...
    let cases = [
        (Compare::version(k, Equal, 0), true),
        (Compare::create_revision(k, Equal, 0), true),
        (Compare::mod_revision(k, Equal, 0), true),
        (Compare::lease(k, Equal, 0), true),
        (Compare::version(k, Greater, 0), false),
        (Compare::mod_revision(k, Less, 1), true),
        // ... but every value compare on a missing key is false.
        (Compare::value(k, Equal, ""), false),
        (Compare::value(k, NotEqual, "x"), false),
        (Compare::value(k, Less, "x"), false),
        (Compare::value(k, Greater, ""), false),
    ];
    for (cmp, want) in cases {
        assert_eq!(holds(&mut c, cmp.clone()).await, want, "{cmp:?}");
    }

    // The create-if-absent idiom.
    let create = || {
        Txn::new()
            .when([Compare::create_revision(k, Equal, 0)])
            .and_then([TxnOp::put(k, "first", None)])
            .or_else([TxnOp::get(k, None)])
    };
    let r = c.txn(create()).await.unwrap();
    assert!(r.succeeded());
    let rc = rev_of(r.header());
    let r = c.txn(create()).await.unwrap();
    assert!(!r.succeeded());
    match &r.op_responses()[..] {
        [TxnOpResponse::Get(g)] => {
            assert_eq!(g.kvs()[0].value(), b"first");
            assert_eq!(g.kvs()[0].create_revision(), rc);
        }
        other => panic!("unexpected responses {other:?}"),
    }
}

#[tokio::test]
async fn txn_compare_range() {
    use CompareOp::*;
    let mut c = client().await;
    let p = prefix("txn_compare_range");
    let k = |s: &str| format!("{p}{s}");
    let ra = put(&mut c, &k("a"), "1").await;
    let rb = put(&mut c, &k("b"), "2").await;
    put(&mut c, &k("b"), "3").await; // b: version 2
    let rc = put(&mut c, &k("c"), "4").await; // outside [a, c)

    let range = |cmp: Compare| cmp.with_range(k("c"));
    let cases = [
        // Every key in [a, c) must satisfy the compare.
        (range(Compare::version(k("a"), Greater, 0)), true),
        (range(Compare::version(k("a"), Equal, 1)), false), // b has version 2
        (range(Compare::version(k("a"), Less, 3)), true),
        (range(Compare::create_revision(k("a"), Less, rc)), true),
        (range(Compare::create_revision(k("a"), Less, rb)), false),
        (
            range(Compare::create_revision(k("a"), Greater, ra - 1)),
            true,
        ),
        (range(Compare::mod_revision(k("a"), Less, rc)), true),
        (range(Compare::value(k("a"), Less, "4")), true),
        (range(Compare::value(k("a"), Equal, "1")), false),
        (range(Compare::value(k("a"), NotEqual, "9")), true),
        (range(Compare::lease(k("a"), Equal, 0)), true),
    ];
    for (cmp, want) in cases {
        assert_eq!(holds(&mut c, cmp.clone()).await, want, "{cmp:?}");
    }
    // With a prefix.
    assert!(
        holds(
            &mut c,
            Compare::version(p.as_str(), Greater, 0).with_prefix()
        )
        .await
    );
    assert!(!holds(&mut c, Compare::value(p.as_str(), Equal, "1").with_prefix()).await);
    // An empty interval: as for a missing key (version 0 holds; value compares fail).
    let empty = |cmp: Compare| cmp.with_range(k("zz"));
    assert!(holds(&mut c, empty(Compare::version(k("z"), Equal, 0))).await);
    assert!(!holds(&mut c, empty(Compare::version(k("z"), Greater, 0))).await);
    assert!(!holds(&mut c, empty(Compare::value(k("z"), NotEqual, "x"))).await);
}
