//! What nodes host, as they report it, against what the range directory
//! says. A descriptor listing a voter on a node that does not host the range
//! names a **missing replica**: a phantom voter, counted in the range's
//! quorum but holding nothing. (A node that caught up on a range past a
//! split with a snapshot got the post-split descriptors, not the split: no
//! replica of the new range was created there.)
//!
//! Nodes report only initialized replicas (holding their range's data):
//! every heartbeat reports those whose state changed, the full report (every
//! 30 s) lists them all. Until a node's first full report since placement
//! started nothing is known of it, and none of its replicas counts as
//! missing.
//!
//! A voter not hosted for [`MISSING_AFTER`] is missing: a split's new range
//! is reported by its followers within a heartbeat or two, so only a node
//! that will not create it by itself is still without it then. The node is
//! told (heartbeat response) and creates the replica, which a snapshot of
//! the range initializes; `strata_placement_replicas_missing` counts it; and
//! the scheduler replaces it if the node has not picked it up after a grace
//! period (`operator.rs`, `scheduler.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::state::StoredRange;

/// A voter its node has not reported hosting for this long is missing.
pub const MISSING_AFTER: Duration = Duration::from_secs(2);

#[derive(Default, Debug)]
pub struct Hosting {
    /// Node → the ranges it reported hosting (present once it sent a full
    /// report).
    by_node: HashMap<u64, HashSet<u64>>,
    /// (range, node) → since when the range's voter on the node is not
    /// hosted there.
    unhosted: HashMap<(u64, u64), Instant>,
}

impl Hosting {
    /// Records a heartbeat of `node`: the ranges it reported, and with
    /// `full` every range it hosts.
    pub fn report(
        &mut self,
        node: u64,
        full: Option<&[u64]>,
        reported: impl IntoIterator<Item = u64>,
    ) {
        if let Some(all) = full {
            self.by_node.insert(node, all.iter().copied().collect());
        }
        if let Some(hosted) = self.by_node.get_mut(&node) {
            hosted.extend(reported);
        }
    }

    /// Does `node` host `range`? `None` while unknown (no full report yet).
    pub fn hosts(&self, node: u64, range: u64) -> Option<bool> {
        self.by_node.get(&node).map(|h| h.contains(&range))
    }

    /// Brings what is known of `node`'s unhosted voters up to date with the
    /// directory; returns the ranges whose voter there is missing.
    pub fn reconcile(
        &mut self,
        node: u64,
        ranges: &BTreeMap<u64, StoredRange>,
        now: Instant,
    ) -> Vec<u64> {
        let Some(hosted) = self.by_node.get(&node) else {
            return Vec::new();
        };
        let mut unhosted = HashSet::new();
        let mut missing = Vec::new();
        for r in ranges.values() {
            let voter_here = r
                .peers
                .iter()
                .any(|(p, n)| *n == node && !r.learners.contains(p));
            if !voter_here || hosted.contains(&r.id) {
                continue;
            }
            unhosted.insert(r.id);
            let since = *self.unhosted.entry((r.id, node)).or_insert(now);
            if now.saturating_duration_since(since) >= MISSING_AFTER {
                missing.push(r.id);
            }
        }
        self.unhosted
            .retain(|(range, n), _| *n != node || unhosted.contains(range));
        missing
    }

    /// How long `node`'s voter of `range` has not been hosted (`None`: it
    /// is, or nothing is known).
    pub fn unhosted_for(&self, range: u64, node: u64, now: Instant) -> Option<Duration> {
        self.unhosted
            .get(&(range, node))
            .map(|since| now.saturating_duration_since(*since))
    }

    /// Missing voters on the nodes `up` accepts.
    pub fn missing(&self, now: Instant, up: impl Fn(u64) -> bool) -> usize {
        self.unhosted
            .iter()
            .filter(|((_, node), since)| {
                up(*node) && now.saturating_duration_since(**since) >= MISSING_AFTER
            })
            .count()
    }

    /// Is any voter not hosted (the scheduler has something to watch)?
    pub fn any_unhosted(&self) -> bool {
        !self.unhosted.is_empty()
    }
}

/// What placement answers a node asking about its replicas: every range of
/// `check` (asked about by id), and those of `hosted` (its full report) whose
/// descriptor does not list `node` — either may be a replica removed from its
/// range while the node did not hear (the node compares epochs and peers
/// before destroying anything). Each range once; one the directory does not
/// know yet (a split's new range not reported) is left out.
pub fn checked(
    node: u64,
    check: &[u64],
    hosted: &[u64],
    ranges: &BTreeMap<u64, StoredRange>,
) -> Vec<StoredRange> {
    let mut seen = HashSet::new();
    let asked = check.iter().map(|id| (id, true));
    let reported = hosted.iter().map(|id| (id, false));
    asked
        .chain(reported)
        .filter_map(|(id, any)| Some((ranges.get(id)?, any)))
        .filter(|(r, any)| *any || r.peers.iter().all(|(_, n)| *n != node))
        .filter(|(r, _)| seen.insert(r.id))
        .map(|(r, _)| r.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(id: u64, nodes: &[u64], learner_on: Option<u64>) -> StoredRange {
        let peers: Vec<(u64, u64)> = nodes.iter().map(|n| (id * 10 + n, *n)).collect();
        StoredRange {
            id,
            start: vec![id as u8],
            end: vec![id as u8 + 1],
            conf_ver: 1,
            version: 1,
            learners: learner_on.map(|n| id * 10 + n).into_iter().collect(),
            peers,
        }
    }

    fn dir(ranges: Vec<StoredRange>) -> BTreeMap<u64, StoredRange> {
        ranges.into_iter().map(|r| (r.id, r)).collect()
    }

    #[test]
    fn a_voter_not_reported_is_missing_after_a_while() {
        let t0 = Instant::now();
        let later = t0 + MISSING_AFTER;
        let d = dir(vec![range(1, &[1, 2, 3], None), range(2, &[1, 2, 3], None)]);
        let mut h = Hosting::default();
        // Nothing known of node 3 before its full report.
        h.report(3, None, [1]);
        assert_eq!(h.hosts(3, 1), None);
        assert!(h.reconcile(3, &d, t0).is_empty());
        assert!(!h.any_unhosted());
        h.report(3, Some(&[1]), []);
        assert_eq!(h.hosts(3, 1), Some(true));
        assert!(h.reconcile(3, &d, t0).is_empty(), "not missing yet");
        assert_eq!(h.unhosted_for(2, 3, later), Some(MISSING_AFTER));
        assert_eq!(h.missing(later, |_| true), 1);
        assert_eq!(h.missing(later, |n| n != 3), 0, "only up nodes count");
        assert_eq!(h.reconcile(3, &d, later), vec![2]);
        // Reported (a heartbeat after its snapshot): no longer missing.
        h.report(3, None, [2]);
        assert!(h.reconcile(3, &d, later).is_empty());
        assert_eq!(h.unhosted_for(2, 3, later), None);
        assert!(!h.any_unhosted());
    }

    #[test]
    fn a_full_report_forgets_what_left_and_learners_are_not_missing() {
        let t0 = Instant::now();
        let later = t0 + MISSING_AFTER;
        let mut h = Hosting::default();
        h.report(2, Some(&[1, 2]), []);
        // Range 2 left node 2 (the full report no longer lists it), and
        // node 2 is a learner of range 3 (being added: not missing).
        h.report(2, Some(&[1]), []);
        let d = dir(vec![
            range(2, &[1, 2, 3], None),
            range(3, &[1, 2, 3], Some(2)),
        ]);
        h.reconcile(2, &d, t0);
        assert_eq!(h.reconcile(2, &d, later), vec![2]);
        // The directory catches up: node 2 is no longer listed in range 2.
        let d = dir(vec![range(2, &[1, 3], None)]);
        assert!(h.reconcile(2, &d, later).is_empty());
        assert!(!h.any_unhosted());
    }

    #[test]
    fn asked_ranges_are_answered_and_hosted_ones_only_if_not_listed() {
        let d = dir(vec![
            range(1, &[1, 2, 3], None),
            range(2, &[1, 3, 4], None),
            range(3, &[1, 3, 4], Some(4)),
        ]);
        let ids = |v: Vec<StoredRange>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
        // Hosted: only ranges that do not list the node; range 9 is unknown
        // (not reported yet): never named.
        assert_eq!(ids(checked(2, &[], &[1, 2, 2, 3, 9], &d)), vec![2, 3]);
        assert!(
            checked(4, &[], &[2, 3], &d).is_empty(),
            "a learner is listed"
        );
        // Asked about: answered whether listed or not, each once.
        assert_eq!(ids(checked(2, &[1, 9, 1], &[1, 2], &d)), vec![1, 2]);
        assert!(checked(2, &[], &[], &d).is_empty());
    }
}
