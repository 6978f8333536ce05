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
//!    shrinks, so steady rates never make leaders bounce.
//!
//! At most `max_ops` operators per call and one per range: operators are rate
//! limited, and a range is never taken below quorum.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

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
}

pub fn schedule(
    nodes: &[NodeView],
    ranges: &[RangeView],
    busy: &HashSet<u64>,
    cfg: &Config,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let alive: Vec<u64> = nodes
        .iter()
        .filter(|n| n.up && !n.dead)
        .map(|n| n.id)
        .collect();
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

    // 4: leader balance: several transfers per round, each from the node with
    // the most leaders to the one with the fewest that holds a voter.
    while !full(&ops) {
        let most = leaders
            .iter()
            .max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n)));
        let least = leaders.iter().min_by_key(|(n, c)| (**c, **n));
        let (Some((&from, &hi)), Some((&to, &lo))) = (most, least) else {
            break;
        };
        if hi <= lo + 1 {
            break;
        }
        let candidate = ranges.iter().find_map(|r| {
            if touched.contains(&r.range.id) || r.leader_node != from {
                return None;
            }
            r.range
                .peers
                .iter()
                .find(|(p, n)| *n == to && !r.range.learners.contains(p))
                .map(|(p, _)| (r.range.id, *p))
        });
        let Some((range, peer)) = candidate else {
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

    // 5: write-load balance (after step 4's transfers, as if done).
    if ops.len() + 2 <= cfg.max_ops {
        if let Some(swap) = load_swap(ranges, &ops, &touched, &alive) {
            ops.extend(swap);
        }
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
mod tests {
    use super::*;

    fn node(id: u64) -> NodeView {
        NodeView {
            id,
            up: true,
            dead: false,
        }
    }

    fn range(id: u64, nodes: &[u64], leader: u64) -> RangeView {
        RangeView {
            range: StoredRange {
                id,
                start: vec![id as u8],
                end: vec![id as u8 + 1],
                conf_ver: 1,
                version: 1,
                peers: nodes.iter().map(|n| (id * 10 + n, *n)).collect(),
                learners: vec![],
            },
            leader_node: leader,
            writes_per_sec: 0.0,
            unhosted: Vec::new(),
        }
    }

    fn hot(id: u64, nodes: &[u64], leader: u64, rate: f64) -> RangeView {
        RangeView {
            writes_per_sec: rate,
            ..range(id, nodes, leader)
        }
    }

    fn cfg() -> Config {
        Config {
            replicas: 3,
            max_ops: 4,
            missing_grace: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_phantom_voter_is_replaced_after_its_grace() {
        let nodes: Vec<_> = (1..=3).map(node).collect();
        let mut r = range(2, &[1, 2, 3], 1);
        // Node 3 does not host its voter, but may still pick it up.
        r.unhosted = vec![(3, Duration::from_secs(59))];
        assert!(schedule(&nodes, &[r.clone()], &HashSet::new(), &cfg()).is_empty());
        // Past the grace: removed, then a learner replaces it (on node 3
        // again, the only node without a replica: it starts from a snapshot).
        r.unhosted = vec![(3, Duration::from_secs(60))];
        let ops = schedule(&nodes, &[r.clone()], &HashSet::new(), &cfg());
        assert_eq!(
            ops,
            vec![Op::RemovePeer {
                range: 2,
                peer: 23,
                node: 3
            }]
        );
        let after = range(2, &[1, 2], 1);
        let ops = schedule(&nodes, &[after], &HashSet::new(), &cfg());
        assert_eq!(ops, vec![Op::AddLearner { range: 2, node: 3 }]);
        // Never the leader's voter, nor one on a node that is down (the
        // dead-node repair handles those), nor when too few real voters
        // would remain.
        let mut led = r.clone();
        led.leader_node = 3;
        assert!(schedule(&nodes, &[led], &HashSet::new(), &cfg()).is_empty());
        let mut down = nodes.clone();
        down[2].up = false;
        assert!(schedule(&down, &[r.clone()], &HashSet::new(), &cfg()).is_empty());
        let mut two = r;
        two.unhosted = vec![(2, Duration::from_secs(99)), (3, Duration::from_secs(99))];
        assert!(schedule(&nodes, &[two], &HashSet::new(), &cfg()).is_empty());
    }

    #[test]
    fn balanced_cluster_needs_nothing() {
        let nodes: Vec<_> = (1..=3).map(node).collect();
        let ranges = vec![
            range(1, &[1, 2, 3], 1),
            range(2, &[1, 2, 3], 2),
            range(3, &[1, 2, 3], 3),
        ];
        assert!(schedule(&nodes, &ranges, &HashSet::new(), &cfg()).is_empty());
    }

    #[test]
    fn dead_node_replicas_are_replaced_then_removed() {
        let mut nodes: Vec<_> = (1..=4).map(node).collect();
        nodes[2].dead = true;
        nodes[2].up = false;
        let ranges = vec![range(1, &[1, 2, 3], 1)];
        let ops = schedule(&nodes, &ranges, &HashSet::new(), &cfg());
        assert_eq!(ops, vec![Op::AddLearner { range: 1, node: 4 }]);
        // While the learner catches up nothing else happens to the range.
        let mut r = range(1, &[1, 2, 3, 4], 1);
        r.range.learners = vec![14];
        assert!(schedule(&nodes, &[r.clone()], &HashSet::new(), &cfg()).is_empty());
        // Promoted: the dead voter goes.
        r.range.learners.clear();
        let ops = schedule(&nodes, &[r], &HashSet::new(), &cfg());
        assert_eq!(
            ops,
            vec![Op::RemovePeer {
                range: 1,
                peer: 13,
                node: 3
            }]
        );
    }

    #[test]
    fn never_below_quorum_and_busy_ranges_wait() {
        let mut nodes: Vec<_> = (1..=4).map(node).collect();
        for n in &mut nodes[1..3] {
            n.dead = true;
            n.up = false;
        }
        // Two of three voters dead: no live quorum, nothing can be done safely.
        let ranges = vec![range(1, &[1, 2, 3], 1)];
        assert!(schedule(&nodes, &ranges, &HashSet::new(), &cfg()).is_empty());
        let nodes: Vec<_> = (1..=4).map(node).collect();
        let ranges = vec![range(1, &[1, 2, 3], 1), range(2, &[1, 2, 3], 1)];
        let busy: HashSet<u64> = [1, 2].into();
        assert!(schedule(&nodes, &ranges, &busy, &cfg()).is_empty());
    }

    #[test]
    fn a_new_node_receives_replicas_and_leaders() {
        let nodes: Vec<_> = (1..=4).map(node).collect();
        let ranges: Vec<_> = (1..=4).map(|i| range(i, &[1, 2, 3], 1 + (i % 3))).collect();
        let ops = schedule(&nodes, &ranges, &HashSet::new(), &cfg());
        assert!(matches!(ops[0], Op::AddLearner { node: 4, .. }), "{ops:?}");
        // A surplus voter leaves the fullest node, never the leader's.
        let r = range(1, &[1, 2, 3, 4], 2);
        let ops = schedule(&nodes, &[r], &HashSet::new(), &cfg());
        assert!(
            matches!(ops[0], Op::RemovePeer { range: 1, node, .. } if node != 2),
            "{ops:?}"
        );
        // Leaders spread: node 1 leads three ranges, node 4 none.
        let ranges: Vec<_> = (1..=3).map(|i| range(i, &[1, 2, 4], 1)).collect();
        let nodes: Vec<_> = [1, 2, 4].into_iter().map(node).collect();
        let ops = schedule(&nodes, &ranges, &HashSet::new(), &cfg());
        assert!(
            ops.iter()
                .any(|o| matches!(o, Op::TransferLeader { node: 2, .. })),
            "{ops:?}"
        );
    }

    #[test]
    fn hot_leaders_trade_places_with_cold_ones() {
        let nodes: Vec<_> = (1..=3).map(node).collect();
        // Leader counts are even (2 each) but node 1 leads both hot ranges.
        let ranges = vec![
            hot(1, &[1, 2, 3], 1, 1000.0),
            hot(2, &[1, 2, 3], 1, 900.0),
            hot(3, &[1, 2, 3], 2, 100.0),
            hot(4, &[1, 2, 3], 2, 100.0),
            hot(5, &[1, 2, 3], 3, 0.0),
            hot(6, &[1, 2, 3], 3, 10.0),
        ];
        let ops = schedule(&nodes, &ranges, &HashSet::new(), &cfg());
        // Node 1 (1900/s) and node 3 (10/s): gap 1890; the hot range whose
        // difference to the coldest (range 5, 0/s) is nearest 945 is range 2.
        assert_eq!(
            ops,
            vec![
                Op::TransferLeader {
                    range: 2,
                    peer: 23,
                    node: 3
                },
                Op::TransferLeader {
                    range: 5,
                    peer: 51,
                    node: 1
                },
            ]
        );
        // Applying proposals until there are none settles (no bouncing),
        // leader counts unchanged and the spread well under the first 1890.
        let mut ranges = ranges;
        for _ in 0..10 {
            let ops = schedule(&nodes, &ranges, &HashSet::new(), &cfg());
            if ops.is_empty() {
                break;
            }
            for op in ops {
                let Op::TransferLeader { range, node, .. } = op else {
                    panic!("only transfers expected: {op:?}");
                };
                ranges[range as usize - 1].leader_node = node;
            }
        }
        assert!(schedule(&nodes, &ranges, &HashSet::new(), &cfg()).is_empty());
        let mut load = BTreeMap::new();
        let mut count = BTreeMap::new();
        for r in &ranges {
            *load.entry(r.leader_node).or_insert(0.0) += r.writes_per_sec;
            *count.entry(r.leader_node).or_insert(0) += 1;
        }
        assert_eq!(count.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
        let (hi, lo) = (
            load.values().copied().fold(f64::MIN, f64::max),
            load.values().copied().fold(f64::MAX, f64::min),
        );
        assert!(hi - lo < 1000.0, "{load:?}");
    }

    #[test]
    fn small_load_gaps_and_useless_moves_are_left_alone() {
        let nodes: Vec<_> = (1..=2).map(node).collect();
        // 150 writes/s apart: under LOAD_GAP_MIN.
        let ranges = vec![hot(1, &[1, 2], 1, 150.0), hot(2, &[1, 2], 2, 0.0)];
        assert!(schedule(&nodes, &ranges, &HashSet::new(), &cfg()).is_empty());
        // 300 apart but under 20% of 5000: left alone.
        let ranges = vec![hot(1, &[1, 2], 1, 5000.0), hot(2, &[1, 2], 2, 4700.0)];
        assert!(schedule(&nodes, &ranges, &HashSet::new(), &cfg()).is_empty());
        // One hot range alone: moving it just moves the gap (difference ==
        // gap), so it stays.
        let ranges = vec![hot(1, &[1, 2], 1, 3000.0), hot(2, &[1, 2], 2, 0.0)];
        assert!(schedule(&nodes, &ranges, &HashSet::new(), &cfg()).is_empty());
    }
}
