//! Compact, on a private server (compaction is global).

use super::*;

#[tokio::test]
async fn compact_semantics() {
    let cluster = start();
    let mut c = cluster.client().await;
    let r1 = put(&mut c, "a", "a1").await;
    let r2 = put(&mut c, "b", "b1").await;
    let r3 = put(&mut c, "a", "a2").await;
    let r4 = put(&mut c, "c", "c1").await;
    let r5 = rev_of(c.delete("c", None).await.unwrap().header());
    let r6 = put(&mut c, "b", "b2").await;
    assert!(r1 < r2 && r2 < r3 && r3 < r4 && r4 < r5 && r5 < r6);

    // Compact at r4 (a2 and b1 are the versions alive there).
    let cr = c.compact(r4, None).await.unwrap();
    assert!(rev_of(cr.header()) >= r6);

    // Below the compaction revision: compacted.
    for rev in [r1, r3, r4 - 1] {
        let r = c.get("a", Some(GetOptions::new().with_revision(rev))).await;
        assert_grpc_err(r, "OutOfRange", COMPACTED);
    }
    // Exactly at it: works, and keeps each key's latest version at or below it.
    let r = c
        .get(
            "a",
            Some(GetOptions::new().with_range("z").with_revision(r4)),
        )
        .await
        .unwrap();
    let got: Vec<(&str, &str, i64, i64)> = r
        .kvs()
        .iter()
        .map(|kv| {
            let (k, v) = kv_str(kv);
            (k, v, kv.create_revision(), kv.mod_revision())
        })
        .collect();
    assert_eq!(
        got,
        [
            ("a", "a2", r1, r3),
            ("b", "b1", r2, r2),
            ("c", "c1", r4, r4)
        ]
    );
    // Between the compaction revision and now, history is intact.
    let r = c
        .get("c", Some(GetOptions::new().with_revision(r5)))
        .await
        .unwrap();
    assert_eq!(r.count(), 0);
    let r = c
        .get("b", Some(GetOptions::new().with_revision(r5)))
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"b1");
    // Latest reads are unaffected; versions survive compaction.
    let r = c.get("a", None).await.unwrap();
    assert_eq!(
        (r.kvs()[0].version(), r.kvs()[0].create_revision()),
        (2, r1)
    );

    // Compacting at or below the compacted revision.
    assert_grpc_err(c.compact(r4, None).await, "OutOfRange", COMPACTED);
    assert_grpc_err(c.compact(r2, None).await, "OutOfRange", COMPACTED);
    // Compacting in the future.
    assert_grpc_err(
        c.compact(r6 + 1_000_000, None).await,
        "OutOfRange",
        FUTURE_REV,
    );

    // A txn reading below the compaction revision.
    let r = c
        .txn(Txn::new().and_then([TxnOp::get("a", Some(GetOptions::new().with_revision(r3)))]))
        .await;
    assert_grpc_err(r, "OutOfRange", COMPACTED);

    // Physical compaction further on; reading at the new compaction revision works
    // and the deleted key's history is gone.
    let cr = c
        .compact(r6, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    assert!(rev_of(cr.header()) >= r6);
    assert_grpc_err(
        c.get("a", Some(GetOptions::new().with_revision(r5))).await,
        "OutOfRange",
        COMPACTED,
    );
    let r = c
        .get(
            "a",
            Some(GetOptions::new().with_range("z").with_revision(r6)),
        )
        .await
        .unwrap();
    let got: Vec<(&str, &str)> = r.kvs().iter().map(kv_str).collect();
    assert_eq!(got, [("a", "a2"), ("b", "b2")]);
    // Writes continue with larger revisions.
    let r7 = put(&mut c, "d", "d1").await;
    assert!(r7 > r6);
}
