//! The history checkers: is a recorded [`History`] explained by etcd's semantics over
//! one global revision?
//!
//! [`check`] replays the history once in revision order (see `replay.rs`): it builds
//! the ground-truth event log (revision → events) from the ok writes (their revision
//! from the response, their effects from the request and the model state at r-1), the
//! watchers' events, the unknown (failed) writes whose effects match events nobody else
//! claims, and lease deletes; every read is compared with the model at its revision
//! while replaying. Then `linear.rs` checks real-time order and per-client
//! monotonicity, and `watch.rs` checks every logical watcher against the log.
//!
//! Output: violations sorted by kind, then by their first op id (violations without ops,
//! the watch ones, keep the order they were found in: by watcher, then revision). Exact
//! duplicates are dropped, and at most [`CAP_PER_KIND`] are kept per kind; a kind with
//! more gets one extra violation of the same kind, last in its group, with no ops and
//! the message "… N more …" saying how many were left out.
//!
//! What the replay cannot see: an unknown write or a lease delete that changed only
//! keys no watcher covers and no read shows (by value) is not placed in the log, so a
//! later read of those keys is reported as `linearizable.read_state`. Run at least one
//! watcher over the whole keyspace.

mod linear;
mod model;
mod replay;
mod watch;

#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_random;
#[cfg(test)]
mod tests_watch;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use crate::robustness::history::{
    Compare, CompareTarget, History, Op, RangeReq, Request, ResponseBody, TxnOp, TxnOpResp,
    Violation,
};
use model::{fmt_interval, fmt_kv};

/// At most this many violations of one kind are returned.
pub const CAP_PER_KIND: usize = 20;

pub(crate) fn viol(kind: &str, ops: Vec<u64>, message: String) -> Violation {
    Violation {
        kind: kind.to_string(),
        message,
        ops,
    }
}

/// Every broken guarantee of `h` (empty: the history is explained).
pub fn check(h: &History) -> Vec<Violation> {
    let mut out = Vec::new();
    let bound = linear::WriteBound::new(h);
    let rep = replay::replay(h, &bound, &mut out);
    linear::check(h, &bound, &mut out);
    watch::check(h, &rep.log, &mut out);
    finish(out)
}

fn finish(mut out: Vec<Violation>) -> Vec<Violation> {
    let mut dup = HashSet::new();
    out.retain(|v| dup.insert((v.kind.clone(), v.message.clone())));
    out.sort_by_key(|v| (v.kind.clone(), v.ops.first().copied().unwrap_or(u64::MAX)));
    let mut res = Vec::new();
    let mut i = 0;
    while i < out.len() {
        let kind = out[i].kind.clone();
        let n = out[i..].iter().take_while(|v| v.kind == kind).count();
        res.extend(out[i..i + n.min(CAP_PER_KIND)].iter().cloned());
        if n > CAP_PER_KIND {
            res.push(viol(
                &kind,
                vec![],
                format!(
                    "… {} more {kind} violation(s) left out (cap {CAP_PER_KIND})",
                    n - CAP_PER_KIND
                ),
            ));
        }
        i += n;
    }
    res
}

/// Counts per kind and the first violation.
pub fn summary(v: &[Violation]) -> String {
    if v.is_empty() {
        return "no violations".to_string();
    }
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for x in v {
        *per.entry(x.kind.as_str()).or_default() += 1;
    }
    let kinds: Vec<String> = per.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    let ops: Vec<String> = v[0].ops.iter().map(|i| format!("#{i}")).collect();
    format!(
        "{} violation(s) ({})\nfirst: [{}] {}{}",
        v.len(),
        kinds.join(", "),
        v[0].kind,
        v[0].message,
        if ops.is_empty() {
            String::new()
        } else {
            format!(" (ops {})", ops.join(" "))
        }
    )
}

fn find_op(h: &History, id: u64) -> Option<&Op> {
    if id == u64::MAX {
        return h.final_read.as_ref();
    }
    match h.ops.get(id as usize) {
        Some(op) if op.id == id => Some(op),
        _ => h
            .ops
            .iter()
            .chain(h.final_read.iter())
            .find(|op| op.id == id),
    }
}

/// The violation's ops, one a line: `#12 c3 [1.204s–1.250s] put k/7=v ok rev=55`.
pub fn excerpt(h: &History, v: &Violation) -> String {
    let mut s = format!("[{}] {}\n", v.kind, v.message);
    for &id in &v.ops {
        match find_op(h, id) {
            Some(op) => {
                let _ = writeln!(s, "  {}", fmt_op(op));
            }
            None => {
                let _ = writeln!(s, "  #{id} (not in the history)");
            }
        }
    }
    s
}

fn secs(t: u64) -> String {
    format!("{}.{:03}s", t / 1_000_000, (t / 1000) % 1000)
}

fn fmt_range(r: &RangeReq) -> String {
    let mut s = format!("range {}", fmt_interval(&r.key, &r.end));
    if r.revision > 0 {
        let _ = write!(s, " @{}", r.revision);
    }
    if r.limit > 0 {
        let _ = write!(s, " limit={}", r.limit);
    }
    if r.serializable {
        s.push_str(" ser");
    }
    s
}

fn fmt_txn_op(op: &TxnOp) -> String {
    match op {
        TxnOp::Range(r) => fmt_range(r),
        TxnOp::Put(p) => format!("put {}={}", p.key, p.value),
        TxnOp::Delete(d) => format!("del {}", fmt_interval(&d.key, &d.end)),
    }
}

fn fmt_cmp(c: &Compare) -> String {
    let (t, v) = match &c.target {
        CompareTarget::Version(x) => ("ver", x.to_string()),
        CompareTarget::CreateRevision(x) => ("create", x.to_string()),
        CompareTarget::ModRevision(x) => ("mod", x.to_string()),
        CompareTarget::Value(x) => ("value", format!("{x:?}")),
        CompareTarget::Lease(x) => ("lease", x.to_string()),
    };
    format!("{t}({}) {:?} {v}", c.key, c.result)
}

fn fmt_req(req: &Request) -> String {
    match req {
        Request::Range(r) => fmt_range(r),
        Request::Put(p) if p.lease != 0 => format!("put {}={} lease={}", p.key, p.value, p.lease),
        Request::Put(p) => format!("put {}={}", p.key, p.value),
        Request::Delete(d) => format!("del {}", fmt_interval(&d.key, &d.end)),
        Request::Txn(t) => {
            let j = |ops: &[TxnOp]| ops.iter().map(fmt_txn_op).collect::<Vec<_>>().join("; ");
            let c: Vec<String> = t.compares.iter().map(fmt_cmp).collect();
            format!(
                "txn if({}) then[{}] else[{}]",
                c.join(" && "),
                j(&t.success),
                j(&t.failure)
            )
        }
        Request::LeaseGrant { ttl } => format!("lease_grant ttl={ttl}"),
        Request::LeaseRevoke { id } => format!("lease_revoke {id}"),
        Request::Compact { revision } => format!("compact {revision}"),
    }
}

fn fmt_kvs(kvs: &[crate::robustness::history::Kv]) -> String {
    let mut v: Vec<String> = kvs.iter().take(3).map(fmt_kv).collect();
    if kvs.len() > 3 {
        v.push(format!("+{}", kvs.len() - 3));
    }
    format!("[{}]", v.join(" "))
}

fn fmt_op(op: &Op) -> String {
    let head = format!(
        "#{} c{} [{}–{}] {}",
        if op.id == u64::MAX {
            "final".to_string()
        } else {
            op.id.to_string()
        },
        op.client,
        secs(op.invoke),
        secs(op.ret),
        fmt_req(&op.req)
    );
    let resp = match &op.resp {
        Err(e) => format!("err: {e}"),
        Ok(r) => {
            let body = match &r.body {
                ResponseBody::Range(rr) => {
                    format!(
                        " count={} more={} kvs={}",
                        rr.count,
                        rr.more,
                        fmt_kvs(&rr.kvs)
                    )
                }
                ResponseBody::Put { prev_kv: Some(p) } => format!(" prev={}", fmt_kv(p)),
                ResponseBody::Delete(d) => format!(" deleted={}", d.deleted),
                ResponseBody::Txn {
                    succeeded,
                    responses,
                } => {
                    let rs: Vec<String> = responses
                        .iter()
                        .map(|x| match x {
                            TxnOpResp::Range(rr) => {
                                format!("count={} {}", rr.count, fmt_kvs(&rr.kvs))
                            }
                            TxnOpResp::Put { .. } => "put".to_string(),
                            TxnOpResp::Delete(d) => format!("deleted={}", d.deleted),
                        })
                        .collect();
                    format!(" succeeded={succeeded} [{}]", rs.join("; "))
                }
                ResponseBody::LeaseGrant { id } => format!(" id={id}"),
                _ => String::new(),
            };
            format!("ok rev={}{body}", r.revision)
        }
    };
    format!("{head} {resp}")
}
