//! The replay's inputs: the watchers' events by revision (with the cross-watcher
//! consistency check), the ops sorted into claims, reads and unknown writes, and the
//! values reads reveal.

use std::collections::HashMap;

use super::{ReadItem, Rp, WEv};
use crate::robustness::check::model::{claims_effect, definitely_failed, fmt_event, is_write};
use crate::robustness::check::viol;
use crate::robustness::history::{History, Request, ResponseBody, TxnOp, TxnOpResp};

pub(super) fn write_ops(req: &Request) -> Vec<TxnOp> {
    match req {
        Request::Put(p) => vec![TxnOp::Put(p.clone())],
        Request::Delete(d) => vec![TxnOp::Delete(d.clone())],
        Request::Txn(t) => t.success.iter().chain(&t.failure).cloned().collect(),
        _ => Vec::new(),
    }
}

fn put_values(req: &Request) -> Vec<&str> {
    let mut v: Vec<&str> = match req {
        Request::Put(p) => vec![p.value.as_str()],
        Request::Txn(t) => t
            .success
            .iter()
            .chain(&t.failure)
            .filter_map(|op| match op {
                TxnOp::Put(p) => Some(p.value.as_str()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    v.sort_unstable();
    v.dedup();
    v
}

impl<'a> Rp<'a> {
    pub(super) fn collect_watched(&mut self, h: &'a History) {
        for wl in h.watches.iter().filter(|w| !w.no_put && !w.no_delete) {
            let lo = wl.streams.first().map_or(0, |s| s.start_revision.max(1));
            let hi = wl
                .streams
                .iter()
                .flat_map(|s| &s.responses)
                .map(|r| r.reached())
                .max()
                .unwrap_or(0);
            if lo > 0 && hi >= lo {
                self.cover.push((wl.key.as_str(), wl.end.as_str(), lo, hi));
            }
        }
        for wl in &h.watches {
            for (si, st) in wl.streams.iter().enumerate() {
                for ev in st.responses.iter().flat_map(|r| &r.events) {
                    let r = ev.kv.mod_revision;
                    let at = self.watched.entry(r).or_default();
                    let Some(x) = at.get(ev.kv.key.as_str()) else {
                        at.insert(
                            ev.kv.key.as_str(),
                            WEv {
                                watcher: wl.watcher,
                                stream: si,
                                ev,
                            },
                        );
                        continue;
                    };
                    let prev_differs = ev.prev_kv.is_some()
                        && x.ev.prev_kv.is_some()
                        && ev.prev_kv != x.ev.prev_kv;
                    if x.watcher != wl.watcher
                        && (x.ev.kind != ev.kind || x.ev.kv != ev.kv || prev_differs)
                    {
                        self.out.push(viol(
                            "watch.consistent",
                            vec![],
                            format!(
                                "rev {r} key {}: watcher {} (stream {}) reports {}, \
                                 watcher {} (stream {si}) reports {}",
                                ev.kv.key,
                                x.watcher,
                                x.stream,
                                fmt_event(x.ev.kind, &x.ev.kv),
                                wl.watcher,
                                fmt_event(ev.kind, &ev.kv)
                            ),
                        ));
                    }
                }
            }
        }
    }

    pub(super) fn classify(&mut self, h: &'a History) {
        let mut owner: HashMap<&'a str, u64> = HashMap::new();
        for op in &h.ops {
            if op.resp.as_ref().is_err_and(|e| definitely_failed(e)) {
                continue;
            }
            for v in put_values(&op.req) {
                if let Some(&first) = owner.get(v) {
                    self.out.push(viol(
                        "history.duplicate_value",
                        vec![first, op.id],
                        format!("value {v:?} is written by #{first} and by #{}", op.id),
                    ));
                    continue;
                }
                owner.insert(v, op.id);
                if op.resp.is_ok() {
                    self.ok_by_value.insert(v, op);
                } else {
                    self.unknown_by_value.insert(v, op);
                }
            }
            let resp = match &op.resp {
                Ok(resp) => resp,
                Err(_) => {
                    if write_ops(&op.req)
                        .iter()
                        .any(|w| matches!(w, TxnOp::Delete(_)))
                    {
                        self.unknown_deleters.push(op);
                    }
                    continue;
                }
            };
            match (&op.req, &resp.body) {
                (Request::Range(req), ResponseBody::Range(rr)) => {
                    let at = if req.revision > 0 {
                        req.revision
                    } else {
                        resp.revision
                    };
                    self.reads.entry(at).or_default().push(ReadItem::Range {
                        op,
                        req,
                        resp: rr,
                        header: resp.revision,
                        final_read: false,
                    });
                }
                (Request::LeaseGrant { .. }, ResponseBody::LeaseGrant { id }) => {
                    self.granted.insert(*id);
                }
                (req, body) if is_write(req) => {
                    if claims_effect(req, body) {
                        self.claims.entry(resp.revision).or_default().push(op);
                    } else {
                        self.reads
                            .entry(resp.revision)
                            .or_default()
                            .push(ReadItem::Noop(op));
                    }
                }
                _ => {}
            }
        }
        if let Some(f) = &h.final_read {
            if let (Request::Range(req), Ok(resp)) = (&f.req, &f.resp) {
                if let ResponseBody::Range(rr) = &resp.body {
                    self.reads
                        .entry(resp.revision)
                        .or_default()
                        .push(ReadItem::Range {
                            op: f,
                            req,
                            resp: rr,
                            header: resp.revision,
                            final_read: true,
                        });
                }
            }
        }
        // Reads that show a value an unknown write put reveal where it applied.
        let mut seen = Vec::new();
        for op in h.ops.iter().chain(h.final_read.iter()) {
            let Ok(resp) = &op.resp else { continue };
            match &resp.body {
                ResponseBody::Range(r) => seen.push(r),
                ResponseBody::Txn { responses, .. } => {
                    seen.extend(responses.iter().filter_map(|x| match x {
                        TxnOpResp::Range(r) => Some(r),
                        _ => None,
                    }))
                }
                _ => {}
            }
        }
        for kv in seen.into_iter().flat_map(|r| &r.kvs) {
            if kv.mod_revision > 0 && self.unknown_by_value.contains_key(kv.value.as_str()) {
                self.revealed
                    .entry(kv.mod_revision)
                    .or_default()
                    .insert((kv.key.as_str(), kv.value.as_str()));
            }
        }
    }
}
