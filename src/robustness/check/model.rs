//! The reference model: etcd's MVCC semantics over one key → kv map, the effects a
//! write has on a given state (its events and its expected response), and diffs
//! that say in a few words where a response departs from the model.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::robustness::history::{
    Compare, CompareResult, CompareTarget, DeleteReq, DeleteResp, EventKind, Kv, PutReq, RangeReq,
    RangeResp, Request, ResponseBody, TxnOp, TxnOpResp,
};

/// The state at one revision: every present key.
pub type State = BTreeMap<String, Kv>;

/// One event of the ground-truth log: what happened to `kv.key` at `kv.mod_revision`,
/// with the key's kv just before (None: absent).
#[derive(Clone, Debug, PartialEq)]
pub struct LogEvent {
    pub kind: EventKind,
    pub kv: Kv,
    pub prev: Option<Kv>,
}

/// Whether `k` is in etcd's interval `[key, end)` (`end` empty: the key alone;
/// `end == "\0"`: every key ≥ `key`).
/// Errors the router gives before a request can take any effect (routing and
/// validation refusals): a write failing with one of them did not apply, so it
/// is not an unknown-outcome write.
pub fn definitely_failed(err: &str) -> bool {
    const BEFORE_ANY_EFFECT: &[&str] = &[
        "spans several ranges",
        "requested lease not found",
        "too many operations in txn request",
        "duplicate key given in txn request",
        "required revision has been compacted",
        "required revision is a future revision",
    ];
    BEFORE_ANY_EFFECT.iter().any(|m| err.contains(m))
}

pub fn in_interval(key: &str, end: &str, k: &str) -> bool {
    if end.is_empty() {
        k == key
    } else if end == "\0" {
        k >= key
    } else {
        k >= key && k < end
    }
}

pub fn fmt_interval(key: &str, end: &str) -> String {
    if end.is_empty() {
        key.to_string()
    } else if end == "\0" {
        format!("[{key},∞)")
    } else {
        format!("[{key},{end})")
    }
}

/// The present keys of `[key, end)` in key order.
pub fn scan<'a>(
    s: &'a State,
    key: &'a str,
    end: &'a str,
) -> std::collections::btree_map::Range<'a, String, Kv> {
    let hi = if end.is_empty() {
        Bound::Included(key)
    } else if end == "\0" {
        Bound::Unbounded
    } else if end > key {
        Bound::Excluded(end)
    } else {
        Bound::Excluded(key)
    };
    s.range::<str, _>((Bound::Included(key), hi))
}

/// A Range's expected answer on `s`.
pub fn read(s: &State, r: &RangeReq) -> RangeResp {
    collect(scan(s, &r.key, &r.end).map(|(_, kv)| kv), r.limit)
}

fn collect<'a>(it: impl Iterator<Item = &'a Kv>, limit: i64) -> RangeResp {
    let mut kvs = Vec::new();
    let mut count = 0i64;
    for kv in it {
        count += 1;
        if limit <= 0 || (kvs.len() as i64) < limit {
            kvs.push(kv.clone());
        }
    }
    RangeResp {
        more: count > kvs.len() as i64,
        kvs,
        count,
    }
}

/// etcd's compare on one key (absent: version, revisions and lease 0; a value compare
/// is false).
pub fn compare(kv: Option<&Kv>, c: &Compare) -> bool {
    let ord = match &c.target {
        CompareTarget::Value(v) => match kv {
            None => return false,
            Some(kv) => kv.value.as_str().cmp(v.as_str()),
        },
        CompareTarget::Version(x) => kv.map_or(0, |k| k.version).cmp(x),
        CompareTarget::CreateRevision(x) => kv.map_or(0, |k| k.create_revision).cmp(x),
        CompareTarget::ModRevision(x) => kv.map_or(0, |k| k.mod_revision).cmp(x),
        CompareTarget::Lease(x) => kv.map_or(0, |k| k.lease).cmp(x),
    };
    use std::cmp::Ordering::*;
    match c.result {
        CompareResult::Equal => ord == Equal,
        CompareResult::Greater => ord == Greater,
        CompareResult::Less => ord == Less,
        CompareResult::NotEqual => ord != Equal,
    }
}

/// The kv etcd reports in a DELETE event.
pub fn delete_kv(key: &str, rev: i64) -> Kv {
    Kv {
        key: key.to_string(),
        mod_revision: rev,
        ..Kv::default()
    }
}

pub fn apply(s: &mut State, evs: &[LogEvent]) {
    for e in evs {
        match e.kind {
            EventKind::Put => {
                s.insert(e.kv.key.clone(), e.kv.clone());
            }
            EventKind::Delete => {
                s.remove(&e.kv.key);
            }
        }
    }
}

/// A write executed on a state: its events (empty: it changes nothing) and the
/// response body etcd would give.
pub struct Sim {
    pub events: Vec<LogEvent>,
    pub body: ResponseBody,
}

/// The state seen by the ops of one request: the base plus this request's writes.
struct View<'a> {
    base: &'a State,
    over: BTreeMap<String, Option<Kv>>,
    rev: i64,
    events: Vec<LogEvent>,
}

impl View<'_> {
    fn get(&self, k: &str) -> Option<Kv> {
        match self.over.get(k) {
            Some(v) => v.clone(),
            None => self.base.get(k).cloned(),
        }
    }

    fn scan(&self, key: &str, end: &str) -> Vec<Kv> {
        if self.over.is_empty() {
            return scan(self.base, key, end)
                .map(|(_, kv)| kv.clone())
                .collect();
        }
        let mut m: BTreeMap<String, Kv> = scan(self.base, key, end)
            .map(|(k, kv)| (k.clone(), kv.clone()))
            .collect();
        for (k, v) in &self.over {
            if in_interval(key, end, k) {
                match v {
                    Some(kv) => m.insert(k.clone(), kv.clone()),
                    None => m.remove(k),
                };
            }
        }
        m.into_values().collect()
    }

    fn put(&mut self, p: &PutReq) -> Option<Kv> {
        let prev = self.get(&p.key);
        let kv = Kv {
            key: p.key.clone(),
            value: p.value.clone(),
            create_revision: prev.as_ref().map_or(self.rev, |k| k.create_revision),
            mod_revision: self.rev,
            version: prev.as_ref().map_or(1, |k| k.version + 1),
            lease: p.lease,
        };
        self.over.insert(p.key.clone(), Some(kv.clone()));
        self.events.push(LogEvent {
            kind: EventKind::Put,
            kv,
            prev: prev.clone(),
        });
        if p.prev_kv {
            prev
        } else {
            None
        }
    }

    fn delete(&mut self, d: &DeleteReq) -> DeleteResp {
        let gone = self.scan(&d.key, &d.end);
        for kv in &gone {
            self.over.insert(kv.key.clone(), None);
            self.events.push(LogEvent {
                kind: EventKind::Delete,
                kv: delete_kv(&kv.key, self.rev),
                prev: Some(kv.clone()),
            });
        }
        DeleteResp {
            deleted: gone.len() as i64,
            prev_kvs: if d.prev_kv { gone } else { Vec::new() },
        }
    }

    fn range(&self, r: &RangeReq) -> RangeResp {
        let kvs = self.scan(&r.key, &r.end);
        collect(kvs.iter(), r.limit)
    }
}

pub fn is_write(req: &Request) -> bool {
    matches!(req, Request::Put(_) | Request::Delete(_) | Request::Txn(_))
}

/// Executes the write `req` on `base` at revision `rev` (None: not a KV write).
pub fn simulate(base: &State, req: &Request, rev: i64) -> Option<Sim> {
    let mut v = View {
        base,
        over: BTreeMap::new(),
        rev,
        events: Vec::new(),
    };
    let body = match req {
        Request::Put(p) => ResponseBody::Put { prev_kv: v.put(p) },
        Request::Delete(d) => ResponseBody::Delete(v.delete(d)),
        Request::Txn(t) => {
            let succeeded = t.compares.iter().all(|c| compare(base.get(&c.key), c));
            let branch = if succeeded { &t.success } else { &t.failure };
            let responses = branch
                .iter()
                .map(|op| match op {
                    TxnOp::Range(r) => TxnOpResp::Range(v.range(r)),
                    TxnOp::Put(p) => TxnOpResp::Put { prev_kv: v.put(p) },
                    TxnOp::Delete(d) => TxnOpResp::Delete(v.delete(d)),
                })
                .collect();
            ResponseBody::Txn {
                succeeded,
                responses,
            }
        }
        _ => return None,
    };
    Some(Sim {
        events: v.events,
        body,
    })
}

/// Whether a write's response says it changed something (a put, or a delete that
/// deleted at least one key, in the executed branch).
pub fn claims_effect(req: &Request, body: &ResponseBody) -> bool {
    match (req, body) {
        (Request::Put(_), _) => true,
        (Request::Delete(_), ResponseBody::Delete(d)) => d.deleted > 0,
        (
            Request::Txn(t),
            ResponseBody::Txn {
                succeeded,
                responses,
            },
        ) => {
            let branch = if *succeeded { &t.success } else { &t.failure };
            branch.iter().enumerate().any(|(i, op)| match op {
                TxnOp::Put(_) => true,
                TxnOp::Delete(_) => {
                    matches!(responses.get(i), Some(TxnOpResp::Delete(d)) if d.deleted > 0)
                }
                TxnOp::Range(_) => false,
            })
        }
        _ => false,
    }
}

// ---- formatting and diffs ----

pub fn fmt_kv(kv: &Kv) -> String {
    let mut s = format!(
        "{}={}@c{}/m{}/v{}",
        kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version
    );
    if kv.lease != 0 {
        s.push_str(&format!("/l{}", kv.lease));
    }
    s
}

pub fn fmt_opt(kv: Option<&Kv>) -> String {
    kv.map_or_else(|| "absent".to_string(), fmt_kv)
}

pub fn fmt_event(kind: EventKind, kv: &Kv) -> String {
    match kind {
        EventKind::Put => format!("PUT {}", fmt_kv(kv)),
        EventKind::Delete => format!("DELETE {}@m{}", kv.key, kv.mod_revision),
    }
}

/// Where `got` departs from `exp` (None: equal), naming at most three keys.
pub fn diff_range(exp: &RangeResp, got: &RangeResp) -> Option<String> {
    if exp == got {
        return None;
    }
    let mut parts = Vec::new();
    if exp.count != got.count {
        parts.push(format!("count expected {}, got {}", exp.count, got.count));
    }
    if exp.more != got.more {
        parts.push(format!("more expected {}, got {}", exp.more, got.more));
    }
    parts.extend(diff_kvs(&exp.kvs, &got.kvs));
    Some(parts.join("; "))
}

fn diff_kvs(exp: &[Kv], got: &[Kv]) -> Option<String> {
    if exp == got {
        return None;
    }
    let e: BTreeMap<&str, &Kv> = exp.iter().map(|k| (k.key.as_str(), k)).collect();
    let g: BTreeMap<&str, &Kv> = got.iter().map(|k| (k.key.as_str(), k)).collect();
    let mut keys: Vec<&str> = e.keys().chain(g.keys()).copied().collect();
    keys.sort_unstable();
    keys.dedup();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| e.get(k) != g.get(k))
        .map(|k| {
            format!(
                "{k}: expected {}, got {}",
                fmt_opt(e.get(k).copied()),
                fmt_opt(g.get(k).copied())
            )
        })
        .collect();
    if diffs.is_empty() {
        return Some("kvs not in key order or duplicated".to_string());
    }
    let n = diffs.len();
    let mut s = format!("kvs differ ({n} key(s)): {}", diffs[..n.min(3)].join(", "));
    if n > 3 {
        s.push_str(&format!(", +{} more", n - 3));
    }
    Some(s)
}

fn diff_delete(d: &DeleteReq, exp: &DeleteResp, got: &DeleteResp) -> Option<String> {
    let mut parts = Vec::new();
    if exp.deleted != got.deleted {
        parts.push(format!(
            "delete {} deleted expected {}, got {}",
            fmt_interval(&d.key, &d.end),
            exp.deleted,
            got.deleted
        ));
    }
    if d.prev_kv {
        if let Some(x) = diff_kvs(&exp.prev_kvs, &got.prev_kvs) {
            parts.push(format!("prev_kvs: {x}"));
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn diff_put(p: &PutReq, exp: &Option<Kv>, got: &Option<Kv>) -> Option<String> {
    (p.prev_kv && exp != got).then(|| {
        format!(
            "put {} prev_kv expected {}, got {}",
            p.key,
            fmt_opt(exp.as_ref()),
            fmt_opt(got.as_ref())
        )
    })
}

/// Where a write's response body departs from the model's.
pub fn diff_body(req: &Request, exp: &ResponseBody, got: &ResponseBody) -> Option<String> {
    match (req, exp, got) {
        (Request::Put(p), ResponseBody::Put { prev_kv: e }, ResponseBody::Put { prev_kv: g }) => {
            diff_put(p, e, g)
        }
        (Request::Delete(d), ResponseBody::Delete(e), ResponseBody::Delete(g)) => {
            diff_delete(d, e, g)
        }
        (
            Request::Txn(t),
            ResponseBody::Txn {
                succeeded: es,
                responses: er,
            },
            ResponseBody::Txn {
                succeeded: gs,
                responses: gr,
            },
        ) => {
            if es != gs {
                return Some(format!(
                    "txn succeeded expected {es} (compares on the model state), got {gs}"
                ));
            }
            if er.len() != gr.len() {
                return Some(format!(
                    "txn responses expected {} op(s), got {}",
                    er.len(),
                    gr.len()
                ));
            }
            let branch = if *es { &t.success } else { &t.failure };
            for (i, ((op, e), g)) in branch.iter().zip(er).zip(gr).enumerate() {
                let d = match (op, e, g) {
                    (TxnOp::Range(r), TxnOpResp::Range(e), TxnOpResp::Range(g)) => diff_range(e, g)
                        .map(|d| format!("range {}: {d}", fmt_interval(&r.key, &r.end))),
                    (
                        TxnOp::Put(p),
                        TxnOpResp::Put { prev_kv: e },
                        TxnOpResp::Put { prev_kv: g },
                    ) => diff_put(p, e, g),
                    (TxnOp::Delete(d), TxnOpResp::Delete(e), TxnOpResp::Delete(g)) => {
                        diff_delete(d, e, g)
                    }
                    _ => Some("response kind does not match the op".to_string()),
                };
                if let Some(d) = d {
                    return Some(format!("txn op {i}: {d}"));
                }
            }
            None
        }
        _ => Some("response kind does not match the request".to_string()),
    }
}
