//! The per-range sequencer: stamps write batches with oracle revisions and
//! proposes them in that order.
//!
//! Why log order == revision order within a range: one sequencer task per
//! range handles one batch at a time — it asks the oracle for `n` revisions,
//! then hands the `n` proposals to the raft thread in revision order over one
//! FIFO channel, and only then gathers the next batch, whose revisions the
//! oracle makes larger. Across leader changes: an entry of a deposed leader
//! commits only if it reached the new leader before that leader's election,
//! i.e. before any of the new leader's oracle calls, so its revision is smaller.
//!
//! Read barriers travel through the same queue, so a barrier is handed to the
//! raft thread only after every write queued before it has been stamped and
//! proposed; the raft thread then knows every revision this leader will ever
//! apply below the barrier's read revision (see `StoreMsg::ReadBarrier`).

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use strata_proto::errors;
use strata_proto::oracle::Oracle;
use strata_proto::strata::{KvKind, RangeCommand};

use crate::store::{Reply, StoreMsg};

const QUEUE_CAP: usize = 8192;
const BATCH_MAX: usize = 1024;

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
        reply: oneshot::Sender<Result<(), Status>>,
    },
}

#[derive(Clone)]
pub struct Sequencer {
    tx: mpsc::Sender<SeqItem>,
}

impl Sequencer {
    pub fn start(range_id: u64, oracle: Oracle, store: mpsc::Sender<StoreMsg>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAP);
        tokio::spawn(run(range_id, oracle, store, rx));
        Self { tx }
    }

    pub fn submit(&self, item: SeqItem) -> Result<(), Status> {
        self.tx
            .try_send(item)
            .map_err(|_| errors::too_many_requests())
    }

    /// Waits until no write with revision `<= read_rev` can still apply here.
    pub async fn barrier(&self, read_rev: i64) -> Result<(), Status> {
        let (tx, rx) = oneshot::channel();
        self.submit(SeqItem::Barrier {
            read_rev,
            reply: tx,
        })?;
        rx.await.map_err(|_| errors::leader_changed())?
    }
}

async fn run(
    range_id: u64,
    oracle: Oracle,
    store: mpsc::Sender<StoreMsg>,
    mut rx: mpsc::Receiver<SeqItem>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(i) => batch.push(i),
                Err(_) => break,
            }
        }
        let writes = batch
            .iter()
            .filter(|i| matches!(i, SeqItem::Write { .. }))
            .count() as u64;
        let mut next = match writes {
            0 => Ok(0),
            n => oracle.alloc(n).await.and_then(|s| stamp_range(s, n)),
        };
        for item in batch {
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
            if store.send(msg).await.is_err() {
                return; // store stopped
            }
        }
    }
}

/// Checks that the `n` revisions from `start` are revisions (at least 1, the
/// last at most `i64::MAX`), so stamping them one by one cannot wrap.
fn stamp_range(start: i64, n: u64) -> Result<i64, Status> {
    match i64::try_from(n).ok().and_then(|n| start.checked_add(n)) {
        Some(_) if start >= 1 => Ok(start),
        _ => Err(Status::internal(format!(
            "strata: oracle revisions [{start}, {start} + {n}) are not valid revisions"
        ))),
    }
}
