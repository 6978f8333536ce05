//! Range feeds (the node side of watches): catch-up from MVCC history, then
//! live events in apply order, with checkpoints (closed revisions) every
//! 200 ms. A feed ends with a reason (split, leader moved, lag); the router
//! resumes from the last revision it released.
//!
//! Nothing is lost between history and live events: the feed subscribes
//! before it reads the applied revision `head`, and apply publishes a
//! revision only after its data is written and before its event is sent
//! (`store/exec.rs`). So every event `<= head` is in history, and every event
//! `> head` reaches the subscription.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use strata_proto::oracle::Oracle;
use strata_proto::strata::{Epoch, FeedEvent, FeedMessage, FeedRequest, RouteErrorKind};
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use super::route_err;
use crate::error::NodeError;
use crate::mvcc::{KeyRange, Mvcc};
use crate::range::{desc_range, RangeShared};
use crate::sequencer::Sequencer;

/// How often a range feed sends a checkpoint (closed revision).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// Versions a feed replays from history before it gives up (bounded memory).
const HISTORY_MAX: usize = 1_000_000;

pub(super) struct Feed {
    r: Arc<RangeShared>,
    /// The keys asked for; clamped to the range once the feed subscribed.
    kr: KeyRange,
    /// The range's epoch the request was checked against.
    epoch: Epoch,
    start: i64,
    tx: mpsc::Sender<Result<FeedMessage, Status>>,
    mvcc: Mvcc,
    oracle: Oracle,
    seq: Sequencer,
    /// This node (for the `partition` failpoint).
    node_id: u64,
}

/// What to do with a message from the range's broadcast.
enum Next {
    Continue,
    Stop,
}

impl Feed {
    pub(super) fn new(
        r: Arc<RangeShared>,
        req: &FeedRequest,
        tx: mpsc::Sender<Result<FeedMessage, Status>>,
        mvcc: Mvcc,
        oracle: Oracle,
        seq: Sequencer,
    ) -> Self {
        let kr = KeyRange::from_etcd(&req.key, &req.range_end);
        let epoch = req.epoch.unwrap_or_else(|| r.epoch());
        Self {
            r,
            kr,
            epoch,
            start: req.start_revision,
            tx,
            mvcc,
            oracle,
            seq,
            node_id: 0,
        }
    }

    pub(super) fn on_node(mut self, node_id: u64) -> Self {
        self.node_id = node_id;
        self
    }

    fn filter(&self, m: &FeedMessage) -> Option<FeedMessage> {
        let events: Vec<FeedEvent> = m
            .events
            .iter()
            .filter(|e| e.kv.as_ref().is_some_and(|kv| self.kr.contains(&kv.key)))
            .cloned()
            .collect();
        (!events.is_empty()).then(|| FeedMessage {
            revision: m.revision,
            events,
            ..Default::default()
        })
    }

    async fn send(&self, m: FeedMessage) -> bool {
        // A partitioned node's feed stalls (sends nothing) until it heals.
        while crate::failpoint::partitioned(self.node_id) {
            if self.tx.is_closed() {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.tx.send(Ok(m)).await.is_ok()
    }

    async fn end(&self, kind: RouteErrorKind, msg: &str) {
        let _ = self
            .send(FeedMessage {
                error: Some(route_err(kind, self.r.leader_node(), msg)),
                ..Default::default()
            })
            .await;
    }

    /// Forwards one live message: ends the feed on an error message, skips
    /// what history already delivered.
    async fn forward(&self, m: &FeedMessage, last: &mut i64) -> Next {
        if let Some(e) = &m.error {
            let _ = self
                .send(FeedMessage {
                    error: Some(e.clone()),
                    ..Default::default()
                })
                .await;
            return Next::Stop;
        }
        if m.revision > *last {
            *last = m.revision;
            if let Some(f) = self.filter(m) {
                if !self.send(f).await {
                    return Next::Stop;
                }
            }
        }
        Next::Continue
    }

    async fn compacted(&self, compacted: i64) {
        let _ = self
            .send(FeedMessage {
                compact_revision: compacted,
                ..Default::default()
            })
            .await;
    }

    /// Replays history `[start, head]`; false when the feed ended.
    async fn replay(&self, start: i64, head: i64) -> bool {
        let (mvcc, kr) = (self.mvcc.clone(), self.kr.clone());
        let hist =
            tokio::task::spawn_blocking(move || mvcc.history(&kr, start, head, HISTORY_MAX)).await;
        let Ok(Ok(hist)) = hist else {
            self.end(RouteErrorKind::ServerBusy, "history replay failed")
                .await;
            return false;
        };
        // The floor is raised before history is removed: checked after the
        // read, it tells whether the replay may have missed versions.
        let compacted = self.r.compacted.load(Ordering::Acquire);
        if start < compacted {
            self.compacted(compacted).await;
            return false;
        }
        let mut cur: Option<FeedMessage> = None;
        for (v, prev) in hist {
            let ev = FeedEvent {
                delete: v.value.tombstone,
                kv: Some(crate::apply::feed_kv(&v)),
                prev_kv: prev.as_ref().map(crate::apply::feed_kv),
                op: v.value.op,
            };
            match &mut cur {
                Some(m) if m.revision == v.mod_revision => m.events.push(ev),
                _ => {
                    if let Some(m) = cur.take() {
                        if !self.send(m).await {
                            return false;
                        }
                    }
                    cur = Some(FeedMessage {
                        revision: v.mod_revision,
                        events: vec![ev],
                        ..Default::default()
                    });
                }
            }
        }
        match cur {
            Some(m) => self.send(m).await,
            None => true,
        }
    }

    pub(super) async fn run(mut self) {
        let _open = crate::metrics::feed();
        crate::failpoint::pause(self.node_id, "feed_before_subscribe").await;
        // Subscribe before reading the applied revision (see the module doc).
        let mut sub = self.r.feed.subscribe();
        // ... and before reading the descriptor: a split that applied since
        // the request was checked ended this range's feeds before this one
        // listened, so it must be seen here (apply changes the descriptor
        // before it ends the feeds). Else the feed would go on over keys the
        // new range now owns, its checkpoints promising events it never sees.
        if self.r.epoch() != self.epoch {
            return self.end(RouteErrorKind::EpochNotMatch, "range split").await;
        }
        let own = desc_range(&self.r.desc.read());
        self.kr = self.kr.clamp(&own.start, own.end.as_deref().unwrap_or(&[]));
        let head = self.r.applied_rev.load(Ordering::Acquire);
        let compacted = self.r.compacted.load(Ordering::Acquire);
        if self.start > 0 && self.start < compacted {
            return self.compacted(compacted).await;
        }
        let start = if self.start > 0 { self.start } else { head + 1 };
        if start <= head && !self.replay(start, head).await {
            return;
        }
        let mut last = head.max(start - 1);
        let mut ticker = tokio::time::interval(CHECKPOINT_EVERY);
        loop {
            tokio::select! {
                ev = sub.recv() => match ev {
                    Ok(m) => {
                        if let Next::Stop = self.forward(&m, &mut last).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return self.end(RouteErrorKind::ServerBusy, "feed lagged").await;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = ticker.tick() => {
                    // Closed revision: every write <= c that will ever apply here
                    // has applied (barrier), and was published before the barrier
                    // completed, so it is in `sub` now.
                    let asked = std::time::Instant::now();
                    let current = match crate::failpoint::placement_reachable(self.node_id).await {
                        Ok(()) => self.oracle.current().await,
                        Err(e) => Err(e),
                    };
                    let c = match current {
                        Ok(c) => c,
                        Err(_) => continue,
                    };
                    if let Err(e) = self.seq.barrier(c).await {
                        if matches!(e, NodeError::NotLeader) || !self.r.is_leader() {
                            return self.end(RouteErrorKind::NotLeader, "leader moved").await;
                        }
                        continue;
                    }
                    crate::metrics::CLOSED_LAG.observe(asked.elapsed().as_secs_f64());
                    loop {
                        match sub.try_recv() {
                            Ok(m) => {
                                if let Next::Stop = self.forward(&m, &mut last).await {
                                    return;
                                }
                            }
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(broadcast::error::TryRecvError::Lagged(_)) => {
                                return self.end(RouteErrorKind::ServerBusy, "feed lagged").await;
                            }
                            Err(broadcast::error::TryRecvError::Closed) => return,
                        }
                    }
                    if c >= start - 1 && !self.send(FeedMessage { checkpoint: c.max(last), ..Default::default() }).await {
                        return;
                    }
                }
                _ = self.tx.closed() => return,
            }
        }
    }
}
