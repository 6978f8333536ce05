//! Applying one internal command (a lease revoke, a lease grant's "forget it
//! was revoked") in every range: a walk over the keyspace, not over a list of
//! descriptors.
//!
//! Placement's list of ranges can be behind: a range may have split after
//! placement read its descriptor, and a revoke sent to it then applies only to
//! the keys it still covers — trusting the list would skip the new range's keys
//! (found by the robustness suite: a revoke answered ok while a key attached to
//! the lease stayed visible). So the walk starts at the empty key, sends the
//! command to the range placement believes covers the walk's position, and
//! moves on to the end of the keys the range says it covered when the command
//! applied (`SpanApplied`); a stale descriptor is refused (EpochNotMatch, with
//! the current descriptors, which the walk tries next) or re-read.

use std::time::{Duration, Instant};

use prost::Message as _;
use strata_proto::errors;
use strata_proto::strata::node_client::NodeClient;
use strata_proto::strata::{KvKind, KvRequest, RangeDescriptor, RouteErrorKind, SpanApplied};
use tonic::{Request, Status};

use crate::service::PlacementService;

/// How long a walk may take before it gives up (the caller retries: expiry
/// loops, clients get "no leader").
const WALK_LIMIT: Duration = Duration::from_secs(10);

/// Whether `desc` covers `key`.
fn covers(desc: &RangeDescriptor, key: &[u8]) -> bool {
    desc.start_key.as_slice() <= key && (desc.end_key.is_empty() || key < desc.end_key.as_slice())
}

/// Where the walk goes after a range answered `span` for position `from`:
/// `Some(None)` = done (the span reaches the end of the keyspace),
/// `Some(Some(next))` = on from `next`, `None` = the span does not cover `from`
/// (the range moved on meanwhile): try again.
fn next_position(span: &SpanApplied, from: &[u8]) -> Option<Option<Vec<u8>>> {
    let covered = span.start_key.as_slice() <= from
        && (span.end_key.is_empty() || from < span.end_key.as_slice());
    if !covered {
        return None;
    }
    Some((!span.end_key.is_empty()).then(|| span.end_key.clone()))
}

impl PlacementService {
    /// Applies `kind`/`body` in every range, covering the whole keyspace.
    pub(crate) async fn to_every_range(&self, kind: KvKind, body: Vec<u8>) -> Result<(), Status> {
        let deadline = Instant::now() + WALK_LIMIT;
        let mut from: Vec<u8> = Vec::new();
        // Descriptors an EpochNotMatch answer named (newer than placement's).
        let mut fresher: Vec<RangeDescriptor> = Vec::new();
        loop {
            if self.rep.state().ranges.is_empty() {
                return Ok(()); // not bootstrapped: no range holds any key yet
            }
            let desc = fresher
                .iter()
                .find(|d| covers(d, &from))
                .cloned()
                .or_else(|| {
                    let st = self.rep.state();
                    st.ranges
                        .values()
                        .map(|r| r.descriptor())
                        .find(|d| covers(d, &from))
                });
            if let Some(desc) = desc {
                match self.apply_in(&desc, kind, &body).await {
                    Applied::Span(span) => match next_position(&span, &from) {
                        Some(None) => return Ok(()),
                        Some(Some(next)) => {
                            from = next;
                            continue;
                        }
                        None => {}
                    },
                    Applied::Stale(current) => {
                        if !current.is_empty() {
                            fresher = current;
                            continue;
                        }
                    }
                    Applied::Failed => {}
                }
            }
            if Instant::now() > deadline {
                return Err(errors::no_leader());
            }
            fresher.clear();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One round over the range's replicas (leader first).
    async fn apply_in(&self, desc: &RangeDescriptor, kind: KvKind, body: &[u8]) -> Applied {
        match self.call_range(desc, kind, body).await {
            RangeAnswer::Ok(b) => match SpanApplied::decode(&b[..]) {
                Ok(span) => Applied::Span(span),
                Err(_) => Applied::Failed,
            },
            RangeAnswer::Stale(d) => Applied::Stale(d),
            RangeAnswer::Failed => Applied::Failed,
        }
    }

    /// Sends one internal command to a range: one round over its replicas,
    /// leader first.
    pub(crate) async fn call_range(
        &self,
        desc: &RangeDescriptor,
        kind: KvKind,
        body: &[u8],
    ) -> RangeAnswer {
        let nodes = self.rep.state().nodes.clone();
        let mut candidates: Vec<u64> = desc.peers.iter().map(|p| p.node_id).collect();
        let hint = self.leader_of(desc.id);
        candidates.sort_by_key(|n| *n != hint);
        for n in &candidates {
            let Some(addr) = nodes.get(n) else { continue };
            let Ok(ep) = strata_proto::tls::endpoint(addr) else {
                continue;
            };
            let ep = ep.connect_timeout(Duration::from_millis(500));
            let Ok(ch) = strata_proto::tls::connect(&ep).await else {
                continue;
            };
            let mut req = Request::new(KvRequest {
                range_id: desc.id,
                epoch: desc.epoch,
                kind: kind as i32,
                request: body.to_vec(),
                read_revision: 0,
            });
            req.set_timeout(Duration::from_secs(5));
            let Ok(resp) = NodeClient::new(ch).kv(req).await else {
                continue;
            };
            let resp = resp.into_inner();
            match resp.error {
                None => return RangeAnswer::Ok(resp.response),
                Some(e) if e.kind == RouteErrorKind::EpochNotMatch as i32 => {
                    return RangeAnswer::Stale(e.ranges)
                }
                // Held by a cross-range txn: the leader said so.
                Some(e) if e.kind == RouteErrorKind::ServerBusy as i32 => {
                    return RangeAnswer::Failed
                }
                Some(_) => {}
            }
        }
        RangeAnswer::Failed
    }
}

pub(crate) enum RangeAnswer {
    Ok(Vec<u8>),
    /// The descriptor was stale; the current ones, if the node named them.
    Stale(Vec<RangeDescriptor>),
    Failed,
}

enum Applied {
    /// The command applied; the keys the range covered then.
    Span(SpanApplied),
    /// The descriptor was stale; the current ones, if the node named them.
    Stale(Vec<RangeDescriptor>),
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: &str, end: &str) -> SpanApplied {
        SpanApplied {
            start_key: start.into(),
            end_key: end.into(),
            deleted: 0,
        }
    }

    #[test]
    fn the_walk_follows_what_ranges_covered_not_what_placement_believed() {
        // Placement believed [a, z); the range had split at m meanwhile, so it
        // covered [a, m): the walk goes on at m (the new range), not at z.
        assert_eq!(
            next_position(&span("a", "m"), b"a"),
            Some(Some(b"m".to_vec()))
        );
        assert_eq!(next_position(&span("", ""), b""), Some(None));
        assert_eq!(next_position(&span("m", ""), b"q"), Some(None));
        // A range that no longer covers the position: retry, never skip.
        assert_eq!(next_position(&span("m", "t"), b"a"), None);
        assert_eq!(next_position(&span("a", "m"), b"m"), None);
    }

    #[test]
    fn covers_is_half_open_and_empty_end_is_the_end() {
        let d = RangeDescriptor {
            start_key: b"b".to_vec(),
            end_key: b"d".to_vec(),
            ..Default::default()
        };
        assert!(covers(&d, b"b") && covers(&d, b"c") && !covers(&d, b"d") && !covers(&d, b"a"));
        let last = RangeDescriptor {
            start_key: b"d".to_vec(),
            ..Default::default()
        };
        assert!(covers(&last, b"zzz") && !covers(&last, b"c"));
    }
}
