//! The scheduler: a pure function from a cluster snapshot to operators.
//!
//! Priorities, highest first:
//! 1. **repair**: a range with a voter on a node that is down (past
//!    `--node-down-after`) gets a replacement learner on a live node; once that
//!    learner is promoted, the dead voter is removed. A stuck learner on a dead
//!    node is removed.
//! 2. **surplus**: a range with more voters than wanted loses the one on the
//!    node holding the most replicas (never the leader's, never below quorum).
//! 3. **replica balance**: when live nodes' replica counts differ by more than
//!    one, a replica moves from the fullest to the emptiest node (add a learner
//!    there; step 2 later removes the surplus one from the full node).
//! 4. **leader balance**: when leader counts differ by more than one, a leader
//!    moves to a voter on the node with fewest leaders.
//!
//! At most `max_ops` operators per call and one per range: operators are rate
//! limited, and a range is never taken below quorum.

use std::collections::{BTreeMap, HashSet};

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
}

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
    ops
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
        }
    }

    fn cfg() -> Config {
        Config {
            replicas: 3,
            max_ops: 4,
        }
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
}
