//! Raft transport: how a replica's messages reach the other nodes.
//!
//! The raft thread hands every outgoing message to a [`RaftTransport`]; it
//! must never block (it queues, and drops when full: raft retransmits).
//! Messages arrive at a node through its inbox (`StoreMsg::Raft`), whichever
//! transport carried them.
//! - [`grpc::GrpcTransport`]: production; one sender task per destination node
//!   batches messages into `Node.Raft` RPCs; snapshots stream in their own
//!   `Node.Snapshot` RPC.
//! - [`memory::MemNetwork`]: tests; delivers straight into the destination's
//!   inbox, through filters that drop, delay, reorder or partition messages
//!   by range, message type and direction; snapshots stream through a
//!   bounded channel into the destination's receiver.
//!
//! A MsgSnapshot never goes through `send`: `send_snapshot` streams it with
//! the range's data in bounded chunks (`crate::snapshot`) and says, once,
//! whether the transfer finished or failed.
//!
//! This module knows nothing of the store: a node registers a delivery
//! function, not its inbox type.

pub mod grpc;
pub mod memory;

use std::sync::Arc;

use strata_proto::strata::RaftEnvelope;

use crate::snapshot::{SnapshotDoneFn, SnapshotSource};

/// Sends raft messages to other nodes. Called from the raft thread: never
/// blocks.
pub trait RaftTransport: Send + Sync + 'static {
    /// Queues a message (not a MsgSnapshot); drops it when a queue is full.
    fn send(&self, to_node: u64, env: RaftEnvelope);
    /// Starts streaming a MsgSnapshot (`head`) and the range's data from
    /// `source`; calls `done` once with `Finish` (the receiver handed it to
    /// raft) or `Failure`, possibly before returning.
    fn send_snapshot(&self, snap: OutgoingSnapshot);
}

pub type SharedTransport = Arc<dyn RaftTransport>;

/// A MsgSnapshot to stream (`head`), the range's data it was generated with,
/// and who to tell, once, how the transfer ended.
pub struct OutgoingSnapshot {
    pub to_node: u64,
    pub head: RaftEnvelope,
    pub source: SnapshotSource,
    pub done: SnapshotDoneFn,
}

/// Hands a message that arrived for this node to its raft thread.
pub type Deliver = Arc<dyn Fn(RaftEnvelope) + Send + Sync>;
