//! Resolving txns whose coordinator went away: the leader of a range frozen
//! by the same txn for [`RESOLVE_AFTER`] (since it first saw it, or since the
//! coordinator last touched it: one waiting for other ranges says so every
//! half second, `router/src/txn`) asks placement for the decision —
//! recording an abort if none was made, so a coordinator that comes back
//! late can no longer commit — applies it here, and tells placement this
//! participant is done. Every participant does the same, so each ends the
//! way the first recorded decision says.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use prost::Message as _;
use strata_proto::oracle::PlacementConn;
use strata_proto::strata::{KvKind, TxnDecideRequest, TxnDecision, TxnForgetRequest, TxnIntent};
use tokio::sync::oneshot;

use super::RESOLVE_AFTER;
use crate::error::NodeError;
use crate::range::Ranges;
use crate::sequencer::{Decision, Sequencers};

const SCAN_EVERY: Duration = Duration::from_millis(250);

pub async fn run(ranges: Ranges, seqs: Sequencers, placement: PlacementConn) {
    // Range → (txn, when this node first saw it hold the range as leader).
    let mut seen: HashMap<u64, (u64, Instant)> = HashMap::new();
    let busy = std::sync::Arc::new(parking_lot::Mutex::new(HashSet::<u64>::new()));
    let mut tick = tokio::time::interval(SCAN_EVERY);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let mut live = HashSet::new();
        // With when its coordinator last said it is alive, if it did.
        type Held = (u64, std::sync::Arc<TxnIntent>, Option<Instant>);
        let held: Vec<Held> = ranges
            .iter()
            .filter(|r| r.is_leader())
            .filter_map(|r| {
                let i = r.intent.read().clone()?;
                let touched = match *r.touched.lock() {
                    Some((txn, at)) if txn == i.txn_id => Some(at),
                    _ => None,
                };
                Some((r.desc.read().id, i, touched))
            })
            .collect();
        for (range_id, intent, touched) in held {
            live.insert(range_id);
            let e = seen.entry(range_id).or_insert((intent.txn_id, now));
            if e.0 != intent.txn_id {
                *e = (intent.txn_id, now);
            }
            let since = touched.map_or(e.1, |t| t.max(e.1));
            if now.duration_since(since) < RESOLVE_AFTER || !busy.lock().insert(range_id) {
                continue;
            }
            let (seqs, mut placement, busy) = (seqs.clone(), placement.clone(), busy.clone());
            tokio::spawn(async move {
                match resolve(range_id, &intent, &seqs, &mut placement).await {
                    Ok(commit) => {
                        crate::metrics::txn_resolved(commit);
                        tracing::info!(
                            range = range_id,
                            txn = intent.txn_id,
                            commit,
                            "resolved an abandoned txn"
                        );
                    }
                    Err(e) => tracing::warn!(
                        range = range_id,
                        txn = intent.txn_id,
                        "txn resolution failed: {e}"
                    ),
                }
                busy.lock().remove(&range_id);
            });
        }
        seen.retain(|k, _| live.contains(k));
    }
}

/// Applies placement's decision for `intent` in `range_id`; answers whether
/// it committed.
async fn resolve(
    range_id: u64,
    intent: &TxnIntent,
    seqs: &Sequencers,
    placement: &mut PlacementConn,
) -> anyhow::Result<bool> {
    let asked = TxnDecision {
        txn_id: intent.txn_id,
        ..Default::default()
    };
    let d = placement
        .txn_decide(TxnDecideRequest {
            decision: Some(asked),
            participants: intent.participants.clone(),
        })
        .await?
        .into_inner()
        .decision
        .unwrap_or_default();
    let (kind, revision) = match d.commit {
        true => (KvKind::KvTxnCommit, d.revision),
        false => (KvKind::KvTxnAbort, 0),
    };
    let (tx, rx) = oneshot::channel();
    seqs.get(range_id).decide(Decision {
        kind,
        revision,
        request: d.encode_to_vec(),
        reply: tx,
    })?;
    match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(Ok(_))) => {}
        // Already resolved here (by the coordinator, meanwhile).
        Ok(Ok(Err(NodeError::Etcd(s)))) if s.code() == tonic::Code::FailedPrecondition => {}
        Ok(Ok(Err(e))) => anyhow::bail!("{e}"),
        _ => anyhow::bail!("no answer from the range"),
    }
    placement
        .txn_forget(TxnForgetRequest {
            txn_id: intent.txn_id,
            range_ids: vec![range_id],
        })
        .await?;
    Ok(d.commit)
}
