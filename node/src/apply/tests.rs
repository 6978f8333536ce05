//! The op number each write of a txn carries (`WriteExec::op`), and history
//! replaying a revision's versions in that order; what a write adds to its
//! range as split checks measure it (`WriteExec::stage`).

use std::sync::Arc;

use strata_proto::etcd::{
    PbCompare, PbDeleteRequest, PbPutRequest, PbTargetUnion, PbTxnOpRequest, PbTxnRequest,
    PbTxnRequestOp,
};

use super::*;
use crate::storage::{Engine, MemoryEngine, WriteBatch};

fn version_is(key: &[u8], version: i64) -> PbCompare {
    PbCompare {
        key: key.to_vec(),
        target_union: Some(PbTargetUnion::Version(version)),
        ..Default::default()
    }
}

fn op(request: PbTxnOpRequest) -> PbTxnRequestOp {
    PbTxnRequestOp {
        request: Some(request),
    }
}

fn put(key: &[u8]) -> PbTxnRequestOp {
    op(PbTxnOpRequest::RequestPut(PbPutRequest {
        key: key.to_vec(),
        value: b"new".to_vec(),
        ..Default::default()
    }))
}

fn delete(key: &[u8], range_end: &[u8]) -> PbTxnRequestOp {
    op(PbTxnOpRequest::RequestDeleteRange(PbDeleteRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        ..Default::default()
    }))
}

/// if c == 1 then [put b, put a, txn(if c == 5 then [txn([put q]), put r]
/// else [put f, delete x1..x3]), delete c, put d]: ops b=0 a=1 (txn 2, q 4,
/// r 5 not taken) f=6 x1,x2=7 c=8 d=9.
fn tree() -> PbTxnRequest {
    let not_taken = PbTxnRequest {
        compare: vec![version_is(b"c", 5)],
        success: vec![
            op(PbTxnOpRequest::RequestTxn(PbTxnRequest {
                success: vec![put(b"q")],
                ..Default::default()
            })),
            put(b"r"),
        ],
        failure: vec![put(b"f"), delete(b"x1", b"x3")],
    };
    PbTxnRequest {
        compare: vec![version_is(b"c", 1)],
        success: vec![
            put(b"b"),
            put(b"a"),
            op(PbTxnOpRequest::RequestTxn(not_taken)),
            delete(b"c", b""),
            put(b"d"),
        ],
        failure: vec![],
    }
}

const WANT: [(&[u8], u32); 7] = [
    (b"b", 0),
    (b"a", 1),
    (b"f", 6),
    (b"x1", 7),
    (b"x2", 7),
    (b"c", 8),
    (b"d", 9),
];

fn store() -> (Arc<dyn Engine>, Mvcc) {
    let db: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let m = Mvcc::new(db.clone());
    let mut wb = WriteBatch::new();
    for key in [&b"c"[..], b"x1", b"x2"] {
        let v = MvccValue {
            value: b"old".to_vec(),
            create_revision: 2,
            version: 1,
            ..Default::default()
        };
        m.stage_version(&mut wb, key, 2, &v);
    }
    db.write(&wb, false).unwrap();
    (db, m)
}

fn all() -> KeyRange {
    KeyRange::from_etcd(b"\0", b"\0")
}

/// Writes what `ex` staged, then reads the revision back in `kr` as a
/// watch's history replay does: (key, op) of each version, in replay order.
fn write_and_replay(
    db: &Arc<dyn Engine>,
    ex: &WriteExec<'_>,
    kr: &KeyRange,
) -> Vec<(Vec<u8>, u32)> {
    let mut wb = WriteBatch::new();
    ex.stage(&mut wb);
    db.write(&wb, false).unwrap();
    ex.mvcc
        .history(kr, ex.rev, ex.rev, 100)
        .unwrap()
        .into_iter()
        .map(|(v, _)| (v.key, v.value.op))
        .collect()
}

fn events(ex: &WriteExec<'_>) -> Vec<(Vec<u8>, u32)> {
    ex.events
        .iter()
        .map(|e| (e.kv.as_ref().unwrap().key.clone(), e.op))
        .collect()
}

fn want() -> Vec<(Vec<u8>, u32)> {
    WANT.iter().map(|(k, op)| (k.to_vec(), *op)).collect()
}

#[test]
fn a_txns_writes_carry_their_op_and_replay_in_op_order() {
    let (db, m) = store();
    let mut ex = WriteExec::new(&m, 3, 0);
    assert!(ex.txn(&tree()).unwrap().succeeded);
    assert_eq!(events(&ex), want(), "live events");
    assert_eq!(write_and_replay(&db, &ex, &all()), want(), "history");
}

#[test]
fn a_ranges_part_numbers_ops_over_the_whole_txn() {
    // Two ranges, split at "b": each runs its part along the decided path;
    // the ops keep their numbers in the whole txn.
    let (db, m) = store();
    // Root taken, its nested txn not, and that one's own nested txn (in the
    // branch not taken) as it would have gone.
    let path = [true, false, true];
    let mut got = Vec::new();
    for span in [
        KeyRange::from_etcd(b"\0", b"b"),
        KeyRange::from_etcd(b"b", b"\0"),
    ] {
        let mut ex = WriteExec::new(&m, 3, 0);
        ex.txn_part(&tree(), &path, &span).unwrap();
        let live = events(&ex);
        let replayed = write_and_replay(&db, &ex, &span);
        assert_eq!(live, replayed, "live and history agree");
        got.extend(replayed);
    }
    // Range by range: "a" (op 1) first. Sorted by (op, key), as the router
    // merges a revision from several ranges: the whole txn's op order.
    assert_eq!(got[0], (b"a".to_vec(), 1));
    assert_eq!(got.len(), WANT.len());
    got.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    assert_eq!(got, want());
}

#[test]
fn a_plain_delete_replays_in_key_order_and_old_data_has_op_0() {
    let (db, m) = store();
    let mut ex = WriteExec::new(&m, 3, 0);
    ex.delete(&PbDeleteRequest {
        key: b"\0".to_vec(),
        range_end: b"\0".to_vec(),
        ..Default::default()
    })
    .unwrap();
    let keys = [&b"c"[..], b"x1", b"x2"].map(|k| (k.to_vec(), 0));
    assert_eq!(write_and_replay(&db, &ex, &all()), keys);
    // Versions written with op 0 (encoded exactly as before the field
    // existed, as older data is) read as op 0.
    let old = m.history(&all(), 2, 2, 100).unwrap();
    assert_eq!(old.len(), 3);
    assert!(old.iter().all(|(v, _)| v.value.op == 0));
}

#[test]
fn staged_growth_bounds_the_keys_and_matches_the_bytes_a_split_scan_measures() {
    let db: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let m = Mvcc::new(db.clone());
    let plain = |key: &[u8], value: &[u8]| PbPutRequest {
        key: key.to_vec(),
        value: value.to_vec(),
        ..Default::default()
    };
    let mut total = Growth::default();
    let mut run = |rev: i64, f: &dyn Fn(&mut WriteExec<'_>)| {
        let mut ex = WriteExec::new(&m, rev, 0);
        f(&mut ex);
        let mut wb = WriteBatch::new();
        let g = ex.stage(&mut wb);
        db.write(&wb, false).unwrap();
        total.keys += g.keys;
        total.bytes += g.bytes;
        g.keys
    };
    let new3 = run(10, &|ex| {
        for k in [&b"a"[..], b"b", b"c"] {
            ex.put(&plain(k, b"v1")).unwrap();
        }
    });
    assert_eq!(new3, 3, "three new keys");
    let none = run(11, &|ex| {
        ex.put(&plain(b"a", b"a longer value")).unwrap();
        ex.delete(&PbDeleteRequest {
            key: b"b".to_vec(),
            ..Default::default()
        })
        .unwrap();
    });
    assert_eq!(none, 0, "an overwrite and a delete add no key");
    let two = run(12, &|ex| {
        ex.put(&plain(b"b", b"again")).unwrap();
        ex.put(&plain(b"d", b"v1")).unwrap();
        ex.put(&plain(b"c", b"v2")).unwrap();
    });
    assert_eq!(two, 2, "a deleted key put again, and a new one");
    let txn = run(13, &|ex| {
        let r = ex.txn(&PbTxnRequest {
            success: vec![put(b"e"), put(b"a")],
            ..Default::default()
        });
        assert!(r.unwrap().succeeded);
    });
    assert_eq!(txn, 1, "a txn's new key");
    // Live now: a b c d e. The bytes are exactly what a scan counts over
    // every version written (nothing compacted).
    let (keys, bytes, split) = m.split_scan(&all(), u64::MAX, u64::MAX).unwrap();
    assert_eq!((keys, split), (5, None));
    assert_eq!(total.keys, 6, "an upper bound: b counted twice");
    assert_eq!(total.bytes, bytes);
}
