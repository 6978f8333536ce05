//! Range: single keys, intervals, prefixes, limits, revisions.

use super::*;

#[tokio::test]
async fn range_single_key() {
    let mut c = client().await;
    let p = prefix("range_single_key");
    let k = format!("{p}k");
    let r1 = put(&mut c, &k, "v1").await;
    // A neighbour that must not be returned.
    put(&mut c, &format!("{p}k0"), "other").await;

    let r = c.get(k.as_str(), None).await.unwrap();
    assert!(rev_of(r.header()) >= r1);
    assert_eq!(r.count(), 1);
    assert!(!r.more());
    assert_eq!(r.kvs().len(), 1);
    let kv = &r.kvs()[0];
    assert_eq!(kv_str(kv), (k.as_str(), "v1"));
    assert_eq!(kv.create_revision(), r1);
    assert_eq!(kv.mod_revision(), r1);
    assert_eq!(kv.version(), 1);
    assert_eq!(kv.lease(), 0);

    // A missing key: no kvs, count 0.
    let r = c.get(format!("{p}missing"), None).await.unwrap();
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 0);
    assert!(!r.more());
    assert!(rev_of(r.header()) >= r1);
}

#[tokio::test]
async fn range_interval_and_prefix() {
    let mut c = client().await;
    let p = prefix("range_interval");
    for k in ["a", "b", "c", "d"] {
        put(&mut c, &format!("{p}{k}"), k).await;
    }
    // A key just outside the prefix: prefix "X/" ends at "X0".
    let outside = format!("{}0", p.trim_end_matches('/'));
    put(&mut c, &outside, "outside").await;

    // [b, d)
    let r = c
        .get(
            format!("{p}b"),
            Some(GetOptions::new().with_range(format!("{p}d"))),
        )
        .await
        .unwrap();
    assert_eq!(strip(&p, &keys(&r)), ["b", "c"]);
    assert_eq!(r.count(), 2);
    assert!(!r.more());

    // [b, b) and an inverted interval are empty... an end <= key means "no keys".
    let r = c
        .get(
            format!("{p}c"),
            Some(GetOptions::new().with_range(format!("{p}a"))),
        )
        .await
        .unwrap();
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 0);

    // Prefix.
    let r = c
        .get(p.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(strip(&p, &keys(&r)), ["a", "b", "c", "d"]);
    assert_eq!(r.count(), 4);
    assert!(!r.more());

    // Same through an explicit range end.
    let r = c
        .get(
            p.as_str(),
            Some(GetOptions::new().with_range(prefix_end(&p))),
        )
        .await
        .unwrap();
    assert_eq!(r.count(), 4);

    // Values and metadata come back for each key.
    for kv in r.kvs() {
        let (k, v) = kv_str(kv);
        assert_eq!(k.strip_prefix(p.as_str()).unwrap(), v);
        assert_eq!(kv.version(), 1);
        assert_eq!(kv.create_revision(), kv.mod_revision());
    }
}

#[tokio::test]
async fn range_from_key_to_end() {
    // range_end = "\0" means every key >= key. Use a prefix above every other
    // test's keys (all ASCII) so that the result is exactly ours.
    let mut c = client().await;
    let mut p: Vec<u8> = vec![0xfe, 0xfe];
    p.extend_from_slice(prefix("range_from_key").as_bytes());
    let key = |s: &str| {
        let mut k = p.clone();
        k.extend_from_slice(s.as_bytes());
        k
    };
    for k in ["a", "b", "c"] {
        c.put(key(k), k, None).await.unwrap();
    }
    let r = c
        .get(key("b"), Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    let got: Vec<Vec<u8>> = r.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    assert_eq!(got, vec![key("b"), key("c")]);
    assert_eq!(r.count(), 2);

    // The same with an explicit "\0" range end.
    let r = c
        .get(key("a"), Some(GetOptions::new().with_range(vec![0u8])))
        .await
        .unwrap();
    let got: Vec<Vec<u8>> = r.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    assert_eq!(got, vec![key("a"), key("b"), key("c")]);
    assert_eq!(r.count(), 3);

    // key "\0" .. "\0": all keys; ours are the last ones. (keys_only: other tests
    // store large values.)
    let r = c
        .get(
            vec![0u8],
            Some(GetOptions::new().with_range(vec![0u8]).with_keys_only()),
        )
        .await
        .unwrap();
    assert!(r.count() >= 3);
    let n = r.kvs().len();
    assert_eq!(n as i64, r.count());
    let tail: Vec<Vec<u8>> = r.kvs()[n - 3..]
        .iter()
        .map(|kv| kv.key().to_vec())
        .collect();
    assert_eq!(tail, vec![key("a"), key("b"), key("c")]);
}

#[tokio::test]
async fn range_limit_more_count() {
    let mut c = client().await;
    let p = prefix("range_limit");
    for k in ["a", "b", "c", "d", "e"] {
        put(&mut c, &format!("{p}{k}"), k).await;
    }
    let get = |limit: i64| GetOptions::new().with_prefix().with_limit(limit);

    let r = c.get(p.as_str(), Some(get(2))).await.unwrap();
    assert_eq!(strip(&p, &keys(&r)), ["a", "b"]);
    assert!(r.more());
    assert_eq!(r.count(), 5, "count ignores limit");

    let r = c.get(p.as_str(), Some(get(4))).await.unwrap();
    assert_eq!(r.kvs().len(), 4);
    assert!(r.more());
    assert_eq!(r.count(), 5);

    for limit in [5, 6, 100, 0] {
        let r = c.get(p.as_str(), Some(get(limit))).await.unwrap();
        assert_eq!(
            strip(&p, &keys(&r)),
            ["a", "b", "c", "d", "e"],
            "limit {limit}"
        );
        assert!(!r.more(), "limit {limit}");
        assert_eq!(r.count(), 5);
    }

    // Kubernetes-style paging: pin the revision of the first page, continue from
    // `last key + "\0"` with the prefix's end.
    let end = prefix_end(&p);
    let first = c.get(p.as_str(), Some(get(2))).await.unwrap();
    let pinned = rev_of(first.header());
    let mut all = keys(&first);
    let mut more = first.more();
    let mut pages = 1;
    // A write after the first page must not show up in later pages.
    put(&mut c, &format!("{p}c"), "changed").await;
    put(&mut c, &format!("{p}f"), "new").await;
    while more {
        assert!(pages < 10, "paging does not terminate");
        let mut next = all.last().unwrap().clone().into_bytes();
        next.push(0);
        let r = c
            .get(
                next,
                Some(
                    GetOptions::new()
                        .with_range(end.clone())
                        .with_limit(2)
                        .with_revision(pinned),
                ),
            )
            .await
            .unwrap();
        // etcd reports the store's current revision in the header of a historical
        // read, not the requested one.
        assert!(rev_of(r.header()) > pinned);
        for kv in r.kvs() {
            assert!(kv.mod_revision() <= pinned);
            if kv.key_str().unwrap().ends_with("/c") {
                assert_eq!(kv.value(), b"c");
            }
        }
        all.extend(keys(&r));
        more = r.more();
        pages += 1;
    }
    assert_eq!(strip(&p, &all), ["a", "b", "c", "d", "e"]);
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn range_at_revision() {
    let mut c = client().await;
    let p = prefix("range_at_revision");
    let a = format!("{p}a");
    let b = format!("{p}b");
    let r1 = put(&mut c, &a, "v1").await;
    let r2 = put(&mut c, &a, "v2").await;
    let r3 = rev_of(c.delete(a.as_str(), None).await.unwrap().header());
    let r4 = put(&mut c, &b, "b1").await;
    let r5 = put(&mut c, &a, "v3").await;
    assert!(r1 < r2 && r2 < r3 && r3 < r4 && r4 < r5);

    let at = |rev: i64| GetOptions::new().with_revision(rev);
    let r = c.get(a.as_str(), Some(at(r1))).await.unwrap();
    // The header of a historical read carries the current revision, not r1.
    assert!(rev_of(r.header()) >= r5);
    let kv = &r.kvs()[0];
    assert_eq!(
        (
            kv.value(),
            kv.version(),
            kv.create_revision(),
            kv.mod_revision()
        ),
        (&b"v1"[..], 1, r1, r1)
    );

    let r = c.get(a.as_str(), Some(at(r2))).await.unwrap();
    let kv = &r.kvs()[0];
    assert_eq!(
        (
            kv.value(),
            kv.version(),
            kv.create_revision(),
            kv.mod_revision()
        ),
        (&b"v2"[..], 2, r1, r2)
    );

    // Deleted at r3: gone at r3 and r4.
    for rev in [r3, r4] {
        let r = c.get(a.as_str(), Some(at(rev))).await.unwrap();
        assert!(r.kvs().is_empty(), "rev {rev}");
        assert_eq!(r.count(), 0);
    }

    // Recreated: a new life, version 1 again.
    let r = c.get(a.as_str(), Some(at(r5))).await.unwrap();
    let kv = &r.kvs()[0];
    assert_eq!(
        (
            kv.value(),
            kv.version(),
            kv.create_revision(),
            kv.mod_revision()
        ),
        (&b"v3"[..], 1, r5, r5)
    );

    // Prefix reads at each revision.
    let prefix_at = |rev: i64| GetOptions::new().with_prefix().with_revision(rev);
    let count_at = |r: &GetResponse| (strip(&p, &keys(r)).join(","), r.count());
    let r = c.get(p.as_str(), Some(prefix_at(r1))).await.unwrap();
    assert_eq!(count_at(&r), ("a".to_string(), 1));
    let r = c.get(p.as_str(), Some(prefix_at(r4))).await.unwrap();
    assert_eq!(count_at(&r), ("b".to_string(), 1));
    let r = c.get(p.as_str(), Some(prefix_at(r5))).await.unwrap();
    assert_eq!(count_at(&r), ("a,b".to_string(), 2));
    // Before the first write of this test: nothing (revision 0 would mean "latest").
    if r1 > 1 {
        let r = c.get(p.as_str(), Some(prefix_at(r1 - 1))).await.unwrap();
        assert_eq!(r.count(), 0);
    }

    // Latest (revision 0) equals the newest state.
    let r = c
        .get(p.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(rev_of(r.header()) >= r5);
    assert_eq!(r.count(), 2);
}

#[tokio::test]
async fn range_future_revision() {
    let mut c = client().await;
    let p = prefix("range_future");
    let r1 = put(&mut c, &format!("{p}k"), "v").await;
    let r = c
        .get(
            format!("{p}k"),
            Some(GetOptions::new().with_revision(r1 + 1_000_000)),
        )
        .await;
    assert_grpc_err(r, "OutOfRange", FUTURE_REV);
    // Also for a range read.
    let r = c
        .get(
            p.as_str(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_revision(r1 + 1_000_000),
            ),
        )
        .await;
    assert_grpc_err(r, "OutOfRange", FUTURE_REV);
}
