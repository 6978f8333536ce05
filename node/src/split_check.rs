//! Split checks: a range leader whose range passed the key or byte threshold,
//! or the `--range-split-write-rate` (off by default), or whose node is
//! saturated (it has used [`SATURATED`] of the CPU it may use, or its raft
//! thread that share of one CPU, for a second, see `cpu.rs`) while the
//! range takes a good share of the writes it leads, asks placement for ids
//! and proposes a split command (applied by every replica in
//! `store/split.rs`); placement's scheduler then spreads the leaders. [`propose_split`] is also how an `Admin`
//! SPLIT request splits a range now.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prost::Message as _;
use strata_proto::oracle::PlacementConn;
use strata_proto::strata::{AllocIdsRequest, KvKind, Peer, SplitCommand};
use tokio::sync::oneshot;

use crate::error::NodeResult;
use crate::mvcc::Mvcc;
use crate::range::{desc_range, Ranges};
use crate::sequencer::{SeqItem, Sequencers};

const CHECK_EVERY: Duration = Duration::from_millis(500);
/// A range is measured (a scan of its data) again once this share of the
/// split thresholds was written since its last measure (TiKV's
/// `region-split-check-diff` is 1/16 of the split size too): scanning every
/// written range twice a second cost more CPU than its writes did…
const RESCAN_SHARE: u64 = 16;
/// …and only if what was written since may have taken it over a threshold,
/// or, for the size it reports (`strata ctl ranges`), this long after the
/// last measure.
const REMEASURE_EVERY: Duration = Duration::from_secs(60);

pub struct SplitChecker {
    pub ranges: Ranges,
    pub mvcc: Mvcc,
    pub placement: PlacementConn,
    pub sequencers: Sequencers,
    pub max_keys: u64,
    pub max_bytes: u64,
    /// Writes per second above which a range splits (0 = never by load).
    pub max_write_rate: f64,
    /// This node's share of the cluster's led writes (heartbeat answers).
    pub lead_share: LeadShare,
    /// The raft thread's CPU time (`Store::raft_cpu`).
    pub raft_cpu: crate::cpu::ThreadCpu,
}

/// A node using at least this share of the CPU it may use, or whose raft
/// thread uses this share of one CPU, is saturated…
const SATURATED: f64 = 0.8;
/// …when it stayed so this many checks in a row.
const SATURATED_CHECKS: u32 = 2;
/// A saturated leader splits its hottest range only if that range takes at
/// least this share of the writes of every range it leads (once it leads
/// several similar ones, moving leaders helps and splitting does not)…
const SATURATED_SHARE: f64 = 0.25;
/// …and at least this many writes per second (idle ranges never split).
const SATURATED_MIN_RATE: f64 = 50.0;
/// After a split by saturation, the next waits this long, so that placement
/// can move a leader and the CPU figure shows the new state.
const SATURATED_COOLDOWN: Duration = Duration::from_secs(3);
/// …and it splits only while the writes it leads are at least this multiple
/// of the mean over the cluster's nodes (as placement last told it): below
/// that, leaders carry even loads, every node is as busy, and another split
/// only adds per-range work (6 saturated nodes went on splitting to 68
/// ranges in two minutes, long after their leaders were even).
const SATURATED_LEAD_SHARE: f64 = 1.2;
/// …and only a range that carries at least this share of a node's mean led
/// writes: a node over the mean because it leads several smaller ranges is
/// evened out by moving leaders (placement's balancer), and splitting them
/// only adds per-range work. Ranges then stop splitting at about
/// `1 / SATURATED_RANGE_SHARE` per node, not at what the leaders' churn
/// allows (9 capped nodes went on to 40 ranges).
const SATURATED_RANGE_SHARE: f64 = 0.5;

/// A saturated node compares its ranges by write rates smoothed over about
/// this long (an exponential moving average), and splits only a range
/// observed that long since it last changed bounds. A node capped at a
/// small CPU share runs in bursts, so a rate over one check is mostly noise:
/// the hottest of several even ranges always looked hot enough to split
/// (with the range share above but rates over one check, 9 nodes capped at
/// 0.05 CPU went from 20 ranges to 38 in three rounds, their puts/s falling
/// from 4,849 to 1,997).
const RATE_SMOOTHING: Duration = Duration::from_secs(5);

/// What the checker saw of a range it leads at its last check.
#[derive(Clone, Copy, Debug)]
struct Seen {
    writes: u64,
    version: u64,
    at: std::time::Instant,
    /// Writes/s since the check before.
    rate: f64,
    /// Writes/s smoothed over [`RATE_SMOOTHING`].
    smoothed: f64,
    /// Since when it is smoothed (first seen, or its bounds changed).
    since: std::time::Instant,
}

impl Seen {
    /// The range's state at `now`, after `last`.
    fn next(last: Option<Seen>, writes: u64, version: u64, now: std::time::Instant) -> Seen {
        let Some(last) = last else {
            return Seen {
                writes,
                version,
                at: now,
                rate: 0.0,
                smoothed: 0.0,
                since: now,
            };
        };
        let secs = now.duration_since(last.at).as_secs_f64();
        let rate = if secs > 0.0 {
            writes.saturating_sub(last.writes) as f64 / secs
        } else {
            0.0
        };
        let (smoothed, since) = if version != last.version {
            (rate, now) // other bounds: its history is another range's
        } else {
            let a = 1.0 - (-secs / RATE_SMOOTHING.as_secs_f64()).exp();
            (last.smoothed + a * (rate - last.smoothed), last.since)
        };
        Seen {
            writes,
            version,
            at: now,
            rate,
            smoothed,
            since,
        }
    }

    /// Observed long enough for its smoothed rate to mean something.
    fn settled(&self) -> bool {
        self.at.duration_since(self.since) >= RATE_SMOOTHING
    }
}

/// A led range as a saturated node compares them.
#[derive(Clone, Copy, Debug)]
struct Rated {
    id: u64,
    /// Writes/s, smoothed.
    rate: f64,
    /// May be split (see [`Seen::settled`]).
    settled: bool,
}

/// The writes this node leads over the mean of the cluster's nodes, as
/// placement last said in a heartbeat answer (`placement/src/load.rs`);
/// unknown until one says (then saturation alone decides, as before).
#[derive(Clone)]
pub struct LeadShare(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Default for LeadShare {
    fn default() -> Self {
        Self(std::sync::Arc::new(f64::NAN.to_bits().into()))
    }
}

impl LeadShare {
    /// Records placement's figures (writes/s led here, mean over nodes).
    pub fn set(&self, mine: f64, mean: f64) {
        let share = if mean > 0.0 && mine.is_finite() && mean.is_finite() {
            mine.max(0.0) / mean
        } else {
            f64::NAN // nothing reported yet
        };
        self.0.store(share.to_bits(), Ordering::Relaxed);
    }

    fn get(&self) -> Option<f64> {
        Some(f64::from_bits(self.0.load(Ordering::Relaxed))).filter(|s| !s.is_nan())
    }

    /// May a saturated node split its hottest range?
    fn splits_help(&self) -> bool {
        self.get().is_none_or(|s| s >= SATURATED_LEAD_SHARE)
    }
}

impl SplitChecker {
    pub async fn run(self) {
        let mut iv = tokio::time::interval(CHECK_EVERY);
        // Writes and descriptor version seen at the last check, per range:
        // unchanged ranges are skipped. A range that split is checked again
        // (its left half may still be over the limit).
        let mut seen: std::collections::HashMap<u64, Seen> = Default::default();
        let mut rounds = 0u64;
        let mut cpu = crate::cpu::CpuGauge::default();
        let mut raft_cpu = crate::cpu::ThreadGauge::new(self.raft_cpu.clone());
        let mut measured: std::collections::HashMap<u64, Measure> = Default::default();
        let mut saturated_for = 0u32;
        let mut last_saturated_split: Option<std::time::Instant> = None;
        loop {
            iv.tick().await;
            rounds += 1;
            if rounds.is_multiple_of(60) {
                // Forget ranges no longer here (moved away, removed).
                seen.retain(|id, _| self.ranges.contains_key(id));
                measured.retain(|id, _| self.ranges.contains_key(id));
            }
            // Both sampled every round (each against its own last sample).
            let (process, raft) = (cpu.sample(), raft_cpu.sample());
            saturated_for = if saturated_now(process, raft) {
                saturated_for.saturating_add(1)
            } else {
                0
            };
            crate::metrics::SATURATED.set(i64::from(saturated_for >= SATURATED_CHECKS));
            let leaders: Vec<_> = self
                .ranges
                .iter()
                .filter(|r| r.is_leader())
                .map(|r| r.clone())
                .collect();
            let mut rated = Vec::with_capacity(leaders.len());
            for r in leaders {
                let id = r.desc.read().id;
                if r.desc.read().peers.iter().any(|p| p.learner) {
                    continue; // membership change in progress; split later
                }
                let writes = r.writes.load(Ordering::Relaxed);
                let version = r.epoch().version;
                let now = std::time::Instant::now();
                let last = seen.get(&id).copied();
                if last.is_some_and(|l| l.writes == writes && l.version == version) {
                    continue;
                }
                let next = Seen::next(last, writes, version, now);
                seen.insert(id, next);
                rated.push((r, next));
            }
            let cooled = last_saturated_split.is_none_or(|t| t.elapsed() >= SATURATED_COOLDOWN);
            let rates: Vec<Rated> = rated
                .iter()
                .map(|(r, s)| Rated {
                    id: r.desc.read().id,
                    rate: s.smoothed,
                    settled: s.settled(),
                })
                .collect();
            let saturated = saturated_for >= SATURATED_CHECKS;
            let hottest = (saturated && cooled && self.lead_share.splits_help())
                .then(|| split_when_saturated(&rates, self.lead_share.get()))
                .flatten();
            for (r, Seen { rate, .. }) in rated {
                let id = r.desc.read().id;
                let by_rate = self.max_write_rate > 0.0 && rate > self.max_write_rate;
                let hot = by_rate || hottest == Some(id);
                let now = Counters::of(&r);
                let due = measured
                    .get(&id)
                    .is_none_or(|then| then.due(&now, self.max_keys, self.max_bytes));
                if !hot && !due {
                    continue;
                }
                // A failed scan leaves nothing found: measured again once
                // enough is written (not every round).
                measured.insert(id, Measure::start(now));
                let kr = desc_range(&r.desc.read());
                let (mvcc, mk, mb) = (self.mvcc.clone(), self.max_keys, self.max_bytes);
                let scan = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                    let (keys, bytes, by_size) = mvcc.split_scan(&kr, mk, mb)?;
                    // A range that is small but hot splits at its median key,
                    // so its write load spreads over two raft groups.
                    let by_load = if hot && by_size.is_none() {
                        mvcc.median_key(&kr, mk)?
                    } else {
                        None
                    };
                    Ok((keys, bytes, by_size.or(by_load)))
                })
                .await;
                let Ok(Ok((keys, bytes, split_key))) = scan else {
                    continue;
                };
                r.approx_keys.store(keys, Ordering::Relaxed);
                r.approx_bytes.store(bytes, Ordering::Relaxed);
                if let Some(m) = measured.get_mut(&id) {
                    m.found = Some((keys, bytes));
                }
                if let Some(k) = split_key {
                    if hottest == Some(id) && !by_rate {
                        last_saturated_split = Some(std::time::Instant::now());
                        crate::metrics::SATURATION_SPLITS.inc();
                        tracing::info!(range = id, rate, "saturated: splitting the hottest range");
                    }
                    let res = propose_split(&self.placement, &self.sequencers, &r, k).await;
                    if let Err(e) = res {
                        tracing::warn!(range = id, "split failed: {e:#}");
                        seen.remove(&id); // try again next round
                    }
                }
            }
        }
    }
}

/// What a range's replica had applied, as the split checker compares it
/// between checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counters {
    /// Which replica (a range removed and added back here is a new one,
    /// whose counters start over).
    replica: usize,
    writes: u64,
    added_keys: u64,
    added_bytes: u64,
    version: u64,
    /// Changes when a snapshot replaced the data (counted by no write).
    data_gen: u64,
}

impl Counters {
    fn of(r: &std::sync::Arc<crate::store::RangeShared>) -> Self {
        Self {
            replica: std::sync::Arc::as_ptr(r) as usize,
            writes: r.writes.load(Ordering::Relaxed),
            added_keys: r.added_keys.load(Ordering::Relaxed),
            added_bytes: r.added_bytes.load(Ordering::Relaxed),
            version: r.epoch().version,
            data_gen: r.data_gen.load(Ordering::Acquire),
        }
    }
}

/// A range's last measure: the counters then, and the live keys and bytes
/// the scan found (`None` until it answered, or if it failed).
#[derive(Clone, Copy, Debug)]
struct Measure {
    at: Counters,
    found: Option<(u64, u64)>,
    when: std::time::Instant,
}

impl Measure {
    fn start(at: Counters) -> Self {
        Self {
            at,
            found: None,
            when: std::time::Instant::now(),
        }
    }

    /// Is the range to be measured again? Yes if its data was replaced or
    /// its bounds changed; otherwise once a [`RESCAN_SHARE`] of a threshold
    /// was written since, if the keys and bytes the writes added (upper
    /// bounds: overwrites add no key, compaction is not subtracted) may have
    /// taken it over a threshold, or [`REMEASURE_EVERY`] passed. So a range
    /// that is only overwritten far below the key threshold is not scanned
    /// over and over.
    fn due(&self, now: &Counters, max_keys: u64, max_bytes: u64) -> bool {
        let then = &self.at;
        if now.replica != then.replica
            || now.version != then.version
            || now.data_gen != then.data_gen
        {
            return true;
        }
        let writes = now.writes.saturating_sub(then.writes);
        let keys = now.added_keys.saturating_sub(then.added_keys);
        let bytes = now.added_bytes.saturating_sub(then.added_bytes);
        let enough = writes >= (max_keys / RESCAN_SHARE).max(1)
            || bytes >= (max_bytes / RESCAN_SHARE).max(1);
        let may_cross = self.found.is_none_or(|(k, b)| {
            k.saturating_add(keys) > max_keys || b.saturating_add(bytes) > max_bytes
        });
        enough && (may_cross || self.when.elapsed() >= REMEASURE_EVERY)
    }
}

/// Saturated in this sample: the process used [`SATURATED`] of the CPU it
/// may use, or the raft thread that share of one CPU (`None`: not known).
fn saturated_now(process: Option<f64>, raft_thread: Option<f64>) -> bool {
    process
        .into_iter()
        .chain(raft_thread)
        .any(|u| u >= SATURATED)
}

/// On a saturated node, the range to split: the hottest it leads, if that
/// one is settled (see [`Seen::settled`]), takes at least [`SATURATED_SHARE`]
/// of the writes of all of them and [`SATURATED_MIN_RATE`], and, when
/// placement said what this node leads against the mean over nodes
/// (`lead_share`, see [`LeadShare`]), at least [`SATURATED_RANGE_SHARE`] of
/// that mean.
fn split_when_saturated(rates: &[Rated], lead_share: Option<f64>) -> Option<u64> {
    let total: f64 = rates.iter().map(|r| r.rate).sum();
    // The mean over nodes, in this node's own measure of what it leads.
    let mean = lead_share
        .filter(|s| *s > 0.0 && s.is_finite())
        .map(|s| total / s);
    let hottest = rates.iter().max_by(|a, b| a.rate.total_cmp(&b.rate))?;
    let carries = hottest.rate >= SATURATED_MIN_RATE
        && hottest.rate >= SATURATED_SHARE * total
        && mean.is_none_or(|m| hottest.rate >= SATURATED_RANGE_SHARE * m);
    (hottest.settled && carries).then_some(hottest.id)
}

/// Splits range `r` (led here) at `split_key`: asks placement for the new
/// range's ids, then proposes the split and waits (bounded) until it applied
/// here. The caller checked that the key is inside the range.
pub async fn propose_split(
    placement: &PlacementConn,
    sequencers: &Sequencers,
    r: &crate::store::RangeShared,
    split_key: Vec<u8>,
) -> NodeResult<()> {
    let (id, peers) = {
        let d = r.desc.read();
        (d.id, d.peers.clone())
    };
    // Bounded: the checker handles one split at a time, so a placement
    // that does not answer must not stall every other range's split.
    let mut req = tonic::Request::new(AllocIdsRequest {
        ranges: 1,
        peers: peers.len() as u64,
    });
    req.set_timeout(Duration::from_secs(5));
    crate::failpoint::placement_reachable(sequencers.node_id).await?;
    let ids = placement.clone().alloc_ids(req).await?.into_inner();
    let new_peers = peers
        .iter()
        .enumerate()
        .map(|(i, p)| Peer {
            id: ids.first_peer_id + i as u64,
            node_id: p.node_id,
            learner: p.learner,
        })
        .collect();
    let cmd = SplitCommand {
        split_key,
        new_range_id: ids.first_range_id,
        new_peers,
    };
    let seq = sequencers.get(id);
    let (tx, rx) = oneshot::channel();
    seq.submit(SeqItem::Unstamped {
        kind: KvKind::KvSplit,
        request: cmd.encode_to_vec(),
        reply: tx,
    })?;
    match tokio::time::timeout(Duration::from_secs(10), rx).await {
        Ok(Ok(res)) => res.map(|_| ()),
        Ok(Err(_)) => Err(strata_proto::errors::leader_changed().into()),
        Err(_) => Err(strata_proto::errors::timeout().into()),
    }
}

#[cfg(test)]
mod tests;
