//! A range replica's published state: what async code (service, feeds, the
//! split checker, heartbeats, metrics) may read without asking the raft
//! thread. Only the raft thread writes it, and only once what it says is
//! written to the engine (see `store/exec.rs`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use strata_proto::strata::{Epoch, FeedMessage, RangeDescriptor, TxnIntent};
use tokio::sync::broadcast;

use crate::mvcc::KeyRange;

/// What async code may look at without asking the raft thread.
pub struct RangeShared {
    pub desc: parking_lot::RwLock<RangeDescriptor>,
    pub peer_id: u64,
    pub leader_peer: AtomicU64,
    pub term: AtomicU64,
    /// The term in which this replica leads, 0 while it does not. A write
    /// batch is stamped only under a leadership and proposed only in the
    /// same one (see `sequencer.rs`).
    pub lead_term: AtomicU64,
    pub applied_index: AtomicU64,
    /// Highest revision applied here (the replica's "current revision").
    pub applied_rev: AtomicI64,
    pub compacted: AtomicI64,
    pub feed: Feed,
    /// Writes applied (for the write rate) and splits applied.
    pub writes: AtomicU64,
    /// What the writes applied here added to the range's data (an upper
    /// bound on live keys created, bytes of versions written): split checks
    /// measure a range again only once it may have crossed a threshold.
    pub added_keys: AtomicU64,
    pub added_bytes: AtomicU64,
    pub splits: AtomicU64,
    /// Approximate size, from the last split check.
    pub approx_keys: AtomicU64,
    pub approx_bytes: AtomicU64,
    /// Odd while a received snapshot replaces this replica's data: a read
    /// of its data is valid only if it saw the same even value before and
    /// after ([`RangeShared::data_stable`]).
    pub data_gen: AtomicU64,
    /// The cross-range txn prepared here and not yet decided (`txn/`): while
    /// it is, no other write applies in the range, it does not split, and no
    /// read barrier passes its applied revision.
    pub intent: parking_lot::RwLock<Option<Arc<TxnIntent>>>,
    /// The txn whose coordinator last said it is alive here (`KV_TXN_TOUCH`)
    /// and when: the resolver leaves that txn alone for a while after.
    pub touched: parking_lot::Mutex<Option<(u64, std::time::Instant)>>,
}

impl RangeShared {
    /// The id of the txn holding the range, if any.
    pub fn intent_id(&self) -> Option<u64> {
        self.intent.read().as_ref().map(|i| i.txn_id)
    }
    pub fn is_leader(&self) -> bool {
        let l = self.leader_peer.load(Ordering::Acquire);
        l != 0 && l == self.peer_id
    }
    pub fn leader_node(&self) -> u64 {
        let l = self.leader_peer.load(Ordering::Acquire);
        self.desc
            .read()
            .peers
            .iter()
            .find(|p| p.id == l)
            .map_or(0, |p| p.node_id)
    }
    /// The data generation to check a local read against, or `None` while
    /// the data is being replaced.
    pub fn data_stable(&self) -> Option<u64> {
        let g = self.data_gen.load(Ordering::Acquire);
        g.is_multiple_of(2).then_some(g)
    }
    /// Counts what an applied write added (see [`crate::apply::Growth`]).
    pub fn grew(&self, g: crate::apply::Growth) {
        self.added_keys.fetch_add(g.keys, Ordering::Relaxed);
        self.added_bytes.fetch_add(g.bytes, Ordering::Relaxed);
    }
    pub fn epoch(&self) -> Epoch {
        self.desc.read().epoch.unwrap_or_default()
    }
}

pub type Ranges = Arc<dashmap::DashMap<u64, Arc<RangeShared>>>;

pub fn desc_range(desc: &RangeDescriptor) -> KeyRange {
    KeyRange {
        start: desc.start_key.clone(),
        end: (!desc.end_key.is_empty()).then(|| desc.end_key.clone()),
    }
}

#[cfg(test)]
impl RangeShared {
    /// A replica's published state with nothing applied (tests).
    pub(crate) fn for_tests(desc: RangeDescriptor, peer_id: u64) -> Arc<Self> {
        Arc::new(Self {
            desc: parking_lot::RwLock::new(desc),
            peer_id,
            leader_peer: AtomicU64::new(0),
            term: AtomicU64::new(0),
            lead_term: AtomicU64::new(0),
            applied_index: AtomicU64::new(0),
            applied_rev: AtomicI64::new(0),
            compacted: AtomicI64::new(0),
            feed: Feed::default(),
            writes: AtomicU64::new(0),
            splits: AtomicU64::new(0),
            approx_keys: AtomicU64::new(0),
            approx_bytes: AtomicU64::new(0),
            added_keys: AtomicU64::new(0),
            added_bytes: AtomicU64::new(0),
            data_gen: AtomicU64::new(0),
            intent: parking_lot::RwLock::new(None),
            touched: parking_lot::Mutex::new(None),
        })
    }
}

/// Feed messages a subscriber may fall behind by before its feed ends
/// (lagged; the router resumes it from the last revision it released).
pub const FEED_CAP: usize = 4096;

/// A replica's range feed (`service/feed.rs` subscribes, apply sends): a
/// broadcast channel made on the first subscription and dropped once no
/// receiver is left. A broadcast channel allocates all its slots up front
/// (4096 of them, about 190 KiB), and most replicas have no watcher: made
/// for every replica, they were most of a node's memory with thousands of
/// ranges.
#[derive(Default)]
pub struct Feed(parking_lot::Mutex<Option<broadcast::Sender<Arc<FeedMessage>>>>);

impl Feed {
    /// A receiver of every message sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedMessage>> {
        let mut tx = self.0.lock();
        tx.get_or_insert_with(|| broadcast::channel(FEED_CAP).0)
            .subscribe()
    }

    /// Sends `m` to the current receivers, if there are any.
    pub fn send(&self, m: Arc<FeedMessage>) {
        let mut tx = self.0.lock();
        match tx.as_ref() {
            Some(t) if t.receiver_count() > 0 => {
                let _ = t.send(m);
            }
            Some(_) => *tx = None,
            None => {}
        }
    }
}
