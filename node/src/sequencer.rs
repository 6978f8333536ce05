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

//!
//! Cross-range txns (`crate::txn`): a `Prepare` is proposed in order with
//! the writes; from then until the range's intent is gone, writes wait here
//! (up to [`QUEUE_CAP`] of them), and so does a prepare of another txn that
//! may wait (until its `wait_until`; one that may not is refused busy at
//! once); when the range frees up it goes to the oldest waiting txn
//! ([`oldest_first`]), so none starves or is overtaken at every range it
//! queues for. Decisions (commit, abort) come on their
//! own channel and are proposed at once. Barriers pass: the raft thread
//! holds them while the range is frozen (`store/read.rs`), and a waiting
//! write will be stamped with a revision above every one handed out before
//! it.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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
const DECISIONS_CAP: usize = 1024;
/// How often a held sequencer looks whether its range's intent is gone
/// (besides being told when a decision it proposed applied).
const HOLD_RECHECK: Duration = Duration::from_millis(20);

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
                let (ctl, ctl_rx) = mpsc::channel(DECISIONS_CAP);
                tokio::spawn(run(range_id, self.clone(), rx, ctl_rx));
                Sequencer { tx, ctl }
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
    /// Phase one of cross-range txn `txn_id` (a `TxnPrepare`), which may
    /// wait until `wait_until` for a range another txn holds; waiting ones
    /// get the range oldest (lowest `priority`) first.
    Prepare {
        txn_id: u64,
        priority: u64,
        wait_until: tokio::time::Instant,
        request: Vec<u8>,
        reply: Reply,
    },
}

/// A cross-range txn's commit (stamped with its decided revision) or abort.
pub struct Decision {
    pub kind: KvKind,
    pub revision: i64,
    pub request: Vec<u8>,
    pub reply: Reply,
}

#[derive(Clone)]
pub struct Sequencer {
    tx: mpsc::Sender<SeqItem>,
    ctl: mpsc::Sender<Decision>,
}

impl Sequencer {
    pub fn submit(&self, item: SeqItem) -> NodeResult<()> {
        self.tx
            .try_send(item)
            .map_err(|_| errors::too_many_requests().into())
    }

    pub fn decide(&self, d: Decision) -> NodeResult<()> {
        self.ctl
            .try_send(d)
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

/// One range's sequencer loop.
struct Seq {
    range_id: u64,
    seqs: Sequencers,
    /// Writes, and prepares that may wait, held while the range is frozen,
    /// in arrival order.
    waiting: VecDeque<SeqItem>,
    /// A prepare proposed here and not answered yet.
    preparing: Option<u64>,
    /// Told the txn id when a prepare or decision proposed here is answered.
    done_tx: mpsc::UnboundedSender<u64>,
}

impl Seq {
    fn intent(&self) -> Option<u64> {
        self.seqs
            .ranges
            .get(&self.range_id)
            .and_then(|r| r.intent_id())
    }

    fn held(&self) -> bool {
        self.preparing.is_some() || self.intent().is_some()
    }

    /// The store answers `reply` through this, and the loop learns of it.
    fn tell_done(&self, txn_id: u64, reply: Reply) -> Reply {
        let (tx, rx) = oneshot::channel();
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let res = rx.await;
            let _ = done.send(txn_id);
            if let Ok(res) = res {
                let _ = reply.send(res);
            }
        });
        tx
    }

    async fn send(&self, msg: StoreMsg) -> bool {
        self.seqs.store.send(msg).await.is_ok()
    }

    async fn propose_decision(&self, d: Decision) -> bool {
        let term = match lead_term(&self.seqs, self.range_id) {
            Ok(t) => t,
            Err(e) => {
                let _ = d.reply.send(Err(e));
                return true;
            }
        };
        let reply = self.tell_done(0, d.reply);
        self.send(StoreMsg::Propose {
            range_id: self.range_id,
            term,
            cmd: RangeCommand {
                revision: d.revision,
                kind: d.kind as i32,
                request: d.request,
            },
            reply,
        })
        .await
    }

    /// While frozen: barriers go on, a re-sent prepare of the holding txn
    /// goes on (it answers the same), another txn's prepare waits if it may
    /// (else it is busy), and so do writes.
    async fn hold(&mut self, items: impl Iterator<Item = SeqItem>) -> bool {
        let holder = self.preparing.or(self.intent());
        for item in items {
            match item {
                SeqItem::Barrier { .. } => {
                    if !self.forward(item, 0, &mut Ok(0)).await {
                        return false;
                    }
                }
                SeqItem::Prepare {
                    txn_id,
                    wait_until,
                    reply,
                    ..
                } if Some(txn_id) != holder && !may_wait(wait_until, &reply) => {
                    let _ = reply.send(Err(NodeError::held()));
                }
                SeqItem::Prepare { txn_id, .. } if Some(txn_id) == holder => {
                    let term = lead_term(&self.seqs, self.range_id).unwrap_or(0);
                    if !self.forward(item, term, &mut Ok(0)).await {
                        return false;
                    }
                }
                other => self.waiting.push_back(other),
            }
        }
        true
    }

    /// Stamps and proposes `items` in order; from a prepare on, the range
    /// is held and the rest is handled by [`Seq::hold`]. A prepare whose
    /// asker gave up while it waited is dropped unproposed.
    async fn flush(&mut self, items: Vec<SeqItem>) -> bool {
        let mut items = items.into_iter().peekable();
        loop {
            let mut segment = Vec::new();
            while let Some(item) = items.next_if(|i| !matches!(i, SeqItem::Prepare { .. })) {
                segment.push(item);
            }
            if !self.stamp_and_propose(segment).await {
                return false;
            }
            let Some(SeqItem::Prepare {
                txn_id,
                priority,
                wait_until,
                request,
                reply,
            }) = items.next()
            else {
                return true;
            };
            if reply.is_closed() {
                continue;
            }
            let term = lead_term(&self.seqs, self.range_id);
            let reply = self.tell_done(txn_id, reply);
            match term {
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
                Ok(term) => {
                    self.preparing = Some(txn_id);
                    let item = SeqItem::Prepare {
                        txn_id,
                        priority,
                        wait_until,
                        request,
                        reply,
                    };
                    if !self.forward(item, term, &mut Ok(0)).await {
                        return false;
                    }
                }
            }
            return self.hold(items).await;
        }
    }

    /// Answers busy the waiting prepares whose time is up, and forgets
    /// those whose asker is gone.
    fn expire_waiting(&mut self) {
        let now = tokio::time::Instant::now();
        let waiting = std::mem::take(&mut self.waiting);
        for item in waiting {
            match item {
                SeqItem::Prepare {
                    wait_until, reply, ..
                } if wait_until <= now || reply.is_closed() => {
                    let _ = reply.send(Err(NodeError::held()));
                }
                other => self.waiting.push_back(other),
            }
        }
    }

    async fn stamp_and_propose(&self, batch: Vec<SeqItem>) -> bool {
        let writes = batch
            .iter()
            .filter(|i| matches!(i, SeqItem::Write { .. }))
            .count() as u64;
        // Read before the oracle call: the stamp belongs to this leadership.
        let term = lead_term(&self.seqs, self.range_id);
        let mut next: NodeResult<i64> = match (&term, writes) {
            (Err(e), _) => Err(e.clone()),
            (Ok(_), 0) => Ok(0),
            (Ok(_), n) => {
                let node_id = self.seqs.node_id;
                let stamped = match crate::failpoint::placement_reachable(node_id).await {
                    Ok(()) => self.seqs.oracle.alloc(n).await,
                    Err(e) => Err(e),
                }
                .and_then(|s| stamp_range(s, n));
                crate::failpoint::pause(node_id, "sequencer_stamped").await;
                stamped.map_err(NodeError::from)
            }
        };
        let term = term.unwrap_or(0);
        for item in batch {
            if !self.forward(item, term, &mut next).await {
                return false;
            }
        }
        true
    }

    /// Hands one item to the raft thread; a write takes the next revision
    /// of `next`. False once the store stopped.
    async fn forward(&self, item: SeqItem, term: u64, next: &mut NodeResult<i64>) -> bool {
        let range_id = self.range_id;
        let unstamped = |kind: KvKind, request, reply| StoreMsg::Propose {
            range_id,
            term,
            cmd: RangeCommand {
                revision: 0,
                kind: kind as i32,
                request,
            },
            reply,
        };
        let msg = match item {
            SeqItem::Write {
                kind,
                request,
                reply,
            } => match next {
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
                    return true;
                }
            },
            SeqItem::Unstamped {
                kind,
                request,
                reply,
            } => unstamped(kind, request, reply),
            SeqItem::Prepare { request, reply, .. } => {
                unstamped(KvKind::KvTxnPrepare, request, reply)
            }
            SeqItem::Barrier { read_rev, reply } => StoreMsg::ReadBarrier {
                range_id,
                read_rev,
                reply,
            },
        };
        self.send(msg).await
    }
}

async fn run(
    range_id: u64,
    seqs: Sequencers,
    mut rx: mpsc::Receiver<SeqItem>,
    mut ctl: mpsc::Receiver<Decision>,
) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut s = Seq {
        range_id,
        seqs,
        waiting: VecDeque::new(),
        preparing: None,
        done_tx,
    };
    let mut batch = Vec::with_capacity(BATCH_MAX);
    loop {
        let held = s.held();
        let room = s.waiting.len() < QUEUE_CAP;
        tokio::select! {
            biased;
            d = ctl.recv() => match d {
                Some(d) => {
                    if !s.propose_decision(d).await {
                        return;
                    }
                }
                None => return,
            },
            Some(id) = done_rx.recv() => {
                if s.preparing == Some(id) {
                    s.preparing = None;
                }
            }
            n = rx.recv_many(&mut batch, BATCH_MAX), if room || !held => {
                if n == 0 {
                    return;
                }
            }
            _ = tokio::time::sleep(HOLD_RECHECK), if held => {
                if s.waiting.iter().any(|i| matches!(i, SeqItem::Prepare { .. })) {
                    s.expire_waiting();
                }
            }
        }
        let ok = if s.held() {
            let items = std::mem::take(&mut batch);
            s.hold(items.into_iter()).await
        } else {
            let mut items: Vec<SeqItem> = s.waiting.drain(..).collect();
            items.append(&mut batch);
            oldest_first(&mut items);
            s.flush(items).await
        };
        if !ok {
            return; // store stopped
        }
    }
}

/// Puts the prepares among `items` in age order (lowest priority first; 0,
/// no age, last), in the places prepares hold: writes keep their order, and
/// the range goes to the oldest waiting txn, so a txn queueing range after
/// range is not overtaken at each by younger ones.
fn oldest_first(items: &mut [SeqItem]) {
    let age = |i: &SeqItem| match i {
        SeqItem::Prepare { priority: 0, .. } => Some(u64::MAX),
        SeqItem::Prepare { priority, .. } => Some(*priority),
        _ => None,
    };
    let slots: Vec<usize> = (0..items.len())
        .filter(|&i| age(&items[i]).is_some())
        .collect();
    if slots.len() < 2 {
        return;
    }
    // A selection sort over the prepare slots (stable for equal ages).
    for (n, &slot) in slots.iter().enumerate() {
        let oldest = slots[n..]
            .iter()
            .copied()
            .min_by_key(|&i| age(&items[i]))
            .expect("a slot");
        if oldest != slot {
            // Keep the others' order: rotate the oldest into this slot.
            let rest: Vec<usize> = slots[n..]
                .iter()
                .copied()
                .take_while(|&i| i != oldest)
                .collect();
            let mut prev = oldest;
            for &i in rest.iter().rev() {
                items.swap(prev, i);
                prev = i;
            }
        }
    }
}

/// May a prepare still wait for the range (its time not up, its asker there)?
fn may_wait(wait_until: tokio::time::Instant, reply: &Reply) -> bool {
    wait_until > tokio::time::Instant::now() && !reply.is_closed()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn prepare(txn_id: u64, priority: u64) -> SeqItem {
        SeqItem::Prepare {
            txn_id,
            priority,
            wait_until: tokio::time::Instant::now(),
            request: Vec::new(),
            reply: oneshot::channel().0,
        }
    }

    fn write(n: u8) -> SeqItem {
        SeqItem::Write {
            kind: KvKind::KvPut,
            request: vec![n],
            reply: oneshot::channel().0,
        }
    }

    fn order(items: &[SeqItem]) -> Vec<String> {
        items
            .iter()
            .map(|i| match i {
                SeqItem::Prepare { txn_id, .. } => format!("p{txn_id}"),
                SeqItem::Write { request, .. } => format!("w{}", request[0]),
                _ => "other".into(),
            })
            .collect()
    }

    #[tokio::test]
    async fn waiting_prepares_go_oldest_first_and_writes_keep_their_places() {
        // Arrival order: a young txn, a write, an old one, another write, a
        // middle-aged one, one without an age, and the oldest.
        let mut items = vec![
            prepare(1, 50),
            write(1),
            prepare(2, 10),
            write(2),
            prepare(3, 30),
            prepare(4, 0),
            prepare(5, 5),
        ];
        oldest_first(&mut items);
        assert_eq!(order(&items), ["p5", "w1", "p2", "w2", "p3", "p1", "p4"]);
        // Equal ages keep their arrival order.
        let mut items = vec![prepare(7, 9), prepare(8, 9), write(3), prepare(9, 1)];
        oldest_first(&mut items);
        assert_eq!(order(&items), ["p9", "p7", "w3", "p8"]);
    }
}
