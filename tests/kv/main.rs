//! etcd v3 KV compatibility: Range, Put, DeleteRange, Txn, Compact and request limits.
//!
//! Every expectation here was checked against a real etcd 3.4
//! (`STRATA_TEST_TARGET=etcd cargo test --test kv`). Absolute revision numbers are
//! never asserted (Strata allocates revisions globally and may leave gaps); only
//! relations between them are.

#[path = "../common/mod.rs"]
mod common;

mod compact;
mod delete;
mod put;
mod range;
mod range_options;
mod txn;
mod txn_ops;

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
