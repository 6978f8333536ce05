//! Lease revocation and expiry over keys in many ranges: one revision, one
//! watch response, and the lease refused afterwards in every range.

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_client::{EventType, PutOptions, WatchOptions};

use super::{list, split_at, split_keys};
use crate::cluster::{Cluster, Opts};
use crate::within;

async fn keys_on_lease(c: &Cluster, prefix: &str, ttl: i64) -> (etcd_client::Client, i64) {
    let mut kv = c.client().await;
    let lease = kv.lease_grant(ttl, None).await.expect("grant").id();
    for i in 0..12 {
        let opts = PutOptions::new().with_lease(lease);
        within(
            Duration::from_secs(15),
            "put",
            kv.put(format!("{prefix}{i:02}/k"), "v", Some(opts)),
        )
        .await
        .expect("put on the lease");
    }
    (kv, lease)
}

/// Waits for the watch's first response with events; checks it holds every
/// key's delete at one revision, and answers that revision.
async fn one_delete_response(events: &mut etcd_client::WatchStream, n: usize) -> i64 {
    let resp = within(Duration::from_secs(20), "watch response", async {
        loop {
            let r = events.message().await.expect("watch").expect("response");
            if !r.events().is_empty() {
                return r;
            }
        }
    })
    .await;
    assert_eq!(resp.events().len(), n, "every key's delete in one response");
    let revs: BTreeSet<i64> = resp
        .events()
        .iter()
        .map(|e| {
            assert_eq!(e.event_type(), EventType::Delete);
            e.kv().unwrap().mod_revision()
        })
        .collect();
    assert_eq!(revs.len(), 1, "one revision: {revs:?}");
    revs.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoke_and_expiry_over_12_ranges_delete_at_one_revision() {
    let _fp = fail::FailScenario::setup();
    let c = Cluster::start(Opts::default()).await;
    let mut keys = split_keys("lr/", 11);
    keys.extend(split_keys("le/", 11));
    split_at(&c, &keys).await;

    // Revoke.
    let (mut kv, lease) = keys_on_lease(&c, "lr/", 60).await;
    let mut events = kv
        .watch("lr/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    within(Duration::from_secs(20), "revoke", kv.lease_revoke(lease))
        .await
        .expect("revoke");
    let rev = one_delete_response(&mut events, 12).await;
    assert!(list(&mut kv, "lr/", rev).await.is_empty());
    assert_eq!(list(&mut kv, "lr/", rev - 1).await.len(), 12);
    // The lease is gone in every range.
    let late = kv
        .put("lr/05/late", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect_err("a put on a revoked lease");
    assert!(
        late.to_string().contains("requested lease not found"),
        "{late}"
    );

    // Expiry.
    let (mut kv, _lease) = keys_on_lease(&c, "le/", 2).await;
    let mut events = kv
        .watch("le/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let rev = one_delete_response(&mut events, 12).await;
    assert!(list(&mut kv, "le/", rev).await.is_empty());
    assert_eq!(list(&mut kv, "le/", rev - 1).await.len(), 12);
}
