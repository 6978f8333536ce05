//! Consistency check of every range's replicas at one revision (HashKV,
//! `strata ctl check`).
//!
//! Per range: the leader waits until every write at or below the revision
//! applied (a read barrier), hashes its range's state at the revision
//! (`Mvcc::hash_at`: every live key with value and metadata) and answers its
//! applied index; each other voter hashes once it applied that far, with the
//! descriptor it hashed under. Replicas that applied the same log agree, so a
//! different hash is a corrupt replica. Work is bounded: one streaming pass
//! over the range per replica, at most [`PARALLEL_RANGES`] ranges at a time,
//! every call with a deadline.
//!
//! The per-range hashes add up (wrapping) to the keyspace's: the descriptors
//! the leaders hashed under must tile the keyspace exactly, else (a split
//! meanwhile) the whole check runs again, a bounded number of times. A
//! replica that cannot be asked (down, behind for 5 s) is reported
//! unavailable, not a mismatch; learners (still catching up) are not asked.

use std::time::Duration;

use futures::future::join_all;
use futures::StreamExt;
use strata_proto::errors;
use strata_proto::strata::{RangeDescriptor, RangeHashRequest, RangeHashResponse};
use tonic::{Code, Status};

use crate::routing::{CachedRange, Router};
use strata_proto::etcdutil::KeyRange;

const PARALLEL_RANGES: usize = 8;
/// Whole-check attempts when splits change the ranges under it, within
/// [`SPLIT_WAIT`].
const ATTEMPTS: usize = 50;
const SPLIT_WAIT: Duration = Duration::from_secs(30);
/// How long to look for a range's leader (a range just split off elects
/// one; placement may be moving leaders), and the most tries meanwhile.
const LEADER_WAIT: Duration = Duration::from_secs(15);
const LEADER_TRIES: usize = 1000;
/// One replica's hash (it may first wait up to 5 s to catch up).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// One replica's answer.
#[derive(Clone, Debug)]
pub struct ReplicaHash {
    pub node_id: u64,
    /// (hash, live keys), or why there is none.
    pub result: Result<(u32, u64), String>,
}

/// One range checked.
#[derive(Clone, Debug)]
pub struct RangeCheck {
    pub desc: RangeDescriptor,
    pub revision: i64,
    pub leader_node: u64,
    /// The leader first.
    pub replicas: Vec<ReplicaHash>,
    pub compact_revision: i64,
}

impl RangeCheck {
    /// The state most replicas hash to (the leader's on a tie): the one
    /// taken as right, so a corrupt leader is named as such.
    pub fn reference(&self) -> (u32, u64) {
        let ok: Vec<(u32, u64)> = self
            .replicas
            .iter()
            .filter_map(|r| r.result.clone().ok())
            .collect();
        let count = |h: &(u32, u64)| ok.iter().filter(|x| *x == h).count();
        let mut best = ok.first().copied().unwrap_or_default();
        for h in &ok {
            if count(h) > count(&best) {
                best = *h;
            }
        }
        best
    }

    /// Replicas whose hash differs from the reference.
    pub fn mismatched(&self) -> Vec<u64> {
        let reference = self.reference();
        self.replicas
            .iter()
            .filter(|r| matches!(r.result, Ok(h) if h != reference))
            .map(|r| r.node_id)
            .collect()
    }
}

/// Every range, in key order.
pub struct Checked {
    pub ranges: Vec<RangeCheck>,
}

impl Checked {
    /// The keyspace's hash at the revision (the sum of the ranges').
    pub fn hash(&self) -> u32 {
        self.ranges
            .iter()
            .fold(0u32, |s, r| s.wrapping_add(r.reference().0))
    }

    pub fn compact_revision(&self) -> i64 {
        self.ranges
            .iter()
            .map(|r| r.compact_revision)
            .max()
            .unwrap_or(0)
    }

    /// The first disagreement, worded for an error.
    pub fn mismatch(&self) -> Option<String> {
        self.ranges.iter().find_map(|r| {
            let bad = r.mismatched();
            let node = *bad.first()?;
            let theirs = r
                .replicas
                .iter()
                .find(|x| x.node_id == node)
                .and_then(|x| x.result.clone().ok())
                .unwrap_or_default();
            let (hash, keys) = r.reference();
            Some(format!(
                "replicas disagree at revision {}: range {} [{:?}, {:?}) on node {} hashes \
                 {:08x} ({} keys), the other replicas {hash:08x} ({keys} keys)",
                r.revision,
                r.desc.id,
                String::from_utf8_lossy(&r.desc.start_key),
                String::from_utf8_lossy(&r.desc.end_key),
                node,
                theirs.0,
                theirs.1,
            ))
        })
    }
}

fn all_keys() -> KeyRange {
    KeyRange {
        start: Vec::new(),
        end: None,
    }
}

/// Checks every range at `rev`.
pub async fn check_all(router: &Router, rev: i64) -> Result<Checked, Status> {
    let mut last = errors::timeout();
    let deadline = tokio::time::Instant::now() + SPLIT_WAIT;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            let _ = router.refresh().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ranges = router.ranges_for(&all_keys());
        if !router.covers(&all_keys(), &ranges) {
            last = Status::unavailable("strata: the range cache does not cover the keyspace");
            continue;
        }
        let checks: Vec<Result<RangeCheck, Status>> = futures::stream::iter(ranges)
            .map(|r| check_range(router, r, rev))
            .buffered(PARALLEL_RANGES)
            .collect()
            .await;
        let mut out = Vec::with_capacity(checks.len());
        for c in checks {
            out.push(c?);
        }
        if tiles(&out) {
            return Ok(Checked { ranges: out });
        }
        // The leaders' descriptors are the newest: the cache learns them
        // now rather than a placement heartbeat later.
        let descs: Vec<RangeDescriptor> = out.into_iter().map(|c| c.desc).collect();
        router.learn(&descs);
        last = Status::unavailable("strata: ranges split during the check");
    }
    Err(last)
}

/// Do the hashed descriptors cover the keyspace exactly, in order?
fn tiles(ranges: &[RangeCheck]) -> bool {
    let mut at: Vec<u8> = Vec::new();
    for (i, r) in ranges.iter().enumerate() {
        if r.desc.start_key != at {
            return false;
        }
        if r.desc.end_key.is_empty() {
            return i + 1 == ranges.len();
        }
        at = r.desc.end_key.clone();
    }
    false
}

async fn ask(
    router: &Router,
    node: u64,
    req: RangeHashRequest,
) -> Result<RangeHashResponse, Status> {
    let mut client = router
        .client(node)
        .ok_or_else(|| Status::unavailable(format!("strata: node {node} is unknown")))?;
    let mut call = tonic::Request::new(req);
    call.set_timeout(CALL_TIMEOUT);
    match tokio::time::timeout(CALL_TIMEOUT, client.range_hash(call)).await {
        Ok(res) => Ok(res?.into_inner()),
        Err(_) => Err(Status::deadline_exceeded("strata: no answer in time")),
    }
}

/// Checks one range: its leader, then its other voters.
async fn check_range(router: &Router, range: CachedRange, rev: i64) -> Result<RangeCheck, Status> {
    let range_id = range.desc.id;
    let mut range = range;
    let mut last = errors::no_leader();
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    for attempt in 0..LEADER_TRIES {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        let node = router.target(&range, attempt);
        let req = RangeHashRequest {
            range_id,
            revision: rev,
            barrier: true,
            min_applied_index: 0,
        };
        let lead = match ask(router, node, req).await {
            Ok(resp) => resp,
            // The revision is compacted, or the like: the caller's error.
            Err(s) if matches!(s.code(), Code::OutOfRange | Code::InvalidArgument) => {
                return Err(s)
            }
            Err(s) => {
                last = s;
                tokio::time::sleep(Duration::from_millis(50)).await;
                range.leader_node = 0;
                continue;
            }
        };
        if let Some(e) = lead.error {
            let backoff = router.on_route_error(range_id, &e).await;
            range = router.cached(range_id).unwrap_or(range);
            range.leader_node = e.leader_node;
            // A hint may be stale too: never a hot loop.
            tokio::time::sleep(backoff.max(Duration::from_millis(10))).await;
            last = Status::unavailable(format!("strata: range {range_id}: {}", e.message));
            continue;
        }
        let desc = lead.desc.clone().unwrap_or_default();
        let mut replicas = vec![ReplicaHash {
            node_id: node,
            result: Ok((lead.hash, lead.keys)),
        }];
        let followers = desc
            .peers
            .iter()
            .filter(|p| !p.learner && p.node_id != node)
            .map(|p| p.node_id)
            .collect::<Vec<_>>();
        let asks = followers.iter().map(|&n| {
            let req = RangeHashRequest {
                range_id,
                revision: rev,
                barrier: false,
                min_applied_index: lead.applied_index,
            };
            async move { (n, ask(router, n, req).await) }
        });
        let mut compact_revision = lead.compact_revision;
        let mut changed = false;
        for (n, res) in join_all(asks).await {
            let result = match res {
                Ok(r) if r.error.is_some() => Err(r.error.map(|e| e.message).unwrap_or_default()),
                Ok(r) if r.desc.as_ref().map(|d| d.epoch) != Some(desc.epoch) => {
                    // A split or membership change between the leader's
                    // hash and this one: not comparable, check again.
                    changed = true;
                    continue;
                }
                Ok(r) => {
                    compact_revision = compact_revision.max(r.compact_revision);
                    Ok((r.hash, r.keys))
                }
                Err(s) => Err(s.message().to_string()),
            };
            replicas.push(ReplicaHash { node_id: n, result });
        }
        if changed {
            last = Status::unavailable("strata: range changed during the check");
            let _ = router.refresh().await;
            range = router.cached(range_id).unwrap_or(range);
            continue;
        }
        return Ok(RangeCheck {
            desc,
            revision: rev,
            leader_node: node,
            replicas,
            compact_revision,
        });
    }
    Err(last)
}
