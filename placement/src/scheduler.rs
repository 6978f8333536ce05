//! The scheduler: a pure function from a cluster snapshot to operators.
//!
//! Priorities, highest first:
//! 1. **repair**: a range with a voter on a node that is down (past
//!    `--node-down-after`) gets a replacement learner on a live node; once that
//!    learner is promoted, the dead voter is removed. A stuck learner on a dead
//!    node is removed. A *phantom* voter — listed on a live node that has not
//!    hosted it for longer than `missing_grace` (see `hosting.rs`) — is
//!    removed; the range is then short of a voter and gets a learner like any
//!    other (on that node too: a learner starts from a snapshot).
//! 2. **surplus**: a range with more voters than wanted loses the one on the
//!    node holding the most replicas (never the leader's, never below quorum).
//! 3. **replica balance**: when live nodes' replica counts differ by more than
//!    one, a replica moves from the fullest to the emptiest node (add a learner
//!    there; step 2 later removes the surplus one from the full node).
//! 4. **leader balance**: when leader counts differ by more than one, a leader
//!    moves to a voter on the node with fewest leaders.
//! 5. **write-load balance**: leaders do a range's write work (sequencing,
//!    proposing, answering clients), so when the write rates of the ranges
//!    nodes lead differ by more than [`LOAD_GAP_MIN`] writes/s and
//!    [`LOAD_GAP_SHARE`] of the busiest node's, a hot leader on the busiest node
//!    and a cold one on the least busy node trade places (two transfers: leader
//!    counts stay as step 4 left them). The pair is chosen so the gap strictly
//!    shrinks, so steady rates never make leaders bounce. Rates are not steady
//!    (3 s windows, and a transfer disturbs the ranges it moves), so the
//!    caller runs this step only once the last swap's effect could be
//!    measured ([`Config::load_swap`]) and keeps the ranges it swapped out of
//!    the next ones for a while ([`Config::swap_pinned`]): without that, two
//!    ranges traded places back and forth every few seconds under an even
//!    load.
//!
//! At most `max_ops` operators per call and one per range: operators are rate
//! limited, and a range is never taken below quorum.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::state::StoredRange;

#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    pub id: u64,
    /// Heartbeats arrive.
    pub up: bool,
    /// Down for longer than `--node-down-after`: its replicas are replaced.
    pub dead: bool,
}

#[derive(Clone, Debug)]
pub struct RangeView {
    pub range: StoredRange,
    /// Node of the leader, 0 when unknown.
    pub leader_node: u64,
    /// Writes per second its leader last reported.
    pub writes_per_sec: f64,
    /// Voters whose node has not reported hosting them: (node, for how long).
    pub unhosted: Vec<(u64, Duration)>,
}

/// Step 5 acts only on a leader write-rate gap of at least this many writes/s…
pub const LOAD_GAP_MIN: f64 = 200.0;
/// …that is also at least this share of the busiest node's leader write rate.
pub const LOAD_GAP_SHARE: f64 = 0.2;

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    AddLearner { range: u64, node: u64 },
    RemovePeer { range: u64, peer: u64, node: u64 },
    TransferLeader { range: u64, peer: u64, node: u64 },
}

impl Op {
    pub fn range(&self) -> u64 {
        match self {
            Op::AddLearner { range, .. }
            | Op::RemovePeer { range, .. }
            | Op::TransferLeader { range, .. } => *range,
        }
    }
}

pub struct Config {
    pub replicas: usize,
    pub max_ops: usize,
    /// A voter its live node has not hosted for this long is replaced.
    pub missing_grace: Duration,
    /// Step 5 may run (the last write-load swap has settled).
    pub load_swap: bool,
    /// Ranges step 5 leaves where they are (swapped recently).
    pub swap_pinned: HashSet<u64>,
}

/// When step 5 may run and which ranges it must leave alone: the last swap
/// at least `settle` ago, and no range swapped in the last `pin`.
#[derive(Debug)]
pub struct SwapDamping {
    settle: Duration,
    pin: Duration,
    last: Option<Instant>,
    swapped: HashMap<u64, Instant>,
}

impl SwapDamping {
    pub fn new(settle: Duration, pin: Duration) -> Self {
        Self {
            settle,
            pin,
            last: None,
            swapped: HashMap::new(),
        }
    }

    /// `(load_swap, swap_pinned)` for a round at `now`.
    pub fn at(&mut self, now: Instant) -> (bool, HashSet<u64>) {
        let pin = self.pin;
        self.swapped
            .retain(|_, t| now.saturating_duration_since(*t) < pin);
        let settled = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= self.settle);
        (settled, self.swapped.keys().copied().collect())
    }

    /// Nothing is held back: a round with the same inputs decides the same.
    pub fn idle(&self, now: Instant) -> bool {
        self.swapped.is_empty()
            && self
                .last
                .is_none_or(|t| now.saturating_duration_since(t) >= self.settle)
    }

    /// A round at `now` decided `scheduled`.
    pub fn record(&mut self, scheduled: &Scheduled, now: Instant) {
        if let Some(pair) = scheduled.swap {
            self.last = Some(now);
            self.swapped.extend(pair.map(|r| (r, now)));
        }
    }
}

/// What a round of the scheduler decided.
#[derive(Debug, Default, PartialEq)]
pub struct Scheduled {
    pub ops: Vec<Op>,
    /// The two ranges of step 5's swap, when `ops` ends with one.
    pub swap: Option<[u64; 2]>,
}

pub fn schedule(
    nodes: &[NodeView],
    ranges: &[RangeView],
    busy: &HashSet<u64>,
    cfg: &Config,
) -> Scheduled {
    let ops = steps(nodes, ranges, busy, cfg);
    let swap = {
        // Step 5 (after the other steps' transfers, as if done).
        let touched: HashSet<u64> = busy
            .iter()
            .chain(&cfg.swap_pinned)
            .copied()
            .chain(ops.iter().map(Op::range))
            .collect();
        (cfg.load_swap && ops.len() + 2 <= cfg.max_ops)
            .then(|| load_swap(ranges, &ops, &touched, &alive(nodes)))
            .flatten()
    };
    let mut out = Scheduled { ops, swap: None };
    if let Some(pair) = swap {
        out.swap = Some(pair.each_ref().map(Op::range));
        out.ops.extend(pair);
    }
    out
}

/// The nodes replicas and leaders may go to.
fn alive(nodes: &[NodeView]) -> Vec<u64> {
    nodes
        .iter()
        .filter(|n| n.up && !n.dead)
        .map(|n| n.id)
        .collect()
}

/// Steps 1 to 4.
fn steps(nodes: &[NodeView], ranges: &[RangeView], busy: &HashSet<u64>, cfg: &Config) -> Vec<Op> {
    let mut ops = Vec::new();
    let alive = alive(nodes);
    let dead: HashSet<u64> = nodes.iter().filter(|n| n.dead).map(|n| n.id).collect();
    let up: HashSet<u64> = alive.iter().copied().collect();
    let mut replicas: BTreeMap<u64, usize> = alive.iter().map(|n| (*n, 0)).collect();
    let mut leaders: BTreeMap<u64, usize> = alive.iter().map(|n| (*n, 0)).collect();
    for r in ranges {
        for (_, n) in &r.range.peers {
            if let Some(c) = replicas.get_mut(n) {
                *c += 1;
            }
        }
        if let Some(c) = leaders.get_mut(&r.leader_node) {
            *c += 1;
        }
    }
    let mut touched: HashSet<u64> = busy.clone();
    let full = |ops: &Vec<Op>| ops.len() >= cfg.max_ops;

    // 1 + 2: repair and surplus, range by range.
    for r in ranges {
        if full(&ops) {
            return ops;
        }
        let id = r.range.id;
        if touched.contains(&id) || r.leader_node == 0 {
            continue;
        }
        let voters: Vec<(u64, u64)> = r
            .range
            .peers
            .iter()
            .filter(|(p, _)| !r.range.learners.contains(p))
            .copied()
            .collect();
        let learners: Vec<(u64, u64)> = r
            .range
            .peers
            .iter()
            .filter(|(p, _)| r.range.learners.contains(p))
            .copied()
            .collect();
        if let Some(&(peer, node)) = learners.iter().find(|(_, n)| dead.contains(n)) {
            ops.push(Op::RemovePeer {
                range: id,
                peer,
                node,
            });
            touched.insert(id);
            continue;
        }
        if !learners.is_empty() {
            continue; // wait for the promotion
        }
        // A phantom voter never acknowledged anything, so removing it costs
        // the range no fault tolerance; its replacement follows (step 1).
        let phantom = |n: &u64| {
            up.contains(n)
                && r.unhosted
                    .iter()
                    .any(|(u, for_)| u == n && *for_ >= cfg.missing_grace)
        };
        if let Some(&(peer, node)) = voters
            .iter()
            .find(|(_, n)| *n != r.leader_node && phantom(n))
        {
            let real = voters
                .iter()
                .filter(|(_, n)| !dead.contains(n) && !phantom(n))
                .count();
            if real > (voters.len() - 1) / 2 {
                remove_peer(&mut ops, &mut replicas, &mut touched, id, peer, node);
                continue;
            }
        }
        let live_voters = voters.iter().filter(|(_, n)| !dead.contains(n)).count();
        let quorum = voters.len() / 2 + 1;
        if live_voters < cfg.replicas && live_voters >= quorum {
            // Replace: a learner on the live node with the fewest replicas.
            let hosting: HashSet<u64> = r.range.peers.iter().map(|(_, n)| *n).collect();
            if let Some((&node, _)) = replicas
                .iter()
                .filter(|(n, _)| !hosting.contains(n))
                .min_by_key(|(n, c)| (**c, **n))
            {
                ops.push(Op::AddLearner { range: id, node });
                *replicas.get_mut(&node).expect("alive") += 1;
                touched.insert(id);
                continue;
            }
        }
        if voters.len() > cfg.replicas {
            // Surplus: prefer a dead voter, else the fullest node's (not the leader's).
            let victim = voters
                .iter()
                .filter(|(_, n)| *n != r.leader_node)
                .max_by_key(|(_, n)| (dead.contains(n), replicas.get(n).copied().unwrap_or(0), *n));
            if let Some(&(peer, node)) = victim {
                // Removing a live voter must leave a live quorum of the rest.
                let after_live = live_voters - usize::from(!dead.contains(&node));
                if after_live > (voters.len() - 1) / 2 {
                    remove_peer(&mut ops, &mut replicas, &mut touched, id, peer, node);
                }
            }
        }
    }

    // 3: replica balance (only when nothing is being repaired): several moves
    // per round, each from the currently fullest to the emptiest node.
    let repairing = !ops.is_empty()
        || dead.iter().any(|d| {
            ranges
                .iter()
                .any(|r| r.range.peers.iter().any(|(_, n)| n == d))
        });
    while !repairing && !full(&ops) {
        let most = replicas
            .iter()
            .max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n)));
        let least = replicas.iter().min_by_key(|(n, c)| (**c, **n));
        let (Some((&from, &hi)), Some((&to, &lo))) = (most, least) else {
            break;
        };
        if hi <= lo + 1 {
            break;
        }
        let candidate = ranges.iter().find(|r| {
            !touched.contains(&r.range.id)
                && r.leader_node != 0
                && r.range.learners.is_empty()
                && r.range.peers.iter().any(|(_, n)| *n == from)
                && !r.range.peers.iter().any(|(_, n)| *n == to)
        });
        let Some(r) = candidate else { break };
        ops.push(Op::AddLearner {
            range: r.range.id,
            node: to,
        });
        touched.insert(r.range.id);
        *replicas.get_mut(&to).expect("alive") += 1;
        *replicas.get_mut(&from).expect("alive") -= 1;
    }

    // 4: leader balance: several transfers per round, each between the pair
    // of nodes with the widest leader gap (more than one) that a range can
    // actually move between: led by the busier node, with a voter on the
    // other. (Looking only at the very busiest and idlest nodes stalls when
    // no range they share is free, e.g. a new node whose replicas all sit
    // with the second-busiest node.)
    while !full(&ops) {
        let mut by_count: Vec<(u64, usize)> = leaders.iter().map(|(n, c)| (*n, *c)).collect();
        by_count.sort_by_key(|(n, c)| (std::cmp::Reverse(*c), *n));
        let mut pairs: Vec<(u64, u64, usize)> = Vec::new();
        for &(from, hi) in &by_count {
            for &(to, lo) in by_count.iter().rev() {
                if hi > lo + 1 {
                    pairs.push((from, to, hi - lo));
                }
            }
        }
        pairs.sort_by_key(|(from, to, gap)| (std::cmp::Reverse(*gap), *from, *to));
        let candidate = pairs.iter().find_map(|&(from, to, _)| {
            ranges.iter().find_map(|r| {
                if touched.contains(&r.range.id) || r.leader_node != from {
                    return None;
                }
                r.range
                    .peers
                    .iter()
                    .find(|(p, n)| *n == to && !r.range.learners.contains(p))
                    .map(|(p, _)| (r.range.id, *p, from, to))
            })
        });
        let Some((range, peer, from, to)) = candidate else {
            break;
        };
        ops.push(Op::TransferLeader {
            range,
            peer,
            node: to,
        });
        touched.insert(range);
        *leaders.get_mut(&from).expect("alive") -= 1;
        *leaders.get_mut(&to).expect("alive") += 1;
    }

    ops
}

/// The pair of leader transfers of step 5, if one helps.
fn load_swap(
    ranges: &[RangeView],
    planned: &[Op],
    touched: &HashSet<u64>,
    alive: &[u64],
) -> Option<[Op; 2]> {
    let leader_after = |r: &RangeView| {
        planned
            .iter()
            .find_map(|o| match o {
                Op::TransferLeader { range, node, .. } if *range == r.range.id => Some(*node),
                _ => None,
            })
            .unwrap_or(r.leader_node)
    };
    let mut load: BTreeMap<u64, f64> = alive.iter().map(|n| (*n, 0.0)).collect();
    for r in ranges {
        if let Some(l) = load.get_mut(&leader_after(r)) {
            *l += r.writes_per_sec.max(0.0);
        }
    }
    let (&hot, &hi) = load.iter().max_by(|a, b| a.1.total_cmp(b.1))?;
    let (&cold, &lo) = load.iter().min_by(|a, b| a.1.total_cmp(b.1))?;
    let gap = hi - lo;
    if hot == cold || gap < LOAD_GAP_MIN || gap < LOAD_GAP_SHARE * hi {
        return None;
    }
    // A voter of `r` on `node`, if `r` is free to move and led by `leader`.
    let movable = |r: &RangeView, leader: u64, node: u64| -> Option<u64> {
        if touched.contains(&r.range.id) || leader_after(r) != leader {
            return None;
        }
        r.range
            .peers
            .iter()
            .find(|(p, n)| *n == node && !r.range.learners.contains(p))
            .map(|(p, _)| *p)
    };
    // The coldest range the cold node leads that can go to the hot node…
    let (c, c_peer) = ranges
        .iter()
        .filter_map(|r| movable(r, cold, hot).map(|p| (r, p)))
        .min_by(|a, b| a.0.writes_per_sec.total_cmp(&b.0.writes_per_sec))?;
    // …traded for the hot node's range whose rate difference comes closest to
    // half the gap while strictly shrinking it (0 < difference < gap).
    let (h, h_peer) = ranges
        .iter()
        .filter_map(|r| movable(r, hot, cold).map(|p| (r, p)))
        .filter(|(r, _)| {
            let d = r.writes_per_sec - c.writes_per_sec;
            d > 0.0 && d < gap
        })
        .min_by(|a, b| {
            let off = |r: &RangeView| (r.writes_per_sec - c.writes_per_sec - gap / 2.0).abs();
            off(a.0).total_cmp(&off(b.0))
        })?;
    Some([
        Op::TransferLeader {
            range: h.range.id,
            peer: h_peer,
            node: cold,
        },
        Op::TransferLeader {
            range: c.range.id,
            peer: c_peer,
            node: hot,
        },
    ])
}

/// Schedules the removal of `peer` (on `node`) from range `id`.
fn remove_peer(
    ops: &mut Vec<Op>,
    replicas: &mut BTreeMap<u64, usize>,
    touched: &mut HashSet<u64>,
    id: u64,
    peer: u64,
    node: u64,
) {
    ops.push(Op::RemovePeer {
        range: id,
        peer,
        node,
    });
    if let Some(c) = replicas.get_mut(&node) {
        *c -= 1;
    }
    touched.insert(id);
}

#[cfg(test)]
mod tests;
