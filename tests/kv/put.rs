//! Put: versions and revisions, prev_kv, leases, ignore_value/ignore_lease, empty
//! key, request size limit.

use super::*;

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
