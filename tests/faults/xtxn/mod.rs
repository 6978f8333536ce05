//! Cross-range transactions on a cluster split into many ranges, through
//! the etcd-client crate: atomic at one revision, serializable, no spurious
//! failures, and resolved when the coordinator stops mid-protocol.

mod lease;
mod queue;
mod recipes;
mod resolve;

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use crate::admin_split::split_request;
use crate::cluster::{eventually, Cluster};
use crate::within;

/// Splits range 1 at each of `keys` (the largest first, so range 1 always
/// holds the next key), until placement and the router know every range.
pub async fn split_at(c: &Cluster, keys: &[String]) {
    let mut keys = keys.to_vec();
    keys.sort();
    for key in keys.iter().rev() {
        let resp = within(Duration::from_secs(20), "split", async {
            loop {
                let l = c.wait_leader(1).await;
                match c
                    .node_client(l)
                    .await
                    .admin(split_request(1, key.as_bytes()))
                    .await
                {
                    Ok(r) if r.get_ref().error.is_none() => return r,
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        })
        .await;
        assert!(resp.into_inner().error.is_none());
    }
    let want = keys.len() + 1;
    eventually(
        Duration::from_secs(20),
        "every node hosts every range",
        || c.nodes.iter().all(|n| n.ranges.len() >= want).then_some(()),
    )
    .await;
}

/// `n` split keys `"{prefix}{i:02}"`, i in 1..=n: n + 1 ranges over the prefix.
pub fn split_keys(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i:02}")).collect()
}

/// The key's value as an integer and its mod revision.
pub async fn get_int(c: &mut Client, key: &str) -> (i64, i64) {
    let r = within(Duration::from_secs(15), "get", c.get(key, None))
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"));
    let kv = &r.kvs()[0];
    (
        String::from_utf8_lossy(kv.value())
            .parse()
            .expect("an integer"),
        kv.mod_revision(),
    )
}

/// Every key under `prefix` with its mod revision, read at `rev` (0: now).
pub async fn list(c: &mut Client, prefix: &str, rev: i64) -> Vec<(String, String, i64)> {
    let opts = GetOptions::new().with_prefix().with_revision(rev);
    let r = within(Duration::from_secs(15), "list", c.get(prefix, Some(opts)))
        .await
        .unwrap_or_else(|e| panic!("list {prefix}: {e}"));
    r.kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.mod_revision(),
            )
        })
        .collect()
}

/// A txn putting every key in `kvs` (several ranges) at once.
pub async fn put_all(c: &mut Client, kvs: &[(String, String)]) -> i64 {
    let ops: Vec<TxnOp> = kvs
        .iter()
        .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
        .collect();
    let r = within(
        Duration::from_secs(15),
        "txn",
        c.txn(Txn::new().and_then(ops)),
    )
    .await
    .expect("cross-range txn");
    assert!(r.succeeded());
    r.header().unwrap().revision()
}

/// Compare-and-swap of two keys' mod revisions, as etcd's STM does.
pub fn transfer(a: &str, ra: i64, va: i64, b: &str, rb: i64, vb: i64) -> Txn {
    Txn::new()
        .when(vec![
            Compare::mod_revision(a, CompareOp::Equal, ra),
            Compare::mod_revision(b, CompareOp::Equal, rb),
        ])
        .and_then(vec![
            TxnOp::put(a, va.to_string(), None),
            TxnOp::put(b, vb.to_string(), None),
        ])
        .or_else(vec![TxnOp::get(a, None), TxnOp::get(b, None)])
}
