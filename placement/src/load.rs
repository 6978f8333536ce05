//! How much of the cluster's writes each node leads, as placement last heard
//! it from the ranges' leaders — told to every node in its heartbeat answer,
//! so a saturated node splits its hottest range only while it leads clearly
//! more than its share (`node/src/split_check.rs`): once leaders carry even
//! loads, another split only adds per-range work.

use std::collections::HashSet;
use std::time::Duration;

use crate::service::PlacementService;

/// A node heard from within this long is up (as `Placement.Nodes` says).
const UP_WITHIN: Duration = Duration::from_secs(5);

impl PlacementService {
    /// The write rate of the ranges `node` leads and the mean of that over
    /// the nodes that are up, from the rates their leaders last reported
    /// (ranges that split or were removed since do not count).
    pub fn leader_load(&self, node: u64) -> (f64, f64) {
        // Lock order, everywhere: state, then last_seen, leaders, stats.
        let st = self.rep.state();
        let up: HashSet<u64> = self
            .last_seen
            .lock()
            .iter()
            .filter(|(_, t)| t.elapsed() < UP_WITHIN)
            .map(|(n, _)| *n)
            .collect();
        let leaders = self.leaders.lock();
        let stats = self.stats.lock();
        let led = leaders.iter().filter_map(|(range, hint)| {
            st.ranges.contains_key(range).then_some(())?;
            Some((hint.node, stats.get(range)?.writes_per_sec))
        });
        share(led, &up, node)
    }
}

/// `(rate led by node, mean over the up nodes)` from each range's
/// `(leader node, writes/s)`. A rate that is negative or not a number (a
/// node's report) counts as 0; leaders on nodes that are not up do not count.
pub fn share(
    led: impl IntoIterator<Item = (u64, f64)>,
    up: &HashSet<u64>,
    node: u64,
) -> (f64, f64) {
    let (mut mine, mut total) = (0.0, 0.0);
    for (leader, rate) in led {
        let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
        if !up.contains(&leader) {
            continue;
        }
        total += rate;
        if leader == node {
            mine += rate;
        }
    }
    let mean = if up.is_empty() {
        0.0
    } else {
        total / up.len() as f64
    };
    (mine, mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_share_counts_up_leaders_and_ignores_bad_rates() {
        let up: HashSet<u64> = [1, 2, 3].into();
        let led = [
            (1, 300.0),
            (1, 100.0),
            (2, 200.0),
            (3, f64::NAN),
            (3, -50.0),
            (4, 1000.0), // node 4 is down
        ];
        assert_eq!(share(led, &up, 1), (400.0, 200.0));
        assert_eq!(share(led, &up, 3), (0.0, 200.0));
        assert_eq!(share(led, &up, 4), (0.0, 200.0));
        assert_eq!(share([(1, f64::INFINITY)], &up, 1), (0.0, 0.0));
        assert_eq!(share(led, &HashSet::new(), 1), (0.0, 0.0));
    }
}
