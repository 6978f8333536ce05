//! Watch guarantees, per logical watcher (its streams in order), against the
//! ground-truth log: ordered, unique, atomic, reliable, resumable, bookmarkable,
//! prev_kv, filters, and every event equal to the model's.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::model::{fmt_event, fmt_interval, fmt_opt, in_interval, LogEvent};
use super::viol;
use crate::robustness::history::{EventKind, History, Violation, WatchLog};

pub fn check(h: &History, log: &BTreeMap<i64, Vec<LogEvent>>, out: &mut Vec<Violation>) {
    for wl in &h.watches {
        check_one(wl, log, out);
    }
}

fn wants(wl: &WatchLog, kind: EventKind, key: &str) -> bool {
    in_interval(&wl.key, &wl.end, key)
        && !(kind == EventKind::Put && wl.no_put)
        && !(kind == EventKind::Delete && wl.no_delete)
}

fn push(out: &mut Vec<Violation>, kind: &str, msg: String) {
    out.push(viol(kind, vec![], msg));
}

fn check_one(wl: &WatchLog, log: &BTreeMap<i64, Vec<LogEvent>>, out: &mut Vec<Violation>) {
    let w = wl.watcher;
    let iv = fmt_interval(&wl.key, &wl.end);
    // (rev, key) delivered, and the (stream, response) that delivered each revision.
    let mut seen: HashSet<(i64, &str)> = HashSet::new();
    let mut resp_of: HashMap<i64, (usize, usize)> = HashMap::new();
    let mut split: HashSet<i64> = HashSet::new();
    // Windows the watcher legitimately lost to compaction.
    let mut lost: Vec<(i64, i64)> = Vec::new();
    let mut last_ev = 0i64; // last event revision of the previous responses
    let mut delivered = 0i64; // highest revision the watcher knows it has everything up to
    for (si, st) in wl.streams.iter().enumerate() {
        let mut bookmark = 0i64;
        for (ri, resp) in st.responses.iter().enumerate() {
            if resp.canceled && resp.compact_revision > 0 {
                let from = if st.start_revision > 0 {
                    st.start_revision.min(delivered + 1)
                } else {
                    delivered + 1
                };
                lost.push((from, resp.compact_revision));
            }
            let mut prev_in_resp = i64::MIN;
            for (ei, ev) in resp.events.iter().enumerate() {
                let r = ev.kv.mod_revision;
                let k = ev.kv.key.as_str();
                let at = format!("watcher {w} {iv} stream {si} response {ri}");
                if !wants(wl, ev.kind, k) {
                    push(
                        out,
                        "watch.filter",
                        format!(
                            "{at}: {} at rev {r} is outside the watch (no_put={}, no_delete={})",
                            fmt_event(ev.kind, &ev.kv),
                            wl.no_put,
                            wl.no_delete
                        ),
                    );
                }
                if st.start_revision > 0 && r < st.start_revision {
                    push(
                        out,
                        "watch.resumable",
                        format!(
                            "{at}: event at rev {r} ({k}) before the stream's start_revision {}",
                            st.start_revision
                        ),
                    );
                }
                if bookmark > 0 && r <= bookmark {
                    push(
                        out,
                        "watch.bookmarkable",
                        format!("{at}: event at rev {r} ({k}) after a progress notify at rev {bookmark}"),
                    );
                }
                // Across responses revisions strictly increase; a revision seen in an
                // earlier response again is a split revision (atomic) or a duplicate.
                if ei == 0 && r < last_ev {
                    push(
                        out,
                        "watch.ordered",
                        format!("{at}: first event at rev {r} ({k}), but an earlier response ended at rev {last_ev}"),
                    );
                } else if ei > 0 && r < prev_in_resp {
                    push(
                        out,
                        "watch.ordered",
                        format!("{at}: event at rev {r} ({k}) after rev {prev_in_resp} in the same response"),
                    );
                }
                prev_in_resp = r;
                if !seen.insert((r, k)) {
                    push(
                        out,
                        "watch.unique",
                        format!("{at}: rev {r} key {k} delivered a second time"),
                    );
                } else {
                    match resp_of.get(&r) {
                        Some(&(s0, r0)) if (s0, r0) != (si, ri) && split.insert(r) => push(
                            out,
                            "watch.atomic",
                            format!(
                                "{at}: events of rev {r} also came in stream {s0} response {r0}"
                            ),
                        ),
                        Some(_) => {}
                        None => {
                            resp_of.insert(r, (si, ri));
                        }
                    }
                }
                let model = log
                    .get(&r)
                    .and_then(|evs| evs.iter().find(|e| e.kv.key == k));
                match model {
                    None => push(
                        out,
                        "watch.event_state",
                        format!(
                            "{at}: {} at rev {r}, but the log has no event on {k} there",
                            fmt_event(ev.kind, &ev.kv)
                        ),
                    ),
                    Some(e) => {
                        if e.kind != ev.kind || e.kv != ev.kv {
                            push(
                                out,
                                "watch.event_state",
                                format!(
                                    "{at}: rev {r}: got {}, expected {}",
                                    fmt_event(ev.kind, &ev.kv),
                                    fmt_event(e.kind, &e.kv)
                                ),
                            );
                        }
                        if wl.prev_kv && ev.prev_kv != e.prev {
                            push(
                                out,
                                "watch.prev_kv",
                                format!(
                                    "{at}: rev {r} {k}: prev_kv expected {}, got {}",
                                    fmt_opt(e.prev.as_ref()),
                                    fmt_opt(ev.prev_kv.as_ref())
                                ),
                            );
                        }
                    }
                }
            }
            if let Some(last) = resp.events.last() {
                last_ev = last_ev.max(last.kv.mod_revision);
                delivered = delivered.max(last_ev);
            }
            if resp.progress {
                bookmark = bookmark.max(resp.revision);
                delivered = delivered.max(resp.revision);
            }
        }
    }
    let Some((lo, hi)) = span(wl) else { return };
    for (&r, evs) in log.range(lo..=hi) {
        if lost.iter().any(|&(a, b)| a <= r && r <= b) {
            continue;
        }
        let missing: Vec<&LogEvent> = evs
            .iter()
            .filter(|e| wants(wl, e.kind, &e.kv.key) && !seen.contains(&(r, e.kv.key.as_str())))
            .collect();
        if missing.is_empty() {
            continue;
        }
        let si = wl
            .streams
            .iter()
            .rposition(|s| s.start_revision <= r)
            .unwrap_or(0);
        let shown: Vec<String> = missing
            .iter()
            .take(3)
            .map(|e| fmt_event(e.kind, &e.kv))
            .collect();
        push(
            out,
            "watch.reliable",
            format!(
                "watcher {w} {iv} stream {si}: missed {} event(s) at rev {r} (watched span {lo}..={hi}): {}",
                missing.len(),
                shown.join(", ")
            ),
        );
    }
}

/// The revisions a logical watcher must have every event of: from its first stream's
/// start (or what its first response says it starts after) to the last revision its
/// last stream reported.
fn span(wl: &WatchLog) -> Option<(i64, i64)> {
    let first = wl.streams.first()?;
    let lo = if first.start_revision > 0 {
        first.start_revision
    } else {
        let r = first.responses.first()?;
        match r.events.first() {
            Some(e) => e.kv.mod_revision,
            None if r.revision > 0 => r.revision + 1,
            None => return None,
        }
    };
    let hi = wl.streams.iter().rev().find_map(|s| {
        s.responses
            .iter()
            .rev()
            .map(|r| r.revision)
            .find(|&r| r > 0)
    })?;
    (lo <= hi).then_some((lo, hi))
}
