//! Raft snapshots of a range in transit: streamed in bounded chunks, staged
//! by the receiver, installed crash-safely. Nothing here holds a whole
//! range in memory.
//!
//! The life of a snapshot, leader to follower:
//! 1. **Generate** (`engine/snapgen.rs`): raft asks for a snapshot; a
//!    background thread reads the header (descriptor, revisions, revoked
//!    leases) and the raft position from one consistent engine snapshot.
//!    The raft snapshot's `data` is that header alone.
//! 2. **Send** (`chunks.rs`, `transport`): the MsgSnapshot never travels in
//!    the batched `Node.Raft` RPC. `RaftTransport::send_snapshot` streams it
//!    (`Node.Snapshot`, or the in-memory network): the message first, then
//!    the range's MVCC versions read from the engine snapshot in chunks of at
//!    most [`CHUNK_BYTES_MAX`], then a [`SnapshotDone`] trailer (counts and a
//!    CRC). A producer thread reads ahead at most [`CHUNKS_IN_FLIGHT`]
//!    chunks; a transfer that makes no progress for [`CHUNK_TIMEOUT`] fails
//!    (no deadline for the whole transfer). When it finished or failed, the
//!    store is told and calls `report_snapshot` on the raft thread, outside
//!    any `ready()`/`advance()` window (`store/snapshot.rs`).
//! 3. **Receive** (`recv.rs`): each chunk is checked (keys inside the
//!    header's range, in order, values decodable) and staged in the engine
//!    (`stage.rs`), one chunk in memory at a time; once the trailer matches
//!    what arrived, the MsgSnapshot goes to the raft thread with its staged
//!    data. Only then does raft see it.
//! 4. **Install** (`stage.rs`, `store/snapshot.rs`): raft accepts it; the
//!    Ready round persists the raft position with an "installing" record;
//!    a background thread copies the staged chunks into the range's data in
//!    bounded batches while the replica is paused; the last batch writes the
//!    descriptor and revisions and removes the record; only then is the new
//!    state published. The crash-safety argument is in `stage.rs`.

pub mod chunks;
pub mod recv;
pub mod stage;

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use strata_proto::strata::{RangeSnapshotHeader, SnapshotDone};

use crate::mvcc::KeyRange;
use crate::range::desc_range;
use crate::storage;

pub use chunks::{ChunkReader, Outgoing, Progress};
pub use recv::{Slots, SnapshotReceiver, StagedSnapshot};

/// Key and value bytes per chunk (a single larger version travels alone).
pub const CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// Chunks read ahead of the network per transfer.
pub const CHUNKS_IN_FLIGHT: usize = 2;
/// A transfer fails when no chunk moves for this long (either side).
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// After the last chunk, how long the sender waits for the receiver to hand
/// the snapshot to raft.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Snapshot transfers a node sends at once; more fail at once (raft retries).
pub const SENDS_MAX: usize = 4;
/// Snapshot transfers a node receives (or installs) at once.
pub const RECEIVES_MAX: usize = 4;

/// What a snapshot's data streams from: a consistent engine view and the
/// range's keys in it.
pub struct SnapshotSource {
    pub view: Arc<dyn storage::Snapshot>,
    pub range: KeyRange,
}

/// Called once when a transfer finished (the receiver holds all of it and
/// handed it to raft) or failed.
pub type SnapshotDoneFn = Box<dyn FnOnce(raft::SnapshotStatus) + Send>;

/// Counts and a CRC over the versions of a transfer, computed by the sender
/// and again by the receiver.
#[derive(Default, Clone)]
pub struct Digest {
    chunks: u64,
    versions: u64,
    bytes: u64,
    crc: crc32fast::Hasher,
}

impl Digest {
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        self.crc.update(&(key.len() as u64).to_be_bytes());
        self.crc.update(key);
        self.crc.update(&(value.len() as u64).to_be_bytes());
        self.crc.update(value);
        self.versions += 1;
        self.bytes += (key.len() + value.len()) as u64;
    }

    pub fn add_chunk(&mut self) {
        self.chunks += 1;
    }

    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    pub fn done(&self) -> SnapshotDone {
        SnapshotDone {
            chunks: self.chunks,
            versions: self.versions,
            bytes: self.bytes,
            crc32: self.crc.clone().finalize(),
        }
    }
}

/// Decodes and checks a snapshot header received from the network: one
/// that does not decode or belongs to another range is refused.
pub fn decode_header(range_id: u64, data: &[u8]) -> Result<RangeSnapshotHeader, String> {
    let h = RangeSnapshotHeader::decode(data).map_err(|e| format!("undecodable header: {e}"))?;
    let desc = h.desc.as_ref().ok_or("snapshot without descriptor")?;
    if desc.id != range_id {
        return Err(format!(
            "snapshot of range {} sent for range {range_id}",
            desc.id
        ));
    }
    if h.compacted < 0 || h.applied_revision < 0 {
        return Err("snapshot with a negative revision".into());
    }
    Ok(h)
}

/// The data keys a snapshot with this header covers.
pub fn header_range(h: &RangeSnapshotHeader) -> KeyRange {
    desc_range(h.desc.as_ref().expect("checked by decode_header"))
}

#[cfg(test)]
mod tests;
