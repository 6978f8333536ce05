//! The sending side: a range's MVCC versions read from an engine snapshot in
//! bounded chunks, by a producer thread a bounded channel ahead of the
//! network, and the progress watchdog that replaces a whole-transfer
//! deadline.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use parking_lot::Mutex;
use strata_proto::strata::{RaftEnvelope, SnapshotChunk};
use tokio::sync::mpsc;

use super::{
    Digest, SnapshotSource, ACK_TIMEOUT, CHUNKS_IN_FLIGHT, CHUNK_BYTES_MAX, CHUNK_TIMEOUT,
};
use crate::mvcc::{enc_key, KeyRange};
use crate::storage::{self, Cf, IterOptions};

/// Reads a range's versions from an engine snapshot, one chunk at a time.
/// Holds no iterator between chunks (each chunk seeks past the last key of
/// the one before), so it owns nothing but the view and a key.
pub struct ChunkReader {
    view: Arc<dyn storage::Snapshot>,
    lower: Vec<u8>,
    upper: Option<Vec<u8>>,
    /// The last key read; the next chunk starts after it.
    after: Option<Vec<u8>>,
    chunk_bytes_max: usize,
    digest: Digest,
    finished: bool,
}

impl ChunkReader {
    pub fn new(view: Arc<dyn storage::Snapshot>, range: &KeyRange) -> Self {
        Self {
            view,
            lower: enc_key(&range.start),
            upper: range.end.as_ref().map(|e| enc_key(e)),
            after: None,
            chunk_bytes_max: CHUNK_BYTES_MAX,
            digest: Digest::default(),
            finished: false,
        }
    }

    /// Smaller chunks (tests).
    pub fn with_chunk_bytes(mut self, n: usize) -> Self {
        self.chunk_bytes_max = n.max(1);
        self
    }

    /// The next chunk: versions in key order whose keys and values add up to
    /// at most the chunk size (or one larger version); `None` after the last.
    pub fn next_chunk(&mut self) -> anyhow::Result<Option<SnapshotChunk>> {
        if self.finished {
            return Ok(None);
        }
        let view = self.view.clone();
        let mut it = view.iter_opt(
            Cf::Data,
            IterOptions::range(Some(self.lower.clone()), self.upper.clone()),
        );
        match &self.after {
            Some(k) => {
                it.seek(k);
                if it.valid() && it.key() == k.as_slice() {
                    it.next();
                }
            }
            None => it.seek(&self.lower),
        }
        let mut chunk = SnapshotChunk::default();
        let mut bytes = 0;
        while it.valid() {
            let (k, v) = (it.key(), it.value());
            let n = k.len() + v.len();
            if !chunk.keys.is_empty() && bytes + n > self.chunk_bytes_max {
                break;
            }
            bytes += n;
            self.digest.add(k, v);
            chunk.keys.push(k.to_vec());
            chunk.values.push(v.to_vec());
            it.next();
        }
        it.status()?;
        if chunk.keys.is_empty() {
            self.finished = true;
            return Ok(None);
        }
        self.digest.add_chunk();
        self.after = chunk.keys.last().cloned();
        Ok(Some(chunk))
    }

    /// The trailer: what every chunk so far adds up to.
    pub fn done(&self) -> strata_proto::strata::SnapshotDone {
        self.digest.done()
    }
}

/// Reads every chunk and then the trailer into `tx` (blocking; run off the
/// async threads). Stops early, without a trailer, when the reader fails or
/// the other end went away: the receiver then refuses the transfer.
pub fn produce(mut reader: ChunkReader, tx: mpsc::Sender<SnapshotChunk>) {
    loop {
        match reader.next_chunk() {
            Ok(Some(chunk)) => {
                if tx.blocking_send(chunk).is_err() {
                    return;
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("cannot read snapshot data: {e:#}");
                return;
            }
        }
    }
    let _ = tx.blocking_send(SnapshotChunk {
        done: Some(reader.done()),
        ..Default::default()
    });
}

/// When a transfer last moved, and whether its last chunk went out.
pub struct Progress {
    last: Mutex<Instant>,
    sent_all: AtomicBool,
}

impl Progress {
    fn new() -> Self {
        Self {
            last: Mutex::new(Instant::now()),
            sent_all: AtomicBool::new(false),
        }
    }

    fn moved(&self) {
        *self.last.lock() = Instant::now();
    }

    /// Runs `transfer` until it completes, or fails it once nothing moved
    /// for [`CHUNK_TIMEOUT`] (or, after the last chunk, [`ACK_TIMEOUT`]).
    pub async fn watch<F: std::future::Future>(&self, transfer: F) -> Result<F::Output, String> {
        tokio::pin!(transfer);
        let check_every = Duration::from_millis(500);
        loop {
            tokio::select! {
                out = &mut transfer => return Ok(out),
                _ = tokio::time::sleep(check_every) => {
                    let idle = self.last.lock().elapsed();
                    let limit = if self.sent_all.load(Ordering::Acquire) {
                        ACK_TIMEOUT
                    } else {
                        CHUNK_TIMEOUT
                    };
                    if idle > limit {
                        return Err(format!("no progress for {idle:?}"));
                    }
                }
            }
        }
    }
}

/// The messages of one transfer as a stream: the MsgSnapshot, then chunks
/// from a producer thread, then the trailer. Every message the network
/// takes counts as progress.
pub struct Outgoing {
    head: Option<SnapshotChunk>,
    rx: mpsc::Receiver<SnapshotChunk>,
    progress: Arc<Progress>,
}

impl Outgoing {
    /// Starts the producer (on tokio's blocking pool).
    pub fn start(head: RaftEnvelope, source: SnapshotSource) -> (Self, Arc<Progress>) {
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let reader = ChunkReader::new(source.view, &source.range);
        tokio::task::spawn_blocking(move || produce(reader, tx));
        let progress = Arc::new(Progress::new());
        let head = SnapshotChunk {
            head: Some(head),
            ..Default::default()
        };
        (
            Self {
                head: Some(head),
                rx,
                progress: progress.clone(),
            },
            progress,
        )
    }
}

impl Stream for Outgoing {
    type Item = SnapshotChunk;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SnapshotChunk>> {
        if let Some(h) = self.head.take() {
            self.progress.moved();
            return Poll::Ready(Some(h));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(c)) => {
                self.progress.moved();
                crate::metrics::SNAPSHOT_SENT_BYTES
                    .inc_by(c.keys.iter().chain(&c.values).map(|b| b.len() as u64).sum());
                Poll::Ready(Some(c))
            }
            Poll::Ready(None) => {
                self.progress.moved();
                self.progress.sent_all.store(true, Ordering::Release);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
