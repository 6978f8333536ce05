//! One `Node.KvStream` per node: every Kv call this router has for a node at
//! that moment travels in one `KvCalls` message on a long-lived stream, and
//! replies come back by call id (see `node/src/service/stream.rs`).
//!
//! What a caller is told when things break keeps the unary call's meaning,
//! which the retry rules in `routing/` rely on:
//! - a call that never left (no stream could be opened) fails with the
//!   connection error, so even a write may be sent elsewhere;
//! - a call sent on a stream that then broke fails with Unavailable and a
//!   message naming no connection: its outcome is unknown, so only a read
//!   is retried;
//! - a call unanswered at its deadline fails with etcd's "request timed
//!   out", and its entry is dropped with it.
//!
//! Bounded: the queue to the stream's writer holds [`QUEUE_CAP`] calls
//! (callers wait, within their deadline, past it); a `KvCalls` message holds
//! at most [`BATCH_MAX`] calls and about [`BATCH_BYTES_MAX`] bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use prost::Message as _;
use strata_proto::errors;
use strata_proto::strata::node_client::NodeClient;
use strata_proto::strata::{KvCall, KvCalls, KvRequest, KvResponse};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Status;

const QUEUE_CAP: usize = 8192;
const BATCH_MAX: usize = 512;
const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Messages the stream's body may hold before the writer waits.
const STREAM_CAP: usize = 16;

type Answer = Result<KvResponse, Status>;

struct Waiter {
    reply: oneshot::Sender<Answer>,
    /// The stream generation the call was sent on; 0 while queued.
    gen: u64,
}

#[derive(Default)]
struct Pending {
    calls: HashMap<u64, Waiter>,
    /// The generation whose stream is open, 0 when none is.
    live: u64,
}

struct Inner {
    node: u64,
    next_id: AtomicU64,
    pending: Mutex<Pending>,
}

/// The multiplexed Kv connection to one node. Cheap to clone.
#[derive(Clone)]
pub struct NodeMux {
    inner: Arc<Inner>,
    queue: mpsc::Sender<KvCall>,
}

/// Removes a call's entry when its caller stops waiting, however it stops.
struct Entry<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        self.inner.pending.lock().calls.remove(&self.id);
    }
}

impl NodeMux {
    /// Starts the writer for node `node` over `client` (a lazily connecting
    /// channel: a stream is opened when there is a call to send).
    pub fn start(node: u64, client: NodeClient<Channel>) -> Self {
        let inner = Arc::new(Inner {
            node,
            next_id: AtomicU64::new(1),
            pending: Mutex::new(Pending::default()),
        });
        let (queue, rx) = mpsc::channel(QUEUE_CAP);
        tokio::spawn(writer(inner.clone(), client, rx));
        Self { inner, queue }
    }

    /// Sends `request` and waits for its answer until `deadline`.
    pub async fn call(&self, request: KvRequest, deadline: Instant) -> Answer {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner
            .pending
            .lock()
            .calls
            .insert(id, Waiter { reply: tx, gen: 0 });
        let _entry = Entry {
            inner: &self.inner,
            id,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let call = KvCall {
            id,
            request: Some(request),
            timeout_ms: u32::try_from(left.as_millis()).unwrap_or(u32::MAX).max(1),
        };
        let answer = async {
            self.queue
                .send(call)
                .await
                .map_err(|_| Status::unavailable("strata: router shutting down"))?;
            rx.await.unwrap_or_else(|_| Err(lost(self.inner.node)))
        };
        tokio::time::timeout_at(deadline, answer)
            .await
            .unwrap_or_else(|_| Err(errors::timeout()))
    }
}

/// The answer to a call sent on a stream that broke: its outcome is unknown.
/// (Naming no connection, so `routing::connect_failure` does not take it for
/// a call that never left.)
fn lost(node: u64) -> Status {
    Status::unavailable(format!(
        "strata: the stream to node {node} broke with the call in flight"
    ))
}

/// Takes queued calls, opens a stream when none is open, and sends them.
async fn writer(inner: Arc<Inner>, client: NodeClient<Channel>, mut rx: mpsc::Receiver<KvCall>) {
    let mut gen = 0u64;
    let mut body: Option<mpsc::Sender<KvCalls>> = None;
    let mut calls = Vec::with_capacity(BATCH_MAX);
    while rx.recv_many(&mut calls, BATCH_MAX).await > 0 {
        // Two tries: a stream that breaks between its opening and our
        // marking the calls gets one successor, not a loop.
        for _ in 0..2 {
            if body.is_none() || inner.pending.lock().live != gen {
                gen += 1;
                match open(&inner, &client, gen).await {
                    Ok(tx) => body = Some(tx),
                    Err(s) => {
                        body = None;
                        fail_unsent(&inner, &mut calls, &s);
                        break;
                    }
                }
            }
            let Some(batches) = mark_sent(&inner, &mut calls, gen) else {
                body = None;
                continue; // broke meanwhile: these never left
            };
            let tx = body.as_ref().expect("opened");
            for b in batches {
                if tx.send(b).await.is_err() {
                    break; // the reader fails what was marked with this generation
                }
            }
            break;
        }
        let s = Status::unavailable("strata: node stream not connected; call not sent");
        fail_unsent(&inner, &mut calls, &s);
    }
}

/// Marks `calls` as sent on generation `gen` and packs them into messages,
/// or `None` when that generation's stream already broke.
fn mark_sent(inner: &Inner, calls: &mut Vec<KvCall>, gen: u64) -> Option<Vec<KvCalls>> {
    let mut p = inner.pending.lock();
    if p.live != gen {
        return None;
    }
    let mut batches = Vec::new();
    let mut batch = KvCalls::default();
    let mut bytes = 0;
    for c in calls.drain(..) {
        let Some(w) = p.calls.get_mut(&c.id) else {
            continue; // its caller gave up
        };
        w.gen = gen;
        bytes += c.encoded_len();
        batch.calls.push(c);
        if bytes >= BATCH_BYTES_MAX {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
    }
    if !batch.calls.is_empty() {
        batches.push(batch);
    }
    Some(batches)
}

/// Fails calls that never left with `s` (a connection error: `routing`
/// may send even a write elsewhere).
fn fail_unsent(inner: &Inner, calls: &mut Vec<KvCall>, s: &Status) {
    let mut p = inner.pending.lock();
    for c in calls.drain(..) {
        if let Some(w) = p.calls.remove(&c.id) {
            let _ = w.reply.send(Err(s.clone()));
        }
    }
}

/// Opens generation `gen`'s stream and starts its reader.
async fn open(
    inner: &Arc<Inner>,
    client: &NodeClient<Channel>,
    gen: u64,
) -> Result<mpsc::Sender<KvCalls>, Status> {
    let (tx, rx) = mpsc::channel(STREAM_CAP);
    let replies = client
        .clone()
        .kv_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    inner.pending.lock().live = gen;
    tokio::spawn(reader(inner.clone(), replies, gen));
    Ok(tx)
}

/// Hands each reply to its caller; when the stream ends, fails every call
/// sent on it that is still unanswered.
async fn reader(
    inner: Arc<Inner>,
    mut replies: tonic::Streaming<strata_proto::strata::KvReplies>,
    gen: u64,
) {
    while let Ok(Some(batch)) = replies.message().await {
        let mut p = inner.pending.lock();
        for r in batch.replies {
            if let Some(w) = p.calls.remove(&r.id) {
                let _ = w.reply.send(strata_proto::answers::kv_result(r));
            }
        }
    }
    let mut p = inner.pending.lock();
    if p.live == gen {
        p.live = 0;
    }
    let lost_ids: Vec<u64> = p
        .calls
        .iter()
        .filter(|(_, w)| w.gen == gen)
        .map(|(id, _)| *id)
        .collect();
    for id in lost_ids {
        if let Some(w) = p.calls.remove(&id) {
            let _ = w.reply.send(Err(lost(inner.node)));
        }
    }
}

#[cfg(test)]
mod tests;
