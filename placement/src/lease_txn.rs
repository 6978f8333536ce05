//! A lease's revocation (or expiry) as a cross-range txn over the whole
//! keyspace, with placement as its coordinator: every key attached to the
//! lease is deleted at one revision in every range, and every range records
//! the lease revoked in the same apply (so a Put racing the revoke never
//! leaves a key on a dead lease). The protocol is the routers' (see
//! docs/cross-range-txns.md): prepare every range — the
//! ranges placement knows, which must cover the keyspace exactly at their
//! epochs, else a prepare answers EpochNotMatch and the attempt is retried —
//! then take the commit revision, record the decision, commit everywhere.

use std::time::{Duration, Instant};

use futures::future::join_all;
use prost::Message as _;
use strata_proto::errors;
use strata_proto::strata::{KvKind, RangeDescriptor, TxnDecision, TxnPrepare};
use tonic::Status;

use crate::service::PlacementService;
use crate::span_walk::RangeAnswer;
use crate::state::{Command, Outcome};
use crate::txn::TxnRecord;

/// How long a revocation may try before it gives up (the caller retries).
const REVOKE_LIMIT: Duration = Duration::from_secs(10);

/// The ranges in key order if they cover the keyspace with no gap or overlap.
fn keyspace(mut descs: Vec<RangeDescriptor>) -> Option<Vec<RangeDescriptor>> {
    descs.sort_by(|a, b| a.start_key.cmp(&b.start_key));
    let mut at: Vec<u8> = Vec::new();
    for (i, d) in descs.iter().enumerate() {
        if d.start_key != at || (d.end_key.is_empty() && i + 1 != descs.len()) {
            return None;
        }
        at = d.end_key.clone();
    }
    (at.is_empty() && !descs.is_empty()).then_some(descs)
}

impl PlacementService {
    /// Deletes lease `lease`'s keys in every range at one revision.
    pub(crate) async fn revoke_everywhere(&self, lease: i64) -> Result<(), Status> {
        let deadline = Instant::now() + REVOKE_LIMIT;
        for attempt in 0u32.. {
            if Instant::now() > deadline {
                break;
            }
            let all: Vec<RangeDescriptor> = self
                .rep
                .state()
                .ranges
                .values()
                .map(|r| r.descriptor())
                .collect();
            if all.is_empty() {
                return Ok(()); // not bootstrapped: no range holds any key yet
            }
            if let Some(descs) = keyspace(all) {
                if self.revoke_attempt(lease, &descs).await? {
                    return Ok(());
                }
            }
            // A range held by another txn, a split placement has not heard
            // of yet, an unreachable leader: again, after a random pause.
            let cap = 20u64 << attempt.min(4);
            tokio::time::sleep(Duration::from_millis(10 + rand::random::<u64>() % cap)).await;
        }
        Err(errors::no_leader())
    }

    /// One attempt: true once the decision to delete is recorded and sent.
    async fn revoke_attempt(&self, lease: i64, descs: &[RangeDescriptor]) -> Result<bool, Status> {
        let txn_id = self.alloc(1).await? as u64;
        let ids: Vec<u64> = descs.iter().map(|d| d.id).collect();
        let prepares = descs.iter().map(|d| {
            let body = TxnPrepare {
                txn_id,
                participants: ids.clone(),
                txn: Vec::new(),
                version: d.epoch.unwrap_or_default().version,
                lease_revoke: lease,
                // Never waits (a busy range makes the attempt start over).
                wait_ms: 0,
                priority: 0,
            }
            .encode_to_vec();
            async move { self.call_range(d, KvKind::KvTxnPrepare, &body).await }
        });
        let prepared = join_all(prepares).await;
        if prepared.iter().any(|a| !matches!(a, RangeAnswer::Ok(_))) {
            self.abort_all(descs, txn_id).await;
            return Ok(false);
        }
        let revision = self.alloc(1).await?;
        let record = TxnRecord {
            txn_id,
            commit: true,
            revision,
            path: Vec::new(),
            pending: ids.iter().copied().collect(),
        };
        let decision = TxnDecision {
            txn_id,
            commit: true,
            revision,
            path: Vec::new(),
        };
        match self.rep.propose(Command::TxnDecide { record }).await? {
            Outcome::Txn(r) if r.commit => {}
            _ => {
                // Aborted first by a range that found it abandoned.
                self.abort_all(descs, txn_id).await;
                return Ok(false);
            }
        }
        // Recorded: a range not reached now resolves it itself (commit).
        if self.decide_all(descs, KvKind::KvTxnCommit, &decision).await {
            self.rep
                .propose(Command::TxnForget {
                    txn_id,
                    range_ids: ids,
                })
                .await?;
        }
        Ok(true)
    }

    async fn abort_all(&self, descs: &[RangeDescriptor], txn_id: u64) {
        let abort = TxnDecision {
            txn_id,
            ..Default::default()
        };
        self.decide_all(descs, KvKind::KvTxnAbort, &abort).await;
    }

    /// Sends a decision to every range; true if every one applied it.
    async fn decide_all(&self, descs: &[RangeDescriptor], kind: KvKind, d: &TxnDecision) -> bool {
        let body = d.encode_to_vec();
        let sends = descs.iter().map(|desc| {
            let body = &body;
            async move {
                for _ in 0..3 {
                    if let RangeAnswer::Ok(_) = self.call_range(desc, kind, body).await {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                false
            }
        });
        join_all(sends).await.into_iter().all(|ok| ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(start: &str, end: &str) -> RangeDescriptor {
        RangeDescriptor {
            start_key: start.into(),
            end_key: end.into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_an_exact_cover_of_the_keyspace_is_revoked_over() {
        assert!(keyspace(vec![d("m", ""), d("", "m")]).is_some());
        assert!(keyspace(vec![d("", "")]).is_some());
        // A gap (a split placement heard of in part), an overlap, no end.
        assert!(keyspace(vec![d("", "f"), d("m", "")]).is_none());
        assert!(keyspace(vec![d("", "q"), d("m", "")]).is_none());
        assert!(keyspace(vec![d("", "m")]).is_none());
        assert!(keyspace(vec![]).is_none());
    }
}
