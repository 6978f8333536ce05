//! Decision records of cross-range transactions (the protocol is in
//! docs/cross-range-txns.md).
//!
//! A coordinator (a router) that prepared every participant range records
//! its commit decision here before telling any range; a participant that
//! finds a txn prepared for too long (its coordinator died) asks here with
//! an abort decision. The first decision recorded for a txn id wins and
//! every later ask gets it, so every participant resolves the txn the same
//! way. A record lives until every participant reported it resolved.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use strata_proto::strata::{TxnDecideRequest, TxnDecideResponse, TxnDecision, TxnForgetRequest};
use tonic::Status;

use crate::service::PlacementService;
use crate::state::{Command, Outcome};

/// Records kept at most; past it new commit decisions are refused (the
/// coordinator aborts), abort decisions are still recorded.
pub const MAX_TXN_RECORDS: usize = 100_000;
/// The most participants a txn names (a txn has at most 128 ops; a delete
/// over the whole keyspace may touch every range).
const MAX_PARTICIPANTS: usize = 1 << 16;
/// The longest path a decision carries (one entry per txn of the tree).
const MAX_PATH: usize = 1024;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TxnRecord {
    pub txn_id: u64,
    pub commit: bool,
    pub revision: i64,
    pub path: Vec<bool>,
    /// Participant ranges that have not reported the txn resolved.
    pub pending: BTreeSet<u64>,
}

impl TxnRecord {
    fn decision(&self) -> TxnDecision {
        TxnDecision {
            txn_id: self.txn_id,
            commit: self.commit,
            revision: self.revision,
            path: self.path.clone(),
        }
    }
}

/// Applies a decision: the first one for a txn id wins.
pub fn decide(txns: &mut BTreeMap<u64, TxnRecord>, record: &TxnRecord) -> Outcome {
    if let Some(r) = txns.get(&record.txn_id) {
        return Outcome::Txn(r.clone());
    }
    if record.commit && txns.len() >= MAX_TXN_RECORDS {
        return Outcome::Stale;
    }
    txns.insert(record.txn_id, record.clone());
    Outcome::Txn(record.clone())
}

pub fn forget(txns: &mut BTreeMap<u64, TxnRecord>, txn_id: u64, range_ids: &[u64]) -> Outcome {
    if let Some(r) = txns.get_mut(&txn_id) {
        for id in range_ids {
            r.pending.remove(id);
        }
        if r.pending.is_empty() {
            txns.remove(&txn_id);
        }
    }
    Outcome::Ok
}

impl PlacementService {
    pub async fn txn_decide(&self, req: TxnDecideRequest) -> Result<TxnDecideResponse, Status> {
        self.serving()?;
        let d = req.decision.unwrap_or_default();
        if d.txn_id == 0 || (d.commit && d.revision <= 0) {
            return Err(Status::invalid_argument(
                "strata: a txn decision needs a txn id (and a commit revision)",
            ));
        }
        if req.participants.is_empty()
            || req.participants.len() > MAX_PARTICIPANTS
            || d.path.len() > MAX_PATH
        {
            return Err(Status::invalid_argument(
                "strata: a txn decision names 1 to 65536 participants and a path of at most 1024",
            ));
        }
        let record = TxnRecord {
            txn_id: d.txn_id,
            commit: d.commit,
            revision: if d.commit { d.revision } else { 0 },
            path: if d.commit { d.path } else { Vec::new() },
            pending: req.participants.into_iter().collect(),
        };
        match self.rep.propose(Command::TxnDecide { record }).await? {
            Outcome::Txn(r) => Ok(TxnDecideResponse {
                decision: Some(r.decision()),
            }),
            Outcome::Stale => Err(strata_proto::errors::too_many_requests()),
            other => Err(Status::internal(format!(
                "strata: unexpected txn outcome {other:?}"
            ))),
        }
    }

    pub async fn txn_forget(&self, req: TxnForgetRequest) -> Result<(), Status> {
        self.serving()?;
        if req.range_ids.len() > MAX_PARTICIPANTS {
            return Err(Status::invalid_argument("strata: too many participants"));
        }
        // Nothing to forget: no raft entry.
        if !self.rep.state().txns.contains_key(&req.txn_id) {
            return Ok(());
        }
        self.rep
            .propose(Command::TxnForget {
                txn_id: req.txn_id,
                range_ids: req.range_ids,
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, commit: bool, pending: &[u64]) -> TxnRecord {
        TxnRecord {
            txn_id: id,
            commit,
            revision: if commit { 100 } else { 0 },
            path: vec![true],
            pending: pending.iter().copied().collect(),
        }
    }

    #[test]
    fn first_decision_wins_and_lives_until_every_participant_forgot() {
        let mut txns = BTreeMap::new();
        assert_eq!(
            decide(&mut txns, &rec(7, false, &[1, 2])),
            Outcome::Txn(rec(7, false, &[1, 2]))
        );
        // A late commit gets the abort recorded first.
        assert_eq!(
            decide(&mut txns, &rec(7, true, &[1, 2])),
            Outcome::Txn(rec(7, false, &[1, 2]))
        );
        forget(&mut txns, 7, &[1]);
        assert!(txns.contains_key(&7));
        forget(&mut txns, 7, &[2, 9]);
        assert!(txns.is_empty());
        // Forgetting an unknown txn changes nothing.
        assert_eq!(forget(&mut txns, 8, &[1]), Outcome::Ok);
    }

    #[test]
    fn commits_are_refused_when_full_aborts_are_not() {
        let mut txns: BTreeMap<u64, TxnRecord> = (0..MAX_TXN_RECORDS as u64)
            .map(|i| (i + 1, rec(i + 1, true, &[1])))
            .collect();
        let id = MAX_TXN_RECORDS as u64 + 1;
        assert_eq!(decide(&mut txns, &rec(id, true, &[1])), Outcome::Stale);
        assert!(matches!(
            decide(&mut txns, &rec(id, false, &[1])),
            Outcome::Txn(r) if !r.commit
        ));
    }
}
