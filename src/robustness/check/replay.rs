//! The ground-truth log and the one replay in revision order.
//!
//! Every revision that something names (an ok write's header, a watched event, a read,
//! a read revealing an unknown write's value) is visited once, in order, with the model
//! state at r-1. Its events are explained by the ok write that claims it, else by one
//! unknown (failed) write whose effects match, else by lease deletes, else reported
//! unexplained; then the reads at r are compared with the state at r.

mod collect;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use collect::write_ops;

use super::linear::WriteBound;
use super::model::{
    apply, delete_kv, diff_body, diff_range, fmt_event, fmt_interval, in_interval, read, simulate,
    LogEvent, Sim, State,
};
use super::viol;
use crate::robustness::history::{
    Event, EventKind, History, Op, RangeReq, RangeResp, TxnOp, Violation,
};

/// The replay's result: the ground-truth events by revision.
pub struct Replay {
    pub log: BTreeMap<i64, Vec<LogEvent>>,
}

/// A watched event and who reported it first.
struct WEv<'a> {
    watcher: u32,
    stream: usize,
    ev: &'a Event,
}

enum ReadItem<'a> {
    Range {
        op: &'a Op,
        req: &'a RangeReq,
        resp: &'a RangeResp,
        header: i64,
        final_read: bool,
    },
    /// An ok write whose response says it changed nothing: checked on the state at its
    /// header revision.
    Noop(&'a Op),
}

struct Rp<'a> {
    state: State,
    log: BTreeMap<i64, Vec<LogEvent>>,
    out: Vec<Violation>,
    watched: BTreeMap<i64, BTreeMap<&'a str, WEv<'a>>>,
    claims: BTreeMap<i64, Vec<&'a Op>>,
    reads: BTreeMap<i64, Vec<ReadItem<'a>>>,
    revealed: BTreeMap<i64, BTreeSet<(&'a str, &'a str)>>,
    /// Unknown writes by each value they may put.
    unknown_by_value: HashMap<&'a str, &'a Op>,
    /// Owners of the values that ok writes put.
    ok_by_value: HashMap<&'a str, &'a Op>,
    /// Unknown writes with a delete (candidates for delete-only events).
    unknown_deleters: Vec<&'a Op>,
    used: HashSet<u64>,
    granted: HashSet<i64>,
    /// Unfiltered watchers' intervals and the revisions they saw every event
    /// of: an event at such a key and revision that no watcher reported did
    /// not happen.
    cover: Vec<(&'a str, &'a str, i64, i64)>,
    bound: &'a WriteBound,
}

fn deletes_key(op: &Op, key: &str) -> bool {
    write_ops(&op.req)
        .iter()
        .any(|w| matches!(w, TxnOp::Delete(d) if in_interval(&d.key, &d.end, key)))
}

/// Every event in `w` is in `sim` with the same kind and kv, every revealed
/// (key, value) is one of its puts, and every event of `sim` that a watcher
/// would have seen (`covered`) is in `w`.
fn matches(
    sim: &Sim,
    w: &BTreeMap<&str, WEv>,
    revealed: &BTreeSet<(&str, &str)>,
    covered: impl Fn(&str) -> bool,
) -> bool {
    !sim.events.is_empty()
        && sim
            .events
            .iter()
            .all(|e| w.contains_key(e.kv.key.as_str()) || !covered(&e.kv.key))
        && w.values().all(|x| {
            sim.events
                .iter()
                .any(|e| e.kind == x.ev.kind && e.kv == x.ev.kv)
        })
        && revealed.iter().all(|(k, v)| {
            sim.events
                .iter()
                .any(|e| e.kind == EventKind::Put && e.kv.key == *k && e.kv.value == *v)
        })
}

/// Whether an unfiltered watcher saw every event of key `k` at revision `r`.
fn covered(cover: &[(&str, &str, i64, i64)], k: &str, r: i64) -> bool {
    cover
        .iter()
        .any(|&(key, end, lo, hi)| in_interval(key, end, k) && lo <= r && r <= hi)
}

pub fn replay(h: &History, bound: &WriteBound, out: &mut Vec<Violation>) -> Replay {
    let mut rp = Rp {
        state: State::new(),
        log: BTreeMap::new(),
        out: Vec::new(),
        watched: BTreeMap::new(),
        claims: BTreeMap::new(),
        reads: BTreeMap::new(),
        revealed: BTreeMap::new(),
        unknown_by_value: HashMap::new(),
        ok_by_value: HashMap::new(),
        unknown_deleters: Vec::new(),
        used: HashSet::new(),
        granted: HashSet::new(),
        cover: Vec::new(),
        bound,
    };
    rp.collect_watched(h);
    rp.classify(h);
    let mut revs: BTreeSet<i64> = rp.claims.keys().copied().collect();
    revs.extend(rp.watched.keys());
    revs.extend(rp.reads.keys());
    revs.extend(rp.revealed.keys());
    for r in revs {
        rp.events_at(r);
        rp.reads_at(r);
    }
    out.append(&mut rp.out);
    Replay { log: rp.log }
}

impl<'a> Rp<'a> {
    /// What the ok write `op` does at revision `r` on the current state; a
    /// response that differs from it is a `linearizable.write_effect` (`at`
    /// says which state it was checked on).
    fn simulate_checked(&mut self, op: &Op, r: i64, at: &str) -> Sim {
        let sim = simulate(&self.state, &op.req, r).expect("a write");
        let got = &op.resp.as_ref().expect("ok").body;
        if let Some(d) = diff_body(&op.req, &sim.body, got) {
            self.out.push(viol(
                "linearizable.write_effect",
                vec![op.id],
                format!("#{} {at}: {d}", op.id),
            ));
        }
        sim
    }

    fn events_at(&mut self, r: i64) {
        let w = self.watched.remove(&r).unwrap_or_default();
        let claims = self.claims.remove(&r).unwrap_or_default();
        let mut eff: Vec<(&Op, Sim)> = Vec::new();
        for op in claims {
            let sim = self.simulate_checked(op, r, &format!("at rev {r} (state at rev {})", r - 1));
            if !sim.events.is_empty() {
                eff.push((op, sim));
            }
        }
        if eff.len() >= 2 {
            let ids: Vec<u64> = eff.iter().map(|(op, _)| op.id).collect();
            self.out.push(viol(
                "revision.reused",
                ids.clone(),
                format!(
                    "rev {r} is claimed by {} writes that change keys: {}",
                    ids.len(),
                    ids.iter()
                        .map(|i| format!("#{i}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if eff.is_empty() {
            return self.explain(r, w);
        }
        let revealed = self.revealed.remove(&r).unwrap_or_default();
        let pick = eff
            .iter()
            .position(|(_, s)| matches(s, &w, &revealed, |k| covered(&self.cover, k, r)))
            .unwrap_or(0);
        let (op, sim) = eff.swap_remove(pick);
        let bad = w.values().find_map(|x| {
            let e = sim.events.iter().find(|e| e.kv.key == x.ev.kv.key);
            match e {
                Some(e) if e.kind == x.ev.kind && e.kv == x.ev.kv => None,
                Some(e) => Some((x, format!("the write gives {}", fmt_event(e.kind, &e.kv)))),
                None => Some((x, "the write does not touch that key".to_string())),
            }
        });
        if let Some((x, why)) = bad {
            self.out.push(viol(
                "linearizable.write_effect",
                vec![op.id],
                format!(
                    "rev {r} of #{}: watcher {} reports {}, but {why}",
                    op.id,
                    x.watcher,
                    fmt_event(x.ev.kind, &x.ev.kv)
                ),
            ));
        }
        apply(&mut self.state, &sim.events);
        self.log.insert(r, sim.events);
    }

    /// Explains the events at an unclaimed revision.
    fn explain(&mut self, r: i64, w: BTreeMap<&'a str, WEv<'a>>) {
        let revealed = self.revealed.remove(&r).unwrap_or_default();
        if w.is_empty() && revealed.is_empty() {
            return;
        }
        let mut cands: Vec<&Op> = Vec::new();
        let values = w
            .values()
            .filter(|x| x.ev.kind == EventKind::Put)
            .map(|x| x.ev.kv.value.as_str())
            .chain(revealed.iter().map(|(_, v)| *v));
        for v in values {
            if let Some(&op) = self.unknown_by_value.get(v) {
                if !cands.iter().any(|c| c.id == op.id) {
                    cands.push(op);
                }
            }
        }
        if cands.is_empty() {
            let keys: Vec<&str> = w.keys().copied().collect();
            cands.extend(
                self.unknown_deleters
                    .iter()
                    .filter(|op| keys.iter().any(|k| deletes_key(op, k))),
            );
        }
        let mut late: Option<(&Op, Sim, (i64, u64))> = None;
        // A write whose effects include events no watcher reported although one
        // covered them: taken only when nothing else explains the revision
        // (then the watch checks report what the watchers missed).
        let mut partial: Option<(&Op, Sim)> = None;
        for op in cands {
            if self.used.contains(&op.id) {
                continue;
            }
            let sim = simulate(&self.state, &op.req, r).expect("a write");
            if !matches(&sim, &w, &revealed, |_| false) {
                continue;
            }
            if !matches(&sim, &w, &revealed, |k| covered(&self.cover, k, r)) {
                partial.get_or_insert((op, sim));
                continue;
            }
            match self.bound.before(op.invoke) {
                Some(b) if b.0 >= r => {
                    late.get_or_insert((op, sim, b));
                }
                _ => return self.take(op.id, r, sim.events),
            }
        }
        let leased = !w.is_empty()
            && w.values().all(|x| {
                x.ev.kind == EventKind::Delete
                    && self
                        .state
                        .get(x.ev.kv.key.as_str())
                        .is_some_and(|kv| kv.lease != 0 && self.granted.contains(&kv.lease))
            });
        if leased {
            let events = w
                .keys()
                .map(|k| LogEvent {
                    kind: EventKind::Delete,
                    kv: delete_kv(k, r),
                    prev: self.state.get(*k).cloned(),
                })
                .collect();
            return self.take(u64::MAX, r, events);
        }
        if let Some((op, sim)) = partial.filter(|_| late.is_none()) {
            return self.take(op.id, r, sim.events);
        }
        if let Some((op, sim, (b, bid))) = late {
            self.out.push(viol(
                "linearizable.write_order",
                vec![bid, op.id],
                format!(
                    "unknown write #{} shows at rev {r}, but #{bid} had returned rev {b} before #{} was invoked",
                    op.id, op.id
                ),
            ));
            return self.take(op.id, r, sim.events);
        }
        if w.is_empty() {
            return; // a read shows a value at r that no write explains: the read check says so
        }
        let mut ops = Vec::new();
        let mut hint = String::new();
        for x in w.values().filter(|x| x.ev.kind == EventKind::Put) {
            let v = x.ev.kv.value.as_str();
            if let Some(op) = self.ok_by_value.get(v).or(self.unknown_by_value.get(v)) {
                ops.push(op.id);
                let at = op.resp.as_ref().map_or(-1, |r| r.revision);
                hint = if at >= 0 {
                    format!(" ({v:?} is written by #{} at rev {at})", op.id)
                } else {
                    format!(
                        " ({v:?} is written by unknown #{}, which does not match)",
                        op.id
                    )
                };
                break;
            }
        }
        let shown: Vec<String> = w
            .values()
            .take(3)
            .map(|x| format!("{} (watcher {})", fmt_event(x.ev.kind, &x.ev.kv), x.watcher))
            .collect();
        self.out.push(viol(
            "linearizable.unexplained_event",
            ops,
            format!(
                "rev {r}: {}{}: no ok write claims it, no unknown write or lease delete matches{hint}",
                shown.join(", "),
                if w.len() > 3 { format!(" +{} more", w.len() - 3) } else { String::new() }
            ),
        ));
        // Follow what the watchers saw, so one bad revision is not reported at every read.
        let events = w
            .values()
            .map(|x| LogEvent {
                kind: x.ev.kind,
                kv: x.ev.kv.clone(),
                prev: self.state.get(x.ev.kv.key.as_str()).cloned(),
            })
            .collect();
        self.take(u64::MAX, r, events);
    }

    fn take(&mut self, op: u64, r: i64, events: Vec<LogEvent>) {
        self.used.insert(op);
        apply(&mut self.state, &events);
        self.log.insert(r, events);
    }

    fn reads_at(&mut self, r: i64) {
        for it in self.reads.remove(&r).unwrap_or_default() {
            match it {
                ReadItem::Range {
                    op,
                    req,
                    resp,
                    header,
                    final_read,
                } => {
                    let kind = if final_read {
                        "durability.final_state"
                    } else {
                        "linearizable.read_state"
                    };
                    let iv = fmt_interval(&req.key, &req.end);
                    if req.revision > 0 && header < req.revision {
                        self.out.push(viol(
                            kind,
                            vec![op.id],
                            format!(
                                "#{} range {iv} at rev {r}: header rev {header} < {r}",
                                op.id
                            ),
                        ));
                    }
                    if let Some(d) = diff_range(&read(&self.state, req), resp) {
                        self.out.push(viol(
                            kind,
                            vec![op.id],
                            format!("#{} range {iv} at rev {r}: {d}", op.id),
                        ));
                    }
                }
                ReadItem::Noop(op) => {
                    let at = format!("(no change, rev {r}) on the state at rev {r}");
                    self.simulate_checked(op, r, &at);
                }
            }
        }
    }
}
