//! A fake placement replica for tests: a real tonic server on 127.0.0.1:0
//! whose `Alloc` and `AllocStream` answer what a closure says (given the
//! allocation's number, from 0); every other method is unimplemented.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::strata::placement_server::{Placement, PlacementServer};
use crate::strata::*;

type Answer = Arc<dyn Fn(usize) -> Result<AllocResponse, Status> + Send + Sync>;

struct Fake {
    calls: Arc<AtomicUsize>,
    streams: Arc<AtomicUsize>,
    answer: Answer,
    last_cn: Arc<std::sync::Mutex<Option<String>>>,
}

/// A running fake: its address, how many allocations it answered (unary
/// or on a stream) and how many `AllocStream`s were opened.
pub(crate) struct Served {
    pub addr: String,
    pub calls: Arc<AtomicUsize>,
    pub streams: Arc<AtomicUsize>,
    /// The client certificate's CN of the last `Alloc` (`tls::peer_common_name`).
    pub last_cn: Arc<std::sync::Mutex<Option<String>>>,
}

impl Served {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }
}

/// Serves a fake whose `Alloc` answers `answer(call number)`, until the test
/// ends.
pub(crate) async fn serve(
    answer: impl Fn(usize) -> Result<AllocResponse, Status> + Send + Sync + 'static,
) -> Served {
    serve_tls(answer, None).await
}

/// [`serve`], over TLS with `tls`.
pub(crate) async fn serve_tls(
    answer: impl Fn(usize) -> Result<AllocResponse, Status> + Send + Sync + 'static,
    tls: Option<crate::tls::ServerTls>,
) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let calls = Arc::new(AtomicUsize::new(0));
    let streams = Arc::new(AtomicUsize::new(0));
    let last_cn = Arc::new(std::sync::Mutex::new(None));
    let fake = Fake {
        calls: calls.clone(),
        streams: streams.clone(),
        answer: Arc::new(answer),
        last_cn: last_cn.clone(),
    };
    let server = tonic::transport::Server::builder()
        .add_service(PlacementServer::new(fake))
        .serve_with_incoming(crate::tls::incoming(listener, tls));
    tokio::spawn(server);
    Served {
        addr,
        calls,
        streams,
        last_cn,
    }
}

/// An address nothing listens on (bound, then closed).
pub(crate) fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

macro_rules! unimplemented_rest {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {
        #[tonic::async_trait]
        impl Placement for Fake {
            async fn alloc(
                &self,
                req: Request<AllocRequest>,
            ) -> Result<Response<AllocResponse>, Status> {
                *self.last_cn.lock().unwrap() = crate::tls::peer_common_name(&req);
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                (self.answer)(n).map(Response::new)
            }
            type AllocStreamStream = std::pin::Pin<
                Box<dyn tokio_stream::Stream<Item = Result<AllocAnswer, Status>> + Send>,
            >;

            /// Answers each request on the stream as `alloc` would; ends
            /// the stream after the first refusal, as placement does.
            async fn alloc_stream(
                &self,
                req: Request<tonic::Streaming<AllocRequest>>,
            ) -> Result<Response<Self::AllocStreamStream>, Status> {
                self.streams.fetch_add(1, Ordering::SeqCst);
                let (calls, answer) = (self.calls.clone(), self.answer.clone());
                let mut reqs = req.into_inner();
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                tokio::spawn(async move {
                    while let Ok(Some(_)) = reqs.message().await {
                        let n = calls.fetch_add(1, Ordering::SeqCst);
                        let a = crate::answers::alloc_answer(answer(n).map(|r| r.start));
                        let refused = a.code != 0;
                        if tx.send(Ok(a)).await.is_err() || refused {
                            return;
                        }
                    }
                });
                Ok(Response::new(Box::pin(
                    tokio_stream::wrappers::ReceiverStream::new(rx),
                )))
            }
            $(
                async fn $name(&self, _req: Request<$req>) -> Result<Response<$resp>, Status> {
                    Err(Status::unimplemented("fake placement"))
                }
            )*
        }
    };
}

unimplemented_rest! {
    register_node(RegisterNodeRequest) -> RegisterNodeResponse;
    heartbeat(HeartbeatRequest) -> HeartbeatResponse;
    get_ranges(GetRangesRequest) -> GetRangesResponse;
    alloc_ids(AllocIdsRequest) -> AllocIdsResponse;
    compact(CompactRequest) -> CompactResponse;
    lease_grant(LeaseGrantRequest) -> LeaseGrantResponse;
    lease_revoke(LeaseIdRequest) -> LeaseInfo;
    lease_keep_alive(LeaseIdRequest) -> LeaseInfo;
    lease_time_to_live(LeaseIdRequest) -> LeaseInfo;
    lease_list(LeaseListRequest) -> LeaseListResponse;
    raft(tonic::Streaming<PlacementRaftMessage>) -> PlacementRaftDone;
    members(MembersRequest) -> MembersResponse;
    add_member(AddMemberRequest) -> AddMemberResponse;
    remove_member(RemoveMemberRequest) -> MembersResponse;
    router_heartbeat(RouterHeartbeatRequest) -> RouterHeartbeatResponse;
    list_routers(ListRoutersRequest) -> ListRoutersResponse;
    auth_change(AuthChangeRequest) -> AuthStateReply;
    auth_state(AuthStateRequest) -> AuthStateReply;
    txn_decide(TxnDecideRequest) -> TxnDecideResponse;
    txn_forget(TxnForgetRequest) -> TxnForgetResponse;
    alarm(AlarmChange) -> AlarmList;
}
