//! An in-memory raft network for tests: nodes in one process, messages
//! delivered straight into the destination's inbox, through filters.
//!
//! A filter sees every message (sender, destination, range, raft message
//! type) and decides: deliver, drop, or delay. Rules read like the scenario
//! a test checks:
//!
//! ```text
//! let net = MemNetwork::new();
//! // isolate node 2 for range 3
//! let f = net.add(Rule::new().range(3).touching(2).drop());
//! // ... write, then heal
//! net.remove(f);
//! // delay heartbeat responses to the leader by 300 ms
//! net.add(Rule::new().to(1).msg_type(MessageType::MsgHeartbeatResponse).delay(ms(300)));
//! // reorder: every message of range 5 is delayed by a random 0–50 ms
//! net.add(Rule::new().range(5).reorder(ms(50)));
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use parking_lot::{Mutex, RwLock};
use protobuf::Message as _;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use strata_proto::strata::{RaftEnvelope, SnapshotChunk};

use super::{Deliver, OutgoingSnapshot, RaftTransport, SharedTransport};
use crate::snapshot::Outgoing;

/// A snapshot transfer as its receiver sees it (what `Node.Snapshot` hands
/// the service).
pub type SnapshotStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<SnapshotChunk, tonic::Status>> + Send>>;

/// Hands a snapshot transfer that arrived for this node to its receiver;
/// resolves once the receiver finished with it.
pub type DeliverSnapshot =
    Arc<dyn Fn(SnapshotStream) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// One message as filters see it.
pub struct Sent<'a> {
    pub from_node: u64,
    pub to_node: u64,
    pub env: &'a RaftEnvelope,
    /// The raft message (`None` for a quiesce notice or undecodable bytes).
    pub msg: Option<&'a RaftMessage>,
}

impl Sent<'_> {
    pub fn msg_type(&self) -> Option<MessageType> {
        self.msg.map(|m| m.get_msg_type())
    }
}

/// What a filter does with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Deliver,
    Drop,
    Delay(Duration),
}

/// A filter: the first one that does not answer `Deliver` decides.
pub type Filter = Arc<dyn Fn(&Sent<'_>) -> Action + Send + Sync>;

/// Names a filter, to remove it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FilterId(u64);

/// Counters of what the network did.
#[derive(Default, Debug, Clone, Copy)]
pub struct Stats {
    pub delivered: u64,
    pub dropped: u64,
    pub delayed: u64,
}

#[derive(Clone)]
pub struct MemNetwork(Arc<Inner>);

struct Inner {
    rt: tokio::runtime::Handle,
    nodes: RwLock<HashMap<u64, Deliver>>,
    snapshot_nodes: RwLock<HashMap<u64, DeliverSnapshot>>,
    filters: RwLock<Vec<(FilterId, Filter)>>,
    next_filter: AtomicU64,
    stats: Mutex<Stats>,
}

impl MemNetwork {
    /// A network whose delayed messages are delivered on the current tokio
    /// runtime.
    pub fn new() -> Self {
        Self(Arc::new(Inner {
            rt: tokio::runtime::Handle::current(),
            nodes: RwLock::new(HashMap::new()),
            snapshot_nodes: RwLock::new(HashMap::new()),
            filters: RwLock::new(Vec::new()),
            next_filter: AtomicU64::new(1),
            stats: Mutex::new(Stats::default()),
        }))
    }

    /// Connects a node: messages sent to `node_id` are handed to `deliver`.
    pub fn register(&self, node_id: u64, deliver: Deliver) {
        self.0.nodes.write().insert(node_id, deliver);
    }

    /// Connects a node's snapshot receiver: transfers to `node_id` stream
    /// into `deliver`.
    pub fn register_snapshots(&self, node_id: u64, deliver: DeliverSnapshot) {
        self.0.snapshot_nodes.write().insert(node_id, deliver);
    }

    /// Disconnects a node (as if its process died): messages to it vanish.
    pub fn unregister(&self, node_id: u64) {
        self.0.nodes.write().remove(&node_id);
        self.0.snapshot_nodes.write().remove(&node_id);
    }

    /// The transport a node sends with.
    pub fn transport(&self, from_node: u64) -> SharedTransport {
        Arc::new(MemTransport {
            from_node,
            net: self.clone(),
        })
    }

    pub fn add(&self, f: Filter) -> FilterId {
        let id = FilterId(self.0.next_filter.fetch_add(1, Ordering::Relaxed));
        self.0.filters.write().push((id, f));
        id
    }

    pub fn remove(&self, id: FilterId) {
        self.0.filters.write().retain(|(i, _)| *i != id);
    }

    pub fn clear(&self) {
        self.0.filters.write().clear();
    }

    pub fn stats(&self) -> Stats {
        *self.0.stats.lock()
    }

    fn decide(&self, sent: &Sent<'_>) -> Action {
        for (_, f) in self.0.filters.read().iter() {
            match f(sent) {
                Action::Deliver => continue,
                other => return other,
            }
        }
        Action::Deliver
    }

    fn action(&self, from_node: u64, to_node: u64, env: &RaftEnvelope) -> Action {
        if self.0.filters.read().is_empty() {
            return Action::Deliver;
        }
        let msg = (!env.message.is_empty())
            .then(|| RaftMessage::parse_from_bytes(&env.message).ok())
            .flatten();
        self.decide(&Sent {
            from_node,
            to_node,
            env,
            msg: msg.as_ref(),
        })
    }

    /// Streams a snapshot into the destination's receiver. Filters see its
    /// MsgSnapshot: dropping it fails the transfer, delaying it delays it.
    fn send_snapshot(&self, from_node: u64, snap: OutgoingSnapshot) {
        let OutgoingSnapshot {
            to_node,
            head: mut env,
            source,
            done,
        } = snap;
        env.from_node = from_node;
        let action = self.action(from_node, to_node, &env);
        let deliver = self.0.snapshot_nodes.read().get(&to_node).cloned();
        let (Some(deliver), Action::Deliver | Action::Delay(_)) = (deliver, action) else {
            self.0.stats.lock().dropped += 1;
            done(raft::SnapshotStatus::Failure);
            return;
        };
        let net = self.clone();
        self.0.rt.spawn(async move {
            if let Action::Delay(d) = action {
                net.0.stats.lock().delayed += 1;
                tokio::time::sleep(d).await;
            }
            let (stream, progress) = Outgoing::start(env, source);
            let res = progress.watch(deliver(Box::pin(stream.map(Ok)))).await;
            let finished = matches!(res, Ok(Ok(())));
            if finished {
                net.0.stats.lock().delivered += 1;
            } else {
                net.0.stats.lock().dropped += 1;
            }
            done(if finished {
                raft::SnapshotStatus::Finish
            } else {
                raft::SnapshotStatus::Failure
            });
        });
    }

    fn send(&self, from_node: u64, to_node: u64, mut env: RaftEnvelope) {
        env.from_node = from_node;
        let action = self.action(from_node, to_node, &env);
        let Some(deliver) = self.0.nodes.read().get(&to_node).cloned() else {
            self.0.stats.lock().dropped += 1;
            return;
        };
        match action {
            Action::Deliver => {
                self.0.stats.lock().delivered += 1;
                deliver(env);
            }
            Action::Drop => self.0.stats.lock().dropped += 1,
            Action::Delay(d) => {
                self.0.stats.lock().delayed += 1;
                self.0.rt.spawn(async move {
                    tokio::time::sleep(d).await;
                    deliver(env);
                });
            }
        }
    }
}

struct MemTransport {
    from_node: u64,
    net: MemNetwork,
}

impl RaftTransport for MemTransport {
    fn send(&self, to_node: u64, env: RaftEnvelope) {
        self.net.send(self.from_node, to_node, env);
    }

    fn send_snapshot(&self, snap: OutgoingSnapshot) {
        self.net.send_snapshot(self.from_node, snap);
    }
}

/// A condition on a message.
pub type Condition = Arc<dyn Fn(&Sent<'_>) -> bool + Send + Sync>;

/// Builds a filter from conditions; every condition given must hold for
/// the action to apply.
#[derive(Clone, Default)]
pub struct Rule {
    range: Option<u64>,
    from: Option<u64>,
    to: Option<u64>,
    touching: Option<u64>,
    types: Vec<MessageType>,
    when: Option<Condition>,
}

impl Rule {
    pub fn new() -> Self {
        Self::default()
    }
    /// Only messages of this range.
    pub fn range(mut self, range_id: u64) -> Self {
        self.range = Some(range_id);
        self
    }
    /// Only messages sent by this node.
    pub fn from(mut self, node_id: u64) -> Self {
        self.from = Some(node_id);
        self
    }
    /// Only messages sent to this node.
    pub fn to(mut self, node_id: u64) -> Self {
        self.to = Some(node_id);
        self
    }
    /// Messages from or to this node (isolates it).
    pub fn touching(mut self, node_id: u64) -> Self {
        self.touching = Some(node_id);
        self
    }
    /// Only these raft message types (may be called more than once).
    pub fn msg_type(mut self, t: MessageType) -> Self {
        self.types.push(t);
        self
    }
    /// Any further condition.
    pub fn when(mut self, f: impl Fn(&Sent<'_>) -> bool + Send + Sync + 'static) -> Self {
        self.when = Some(Arc::new(f));
        self
    }

    fn matches(&self, s: &Sent<'_>) -> bool {
        self.range.is_none_or(|r| s.env.range_id == r)
            && self.from.is_none_or(|n| s.from_node == n)
            && self.to.is_none_or(|n| s.to_node == n)
            && self
                .touching
                .is_none_or(|n| s.from_node == n || s.to_node == n)
            && (self.types.is_empty() || s.msg_type().is_some_and(|t| self.types.contains(&t)))
            && self.when.as_ref().is_none_or(|f| f(s))
    }

    fn then(self, action: impl Fn() -> Action + Send + Sync + 'static) -> Filter {
        Arc::new(move |s: &Sent<'_>| {
            if self.matches(s) {
                action()
            } else {
                Action::Deliver
            }
        })
    }

    pub fn drop(self) -> Filter {
        self.then(|| Action::Drop)
    }

    pub fn delay(self, d: Duration) -> Filter {
        self.then(move || Action::Delay(d))
    }

    /// Delays each matching message by a pseudo-random time below `max`,
    /// so they arrive out of order.
    pub fn reorder(self, max: Duration) -> Filter {
        let seed = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
        let max_us = max.as_micros().max(1) as u64;
        self.then(move || {
            // xorshift64: deterministic, no shared RNG needed.
            let mut x = seed.load(Ordering::Relaxed);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            seed.store(x, Ordering::Relaxed);
            Action::Delay(Duration::from_micros(x % max_us))
        })
    }
}

/// Drops every message between the two groups of nodes, both ways.
pub fn partition(a: &[u64], b: &[u64]) -> Filter {
    let (a, b) = (a.to_vec(), b.to_vec());
    Arc::new(move |s: &Sent<'_>| {
        let across = (a.contains(&s.from_node) && b.contains(&s.to_node))
            || (b.contains(&s.from_node) && a.contains(&s.to_node));
        if across {
            Action::Drop
        } else {
            Action::Deliver
        }
    })
}

impl Default for MemNetwork {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(range_id: u64, t: MessageType) -> RaftEnvelope {
        let mut m = RaftMessage::default();
        m.set_msg_type(t);
        RaftEnvelope {
            range_id,
            message: m.write_to_bytes().unwrap(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn snapshots_stream_through_and_filters_fail_them() {
        use crate::snapshot::SnapshotSource;
        use crate::storage::{Cf, Engine, MemoryEngine, WriteBatch};

        let net = MemNetwork::new();
        let chunks: Arc<Mutex<Vec<usize>>> = Arc::default();
        let seen = chunks.clone();
        net.register_snapshots(
            2,
            Arc::new(move |mut stream: SnapshotStream| {
                let seen = seen.clone();
                Box::pin(async move {
                    while let Some(c) = stream.next().await {
                        let c = c.map_err(|s| s.message().to_string())?;
                        seen.lock().push(c.keys.len());
                        if c.done.is_some() {
                            return Ok(());
                        }
                    }
                    Err("ended early".to_string())
                })
            }),
        );
        let db = MemoryEngine::new();
        let mut wb = WriteBatch::new();
        for i in 0..5u8 {
            // Five versions of 700 KiB: one chunk each.
            wb.put(
                Cf::Data,
                crate::mvcc::version_key(&[b'k', i], 1),
                vec![i; 700 << 10],
            );
        }
        db.write(&wb, false).unwrap();
        let source = || SnapshotSource {
            view: db.snapshot(),
            range: crate::mvcc::KeyRange {
                start: b"k".to_vec(),
                end: Some(b"l".to_vec()),
            },
        };
        let send = |source: SnapshotSource| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            net.transport(1).send_snapshot(OutgoingSnapshot {
                to_node: 2,
                head: env(3, MessageType::MsgSnapshot),
                source,
                done: Box::new(move |st| {
                    let _ = tx.send(st);
                }),
            });
            rx
        };
        assert_eq!(send(source()).await.unwrap(), raft::SnapshotStatus::Finish);
        // head, five chunks of one version, the trailer
        assert_eq!(*chunks.lock(), vec![0, 1, 1, 1, 1, 1, 0]);
        let f = net.add(Rule::new().msg_type(MessageType::MsgSnapshot).drop());
        assert_eq!(send(source()).await.unwrap(), raft::SnapshotStatus::Failure);
        net.remove(f);
        net.unregister(2);
        assert_eq!(send(source()).await.unwrap(), raft::SnapshotStatus::Failure);
        assert_eq!(chunks.lock().len(), 7, "nothing more arrived");
    }

    #[tokio::test]
    async fn filters_drop_delay_and_partition() {
        let net = MemNetwork::new();
        let got: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        for n in 1..=3 {
            let got = got.clone();
            net.register(n, Arc::new(move |e| got.lock().push((n, e.range_id))));
        }
        let t1 = net.transport(1);
        let f = net.add(
            Rule::new()
                .range(3)
                .to(2)
                .msg_type(MessageType::MsgAppend)
                .drop(),
        );
        t1.send(2, env(3, MessageType::MsgAppend)); // dropped
        t1.send(2, env(3, MessageType::MsgHeartbeat)); // other type
        t1.send(2, env(4, MessageType::MsgAppend)); // other range
        t1.send(3, env(3, MessageType::MsgAppend)); // other node
        assert_eq!(*got.lock(), vec![(2, 3), (2, 4), (3, 3)]);
        net.remove(f);
        t1.send(2, env(3, MessageType::MsgAppend));
        assert_eq!(got.lock().len(), 4);
        let p = net.add(partition(&[1], &[2, 3]));
        t1.send(3, env(9, MessageType::MsgAppend));
        net.transport(2).send(3, env(9, MessageType::MsgAppend));
        assert_eq!(got.lock().last(), Some(&(3, 9)));
        assert_eq!(got.lock().len(), 5);
        net.remove(p);
        net.add(Rule::new().from(1).delay(Duration::from_millis(50)));
        t1.send(2, env(7, MessageType::MsgAppend));
        assert_eq!(got.lock().len(), 5, "delayed, not yet delivered");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(got.lock().last(), Some(&(2, 7)));
        let s = net.stats();
        assert_eq!((s.dropped, s.delayed), (2, 1));
        net.unregister(2);
        net.clear();
        t1.send(2, env(8, MessageType::MsgAppend));
        assert_eq!(got.lock().len(), 6, "an unregistered node receives nothing");
    }
}
