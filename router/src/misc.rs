//! etcd's Lease, Maintenance and Cluster services.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use strata_proto::errors;
use strata_proto::etcd::*;
use strata_proto::oracle::Oracle;
use strata_proto::strata::{LeaseGrantRequest, LeaseIdRequest, LeaseListRequest};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::routing::Router;

/// The etcd version reported by `Status`: clients (Kubernetes among them)
/// enable features by it; Strata implements the 3.5 API used by them.
pub const ETCD_VERSION: &str = "3.5.17";

#[derive(Clone)]
pub struct Common {
    pub router: Arc<Router>,
    pub oracle: Oracle,
    pub member_id: u64,
    pub cluster_id: u64,
    /// This router as an etcd member (`MemberList`).
    pub me: crate::announce::Me,
    pub auth: Arc<crate::auth::Auth>,
}

impl Common {
    /// The request's caller, who must be an administrator (while auth is on).
    fn admin<T>(&self, req: &Request<T>) -> Result<(), Status> {
        self.auth
            .caller(req.metadata(), crate::tls_cn(req))?
            .admin()
    }

    pub(crate) async fn header(&self) -> Option<PbResponseHeader> {
        // Cluster and Maintenance answers do not wait for a placement
        // failover (the oracle client retries for seconds): past 1 s the
        // header says 0.
        let revision =
            tokio::time::timeout(std::time::Duration::from_secs(1), self.oracle.current())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
        Some(PbResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: 1,
        })
    }
}

pub struct Lease(pub Common, pub Arc<crate::kv::Kv>);

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<PbLeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbLeaseService for Lease {
    async fn lease_grant(
        &self,
        req: Request<PbLeaseGrantRequest>,
    ) -> Result<Response<PbLeaseGrantResponse>, Status> {
        let r = req.into_inner();
        let g = self
            .0
            .router
            .placement
            .clone()
            .lease_grant(LeaseGrantRequest {
                id: r.id,
                ttl: r.ttl,
            })
            .await?
            .into_inner();
        Ok(Response::new(PbLeaseGrantResponse {
            header: self.0.header().await,
            id: g.id,
            ttl: g.ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        req: Request<PbLeaseRevokeRequest>,
    ) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        let caller = self.1.caller(&req)?;
        let id = req.into_inner().id;
        // etcd: revoking deletes the lease's keys, so it needs write
        // permission on every one of them (administrators excepted).
        if caller.state.enabled && !caller.is_admin() {
            for key in self.1.lease_keys(id).await? {
                caller.need(&key, &[], strata_proto::auth::Access::Write)?;
            }
        }
        self.0
            .router
            .placement
            .clone()
            .lease_revoke(LeaseIdRequest { id })
            .await?;
        Ok(Response::new(PbLeaseRevokeResponse {
            header: self.0.header().await,
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let c = self.0.clone();
        tokio::spawn(async move {
            while let Some(Ok(r)) = inbound.next().await {
                let ttl = match c
                    .router
                    .placement
                    .clone()
                    .lease_keep_alive(LeaseIdRequest { id: r.id })
                    .await
                {
                    Ok(info) => info.into_inner().ttl,
                    // etcd answers a keep-alive of an unknown lease with TTL 0.
                    Err(e) if e.code() == tonic::Code::NotFound => 0,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let resp = PbLeaseKeepAliveResponse {
                    header: c.header().await,
                    id: r.id,
                    ttl,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let caller = self.1.caller(&req)?;
        let r = req.into_inner();
        let info = self
            .0
            .router
            .placement
            .clone()
            .lease_time_to_live(LeaseIdRequest { id: r.id })
            .await?
            .into_inner();
        let keys = if r.keys && info.found {
            self.1.lease_keys(r.id).await?
        } else {
            Vec::new()
        };
        // etcd: listing a lease's keys needs read permission on each.
        if caller.state.enabled && !caller.is_admin() {
            for key in &keys {
                caller.read(key, &[])?;
            }
        }
        Ok(Response::new(PbLeaseTimeToLiveResponse {
            header: self.0.header().await,
            id: r.id,
            ttl: if info.found { info.ttl } else { -1 },
            granted_ttl: info.granted_ttl,
            keys,
        }))
    }

    async fn lease_leases(
        &self,
        _: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        let ids = self
            .0
            .router
            .placement
            .clone()
            .lease_list(LeaseListRequest {})
            .await?
            .into_inner()
            .ids;
        Ok(Response::new(PbLeaseLeasesResponse {
            header: self.0.header().await,
            leases: ids.into_iter().map(|id| PbLeaseStatus { id }).collect(),
        }))
    }
}

pub struct Cluster(pub Common);

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!(
        "strata: {what} is not supported; routers and nodes are managed by placement"
    ))
}

#[tonic::async_trait]
impl PbClusterService for Cluster {
    async fn member_add(
        &self,
        _: Request<PbMemberAddRequest>,
    ) -> Result<Response<PbMemberAddResponse>, Status> {
        Err(unimplemented("MemberAdd"))
    }
    async fn member_remove(
        &self,
        _: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        Err(unimplemented("MemberRemove"))
    }
    async fn member_update(
        &self,
        _: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        Err(unimplemented("MemberUpdate"))
    }
    async fn member_list(
        &self,
        _: Request<PbMemberListRequest>,
    ) -> Result<Response<PbMemberListResponse>, Status> {
        // Every live router (placement's list), always with this one.
        let routers = crate::announce::members(&self.0.router.placement, &self.0.me).await;
        let members = routers
            .into_iter()
            .map(|r| PbMember {
                id: r.id,
                name: r.name,
                peer_ur_ls: Vec::new(),
                client_ur_ls: r.client_urls,
                is_learner: false,
            })
            .collect();
        Ok(Response::new(PbMemberListResponse {
            header: self.0.header().await,
            members,
        }))
    }
    async fn member_promote(
        &self,
        _: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        Err(unimplemented("MemberPromote"))
    }
}

pub struct Maintenance(pub Common);

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<PbSnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PbMaintenanceService for Maintenance {
    async fn alarm(
        &self,
        req: Request<PbAlarmRequest>,
    ) -> Result<Response<PbAlarmResponse>, Status> {
        // etcd: listing alarms is open to all; changing them is for admins.
        if req.get_ref().action != 0 {
            self.0.admin(&req)?;
        }
        Ok(Response::new(PbAlarmResponse {
            header: self.0.header().await,
            alarms: Vec::new(),
        }))
    }
    async fn status(
        &self,
        _: Request<PbStatusRequest>,
    ) -> Result<Response<PbStatusResponse>, Status> {
        let header = self.0.header().await;
        Ok(Response::new(PbStatusResponse {
            header,
            version: ETCD_VERSION.into(),
            leader: self.0.member_id,
            raft_term: 1,
            raft_index: header.map_or(0, |h| h.revision as u64),
            raft_applied_index: header.map_or(0, |h| h.revision as u64),
            ..Default::default()
        }))
    }
    async fn defragment(
        &self,
        req: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        self.0.admin(&req)?;
        Ok(Response::new(PbDefragmentResponse {
            header: self.0.header().await,
        }))
    }
    async fn hash(&self, req: Request<PbHashRequest>) -> Result<Response<PbHashResponse>, Status> {
        self.0.admin(&req)?;
        Err(unimplemented("Hash"))
    }
    async fn hash_kv(
        &self,
        req: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        self.0.admin(&req)?;
        Err(unimplemented("HashKV"))
    }
    type SnapshotStream = SnapshotStream;
    async fn snapshot(
        &self,
        req: Request<PbSnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        self.0.admin(&req)?;
        Ok(Response::new(crate::snapshot::serve(&self.0).await?))
    }
    async fn move_leader(
        &self,
        req: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        self.0.admin(&req)?;
        Err(unimplemented("MoveLeader"))
    }
    async fn downgrade(
        &self,
        req: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        self.0.admin(&req)?;
        Err(unimplemented("Downgrade"))
    }
}

#[allow(dead_code)]
fn _unused() -> Status {
    errors::no_leader()
}
