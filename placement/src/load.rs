//! How much of the cluster's writes each node leads, as placement last heard
//! it from the ranges' leaders — told to every node in its heartbeat answer,
//! so a saturated node splits its hottest range only while it leads clearly
//! more than its share (`node/src/split_check.rs`): once leaders carry even
//! loads, another split only adds per-range work. Also what `Nodes` and
//! heartbeat answers list of each node (`Svc::nodes`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use strata_proto::strata::NodeInfo;

use crate::service::{PlacementService, Svc};

/// The figures are summed over every range at most this often (every node
/// asks in each heartbeat, about three a second; the sum walks all the
/// cluster's ranges).
const RECOUNT_EVERY: Duration = Duration::from_secs(1);

/// The last sum: when, writes/s led per node, and the mean over up nodes.
#[derive(Default)]
pub struct Led(Option<(Instant, HashMap<u64, f64>, f64)>);

impl PlacementService {
    /// Nodes heard from within [`crate::metrics::NODE_DOWN_AFTER`].
    pub fn up_nodes(&self) -> HashSet<u64> {
        self.last_seen
            .lock()
            .iter()
            .filter(|(_, t)| t.elapsed() < crate::metrics::NODE_DOWN_AFTER)
            .map(|(n, _)| *n)
            .collect()
    }

    /// The write rate of the ranges `node` leads and the mean of that over
    /// the nodes that are up, from the rates their leaders last reported
    /// (ranges that split or were removed since do not count).
    pub fn leader_load(&self, node: u64) -> (f64, f64) {
        if let Some((at, per_node, mean)) = &self.led.lock().0 {
            if at.elapsed() < RECOUNT_EVERY {
                return (per_node.get(&node).copied().unwrap_or(0.0), *mean);
            }
        }
        // Lock order, everywhere: state, then last_seen, leaders, stats.
        let st = self.rep.state();
        let up = self.up_nodes();
        let (per_node, mean) = {
            let leaders = self.leaders.lock();
            let stats = self.stats.lock();
            let led = leaders.iter().filter_map(|(range, hint)| {
                st.ranges.contains_key(range).then_some(())?;
                Some((hint.node, stats.get(range)?.writes_per_sec))
            });
            per_node(led, &up)
        };
        drop(st);
        let mine = per_node.get(&node).copied().unwrap_or(0.0);
        self.led.lock().0 = Some((Instant::now(), per_node, mean));
        (mine, mean)
    }
}

impl Svc {
    /// The registered nodes; with `counts`, how many replicas and leaders each
    /// holds (one pass over the ranges — heartbeats, about three a second per node,
    /// ask without).
    pub(crate) fn nodes(&self, counts: bool) -> Vec<NodeInfo> {
        // Lock order, everywhere: state, then last_seen, leaders, stats,
        // hosting. (A reader waiting for the state behind a queued writer
        // while holding last_seen, which a state reader wants, deadlocks
        // placement.)
        let st = self.0.rep.state();
        let seen = self.0.last_seen.lock();
        let mut per_node: HashMap<u64, (u64, u64)> = HashMap::new();
        if counts {
            let leaders = self.0.leaders.lock();
            for r in st.ranges.values() {
                for (_, node) in &r.peers {
                    per_node.entry(*node).or_default().0 += 1;
                }
                if let Some(h) = leaders.get(&r.id) {
                    per_node.entry(h.node).or_default().1 += 1;
                }
            }
        }
        st.nodes
            .iter()
            .map(|(&id, addr)| {
                let (range_count, leader_count) = per_node.get(&id).copied().unwrap_or_default();
                NodeInfo {
                    id,
                    addr: addr.clone(),
                    up: seen
                        .get(&id)
                        .is_some_and(|t| t.elapsed() < crate::metrics::NODE_DOWN_AFTER),
                    range_count,
                    leader_count,
                }
            })
            .collect()
    }
}

/// Writes/s led per up node, and their mean over the up nodes, from each
/// range's `(leader node, writes/s)`. A rate that is negative or not a
/// number (a node's report) counts as 0; leaders on nodes that are not up
/// do not count.
pub fn per_node(
    led: impl IntoIterator<Item = (u64, f64)>,
    up: &HashSet<u64>,
) -> (HashMap<u64, f64>, f64) {
    let mut per_node: HashMap<u64, f64> = HashMap::new();
    let mut total = 0.0;
    for (leader, rate) in led {
        let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
        if !up.contains(&leader) {
            continue;
        }
        total += rate;
        *per_node.entry(leader).or_default() += rate;
    }
    let mean = if up.is_empty() {
        0.0
    } else {
        total / up.len() as f64
    };
    (per_node, mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_share_counts_up_leaders_and_ignores_bad_rates() {
        let share = |led: &[(u64, f64)], up: &HashSet<u64>, node: u64| {
            let (per_node, mean) = per_node(led.iter().copied(), up);
            (per_node.get(&node).copied().unwrap_or(0.0), mean)
        };
        let up: HashSet<u64> = [1, 2, 3].into();
        let led = [
            (1, 300.0),
            (1, 100.0),
            (2, 200.0),
            (3, f64::NAN),
            (3, -50.0),
            (4, 1000.0), // node 4 is down
        ];
        assert_eq!(share(&led, &up, 1), (400.0, 200.0));
        assert_eq!(share(&led, &up, 3), (0.0, 200.0));
        assert_eq!(share(&led, &up, 4), (0.0, 200.0));
        assert_eq!(share(&[(1, f64::INFINITY)], &up, 1), (0.0, 0.0));
        assert_eq!(share(&led, &HashSet::new(), 1), (0.0, 0.0));
    }

    /// Through the service: the figures come from the leaders' reports, only
    /// for ranges placement knows, and are summed again after a second.
    #[tokio::test]
    async fn the_load_told_to_a_node_follows_its_leaders_reports() {
        use strata_proto::strata::RangeStats;

        let dir = tempfile::tempdir().unwrap();
        let svc = crate::service::tests::service(&dir, 0).await;
        let report = |node: u64, range: u64, rate: f64| {
            svc.last_seen.lock().insert(node, Instant::now());
            svc.leaders
                .lock()
                .insert(range, crate::service::LeaderHint { node, term: 1 });
            svc.stats.lock().insert(
                range,
                RangeStats {
                    writes_per_sec: rate,
                    ..Default::default()
                },
            );
        };
        let range = crate::state::StoredRange {
            id: 7,
            start: Vec::new(),
            end: Vec::new(),
            conf_ver: 1,
            version: 1,
            peers: vec![(1, 1), (2, 2), (3, 3)],
            learners: Vec::new(),
        };
        svc.rep
            .propose(crate::state::Command::UpdateRange { range })
            .await
            .expect("range 7 known");
        report(1, 7, 600.0);
        report(2, 999_999, 500.0); // a range placement does not know
        svc.last_seen.lock().insert(3, Instant::now());
        assert_eq!(svc.leader_load(1), (600.0, 200.0));
        assert_eq!(svc.leader_load(2), (0.0, 200.0));
        // Within the second, the sum is not walked again…
        report(1, 7, 900.0);
        assert_eq!(svc.leader_load(1), (600.0, 200.0));
        // …after it, it is.
        *svc.led.lock() = Led::default();
        assert_eq!(svc.leader_load(1), (900.0, 300.0));
    }
}
