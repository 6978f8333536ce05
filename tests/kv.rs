//! etcd v3 KV compatibility: Range, Put, DeleteRange, Txn, Compact and request limits.
//!
//! Every expectation here was checked against a real etcd 3.4
//! (`STRATA_TEST_TARGET=etcd cargo test --test kv`). Absolute revision numbers are
//! never asserted (Strata allocates revisions globally and may leave gaps); only
//! relations between them are.

mod common;

use common::*;
use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, GetResponse,
    KeyValue, PutOptions, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};

async fn client() -> Client {
    shared().client().await
}

fn rev_of(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.expect("response header").revision()
}

/// Puts and returns the revision of the put (from its response header).
async fn put(c: &mut Client, key: &str, value: &str) -> i64 {
    let r = c.put(key, value, None).await.expect("put");
    rev_of(r.header())
}

fn keys(r: &GetResponse) -> Vec<String> {
    r.kvs()
        .iter()
        .map(|kv| String::from_utf8(kv.key().to_vec()).unwrap())
        .collect()
}

fn strip<'a>(prefix: &str, keys: &'a [String]) -> Vec<&'a str> {
    keys.iter()
        .map(|k| k.strip_prefix(prefix).expect("key has the test prefix"))
        .collect()
}

/// Lexicographic end of a prefix (what etcd clients compute for `--prefix`).
fn prefix_end(p: &str) -> Vec<u8> {
    let mut end = p.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn kv_str(kv: &KeyValue) -> (&str, &str) {
    (kv.key_str().unwrap(), kv.value_str().unwrap())
}

// ---------------------------------------------------------------------------
// Range

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

/// Writes four keys so that key, create, mod, version and value orders all differ.
/// Returns the prefix.
async fn sort_fixture(c: &mut Client, name: &str) -> String {
    let p = prefix(name);
    // create order: c a d b
    for (k, v) in [
        ("c", "x"),
        ("a", "x"),
        ("d", "x"),
        ("b", "v0"),
        ("a", "x"),
        ("a", "x"),
        ("c", "x"),
        ("d", "v3"),
        ("a", "v2"),
        ("c", "v1"),
    ] {
        put(c, &format!("{p}{k}"), v).await;
    }
    // versions: a 4, b 1, c 3, d 2; mod order: b d a c; values: a v2, b v0, c v1, d v3
    p
}

#[tokio::test]
async fn range_sort() {
    let mut c = client().await;
    let p = sort_fixture(&mut c, "range_sort").await;
    let cases: &[(SortTarget, SortOrder, [&str; 4])] = &[
        (SortTarget::Key, SortOrder::Ascend, ["a", "b", "c", "d"]),
        (SortTarget::Key, SortOrder::Descend, ["d", "c", "b", "a"]),
        (SortTarget::Version, SortOrder::Ascend, ["b", "d", "c", "a"]),
        (
            SortTarget::Version,
            SortOrder::Descend,
            ["a", "c", "d", "b"],
        ),
        (SortTarget::Create, SortOrder::Ascend, ["c", "a", "d", "b"]),
        (SortTarget::Create, SortOrder::Descend, ["b", "d", "a", "c"]),
        (SortTarget::Mod, SortOrder::Ascend, ["b", "d", "a", "c"]),
        (SortTarget::Mod, SortOrder::Descend, ["c", "a", "d", "b"]),
        (SortTarget::Value, SortOrder::Ascend, ["b", "c", "a", "d"]),
        (SortTarget::Value, SortOrder::Descend, ["d", "a", "c", "b"]),
        // A target other than KEY with order NONE sorts ascending (etcd quirk).
        (SortTarget::Mod, SortOrder::None, ["b", "d", "a", "c"]),
        (SortTarget::Value, SortOrder::None, ["b", "c", "a", "d"]),
        (SortTarget::Key, SortOrder::None, ["a", "b", "c", "d"]),
    ];
    for (target, order, want) in cases {
        let r = c
            .get(
                p.as_str(),
                Some(GetOptions::new().with_prefix().with_sort(*target, *order)),
            )
            .await
            .unwrap();
        assert_eq!(strip(&p, &keys(&r)), want, "{target:?} {order:?}");
        assert_eq!(r.count(), 4);
        assert!(!r.more());
    }

    // Sort first, then limit: the top 2 of the whole range, `more` and full count.
    let r = c
        .get(
            p.as_str(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Key, SortOrder::Descend)
                    .with_limit(2),
            ),
        )
        .await
        .unwrap();
    assert_eq!(strip(&p, &keys(&r)), ["d", "c"]);
    assert!(r.more());
    assert_eq!(r.count(), 4);

    let r = c
        .get(
            p.as_str(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_sort(SortTarget::Mod, SortOrder::Descend)
                    .with_limit(3),
            ),
        )
        .await
        .unwrap();
    assert_eq!(strip(&p, &keys(&r)), ["c", "a", "d"]);
    assert!(r.more());
    assert_eq!(r.count(), 4);

    // Check the fixture's metadata, so the orders above mean what they say.
    let r = c
        .get(p.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let versions: Vec<i64> = r.kvs().iter().map(|kv| kv.version()).collect();
    assert_eq!(versions, [4, 1, 3, 2]);
}

#[tokio::test]
async fn range_serializable() {
    let mut c = client().await;
    let p = prefix("range_serializable");
    let r1 = put(&mut c, &format!("{p}a"), "1").await;
    put(&mut c, &format!("{p}b"), "2").await;
    let lin = c
        .get(p.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    // A serializable read may be served by any replica from its applied state, so
    // it may lag; it must catch up within a bounded time and then agree.
    let mut tries = 0;
    let ser = loop {
        let r = c
            .get(
                p.as_str(),
                Some(GetOptions::new().with_prefix().with_serializable()),
            )
            .await
            .unwrap();
        if r.count() == 2 || tries >= 50 {
            break r;
        }
        tries += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(keys(&ser), keys(&lin));
    assert_eq!(ser.count(), 2);
    for (a, b) in ser.kvs().iter().zip(lin.kvs()) {
        assert_eq!(
            (
                a.value(),
                a.create_revision(),
                a.mod_revision(),
                a.version()
            ),
            (
                b.value(),
                b.create_revision(),
                b.mod_revision(),
                b.version()
            )
        );
    }
    // Serializable read of a single key, at a revision.
    let r = c
        .get(
            format!("{p}a"),
            Some(GetOptions::new().with_serializable().with_revision(r1)),
        )
        .await
        .unwrap();
    assert_eq!(r.kvs()[0].value(), b"1");
}

#[tokio::test]
async fn range_keys_only_and_count_only() {
    let mut c = client().await;
    let p = prefix("range_keys_only");
    let mut revs = vec![];
    for k in ["a", "b", "c"] {
        revs.push(put(&mut c, &format!("{p}{k}"), &format!("value-{k}")).await);
    }
    let r = c
        .get(
            p.as_str(),
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .unwrap();
    assert_eq!(strip(&p, &keys(&r)), ["a", "b", "c"]);
    assert_eq!(r.count(), 3);
    for (kv, rev) in r.kvs().iter().zip(&revs) {
        assert!(kv.value().is_empty(), "keys_only returns no values");
        assert_eq!(kv.create_revision(), *rev);
        assert_eq!(kv.mod_revision(), *rev);
        assert_eq!(kv.version(), 1);
    }

    let r = c
        .get(
            p.as_str(),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert!(r.kvs().is_empty(), "count_only returns no kvs");
    assert_eq!(r.count(), 3);
    assert!(!r.more());

    // count_only with a limit: still the full count, no kvs, more = false.
    let r = c
        .get(
            p.as_str(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_count_only()
                    .with_limit(1),
            ),
        )
        .await
        .unwrap();
    assert!(r.kvs().is_empty());
    assert_eq!(r.count(), 3);
    assert!(!r.more());

    // count_only at an older revision.
    let r = c
        .get(
            p.as_str(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_count_only()
                    .with_revision(revs[1]),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.count(), 2);

    // keys_only with limit.
    let r = c
        .get(
            p.as_str(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_keys_only()
                    .with_limit(2),
            ),
        )
        .await
        .unwrap();
    assert_eq!(strip(&p, &keys(&r)), ["a", "b"]);
    assert!(r.more());
    assert_eq!(r.count(), 3);
}

#[tokio::test]
async fn range_revision_filters() {
    let mut c = client().await;
    let p = prefix("range_filters");
    let k = |s: &str| format!("{p}{s}");
    let r1 = put(&mut c, &k("k1"), "a").await;
    let r2 = put(&mut c, &k("k2"), "b").await;
    let r3 = put(&mut c, &k("k3"), "c").await;
    let r4 = put(&mut c, &k("k4"), "d").await;
    let r5 = put(&mut c, &k("k1"), "a2").await;
    assert!(r1 < r2 && r2 < r3 && r3 < r4 && r4 < r5);

    let base = || GetOptions::new().with_prefix();
    let cases: Vec<(&str, GetOptions, Vec<&str>)> = vec![
        (
            "min_mod r3",
            base().with_min_mod_revision(r3),
            vec!["k1", "k3", "k4"],
        ),
        (
            "max_mod r3",
            base().with_max_mod_revision(r3),
            vec!["k2", "k3"],
        ),
        (
            "mod in [r2, r4]",
            base().with_min_mod_revision(r2).with_max_mod_revision(r4),
            vec!["k2", "k3", "k4"],
        ),
        (
            "min_create r2",
            base().with_min_create_revision(r2),
            vec!["k2", "k3", "k4"],
        ),
        (
            "max_create r2",
            base().with_max_create_revision(r2),
            vec!["k1", "k2"],
        ),
        (
            "create in [r2, r3]",
            base()
                .with_min_create_revision(r2)
                .with_max_create_revision(r3),
            vec!["k2", "k3"],
        ),
        ("min_mod r5+1", base().with_min_mod_revision(r5 + 1), vec![]),
    ];
    for (what, opts, want) in cases {
        let r = c.get(p.as_str(), Some(opts)).await.unwrap();
        assert_eq!(strip(&p, &keys(&r)), want, "{what}");
        // etcd quirk: `count` is the number of keys in the range *before* the
        // revision filters are applied.
        assert_eq!(r.count(), 4, "{what}: count ignores the revision filters");
        assert!(!r.more(), "{what}");
    }

    // Filters are applied before the limit: `more` reflects the filtered list.
    let r = c
        .get(
            p.as_str(),
            Some(base().with_min_mod_revision(r3).with_limit(2)),
        )
        .await
        .unwrap();
    assert_eq!(strip(&p, &keys(&r)), ["k1", "k3"]);
    assert!(r.more());
    assert_eq!(r.count(), 4);
    let r = c
        .get(
            p.as_str(),
            Some(base().with_max_mod_revision(r3).with_limit(2)),
        )
        .await
        .unwrap();
    assert_eq!(strip(&p, &keys(&r)), ["k2", "k3"]);
    assert!(!r.more());

    // Combined with a historical read: at r4, k1 still has mod r1.
    let r = c
        .get(
            p.as_str(),
            Some(base().with_revision(r4).with_min_mod_revision(r2)),
        )
        .await
        .unwrap();
    assert_eq!(strip(&p, &keys(&r)), ["k2", "k3", "k4"]);
}

#[tokio::test]
async fn range_empty_key() {
    let mut c = client().await;
    assert_grpc_err(c.get("", None).await, "InvalidArgument", EMPTY_KEY);
}

// ---------------------------------------------------------------------------
// Put

#[tokio::test]
async fn put_versions_and_revisions() {
    let mut c = client().await;
    let p = prefix("put_versions");
    let k = format!("{p}k");
    let r1 = put(&mut c, &k, "v1").await;
    let r2 = put(&mut c, &k, "v2").await;
    let r3 = put(&mut c, &k, "v3").await;
    assert!(r1 < r2 && r2 < r3, "each write gets a larger revision");
    let kv = c.get(k.as_str(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (
            kv.value(),
            kv.version(),
            kv.create_revision(),
            kv.mod_revision()
        ),
        (&b"v3"[..], 3, r1, r3)
    );

    // Delete resets the version; a new put starts a new life.
    let d = c.delete(k.as_str(), None).await.unwrap();
    let rd = rev_of(d.header());
    assert!(rd > r3);
    let r4 = put(&mut c, &k, "v4").await;
    assert!(r4 > rd);
    let kv = c.get(k.as_str(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (
            kv.value(),
            kv.version(),
            kv.create_revision(),
            kv.mod_revision()
        ),
        (&b"v4"[..], 1, r4, r4)
    );

    // Empty value is a valid value.
    let r5 = put(&mut c, &k, "").await;
    let kv = c.get(k.as_str(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.value(), kv.version(), kv.mod_revision()),
        (&b""[..], 2, r5)
    );

    // Binary keys and values round-trip.
    let bk: Vec<u8> = [p.as_bytes(), &[0u8, 0xff, 0x80, 1]].concat();
    let bv: Vec<u8> = vec![0, 1, 2, 0xfe, 0xff];
    c.put(bk.clone(), bv.clone(), None).await.unwrap();
    let r = c.get(bk.clone(), None).await.unwrap();
    assert_eq!((r.kvs()[0].key(), r.kvs()[0].value()), (&bk[..], &bv[..]));
}

#[tokio::test]
async fn put_prev_kv() {
    let mut c = client().await;
    let p = prefix("put_prev_kv");
    let k = format!("{p}k");
    let r = c
        .put(k.as_str(), "v1", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert!(r.prev_key().is_none(), "no previous kv for a new key");
    let r1 = rev_of(r.header());

    let r = c
        .put(k.as_str(), "v2", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    let r2 = rev_of(r.header());
    let prev = r.prev_key().expect("prev kv");
    assert_eq!(kv_str(prev), (k.as_str(), "v1"));
    assert_eq!(
        (prev.create_revision(), prev.mod_revision(), prev.version()),
        (r1, r1, 1)
    );
    assert!(r2 > r1);

    // Without prev_kv: none returned.
    let r = c.put(k.as_str(), "v3", None).await.unwrap();
    assert!(r.prev_key().is_none());
}

#[tokio::test]
async fn put_with_lease() {
    let mut c = client().await;
    let p = prefix("put_lease");
    let k = format!("{p}k");
    let lease = c.lease_grant(600, None).await.unwrap().id();
    assert!(lease != 0);
    let r1 = rev_of(
        c.put(k.as_str(), "v", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap()
            .header(),
    );
    let kv = c.get(k.as_str(), None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.lease(), kv.mod_revision()), (lease, r1));

    // A lease that does not exist.
    let missing = lease ^ 0x5a5a_0000_0000;
    let k2 = format!("{p}k2");
    let r = c
        .put(
            k2.as_str(),
            "v",
            Some(PutOptions::new().with_lease(missing)),
        )
        .await;
    assert_grpc_err(r, "NotFound", LEASE_NOT_FOUND);
    assert_eq!(c.get(k2.as_str(), None).await.unwrap().count(), 0);

    // A plain put detaches the lease.
    put(&mut c, &k, "v2").await;
    let kv = c.get(k.as_str(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(kv.lease(), 0);

    // Revoking a lease deletes its keys.
    c.put(k.as_str(), "v3", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    c.lease_revoke(lease).await.unwrap();
    assert_eq!(c.get(k.as_str(), None).await.unwrap().count(), 0);
    // And the lease is gone.
    let r = c
        .put(k.as_str(), "v4", Some(PutOptions::new().with_lease(lease)))
        .await;
    assert_grpc_err(r, "NotFound", LEASE_NOT_FOUND);
}

#[tokio::test]
async fn put_ignore_value() {
    let mut c = client().await;
    let p = prefix("put_ignore_value");
    let k = format!("{p}k");
    let r1 = put(&mut c, &k, "keep-me").await;
    let r = c
        .put(
            k.as_str(),
            "",
            Some(PutOptions::new().with_ignore_value().with_prev_key()),
        )
        .await
        .unwrap();
    let r2 = rev_of(r.header());
    assert!(r2 > r1);
    assert_eq!(r.prev_key().unwrap().value(), b"keep-me");
    let kv = c.get(k.as_str(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (
            kv.value(),
            kv.version(),
            kv.create_revision(),
            kv.mod_revision()
        ),
        (&b"keep-me"[..], 2, r1, r2)
    );

    // On a missing key.
    let r = c
        .put(
            format!("{p}missing"),
            "",
            Some(PutOptions::new().with_ignore_value()),
        )
        .await;
    assert_grpc_err(r, "InvalidArgument", KEY_NOT_FOUND);
    // ignore_value together with a value.
    let r = c
        .put(k.as_str(), "x", Some(PutOptions::new().with_ignore_value()))
        .await;
    assert_grpc_err(r, "InvalidArgument", VALUE_PROVIDED);
    let kv = c.get(k.as_str(), None).await.unwrap().kvs()[0].clone();
    assert_eq!((kv.value(), kv.version()), (&b"keep-me"[..], 2));
}

#[tokio::test]
async fn put_ignore_lease() {
    let mut c = client().await;
    let p = prefix("put_ignore_lease");
    let k = format!("{p}k");
    let lease = c.lease_grant(600, None).await.unwrap().id();
    c.put(k.as_str(), "v1", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let r2 = rev_of(
        c.put(
            k.as_str(),
            "v2",
            Some(PutOptions::new().with_ignore_lease()),
        )
        .await
        .unwrap()
        .header(),
    );
    let kv = c.get(k.as_str(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.value(), kv.lease(), kv.version(), kv.mod_revision()),
        (&b"v2"[..], lease, 2, r2)
    );

    // Both ignores: only version and mod revision change.
    let r3 = rev_of(
        c.put(
            k.as_str(),
            "",
            Some(PutOptions::new().with_ignore_lease().with_ignore_value()),
        )
        .await
        .unwrap()
        .header(),
    );
    let kv = c.get(k.as_str(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(
        (kv.value(), kv.lease(), kv.version(), kv.mod_revision()),
        (&b"v2"[..], lease, 3, r3)
    );

    let r = c
        .put(
            format!("{p}missing"),
            "v",
            Some(PutOptions::new().with_ignore_lease()),
        )
        .await;
    assert_grpc_err(r, "InvalidArgument", KEY_NOT_FOUND);
    let r = c
        .put(
            k.as_str(),
            "v",
            Some(PutOptions::new().with_ignore_lease().with_lease(lease)),
        )
        .await;
    assert_grpc_err(r, "InvalidArgument", LEASE_PROVIDED);
    c.lease_revoke(lease).await.unwrap();
}

#[tokio::test]
async fn put_empty_key() {
    let mut c = client().await;
    assert_grpc_err(c.put("", "v", None).await, "InvalidArgument", EMPTY_KEY);
}

#[tokio::test]
async fn request_size_limit() {
    let mut c = client().await;
    let p = prefix("request_size");
    // 1 MiB is fine.
    let ok = vec![b'x'; 1024 * 1024];
    let r1 = rev_of(
        c.put(format!("{p}ok"), ok.clone(), None)
            .await
            .unwrap()
            .header(),
    );
    let r = c.get(format!("{p}ok"), None).await.unwrap();
    assert_eq!(r.kvs()[0].value().len(), ok.len());
    assert_eq!(r.kvs()[0].mod_revision(), r1);

    // 1.6 MiB is over etcd's default --max-request-bytes (1.5 MiB) but under gRPC's
    // own receive limit (max-request-bytes + 512 KiB).
    let big = vec![b'y'; 1024 * 1024 * 16 / 10];
    let r = c.put(format!("{p}big"), big.clone(), None).await;
    assert_grpc_err(r, "InvalidArgument", TOO_LARGE);
    assert_eq!(c.get(format!("{p}big"), None).await.unwrap().count(), 0);

    // The same limit applies to a txn.
    let r = c
        .txn(Txn::new().and_then([TxnOp::put(format!("{p}big"), big, None)]))
        .await;
    assert_grpc_err(r, "InvalidArgument", TOO_LARGE);
}

// ---------------------------------------------------------------------------
// DeleteRange

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

// ---------------------------------------------------------------------------
// Txn

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

// ---------------------------------------------------------------------------
// Compact (on a private server: compaction is global)

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
