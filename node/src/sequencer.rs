//! The per-range sequencer: stamps write batches with oracle revisions and
//! proposes them in that order.
//!
//! Why log order == revision order within a range: one sequencer task per
//! range handles one batch at a time — it asks the oracle for `n` revisions,
//! then hands the `n` proposals to the raft thread in revision order over one
//! FIFO channel, and only then gathers the next batch, whose revisions the
//! oracle makes larger. Across leader changes: a batch is stamped only while
//! this replica leads (its leadership term is read before the oracle call)
//! and proposed only in that same term (the raft thread refuses it
//! otherwise, see `store/propose.rs`). So every entry of a term was stamped
//! after that term's leader was elected, and an entry of an earlier term
//! commits only if it was in the new leader's log at its election — stamped
//! before any of the new leader's oracle calls, so its revision is smaller.
//! Without the term check, a leader that lost and regained leadership could
//! commit a batch stamped in its first term after another leader's larger
//! revisions.
//!
//! Read barriers travel through the same queue, so a barrier is handed to the
//! raft thread only after every write queued before it has been stamped and
//! proposed; the raft thread then knows every revision this leader will ever
//! apply below the barrier's read revision (see `StoreMsg::ReadBarrier`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use strata_proto::errors;
use strata_proto::oracle::Oracle;
use strata_proto::strata::{KvKind, RangeCommand};

use crate::error::{NodeError, NodeResult};
use crate::range::Ranges;
use crate::store::{Reply, StoreMsg};

const QUEUE_CAP: usize = 8192;
const BATCH_MAX: usize = 1024;

/// Every range's sequencer on this node, started on first use.
#[derive(Clone)]
pub struct Sequencers {
    pub node_id: u64,
    pub ranges: Ranges,
    pub oracle: Oracle,
    pub store: mpsc::Sender<StoreMsg>,
    pub by_range: Arc<DashMap<u64, Sequencer>>,
}

impl Sequencers {
    pub fn get(&self, range_id: u64) -> Sequencer {
        self.by_range
            .entry(range_id)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE_CAP);
                tokio::spawn(run(range_id, self.clone(), rx));
                Sequencer { tx }
            })
            .clone()
    }
}

pub enum SeqItem {
    /// A write that consumes one revision.
    Write {
        kind: KvKind,
        request: Vec<u8>,
        reply: Reply,
    },
    /// A command ordered with writes that consumes no revision (compaction).
    Unstamped {
        kind: KvKind,
        request: Vec<u8>,
        reply: Reply,
    },
    Barrier {
        read_rev: i64,
        reply: oneshot::Sender<NodeResult<()>>,
    },
}

#[derive(Clone)]
pub struct Sequencer {
    tx: mpsc::Sender<SeqItem>,
}

impl Sequencer {
    pub fn submit(&self, item: SeqItem) -> NodeResult<()> {
        self.tx
            .try_send(item)
            .map_err(|_| errors::too_many_requests().into())
    }

    /// Waits until no write with revision `<= read_rev` can still apply here.
    pub async fn barrier(&self, read_rev: i64) -> NodeResult<()> {
        let (tx, rx) = oneshot::channel();
        self.submit(SeqItem::Barrier {
            read_rev,
            reply: tx,
        })?;
        rx.await
            .map_err(|_| NodeError::from(errors::leader_changed()))?
    }
}

/// The leadership term of `range_id` here, or `NotLeader`.
fn lead_term(seqs: &Sequencers, range_id: u64) -> NodeResult<u64> {
    let r = seqs.ranges.get(&range_id).ok_or(NodeError::RangeNotFound)?;
    match r.lead_term.load(Ordering::Acquire) {
        0 => Err(NodeError::NotLeader),
        t => Ok(t),
    }
}

async fn run(range_id: u64, seqs: Sequencers, mut rx: mpsc::Receiver<SeqItem>) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while rx.recv_many(&mut batch, BATCH_MAX).await > 0 {
        let writes = batch
            .iter()
            .filter(|i| matches!(i, SeqItem::Write { .. }))
            .count() as u64;
        // Read before the oracle call: the stamp belongs to this leadership.
        let term = lead_term(&seqs, range_id);
        let mut next: NodeResult<i64> = match (&term, writes) {
            (Err(e), _) => Err(e.clone()),
            (Ok(_), 0) => Ok(0),
            (Ok(_), n) => {
                let stamped = match crate::failpoint::placement_reachable(seqs.node_id).await {
                    Ok(()) => seqs.oracle.alloc(n).await,
                    Err(e) => Err(e),
                }
                .and_then(|s| stamp_range(s, n));
                crate::failpoint::pause(seqs.node_id, "sequencer_stamped").await;
                stamped.map_err(NodeError::from)
            }
        };
        let term = term.unwrap_or(0);
        for item in batch.drain(..) {
            let msg = match item {
                SeqItem::Write {
                    kind,
                    request,
                    reply,
                } => match &mut next {
                    Ok(rev) => {
                        let cmd = RangeCommand {
                            revision: *rev,
                            kind: kind as i32,
                            request,
                        };
                        *rev += 1; // within [start, start + n]: checked by stamp_range
                        StoreMsg::Propose {
                            range_id,
                            term,
                            cmd,
                            reply,
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.clone()));
                        continue;
                    }
                },
                SeqItem::Unstamped {
                    kind,
                    request,
                    reply,
                } => StoreMsg::Propose {
                    range_id,
                    term,
                    cmd: RangeCommand {
                        revision: 0,
                        kind: kind as i32,
                        request,
                    },
                    reply,
                },
                SeqItem::Barrier { read_rev, reply } => StoreMsg::ReadBarrier {
                    range_id,
                    read_rev,
                    reply,
                },
            };
            if seqs.store.send(msg).await.is_err() {
                return; // store stopped
            }
        }
    }
}

/// Checks that the `n` revisions from `start` are revisions (at least 1, the
/// last at most `i64::MAX`), so stamping them one by one cannot wrap.
fn stamp_range(start: i64, n: u64) -> Result<i64, tonic::Status> {
    match i64::try_from(n).ok().and_then(|n| start.checked_add(n)) {
        Some(_) if start >= 1 => Ok(start),
        _ => Err(tonic::Status::internal(format!(
            "strata: oracle revisions [{start}, {start} + {n}) are not valid revisions"
        ))),
    }
}
