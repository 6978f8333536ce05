//! Unit tests of the scheduler: cluster snapshots in, operators out.
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
        load_swap: true,
        swap_pinned: HashSet::new(),
    }
}

#[test]
fn a_phantom_voter_is_replaced_after_its_grace() {
    let nodes: Vec<_> = (1..=3).map(node).collect();
    let mut r = range(2, &[1, 2, 3], 1);
    // Node 3 does not host its voter, but may still pick it up.
    r.unhosted = vec![(3, Duration::from_secs(59))];
    assert!(schedule(&nodes, &[r.clone()], &HashSet::new(), &cfg())
        .ops
        .is_empty());
    // Past the grace: removed, then a learner replaces it (on node 3
    // again, the only node without a replica: it starts from a snapshot).
    r.unhosted = vec![(3, Duration::from_secs(60))];
    let ops = schedule(&nodes, &[r.clone()], &HashSet::new(), &cfg()).ops;
    assert_eq!(
        ops,
        vec![Op::RemovePeer {
            range: 2,
            peer: 23,
            node: 3
        }]
    );
    let after = range(2, &[1, 2], 1);
    let ops = schedule(&nodes, &[after], &HashSet::new(), &cfg()).ops;
    assert_eq!(ops, vec![Op::AddLearner { range: 2, node: 3 }]);
    // Never the leader's voter, nor one on a node that is down (the
    // dead-node repair handles those), nor when too few real voters
    // would remain.
    let mut led = r.clone();
    led.leader_node = 3;
    assert!(schedule(&nodes, &[led], &HashSet::new(), &cfg())
        .ops
        .is_empty());
    let mut down = nodes.clone();
    down[2].up = false;
    assert!(schedule(&down, &[r.clone()], &HashSet::new(), &cfg())
        .ops
        .is_empty());
    let mut two = r;
    two.unhosted = vec![(2, Duration::from_secs(99)), (3, Duration::from_secs(99))];
    assert!(schedule(&nodes, &[two], &HashSet::new(), &cfg())
        .ops
        .is_empty());
}

#[test]
fn leader_balance_finds_a_pair_that_can_move() {
    // Node 1 leads the most, but shares no range with node 4 (the one
    // with fewest leaders); node 2 also leads more than its share and
    // does share ranges with node 4: leadership moves from 2 to 4.
    let nodes: Vec<_> = (1..=4).map(node).collect();
    let mut ranges = Vec::new();
    for id in 1..=4 {
        ranges.push(range(id, &[1, 2, 3], 1));
    }
    for id in 5..=8 {
        ranges.push(range(id, &[2, 3, 4], 2));
    }
    ranges.push(range(9, &[1, 3, 4], 3));
    let cfg = Config {
        max_ops: 8,
        ..cfg()
    };
    let ops = schedule(&nodes, &ranges, &HashSet::new(), &cfg).ops;
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::TransferLeader { node: 4, .. })),
        "a leader should move to node 4: {ops:?}"
    );
}

#[test]
fn balanced_cluster_needs_nothing() {
    let nodes: Vec<_> = (1..=3).map(node).collect();
    let ranges = vec![
        range(1, &[1, 2, 3], 1),
        range(2, &[1, 2, 3], 2),
        range(3, &[1, 2, 3], 3),
    ];
    assert!(schedule(&nodes, &ranges, &HashSet::new(), &cfg())
        .ops
        .is_empty());
}

#[test]
fn dead_node_replicas_are_replaced_then_removed() {
    let mut nodes: Vec<_> = (1..=4).map(node).collect();
    nodes[2].dead = true;
    nodes[2].up = false;
    let ranges = vec![range(1, &[1, 2, 3], 1)];
    let ops = schedule(&nodes, &ranges, &HashSet::new(), &cfg()).ops;
    assert_eq!(ops, vec![Op::AddLearner { range: 1, node: 4 }]);
    // While the learner catches up nothing else happens to the range.
    let mut r = range(1, &[1, 2, 3, 4], 1);
    r.range.learners = vec![14];
    assert!(schedule(&nodes, &[r.clone()], &HashSet::new(), &cfg())
        .ops
        .is_empty());
    // Promoted: the dead voter goes.
    r.range.learners.clear();
    let ops = schedule(&nodes, &[r], &HashSet::new(), &cfg()).ops;
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
    assert!(schedule(&nodes, &ranges, &HashSet::new(), &cfg())
        .ops
        .is_empty());
    let nodes: Vec<_> = (1..=4).map(node).collect();
    let ranges = vec![range(1, &[1, 2, 3], 1), range(2, &[1, 2, 3], 1)];
    let busy: HashSet<u64> = [1, 2].into();
    assert!(schedule(&nodes, &ranges, &busy, &cfg()).ops.is_empty());
}

#[test]
fn a_new_node_receives_replicas_and_leaders() {
    let nodes: Vec<_> = (1..=4).map(node).collect();
    let ranges: Vec<_> = (1..=4).map(|i| range(i, &[1, 2, 3], 1 + (i % 3))).collect();
    let ops = schedule(&nodes, &ranges, &HashSet::new(), &cfg()).ops;
    assert!(matches!(ops[0], Op::AddLearner { node: 4, .. }), "{ops:?}");
    // A surplus voter leaves the fullest node, never the leader's.
    let r = range(1, &[1, 2, 3, 4], 2);
    let ops = schedule(&nodes, &[r], &HashSet::new(), &cfg()).ops;
    assert!(
        matches!(ops[0], Op::RemovePeer { range: 1, node, .. } if node != 2),
        "{ops:?}"
    );
    // Leaders spread: node 1 leads three ranges, node 4 none.
    let ranges: Vec<_> = (1..=3).map(|i| range(i, &[1, 2, 4], 1)).collect();
    let nodes: Vec<_> = [1, 2, 4].into_iter().map(node).collect();
    let ops = schedule(&nodes, &ranges, &HashSet::new(), &cfg()).ops;
    assert!(
        ops.iter()
            .any(|o| matches!(o, Op::TransferLeader { node: 2, .. })),
        "{ops:?}"
    );
}

/// Six ranges on three nodes: leader counts even (2 each), but node 1 leads
/// both hot ranges.
fn two_hot_on_node_1() -> Vec<RangeView> {
    vec![
        hot(1, &[1, 2, 3], 1, 1000.0),
        hot(2, &[1, 2, 3], 1, 900.0),
        hot(3, &[1, 2, 3], 2, 100.0),
        hot(4, &[1, 2, 3], 2, 100.0),
        hot(5, &[1, 2, 3], 3, 0.0),
        hot(6, &[1, 2, 3], 3, 10.0),
    ]
}

#[test]
fn hot_leaders_trade_places_with_cold_ones() {
    let nodes: Vec<_> = (1..=3).map(node).collect();
    let ranges = two_hot_on_node_1();
    let ops = schedule(&nodes, &ranges, &HashSet::new(), &cfg()).ops;
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
        let ops = schedule(&nodes, &ranges, &HashSet::new(), &cfg()).ops;
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
    assert!(schedule(&nodes, &ranges, &HashSet::new(), &cfg())
        .ops
        .is_empty());
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
    assert!(schedule(&nodes, &ranges, &HashSet::new(), &cfg())
        .ops
        .is_empty());
    // 300 apart but under 20% of 5000: left alone.
    let ranges = vec![hot(1, &[1, 2], 1, 5000.0), hot(2, &[1, 2], 2, 4700.0)];
    assert!(schedule(&nodes, &ranges, &HashSet::new(), &cfg())
        .ops
        .is_empty());
    // One hot range alone: moving it just moves the gap (difference ==
    // gap), so it stays.
    let ranges = vec![hot(1, &[1, 2], 1, 3000.0), hot(2, &[1, 2], 2, 0.0)];
    assert!(schedule(&nodes, &ranges, &HashSet::new(), &cfg())
        .ops
        .is_empty());
}

#[test]
fn swapped_ranges_stay_put_and_swaps_wait_for_their_effect() {
    let nodes: Vec<_> = (1..=3).map(node).collect();
    let ranges = two_hot_on_node_1();
    let first = schedule(&nodes, &ranges, &HashSet::new(), &cfg());
    assert_eq!(first.swap, Some([2, 5]));
    // Not settled: no swap at all.
    let held = Config {
        load_swap: false,
        ..cfg()
    };
    assert_eq!(
        schedule(&nodes, &ranges, &HashSet::new(), &held),
        Scheduled::default()
    );
    // Ranges 2 and 5 pinned: the swap uses others (range 1 and range 6).
    let pinned = Config {
        swap_pinned: HashSet::from([2, 5]),
        ..cfg()
    };
    let other = schedule(&nodes, &ranges, &HashSet::new(), &pinned);
    assert_eq!(other.swap, Some([1, 6]), "{other:?}");
    assert!(other.ops.iter().all(|o| ![2, 5].contains(&o.range())));

    // The damping: after a swap at t, no swap until t + settle, and its two
    // ranges pinned until t + pin; nothing held back after that.
    let (settle, pin) = (Duration::from_secs(10), Duration::from_secs(60));
    let mut d = SwapDamping::new(settle, pin);
    let t = Instant::now();
    assert_eq!(d.at(t), (true, HashSet::new()));
    assert!(d.idle(t));
    d.record(&first, t);
    assert_eq!(
        d.at(t + Duration::from_secs(9)),
        (false, HashSet::from([2, 5]))
    );
    assert!(!d.idle(t + Duration::from_secs(9)));
    assert_eq!(d.at(t + settle), (true, HashSet::from([2, 5])));
    // A round without a swap changes nothing.
    d.record(&Scheduled::default(), t + settle);
    assert_eq!(d.at(t + pin), (true, HashSet::new()));
    assert!(d.idle(t + pin));
}

/// Rates that wobble around an even split (as 3 s windows of a steady load
/// do) once made two ranges trade places back and forth every few seconds.
#[test]
fn wobbling_rates_do_not_bounce_leaders() {
    let nodes: Vec<_> = (1..=3).map(node).collect();
    // Two leaders per node; the rates are set every second below.
    let mut ranges = two_hot_on_node_1();
    let base = [2400.0, 600.0, 1500.0, 1500.0, 1200.0, 1800.0];
    let mut d = SwapDamping::new(Duration::from_secs(10), Duration::from_secs(60));
    let t0 = Instant::now();
    let mut moves: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for sec in 0..300u64 {
        // ±40 % wobble, different per range and second.
        for (i, r) in ranges.iter_mut().enumerate() {
            let phase = (sec * 7 + i as u64 * 13) % 11;
            r.writes_per_sec = base[i] * (0.6 + 0.08 * phase as f64);
        }
        let now = t0 + Duration::from_secs(sec);
        let (load_swap, swap_pinned) = d.at(now);
        let cfg = Config {
            load_swap,
            swap_pinned,
            ..cfg()
        };
        let s = schedule(&nodes, &ranges, &HashSet::new(), &cfg);
        d.record(&s, now);
        for op in &s.ops {
            let Op::TransferLeader { range, node, .. } = *op else {
                panic!("only transfers expected: {op:?}");
            };
            ranges[range as usize - 1].leader_node = node;
            moves.entry(range).or_default().push(sec);
        }
    }
    let total: usize = moves.values().map(Vec::len).sum();
    assert!(
        total <= 2 * 30,
        "at most one swap per settle period: {moves:?}"
    );
    for (range, at) in &moves {
        assert!(
            at.windows(2).all(|w| w[1] - w[0] >= 60),
            "range {range} moved again within 60 s: {at:?}"
        );
    }
}
