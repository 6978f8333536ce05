//! Pure helpers of cross-range transactions, shared by router (coordinator)
//! and node (participant): the txn tree walked in pre-order, compares
//! combined from every range's view, the path a txn takes, and the one
//! compare rule both sides use.
//!
//! Numbering: the txn tree is walked in pre-order — a txn, then each op of
//! its success branch and then of its failure branch, a nested txn op
//! followed at once by its own subtree. Txns ("nodes") and ops are numbered
//! separately in that order. Every compare of the tree is evaluated against
//! the state before the txn (etcd's `compareToPath`), so the path is known
//! before any op runs.

use crate::etcd::{PbCompare, PbTargetUnion, PbTxnOpRequest, PbTxnRequest, PbTxnRequestOp};
use crate::etcdutil::KeyRange;
use crate::strata::CompareEval;

pub enum Visit<'a> {
    Node(&'a PbTxnRequest),
    Op(&'a PbTxnRequestOp),
}

/// Calls `f` for every txn and op of the tree, in pre-order.
pub fn visit<'a>(t: &'a PbTxnRequest, f: &mut impl FnMut(Visit<'a>)) {
    f(Visit::Node(t));
    for op in t.success.iter().chain(t.failure.iter()) {
        f(Visit::Op(op));
        if let Some(PbTxnOpRequest::RequestTxn(inner)) = &op.request {
            visit(inner, f);
        }
    }
}

/// How many txns the tree has (the root included).
pub fn nodes(t: &PbTxnRequest) -> usize {
    let mut n = 0;
    visit(t, &mut |v| n += matches!(v, Visit::Node(_)) as usize);
    n
}

/// Every compare of the tree, in pre-order.
pub fn compares(t: &PbTxnRequest) -> Vec<&PbCompare> {
    let mut out = Vec::new();
    visit(t, &mut |v| {
        if let Visit::Node(n) = v {
            out.extend(n.compare.iter());
        }
    });
    out
}

/// Every op of the tree, in pre-order.
pub fn ops(t: &PbTxnRequest) -> Vec<&PbTxnRequestOp> {
    let mut out = Vec::new();
    visit(t, &mut |v| {
        if let Visit::Op(op) = v {
            out.push(op);
        }
    });
    out
}

/// The fields of a stored key a compare looks at.
pub struct KvFields<'a> {
    pub value: &'a [u8],
    pub version: i64,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// etcd's compare of one key (`None`: the key does not exist, all fields zero).
pub fn compare_one(c: &PbCompare, v: Option<&KvFields<'_>>) -> bool {
    use std::cmp::Ordering;
    let ord = match (&c.target_union, c.target) {
        (Some(PbTargetUnion::Value(want)), _) => {
            v.map_or(&[][..], |v| v.value).cmp(want.as_slice())
        }
        (Some(PbTargetUnion::Version(n)), _) => v.map_or(0, |v| v.version).cmp(n),
        (Some(PbTargetUnion::CreateRevision(n)), _) => v.map_or(0, |v| v.create_revision).cmp(n),
        (Some(PbTargetUnion::ModRevision(n)), _) => v.map_or(0, |v| v.mod_revision).cmp(n),
        (Some(PbTargetUnion::Lease(n)), _) => v.map_or(0, |v| v.lease).cmp(n),
        // No target value given: compare against the zero value of the target.
        (None, 3) => v.map_or(&[][..], |v| v.value).cmp(&[][..]),
        (None, 0) => v.map_or(0, |v| v.version).cmp(&0),
        (None, 1) => v.map_or(0, |v| v.create_revision).cmp(&0),
        (None, 2) => v.map_or(0, |v| v.mod_revision).cmp(&0),
        (None, _) => v.map_or(0, |v| v.lease).cmp(&0),
    };
    match c.result {
        0 => ord == Ordering::Equal,
        1 => ord == Ordering::Greater,
        2 => ord == Ordering::Less,
        3 => ord != Ordering::Equal,
        _ => false,
    }
}

/// A compare over no existing key: a value compare fails, others compare
/// the zero values.
pub fn compare_missing(c: &PbCompare) -> bool {
    if matches!(c.target_union, Some(PbTargetUnion::Value(_))) || c.target == 3 {
        return false;
    }
    compare_one(c, None)
}

/// A compare's result from every range's evaluation of its share.
pub fn combine<'a>(c: &PbCompare, parts: impl IntoIterator<Item = &'a CompareEval>) -> bool {
    let mut keys = 0u64;
    let mut all = true;
    for p in parts {
        keys = keys.saturating_add(p.keys);
        all &= p.keys == 0 || p.all_true;
    }
    if keys == 0 {
        compare_missing(c)
    } else {
        all
    }
}

/// Whether each txn of the tree (pre-order) succeeds, given every compare's
/// result (pre-order). `None` if `results` does not match the tree.
pub fn path(t: &PbTxnRequest, results: &[bool]) -> Option<Vec<bool>> {
    let mut out = Vec::new();
    let mut next = 0usize;
    let mut ok = true;
    visit(t, &mut |v| {
        if let Visit::Node(n) = v {
            let end = next + n.compare.len();
            match results.get(next..end) {
                Some(rs) => out.push(rs.iter().all(|&r| r)),
                None => ok = false,
            }
            next = end;
        }
    });
    (ok && next == results.len()).then_some(out)
}

/// Which ops (pre-order) run when the tree takes `path`.
pub fn ops_on_path(t: &PbTxnRequest, path: &[bool]) -> Vec<bool> {
    fn walk(t: &PbTxnRequest, path: &[bool], node: &mut usize, live: bool, out: &mut Vec<bool>) {
        let ok = path.get(*node).copied().unwrap_or(false);
        *node += 1;
        for (branch, ops) in [(true, &t.success), (false, &t.failure)] {
            for op in ops {
                let runs = live && branch == ok;
                out.push(runs);
                if let Some(PbTxnOpRequest::RequestTxn(inner)) = &op.request {
                    walk(inner, path, node, runs, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(t, path, &mut 0, true, &mut out);
    out
}

/// A key interval as etcd's `(key, range_end)`.
pub fn to_etcd(kr: &KeyRange) -> (Vec<u8>, Vec<u8>) {
    (kr.start.clone(), kr.end.clone().unwrap_or_else(|| vec![0]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::PbPutRequest;

    fn cmp_version(key: &[u8], version: i64) -> PbCompare {
        PbCompare {
            key: key.to_vec(),
            target: 0,
            result: 0,
            target_union: Some(PbTargetUnion::Version(version)),
            ..Default::default()
        }
    }

    fn put(key: &[u8]) -> PbTxnRequestOp {
        PbTxnRequestOp {
            request: Some(PbTxnOpRequest::RequestPut(PbPutRequest {
                key: key.to_vec(),
                ..Default::default()
            })),
        }
    }

    fn nested(t: PbTxnRequest) -> PbTxnRequestOp {
        PbTxnRequestOp {
            request: Some(PbTxnOpRequest::RequestTxn(t)),
        }
    }

    /// root: if a==1 then [put x, txn(if b==1 then put y else put z)] else [txn(if c==1 then put w)]
    fn tree() -> PbTxnRequest {
        PbTxnRequest {
            compare: vec![cmp_version(b"a", 1)],
            success: vec![
                put(b"x"),
                nested(PbTxnRequest {
                    compare: vec![cmp_version(b"b", 1)],
                    success: vec![put(b"y")],
                    failure: vec![put(b"z")],
                }),
            ],
            failure: vec![nested(PbTxnRequest {
                compare: vec![cmp_version(b"c", 1)],
                success: vec![put(b"w")],
                failure: vec![],
            })],
        }
    }

    #[test]
    fn preorder_numbering_and_paths() {
        let t = tree();
        assert_eq!(nodes(&t), 3);
        let keys: Vec<&[u8]> = compares(&t).iter().map(|c| c.key.as_slice()).collect();
        assert_eq!(keys, [b"a", b"b", b"c"]);
        assert_eq!(ops(&t).len(), 6); // x, txn, y, z, txn, w
        let p = path(&t, &[true, false, true]).unwrap();
        assert_eq!(p, [true, false, true]);
        // a holds: x and the nested txn run; in it b fails, so z runs.
        assert_eq!(ops_on_path(&t, &p), [true, true, false, true, false, false]);
        // a fails: only the failure branch's txn and (c holds) w.
        let p = path(&t, &[false, true, true]).unwrap();
        assert_eq!(
            ops_on_path(&t, &p),
            [false, false, false, false, true, true]
        );
        assert!(path(&t, &[true, true]).is_none());
    }

    #[test]
    fn compares_combine_like_one_range() {
        let c = cmp_version(b"a", 0);
        let none = CompareEval {
            keys: 0,
            all_true: false,
        };
        // No key anywhere: version 0 == 0 holds; a value compare fails.
        assert!(combine(&c, [&none, &none]));
        let mut v = c.clone();
        v.target_union = Some(PbTargetUnion::Value(Vec::new()));
        assert!(!combine(&v, [&none]));
        let yes = CompareEval {
            keys: 2,
            all_true: true,
        };
        let no = CompareEval {
            keys: 1,
            all_true: false,
        };
        assert!(combine(&c, [&yes, &none]));
        assert!(!combine(&c, [&yes, &no]));
    }
}
