//! DeleteRange: single key, interval, prefix, nothing to delete, empty key.

use super::*;

#[tokio::test]
async fn delete_single_interval_prefix() {
    let mut c = client().await;
    let p = prefix("delete_ranges");
    let k = |s: &str| format!("{p}{s}");
    let mut revs = std::collections::HashMap::new();
    for s in ["a", "b", "c", "d", "e", "f"] {
        revs.insert(s, put(&mut c, &k(s), s).await);
    }

    // Single key, with prev_kv.
    let r = c
        .delete(k("a"), Some(DeleteOptions::new().with_prev_key()))
        .await
        .unwrap();
    let ra = rev_of(r.header());
    assert!(ra > revs["f"]);
    assert_eq!(r.deleted(), 1);
    assert_eq!(r.prev_kvs().len(), 1);
    let prev = &r.prev_kvs()[0];
    assert_eq!(kv_str(prev), (k("a").as_str(), "a"));
    assert_eq!(
        (prev.create_revision(), prev.mod_revision(), prev.version()),
        (revs["a"], revs["a"], 1)
    );

    // Interval [b, d), without prev_kv: count only.
    let r = c
        .delete(k("b"), Some(DeleteOptions::new().with_range(k("d"))))
        .await
        .unwrap();
    let rb = rev_of(r.header());
    assert!(rb > ra);
    assert_eq!(r.deleted(), 2);
    assert!(r.prev_kvs().is_empty());

    // Both keys were deleted at the same revision.
    for s in ["b", "c"] {
        let before = c
            .get(k(s), Some(GetOptions::new().with_revision(rb - 1)))
            .await
            .unwrap();
        assert_eq!(before.count(), 1, "{s} exists just before the delete");
        let at = c
            .get(k(s), Some(GetOptions::new().with_revision(rb)))
            .await
            .unwrap();
        assert_eq!(at.count(), 0, "{s} is gone at the delete's revision");
    }

    // Prefix, with prev_kv: the rest, in key order.
    let r = c
        .delete(
            p.as_str(),
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert!(rev_of(r.header()) > rb);
    assert_eq!(r.deleted(), 3);
    let prev: Vec<&str> = r.prev_kvs().iter().map(|kv| kv_str(kv).1).collect();
    assert_eq!(prev, ["d", "e", "f"]);
    let left = c
        .get(p.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(left.count(), 0);
}

#[tokio::test]
async fn delete_nothing() {
    let mut c = client().await;
    let p = prefix("delete_nothing");
    let k = format!("{p}k");
    let r1 = put(&mut c, &k, "v").await;

    let r = c
        .delete(
            format!("{p}missing"),
            Some(DeleteOptions::new().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(r.deleted(), 0);
    assert!(r.prev_kvs().is_empty());
    let r = c
        .delete(
            format!("{p}none/"),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(r.deleted(), 0);

    // The existing key is untouched.
    let kv = c.get(k.as_str(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.create_revision(), kv.mod_revision(), kv.version()),
        (r1, r1, 1)
    );
    // Writes still get increasing revisions.
    let r2 = put(&mut c, &k, "v2").await;
    assert!(r2 > r1);

    // Deleting a deleted key again removes nothing.
    c.delete(k.as_str(), None).await.unwrap();
    let r = c.delete(k.as_str(), None).await.unwrap();
    assert_eq!(r.deleted(), 0);
}

#[tokio::test]
async fn delete_empty_key() {
    let mut c = client().await;
    assert_grpc_err(c.delete("", None).await, "InvalidArgument", EMPTY_KEY);
}
