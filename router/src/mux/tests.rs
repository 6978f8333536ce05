//! The mux against a stub node whose `KvStream` answers, holds or breaks.

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use strata_proto::strata::node_client::NodeClient;
use strata_proto::strata::node_server::{Node, NodeServer};
use strata_proto::strata::*;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status, Streaming};

use super::NodeMux;

/// How the stub's stream treats calls.
#[derive(Clone, Copy)]
enum Mode {
    /// Answers each call with its request's bytes reversed, in reverse
    /// order of arrival within a message.
    Echo,
    /// Reads calls and never answers; ends the stream after 300 ms.
    HoldThenBreak,
    /// Reads calls and never answers.
    Hold,
}

struct Stub(Mode);

type Replies = Pin<Box<dyn Stream<Item = Result<KvReplies, Status>> + Send>>;

fn echo(batch: KvCalls) -> KvReplies {
    let replies = batch
        .calls
        .into_iter()
        .rev()
        .map(|c| {
            let mut body = c.request.unwrap_or_default().request;
            body.reverse();
            KvReply {
                id: c.id,
                response: Some(KvResponse {
                    response: body,
                    error: None,
                }),
                code: 0,
                message: String::new(),
            }
        })
        .collect();
    KvReplies { replies }
}

#[tonic::async_trait]
impl Node for Stub {
    async fn admin(&self, _: Request<AdminRequest>) -> Result<Response<AdminResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn raft(&self, _: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn raft_stream(
        &self,
        _: Request<Streaming<RaftBatch>>,
    ) -> Result<Response<RaftAck>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn snapshot(
        &self,
        _: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn kv(&self, _: Request<KvRequest>) -> Result<Response<KvResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }
    type KvStreamStream = Replies;
    async fn kv_stream(
        &self,
        req: Request<Streaming<KvCalls>>,
    ) -> Result<Response<Replies>, Status> {
        let mut calls = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<KvReplies, Status>>(64);
        let mode = self.0;
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                let next = tokio::time::timeout(Duration::from_millis(50), calls.message()).await;
                if matches!(mode, Mode::HoldThenBreak)
                    && started.elapsed() > Duration::from_millis(300)
                {
                    let _ = tx
                        .send(Err(Status::internal("stub broke the stream")))
                        .await;
                    return;
                }
                let batch = match next {
                    Err(_) => continue,
                    Ok(Ok(Some(b))) => b,
                    Ok(_) => return,
                };
                if matches!(mode, Mode::Echo) && tx.send(Ok(echo(batch))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
    type FeedStream = Pin<Box<dyn Stream<Item = Result<FeedMessage, Status>> + Send>>;
    async fn feed(&self, _: Request<FeedRequest>) -> Result<Response<Self::FeedStream>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn status(
        &self,
        _: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn defragment(
        &self,
        _: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn range_hash(
        &self,
        _: Request<RangeHashRequest>,
    ) -> Result<Response<RangeHashResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }
    async fn corrupt(
        &self,
        _: Request<CorruptRequest>,
    ) -> Result<Response<CorruptResponse>, Status> {
        Err(Status::unimplemented("stub"))
    }
}

async fn serve(mode: Mode) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeServer::new(Stub(mode)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr.to_string()
}

fn mux(addr: &str) -> NodeMux {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(500));
    NodeMux::start(7, NodeClient::new(ep.connect_lazy()))
}

fn request(body: &[u8]) -> KvRequest {
    KvRequest {
        range_id: 1,
        request: body.to_vec(),
        ..Default::default()
    }
}

#[tokio::test]
async fn concurrent_calls_each_get_their_own_answer() {
    let m = mux(&serve(Mode::Echo).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    let calls = (0..2000u32).map(|i| {
        let m = m.clone();
        tokio::spawn(async move {
            let body = i.to_be_bytes();
            let r = m.call(request(&body), deadline).await.expect("answer");
            let mut want = body.to_vec();
            want.reverse();
            assert_eq!(r.response, want, "call {i} got another call's answer");
        })
    });
    for c in futures::future::join_all(calls).await {
        c.expect("call task");
    }
    assert!(
        m.inner.pending.lock().calls.is_empty(),
        "answered calls leave no entry"
    );
}

#[tokio::test]
async fn a_broken_stream_fails_its_calls_as_outcome_unknown_and_a_new_one_opens() {
    let m = mux(&serve(Mode::HoldThenBreak).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = m.call(request(b"x"), deadline).await.expect_err("lost");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        !crate::routing::connect_failure(&err),
        "a call that was sent must not look like one that never left: {err:?}"
    );
    assert!(
        Instant::now() + Duration::from_secs(5) < deadline,
        "failed when the stream broke, not at the deadline"
    );
    // The next call opens a new stream (and is lost the same way).
    let err = m
        .call(request(b"y"), deadline)
        .await
        .expect_err("lost again");
    assert!(err.message().contains("broke"), "{err:?}");
    assert!(m.inner.pending.lock().calls.is_empty());
}

#[tokio::test]
async fn no_node_listening_is_a_connection_failure() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    }; // closed again: nothing listens there
    let m = mux(&addr);
    let err = m
        .call(request(b"x"), Instant::now() + Duration::from_secs(5))
        .await
        .expect_err("refused");
    assert!(
        crate::routing::connect_failure(&err),
        "a call that never left must say so (writes may then go elsewhere): {err:?}"
    );
}

#[tokio::test]
async fn an_unanswered_call_times_out_at_its_deadline_and_leaves_no_entry() {
    let m = mux(&serve(Mode::Hold).await);
    let start = Instant::now();
    let err = m
        .call(request(b"x"), start + Duration::from_millis(300))
        .await
        .expect_err("timeout");
    assert_eq!(err.message(), "etcdserver: request timed out");
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert!(
        m.inner.pending.lock().calls.is_empty(),
        "a timed-out call leaves no entry"
    );
}
