//! Real-time checks that need only the ops' revisions and times: write order, stale
//! linearizable reads, per-client revision monotonicity, revoked leases' keys, and the
//! final read's revision.

use std::collections::HashMap;

use super::model::{claims_effect, is_write};
use super::viol;
use crate::robustness::history::{History, Op, RangeResp, Request, ResponseBody, Violation};

/// The highest revision of the ok writes that returned before a given time.
pub struct WriteBound {
    rets: Vec<u64>,
    best: Vec<(i64, u64)>,
}

impl WriteBound {
    pub fn new(h: &History) -> Self {
        let mut w: Vec<(u64, i64, u64)> = h
            .ops
            .iter()
            .filter(|op| is_write(&op.req))
            .filter_map(|op| op.resp.as_ref().ok().map(|r| (op.ret, r.revision, op.id)))
            .collect();
        w.sort_unstable();
        let mut best = Vec::with_capacity(w.len());
        let mut cur = (i64::MIN, 0);
        for &(_, rev, id) in &w {
            if rev > cur.0 {
                cur = (rev, id);
            }
            best.push(cur);
        }
        WriteBound {
            rets: w.iter().map(|x| x.0).collect(),
            best,
        }
    }

    /// (revision, op id) of the highest ok write that returned strictly before `t`.
    pub fn before(&self, t: u64) -> Option<(i64, u64)> {
        let n = self.rets.partition_point(|&x| x < t);
        (n > 0).then(|| self.best[n - 1])
    }
}

/// Whether a read op sees the latest state (a linearizable Range at the current revision).
fn linear_now(op: &Op) -> bool {
    matches!(&op.req, Request::Range(r) if !r.serializable && r.revision == 0)
}

pub fn check(h: &History, bound: &WriteBound, out: &mut Vec<Violation>) {
    order(h, bound, out);
    client_monotonic(h, out);
    revoked_leases(h, out);
    final_revision(h, out);
}

fn order(h: &History, bound: &WriteBound, out: &mut Vec<Violation>) {
    for op in &h.ops {
        let Ok(resp) = &op.resp else { continue };
        let Some((b, bid)) = bound.before(op.invoke) else {
            continue;
        };
        let rev = resp.revision;
        if is_write(&op.req) {
            let eff = claims_effect(&op.req, &resp.body);
            if (eff && rev <= b) || (!eff && rev < b) {
                out.push(viol(
                    "linearizable.write_order",
                    vec![bid, op.id],
                    format!(
                        "#{} {} at rev {rev}, but #{bid} had returned rev {b} before #{} was invoked",
                        op.id,
                        if eff { "wrote" } else { "returned (no change)" },
                        op.id
                    ),
                ));
            }
        } else if matches!(&op.req, Request::Range(r) if !r.serializable) && rev < b {
            out.push(viol(
                "linearizable.stale_read",
                vec![bid, op.id],
                format!(
                    "#{} linearizable read returned header rev {rev} < rev {b} of #{bid}, \
                     which returned before #{} was invoked",
                    op.id, op.id
                ),
            ));
        }
    }
}

fn client_monotonic(h: &History, out: &mut Vec<Violation>) {
    let mut idx: Vec<usize> = (0..h.ops.len()).collect();
    idx.sort_by_key(|&i| h.ops[i].invoke);
    let mut last: HashMap<u32, (i64, u64)> = HashMap::new();
    for i in idx {
        let op = &h.ops[i];
        let Ok(resp) = &op.resp else { continue };
        let counted = match &op.req {
            Request::Range(r) => !r.serializable,
            req => is_write(req),
        };
        if !counted {
            continue;
        }
        if let Some(&(prev, pid)) = last.get(&op.client) {
            if resp.revision < prev {
                out.push(viol(
                    "client.revision_went_back",
                    vec![pid, op.id],
                    format!(
                        "client {}: #{} returned rev {} after its earlier #{pid} returned rev {prev}",
                        op.client, op.id, resp.revision
                    ),
                ));
            }
        }
        let e = last.entry(op.client).or_insert((resp.revision, op.id));
        if resp.revision >= e.0 {
            *e = (resp.revision, op.id);
        }
    }
}

/// The Range answers of an ok op read at the current state (its Range, or its Txn's ranges).
fn current_reads(op: &Op) -> Vec<&RangeResp> {
    let Ok(resp) = &op.resp else {
        return Vec::new();
    };
    match (&op.req, &resp.body) {
        (Request::Range(_), ResponseBody::Range(r)) if linear_now(op) => vec![r],
        (Request::Txn(_), ResponseBody::Txn { responses, .. }) => responses
            .iter()
            .filter_map(|r| match r {
                crate::robustness::history::TxnOpResp::Range(r) => Some(r),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn revoked_leases(h: &History, out: &mut Vec<Violation>) {
    let mut revoked: HashMap<i64, (u64, u64)> = HashMap::new();
    for op in &h.ops {
        if let (Request::LeaseRevoke { id }, Ok(_)) = (&op.req, &op.resp) {
            let e = revoked.entry(*id).or_insert((op.ret, op.id));
            if op.ret < e.0 {
                *e = (op.ret, op.id);
            }
        }
    }
    if revoked.is_empty() {
        return;
    }
    for op in h.ops.iter().chain(h.final_read.iter()) {
        let hit = current_reads(op)
            .into_iter()
            .flat_map(|r| &r.kvs)
            .find_map(|kv| {
                revoked
                    .get(&kv.lease)
                    .filter(|&&(ret, _)| kv.lease != 0 && ret < op.invoke)
                    .map(|&(_, rid)| (kv, rid))
            });
        if let Some((kv, rid)) = hit {
            let rev = op.resp.as_ref().map_or(0, |r| r.revision);
            out.push(viol(
                "lease.revoked_key_visible",
                vec![rid, op.id],
                format!(
                    "#{} (rev {rev}) shows {} of lease {}, revoked by #{rid} which returned before it",
                    op.id, kv.key, kv.lease
                ),
            ));
        }
    }
}

fn final_revision(h: &History, out: &mut Vec<Violation>) {
    let Some(f) = &h.final_read else { return };
    let resp = match &f.resp {
        Ok(r) => r,
        Err(e) => {
            out.push(viol(
                "durability.final_state",
                vec![f.id],
                format!("the final read failed: {e}"),
            ));
            return;
        }
    };
    let top = h
        .ops
        .iter()
        .filter(|op| is_write(&op.req))
        .filter_map(|op| op.resp.as_ref().ok().map(|r| (r.revision, op.id)))
        .max();
    if let Some((rev, id)) = top {
        if resp.revision < rev {
            out.push(viol(
                "durability.final_state",
                vec![id, f.id],
                format!(
                    "the final read is at rev {}, below rev {rev} acknowledged to #{id}",
                    resp.revision
                ),
            ));
        }
    }
}
