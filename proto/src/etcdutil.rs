//! Pure helpers over etcd requests shared by router and node: key intervals
//! and the static checks etcd makes before a request reaches raft.

use crate::errors;
use crate::etcd::{PbTxnOpRequest, PbTxnRequest, PbTxnRequestOp};
use tonic::Status;

/// The half-open interval of user keys an etcd request names: `end` empty means
/// the single `key`; `end == "\0"` means every key `>= key`.
#[derive(Clone, Debug)]
pub struct KeyRange {
    pub start: Vec<u8>,
    /// `None` = to the end of the keyspace.
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    pub fn from_etcd(key: &[u8], range_end: &[u8]) -> Self {
        if range_end.is_empty() {
            let mut end = key.to_vec();
            end.push(0);
            KeyRange {
                start: key.to_vec(),
                end: Some(end),
            }
        } else if range_end == [0] {
            KeyRange {
                start: key.to_vec(),
                end: None,
            }
        } else {
            KeyRange {
                start: key.to_vec(),
                end: Some(range_end.to_vec()),
            }
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        k >= self.start.as_slice() && self.end.as_ref().is_none_or(|e| k < e.as_slice())
    }

    /// Intersection with `[start, end)` where empty `end` is the keyspace end.
    pub fn clamp(&self, start: &[u8], end: &[u8]) -> KeyRange {
        let s = if self.start.as_slice() >= start {
            self.start.clone()
        } else {
            start.to_vec()
        };
        let e = match (&self.end, end.is_empty()) {
            (None, true) => None,
            (None, false) => Some(end.to_vec()),
            (Some(a), true) => Some(a.clone()),
            (Some(a), false) => Some(if a.as_slice() <= end {
                a.clone()
            } else {
                end.to_vec()
            }),
        };
        KeyRange { start: s, end: e }
    }

    /// Does `self` contain every key of `other`?
    pub fn covers(&self, other: &KeyRange) -> bool {
        if other.is_empty() {
            return true;
        }
        other.start >= self.start
            && match (&self.end, &other.end) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => b <= a,
            }
    }

    pub fn is_empty(&self) -> bool {
        self.end.as_ref().is_some_and(|e| e <= &self.start)
    }
}

/// Static checks etcd makes before a txn reaches raft: op count, duplicate
/// writes to one key in a branch (including nested txns), empty keys.
pub fn check_txn(r: &PbTxnRequest, max_ops: usize) -> Result<(), Status> {
    if r.compare.len() > max_ops || r.success.len() > max_ops || r.failure.len() > max_ops {
        return Err(errors::too_many_ops());
    }
    for c in &r.compare {
        if c.key.is_empty() {
            return Err(errors::empty_key());
        }
    }
    for branch in [&r.success, &r.failure] {
        let mut puts: Vec<Vec<u8>> = Vec::new();
        let mut dels: Vec<KeyRange> = Vec::new();
        collect_writes(branch, &mut puts, &mut dels, max_ops)?;
        let mut sorted = puts.clone();
        sorted.sort();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(errors::duplicate_key());
        }
        if puts.iter().any(|k| dels.iter().any(|d| d.contains(k))) {
            return Err(errors::duplicate_key());
        }
    }
    Ok(())
}

fn collect_writes(
    ops: &[PbTxnRequestOp],
    puts: &mut Vec<Vec<u8>>,
    dels: &mut Vec<KeyRange>,
    max_ops: usize,
) -> Result<(), Status> {
    for op in ops {
        match &op.request {
            Some(PbTxnOpRequest::RequestPut(p)) => {
                check_put(&p.key, &p.value, p.lease, p.ignore_value, p.ignore_lease)?;
                puts.push(p.key.clone());
            }
            Some(PbTxnOpRequest::RequestDeleteRange(d)) => {
                if d.key.is_empty() {
                    return Err(errors::empty_key());
                }
                dels.push(KeyRange::from_etcd(&d.key, &d.range_end));
            }
            Some(PbTxnOpRequest::RequestRange(r)) if r.key.is_empty() => {
                return Err(errors::empty_key());
            }
            Some(PbTxnOpRequest::RequestRange(_)) => {}
            Some(PbTxnOpRequest::RequestTxn(t)) => {
                check_txn(t, max_ops)?;
                // A nested txn's writes count against the enclosing branch.
                let mut inner_puts = Vec::new();
                let mut inner_dels = Vec::new();
                collect_writes(&t.success, &mut inner_puts, &mut inner_dels, max_ops)?;
                collect_writes(&t.failure, &mut inner_puts, &mut inner_dels, max_ops)?;
                inner_puts.sort();
                inner_puts.dedup();
                puts.extend(inner_puts);
                dels.extend(inner_dels);
            }
            None => {}
        }
    }
    Ok(())
}

/// Does the txn (in any branch, at any depth) write?
pub fn txn_writes(r: &PbTxnRequest) -> bool {
    r.success
        .iter()
        .chain(r.failure.iter())
        .any(|op| match &op.request {
            Some(PbTxnOpRequest::RequestPut(_)) | Some(PbTxnOpRequest::RequestDeleteRange(_)) => {
                true
            }
            Some(PbTxnOpRequest::RequestTxn(t)) => txn_writes(t),
            _ => false,
        })
}

/// The bytes (key and value) the txn's Puts write, in every branch at any
/// depth: what a txn costs against the space quota (0: it writes nothing new).
pub fn txn_put_bytes(r: &PbTxnRequest) -> u64 {
    r.success
        .iter()
        .chain(r.failure.iter())
        .fold(0u64, |sum, op| {
            let cost = match &op.request {
                Some(PbTxnOpRequest::RequestPut(p)) => (p.key.len() as u64)
                    .saturating_add(p.value.len() as u64)
                    .max(1),
                Some(PbTxnOpRequest::RequestTxn(t)) => txn_put_bytes(t),
                _ => 0,
            };
            sum.saturating_add(cost)
        })
}

/// Every key interval a txn touches (compares and ops), for routing.
pub fn txn_keys(r: &PbTxnRequest, out: &mut Vec<KeyRange>) {
    for c in &r.compare {
        out.push(KeyRange::from_etcd(&c.key, &c.range_end));
    }
    for op in r.success.iter().chain(r.failure.iter()) {
        match &op.request {
            Some(PbTxnOpRequest::RequestPut(p)) => out.push(KeyRange::from_etcd(&p.key, &[])),
            Some(PbTxnOpRequest::RequestDeleteRange(d)) => {
                out.push(KeyRange::from_etcd(&d.key, &d.range_end))
            }
            Some(PbTxnOpRequest::RequestRange(rr)) => {
                out.push(KeyRange::from_etcd(&rr.key, &rr.range_end))
            }
            Some(PbTxnOpRequest::RequestTxn(t)) => txn_keys(t, out),
            None => {}
        }
    }
}

/// etcd's static checks of a Put.
pub fn check_put(
    key: &[u8],
    value: &[u8],
    lease: i64,
    ignore_value: bool,
    ignore_lease: bool,
) -> Result<(), Status> {
    if key.is_empty() {
        return Err(errors::empty_key());
    }
    if ignore_value && !value.is_empty() {
        return Err(errors::value_provided());
    }
    if ignore_lease && lease != 0 {
        return Err(errors::lease_provided());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd::{PbDeleteRequest, PbPutRequest};

    fn op(r: PbTxnOpRequest) -> PbTxnRequestOp {
        PbTxnRequestOp { request: Some(r) }
    }

    #[test]
    fn txn_put_bytes_counts_puts_in_every_branch_and_depth() {
        let put = |k: &str, v: &str| {
            op(PbTxnOpRequest::RequestPut(PbPutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            }))
        };
        let del = op(PbTxnOpRequest::RequestDeleteRange(PbDeleteRequest {
            key: b"k".to_vec(),
            ..Default::default()
        }));
        let only_deletes = PbTxnRequest {
            success: vec![del.clone()],
            ..Default::default()
        };
        assert_eq!(txn_put_bytes(&only_deletes), 0, "deletes add nothing");
        let nested = PbTxnRequest {
            success: vec![put("ab", "cde"), del],
            failure: vec![op(PbTxnOpRequest::RequestTxn(PbTxnRequest {
                success: vec![put("k", "")],
                ..Default::default()
            }))],
            ..Default::default()
        };
        // 2 + 3 bytes, and a put of an empty value still costs 1.
        assert_eq!(txn_put_bytes(&nested), 6);
    }
}
