//! The receiving side: a transfer's chunks are checked and staged one at a
//! time; once all arrived and match the trailer, the MsgSnapshot goes to
//! the raft thread with its staged data. Whatever transport carried it.

use std::collections::HashSet;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{Message as RaftMessage, MessageType};
use strata_proto::strata::{MvccValue, RangeSnapshotHeader, SnapshotChunk, SnapshotDone};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::{decode_header, header_range, stage, Digest, ACK_TIMEOUT, CHUNK_TIMEOUT, RECEIVES_MAX};
use crate::mvcc::{dec_key, KeyRange};
use crate::range::Ranges;
use crate::storage::Engine;
use crate::store::StoreMsg;

/// The ranges whose staging area is in use (receiving, or handed to raft
/// and installing); at most [`RECEIVES_MAX`].
#[derive(Clone, Default)]
pub struct Slots(Arc<Mutex<HashSet<u64>>>);

/// The right to use one range's staging area; given up on drop.
pub struct Slot {
    range_id: u64,
    slots: Slots,
}

impl Slots {
    pub fn acquire(&self, range_id: u64) -> Option<Slot> {
        let mut s = self.0.lock();
        if s.len() >= RECEIVES_MAX || !s.insert(range_id) {
            return None;
        }
        Some(Slot {
            range_id,
            slots: self.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.0.lock().remove(&self.range_id);
    }
}

/// A snapshot whose data is all staged, handed to the raft thread with its
/// MsgSnapshot. Holds the staging area until the install completes.
pub struct StagedSnapshot {
    pub slot: Slot,
    pub index: u64,
    pub term: u64,
    pub chunks: u64,
    pub header: RangeSnapshotHeader,
}

/// What the raft thread answers: whether raft took the snapshot (false: it
/// did not need it), or why it was refused.
pub type StepReply = oneshot::Sender<Result<bool, String>>;

/// Receives snapshot transfers for this node's replicas.
pub struct SnapshotReceiver {
    pub db: Arc<dyn Engine>,
    pub ranges: Ranges,
    pub store: mpsc::Sender<StoreMsg>,
    pub slots: Slots,
}

fn refused(msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("strata: snapshot refused: {msg}"))
}

/// Checks one chunk of versions: keys inside the range and strictly after
/// `last` (the previous key), values decodable. Returns its last key.
fn check_chunk(kr: &KeyRange, last: Option<&[u8]>, c: &SnapshotChunk) -> Result<Vec<u8>, String> {
    if c.head.is_some() || c.keys.len() != c.values.len() || c.keys.is_empty() {
        return Err("malformed chunk".into());
    }
    let mut prev = last;
    for (k, v) in c.keys.iter().zip(&c.values) {
        if prev.is_some_and(|p| k.as_slice() <= p) {
            return Err("versions out of order".into());
        }
        let (user, _) = dec_key(k).ok_or("a malformed MVCC key")?;
        if !kr.contains(&user) {
            return Err("a key outside the range".into());
        }
        MvccValue::decode(&v[..]).map_err(|e| format!("an undecodable value: {e}"))?;
        prev = Some(k);
    }
    Ok(c.keys.last().expect("not empty").clone())
}

impl SnapshotReceiver {
    /// Receives one transfer; `Ok` once raft has the snapshot (or did not
    /// need it). Any error leaves the replica as it was.
    pub async fn receive<S>(&self, mut stream: S) -> Result<(), Status>
    where
        S: Stream<Item = Result<SnapshotChunk, Status>> + Unpin + Send,
    {
        let res = self.receive_inner(&mut stream).await;
        if let Err(e) = &res {
            tracing::info!("snapshot transfer refused: {}", e.message());
            crate::metrics::SNAPSHOT_RECEIVE_FAILURES.inc();
        }
        res
    }

    async fn receive_inner<S>(&self, stream: &mut S) -> Result<(), Status>
    where
        S: Stream<Item = Result<SnapshotChunk, Status>> + Unpin + Send,
    {
        let env = next_chunk(stream)
            .await?
            .head
            .ok_or_else(|| refused("no raft message first"))?;
        let msg = RaftMessage::parse_from_bytes(&env.message).map_err(refused)?;
        if msg.get_msg_type() != MessageType::MsgSnapshot {
            return Err(refused("not a MsgSnapshot"));
        }
        let range_id = env.range_id;
        let header = decode_header(range_id, &msg.get_snapshot().data).map_err(refused)?;
        if !crate::lease::valid_list(&header.revoked_leases, header.revoked_next_seq) {
            return Err(refused("a corrupt revoked-lease list"));
        }
        // Whether a replica takes it is the raft thread's call, once the data
        // is here: a new learner's or a catching-up node's replica is not
        // published in `ranges` until its snapshot is installed (see
        // `store/catchup.rs`); the store refuses one for no replica.
        let slot = self.slots.acquire(range_id).ok_or_else(|| {
            Status::resource_exhausted("strata: a snapshot is already being received")
        })?;
        let md = msg.get_snapshot().get_metadata();
        let (index, term) = (md.index, md.term);
        let kr = header_range(&header);
        let chunks = match self.stage_all(stream, range_id, kr).await {
            Ok(n) => n,
            Err(e) => {
                // Still ours (the slot is held): leave nothing behind.
                let db = self.db.clone();
                let _ =
                    blocking(move || stage::clear_staging(&*db, range_id).map_err(internal)).await;
                return Err(e);
            }
        };
        let (tx, rx) = oneshot::channel();
        let staged = StagedSnapshot {
            slot,
            index,
            term,
            chunks,
            header,
        };
        let msg = StoreMsg::Snapshot {
            env,
            staged: Box::new(staged),
            reply: tx,
        };
        match tokio::time::timeout(ACK_TIMEOUT / 2, self.store.send(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Status::unavailable("strata: store stopped")),
            Err(_) => return Err(Status::unavailable("strata: store busy")),
        }
        match rx.await {
            Ok(Ok(taken)) => {
                tracing::info!(range = range_id, index, taken, "snapshot received");
                Ok(())
            }
            Ok(Err(e)) => Err(Status::failed_precondition(format!("strata: {e}"))),
            Err(_) => Err(Status::unavailable("strata: store stopped")),
        }
    }

    /// Stages every chunk of the transfer; returns how many, once the
    /// trailer matched what arrived.
    async fn stage_all<S>(&self, stream: &mut S, range_id: u64, kr: KeyRange) -> Result<u64, Status>
    where
        S: Stream<Item = Result<SnapshotChunk, Status>> + Unpin + Send,
    {
        let db = self.db.clone();
        blocking(move || stage::clear_staging(&*db, range_id).map_err(internal)).await?;
        let mut digest = Digest::default();
        let mut last: Option<Vec<u8>> = None;
        let done: SnapshotDone = loop {
            let chunk = next_chunk(stream).await?;
            if let Some(done) = chunk.done {
                break done;
            }
            for (k, v) in chunk.keys.iter().zip(&chunk.values) {
                digest.add(k, v);
            }
            let seq = digest.chunks();
            digest.add_chunk();
            let (db, kr) = (self.db.clone(), kr.clone());
            let bytes: u64 = chunk.values.iter().map(|v| v.len() as u64).sum();
            last = Some(
                blocking(move || {
                    let last = check_chunk(&kr, last.as_deref(), &chunk).map_err(refused)?;
                    stage::stage_chunk(&*db, range_id, seq, &chunk).map_err(internal)?;
                    Ok(last)
                })
                .await?,
            );
            crate::metrics::SNAPSHOT_RECEIVED_BYTES.inc_by(bytes);
        };
        if done != digest.done() {
            return Err(refused(format!(
                "received {:?}, the sender sent {done:?}",
                digest.done()
            )));
        }
        Ok(digest.chunks())
    }
}

/// The next message of a transfer, within [`CHUNK_TIMEOUT`].
async fn next_chunk<S>(stream: &mut S) -> Result<SnapshotChunk, Status>
where
    S: Stream<Item = Result<SnapshotChunk, Status>> + Unpin + Send,
{
    match tokio::time::timeout(CHUNK_TIMEOUT, stream.next()).await {
        Err(_) => Err(Status::deadline_exceeded("strata: snapshot stalled")),
        Ok(None) => Err(refused("the transfer ended early")),
        Ok(Some(r)) => r,
    }
}

/// Runs blocking engine work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("strata: snapshot task failed: {e}")))?
}

fn internal(e: anyhow::Error) -> Status {
    Status::internal(format!("strata: snapshot staging: {e:#}"))
}
