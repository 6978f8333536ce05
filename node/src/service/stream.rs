//! `KvStream`: a router's Kv calls to this node multiplexed over one stream.
//!
//! A unary `Kv` costs an HTTP/2 stream, its headers and a task hop through
//! tonic's connection buffer per request; under load that was a fifth of a
//! put's CPU. On a stream, every call the router has for this node at that
//! moment arrives in one `KvCalls` message and every reply ready at that
//! moment leaves in one `KvReplies`. Each call runs exactly as a unary `Kv`
//! would ([`NodeService::kv_unary`]), on its own task, and is answered by its
//! id as soon as it finishes.
//!
//! Bounded: at most [`IN_FLIGHT_MAX`] calls of one stream run at once; past
//! that the stream is not read, and HTTP/2 flow control holds the router
//! back. A reply waits in a channel of the same size, so a router that stops
//! reading stops the node from reading its calls, not the node's memory.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message as _;
use strata_proto::errors;
use strata_proto::strata::{KvCall, KvCalls, KvReplies, KvReply};
use tokio::sync::{mpsc, Semaphore};
use tonic::{Status, Streaming};

use super::NodeService;

/// Calls of one stream running at once.
pub const IN_FLIGHT_MAX: usize = 4096;
/// A call that names no timeout gets this one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// A `KvReplies` message holds replies up to about this many bytes (one
/// larger reply travels alone), well under the router's decode limit.
const REPLIES_BYTES_MAX: usize = 8 * 1024 * 1024;

pub type KvReplyStream = Pin<Box<dyn Stream<Item = Result<KvReplies, Status>> + Send>>;

impl NodeService {
    pub(super) fn serve_kv_stream(&self, calls: Streaming<KvCalls>) -> KvReplyStream {
        let (tx, rx) = mpsc::channel::<KvReply>(IN_FLIGHT_MAX);
        tokio::spawn(self.clone().read_calls(calls, tx));
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            let first = rx.recv().await?;
            let mut bytes = first.encoded_len();
            let mut replies = vec![first];
            while bytes < REPLIES_BYTES_MAX {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.encoded_len();
                        replies.push(r);
                    }
                    Err(_) => break,
                }
            }
            Some((Ok(KvReplies { replies }), rx))
        }))
    }

    /// Reads calls until the router closes the stream, running each on its
    /// own task; calls already running finish (their replies are dropped
    /// if the stream is gone).
    async fn read_calls(self, mut calls: Streaming<KvCalls>, tx: mpsc::Sender<KvReply>) {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
        while let Ok(Some(batch)) = calls.message().await {
            for call in batch.calls {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let (svc, tx) = (self.clone(), tx.clone());
                tokio::spawn(async move {
                    let reply = svc.kv_call(call).await;
                    let _ = tx.send(reply).await;
                    drop(slot);
                });
            }
        }
    }

    async fn kv_call(&self, call: KvCall) -> KvReply {
        let timeout = match call.timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(ms.into()),
        };
        let request = call.request.unwrap_or_default();
        let res = tokio::time::timeout(timeout, self.kv_unary(request))
            .await
            .unwrap_or_else(|_| Err(errors::timeout()));
        strata_proto::answers::kv_reply(call.id, res)
    }
}
