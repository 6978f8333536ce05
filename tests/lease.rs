//! Lease corner cases on one range.
//!
//! The router checks that a Put's lease exists, then sends the Put; placement's
//! revoke deletes the lease's keys in every range, then forgets the lease. A
//! Put checked before the revoke but applied after it would leave a key
//! attached to a dead lease that nobody deletes. These tests play that late
//! Put deterministically: they revoke the lease, then send the Put straight to
//! the range leader's internal `Node.Kv` RPC, bypassing the router's check.

mod common;

use std::time::Duration;

use common::*;
use etcd_client::{LeaseGrantOptions, PutOptions};
use strata_proto::etcd::{PbPutRequest, PbTxnOpRequest, PbTxnRequest, PbTxnRequestOp};
use strata_proto::strata::node_client::NodeClient;
use strata_proto::strata::placement_client::PlacementClient;
use strata_proto::strata::{GetRangesRequest, KvKind, KvRequest, KvResponse, RangeDescriptor};
use strata_proto::Message as _;

/// The range holding `key` and the address of its leader, per placement.
async fn leader_of(c: &Cluster, key: &[u8]) -> (RangeDescriptor, String) {
    let mut p = PlacementClient::connect(format!("http://{}", c.placement_addr()))
        .await
        .expect("connect placement");
    for _ in 0..100 {
        let r = p
            .get_ranges(GetRangesRequest::default())
            .await
            .expect("get ranges")
            .into_inner();
        let range = r.ranges.iter().find(|r| {
            r.desc.as_ref().is_some_and(|d| {
                d.start_key.as_slice() <= key && (d.end_key.is_empty() || key < &d.end_key[..])
            })
        });
        if let Some(range) = range {
            if let Some(n) = r.nodes.iter().find(|n| n.id == range.leader_node) {
                return (range.desc.clone().expect("desc"), n.addr.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("placement never reported a leader for {key:?}");
}

/// Sends a write for `key` straight to its range leader (no router, so no lease
/// check); resends on routing errors (leader moved, range split).
async fn send_to_leader(
    c: &Cluster,
    key: &[u8],
    kind: KvKind,
    request: Vec<u8>,
) -> Result<KvResponse, Refusal> {
    for _ in 0..50 {
        let (desc, addr) = leader_of(c, key).await;
        let mut node = NodeClient::connect(format!("http://{addr}"))
            .await
            .expect("connect node");
        let res = node
            .kv(KvRequest {
                range_id: desc.id,
                epoch: desc.epoch,
                kind: kind as i32,
                request: request.clone(),
                read_revision: 0,
            })
            .await
            .map(|r| r.into_inner())
            .map_err(|s| (format!("{:?}", s.code()), s.message().to_string()));
        match res {
            Ok(r) if r.error.is_some() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
    panic!("the range of {key:?} kept answering with routing errors");
}

/// Grants a lease and revokes it through the etcd API; returns its id.
async fn revoked_lease(client: &mut etcd_client::Client) -> i64 {
    let id = client.lease_grant(600, None).await.expect("grant").id();
    client.lease_revoke(id).await.expect("revoke");
    id
}

/// `(code, message)` of a refusal, as `grpc_error` gives them.
type Refusal = (String, String);

fn summary(r: &Result<KvResponse, Refusal>) -> String {
    match r {
        Ok(resp) => format!("accepted ({} response bytes)", resp.response.len()),
        Err((code, message)) => format!("refused: {code} {message:?}"),
    }
}

/// The keys of `r` with their leases.
fn key_leases(r: &etcd_client::GetResponse) -> Vec<(String, i64)> {
    r.kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.lease()))
        .collect()
}

fn refused_lease_not_found(r: &Result<KvResponse, Refusal>) -> bool {
    matches!(r, Err((code, message)) if code == "NotFound" && message == LEASE_NOT_FOUND)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_put_with_revoked_lease_is_refused_at_apply() {
    if Target::from_env() != Target::Strata {
        return; // talks to Strata's internal node API
    }
    let c = shared();
    let mut client = c.client().await;
    let key = format!("{}k", prefix("late_put_revoked_lease"));
    let lease = revoked_lease(&mut client).await;
    let put = PbPutRequest {
        key: key.clone().into_bytes(),
        value: b"late".to_vec(),
        lease,
        ..Default::default()
    };
    let res = send_to_leader(c, key.as_bytes(), KvKind::KvPut, put.encode_to_vec()).await;
    let left = client.get(key.as_str(), None).await.expect("get");
    let refused = refused_lease_not_found(&res);
    assert!(
        refused && left.kvs().is_empty(),
        "a Put attached to revoked lease {lease:x} must fail with NotFound {LEASE_NOT_FOUND:?} \
         and write nothing; it was {}, keys left (key, lease): {:?}",
        summary(&res),
        key_leases(&left)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_txn_put_with_revoked_lease_is_refused_at_apply() {
    if Target::from_env() != Target::Strata {
        return; // talks to Strata's internal node API
    }
    let c = shared();
    let mut client = c.client().await;
    let p = prefix("late_txn_revoked_lease");
    let (plain, leased) = (format!("{p}a"), format!("{p}b"));
    let lease = revoked_lease(&mut client).await;
    let put = |key: &str, lease| PbTxnRequestOp {
        request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
            key: key.as_bytes().to_vec(),
            value: b"late".to_vec(),
            lease,
            ..Default::default()
        })),
    };
    // No compares: the success branch runs. Its first put has no lease, so a
    // refusal must undo it too.
    let txn = PbTxnRequest {
        success: vec![put(&plain, 0), put(&leased, lease)],
        ..Default::default()
    };
    let res = send_to_leader(c, plain.as_bytes(), KvKind::KvTxn, txn.encode_to_vec()).await;
    let left = client
        .get(
            p.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("get");
    let refused = refused_lease_not_found(&res);
    assert!(
        refused && left.kvs().is_empty(),
        "a Txn putting with revoked lease {lease:x} must fail with NotFound {LEASE_NOT_FOUND:?} \
         and write nothing; it was {}, keys left (key, lease): {:?}",
        summary(&res),
        key_leases(&left)
    );
}

/// etcd lets a client grant a lease id again after revoking it; the range's
/// memory of revoked ids must not refuse the new lease's Puts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_id_granted_again_after_revoke_works() {
    let mut client = shared().client().await;
    let key = format!("{}k", prefix("lease_regrant"));
    let id = 0x5354_5241_5441_0000 | (std::process::id() as i64 & 0xffff);
    let opts = || Some(LeaseGrantOptions::new().with_id(id));
    assert_eq!(
        client.lease_grant(600, opts()).await.expect("grant").id(),
        id
    );
    client
        .put(key.as_str(), "v1", Some(PutOptions::new().with_lease(id)))
        .await
        .expect("put with the first lease");
    client.lease_revoke(id).await.expect("revoke");
    assert!(client
        .get(key.as_str(), None)
        .await
        .unwrap()
        .kvs()
        .is_empty());
    assert_eq!(
        client
            .lease_grant(600, opts())
            .await
            .expect("grant again")
            .id(),
        id
    );
    client
        .put(key.as_str(), "v2", Some(PutOptions::new().with_lease(id)))
        .await
        .expect("put with the lease granted again");
    let got = client.get(key.as_str(), None).await.unwrap();
    assert_eq!(got.kvs()[0].lease(), id);
    client.lease_revoke(id).await.expect("revoke again");
    assert!(client
        .get(key.as_str(), None)
        .await
        .unwrap()
        .kvs()
        .is_empty());
}

/// A range split after a revoke inherits its parent's memory of revoked
/// leases: the late Put is refused in the new range too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_range_of_a_split_refuses_a_revoked_lease() {
    if Target::from_env() != Target::Strata {
        return; // ranges are Strata's
    }
    let c = start_strata_with(&["--range-split-keys", "100"]);
    let mut client = c.client().await;
    let lease = revoked_lease(&mut client).await;
    for i in 0..400 {
        client
            .put(format!("split/{i:04}"), "v", None)
            .await
            .expect("put");
    }
    let mut p = PlacementClient::connect(format!("http://{}", c.placement_addr()))
        .await
        .expect("connect placement");
    let mut child = None;
    for _ in 0..600 {
        let r = p
            .get_ranges(GetRangesRequest::default())
            .await
            .expect("get ranges")
            .into_inner();
        // A range created by a split (after the revoke) holding loaded keys.
        child = r
            .ranges
            .into_iter()
            .filter_map(|r| r.desc)
            .find(|d| d.id != 1 && d.start_key.starts_with(b"split/"));
        if child.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let child = child.expect("no range split off within 60 s");
    let key = child.start_key.clone();
    let put = PbPutRequest {
        key: key.clone(),
        value: b"late".to_vec(),
        lease,
        ..Default::default()
    };
    let res = send_to_leader(&c, &key, KvKind::KvPut, put.encode_to_vec()).await;
    let now = client.get(key.clone(), None).await.expect("get");
    let untouched = now.kvs().len() == 1 && now.kvs()[0].value() == b"v";
    assert!(
        refused_lease_not_found(&res) && untouched,
        "range {} (split off after lease {lease:x} was revoked) must refuse a Put attached \
         to it; it was {}, key now (key, lease): {:?}",
        child.id,
        summary(&res),
        key_leases(&now)
    );
}
