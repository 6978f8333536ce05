//! Range options: sort, serializable, keys-only and count-only, revision filters,
//! empty key.

use super::*;

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
