//! What a run prints: its counts, faults and violations; a table over many runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::check;
use super::history::{History, Request, Violation};

pub struct RunReport {
    pub seed: u64,
    pub profile: String,
    pub nemesis: String,
    pub ops: usize,
    pub ok: usize,
    /// Reads that failed (no effect).
    pub failed: usize,
    /// Writes that failed or timed out (they may or may not have applied).
    pub unknown: usize,
    pub watch_events: usize,
    pub watch_streams: usize,
    pub ranges: usize,
    /// Raft snapshots applied by nodes (catch-ups), as far as counted.
    pub snapshots: u64,
    pub faults: BTreeMap<String, usize>,
    pub violations: Vec<Violation>,
    /// The first violation with its history excerpt.
    pub first: Option<String>,
    pub history: Option<PathBuf>,
    pub elapsed: Duration,
    /// The run could not be carried out (cluster did not start, ...).
    pub error: Option<String>,
}

fn is_write(r: &Request) -> bool {
    !matches!(r, Request::Range(_))
}

impl RunReport {
    pub fn new(
        h: &History,
        ranges: usize,
        violations: Vec<Violation>,
        history: PathBuf,
        elapsed: Duration,
    ) -> RunReport {
        let ok = h.ops.iter().filter(|o| o.resp.is_ok()).count();
        let unknown = h
            .ops
            .iter()
            .filter(|o| o.resp.is_err() && is_write(&o.req))
            .count();
        let mut faults = BTreeMap::new();
        for f in &h.faults {
            if !matches!(
                f.kind.as_str(),
                "restart" | "resume" | "heal" | "arm" | "snapshot"
            ) {
                *faults.entry(f.kind.clone()).or_default() += 1;
            }
        }
        let first = violations.first().map(|v| violation_text(h, v));
        RunReport {
            seed: h.seed,
            profile: h.profile.clone(),
            nemesis: h.nemesis.clone(),
            ops: h.ops.len(),
            ok,
            failed: h.ops.len() - ok - unknown,
            unknown,
            watch_events: h
                .watches
                .iter()
                .flat_map(|w| &w.streams)
                .flat_map(|s| &s.responses)
                .map(|r| r.events.len())
                .sum(),
            watch_streams: h.watches.iter().map(|w| w.streams.len()).sum(),
            ranges,
            snapshots: 0,
            faults,
            violations,
            first,
            history: Some(history),
            elapsed,
            error: None,
        }
    }

    pub fn failed(seed: u64, profile: &str, nemesis: &str, error: String) -> RunReport {
        RunReport {
            seed,
            profile: profile.into(),
            nemesis: nemesis.into(),
            ops: 0,
            ok: 0,
            failed: 0,
            unknown: 0,
            watch_events: 0,
            watch_streams: 0,
            ranges: 0,
            snapshots: 0,
            faults: BTreeMap::new(),
            violations: vec![],
            first: None,
            history: None,
            elapsed: Duration::ZERO,
            error: Some(error),
        }
    }

    pub fn passed(&self) -> bool {
        self.error.is_none() && self.violations.is_empty()
    }

    fn fault_count(&self) -> usize {
        self.faults.values().sum()
    }
}

pub fn violation_text(h: &History, v: &Violation) -> String {
    format!("[{}] {}\n{}", v.kind, v.message, check::excerpt(h, v))
}

pub fn run_text(k: u32, runs: u32, r: &RunReport) -> String {
    let mut s = format!(
        "run {k}/{runs}: seed={} profile={} nemesis={} ({:.0?})\n",
        r.seed, r.profile, r.nemesis, r.elapsed
    );
    if let Some(e) = &r.error {
        s.push_str(&format!(
            "  error: {e}\n  violations: unknown (the run failed)\n"
        ));
        return s;
    }
    let faults: Vec<String> = r.faults.iter().map(|(k, n)| format!("{k}×{n}")).collect();
    s.push_str(&format!(
        "  ops: {} (ok {}, failed reads {}, unknown writes {}); watch: {} events in {} streams\n",
        r.ops, r.ok, r.failed, r.unknown, r.watch_events, r.watch_streams
    ));
    s.push_str(&format!(
        "  ranges at the end: {} ({} splits); snapshots applied: {}; faults: {} [{}]\n",
        r.ranges,
        r.ranges.saturating_sub(1),
        r.snapshots,
        r.fault_count(),
        faults.join(" ")
    ));
    s.push_str(&format!("  violations: {}\n", r.violations.len()));
    if let Some(first) = &r.first {
        let kinds: BTreeMap<&str, usize> = r.violations.iter().fold(BTreeMap::new(), |mut m, v| {
            *m.entry(v.kind.as_str()).or_default() += 1;
            m
        });
        s.push_str(&format!("  by kind: {kinds:?}\n  first: {first}\n"));
    }
    if let Some(p) = &r.history {
        s.push_str(&format!("  history: {}\n", p.display()));
    }
    s
}

/// A Markdown table of many runs, grouped by profile and nemesis.
pub fn table(reports: &[RunReport]) -> String {
    #[derive(Default)]
    struct Row {
        runs: usize,
        ops: usize,
        unknown: usize,
        events: usize,
        faults: usize,
        splits: usize,
        violations: usize,
        errors: usize,
    }
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    for r in reports {
        let row = rows
            .entry((r.profile.clone(), r.nemesis.clone()))
            .or_default();
        row.runs += 1;
        row.ops += r.ops;
        row.unknown += r.unknown;
        row.events += r.watch_events;
        row.faults += r.fault_count();
        row.splits += r.ranges.saturating_sub(1);
        row.violations += r.violations.len();
        row.errors += usize::from(r.error.is_some());
    }
    let mut s = String::from(
        "| profile | nemesis | runs | ops | unknown writes | watch events | faults | splits | violations | failed runs |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut total = Row::default();
    for ((p, n), r) in &rows {
        s.push_str(&format!(
            "| {p} | {n} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.runs, r.ops, r.unknown, r.events, r.faults, r.splits, r.violations, r.errors
        ));
        total.runs += r.runs;
        total.ops += r.ops;
        total.unknown += r.unknown;
        total.events += r.events;
        total.faults += r.faults;
        total.splits += r.splits;
        total.violations += r.violations;
        total.errors += r.errors;
    }
    s.push_str(&format!(
        "| **all** | | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        total.runs,
        total.ops,
        total.unknown,
        total.events,
        total.faults,
        total.splits,
        total.violations,
        total.errors
    ));
    s
}
