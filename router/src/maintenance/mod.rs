//! etcd's Maintenance service over a sharded cluster. What each RPC means
//! here (README "Maintenance"):
//!
//! - `Status`: the cluster as one member (`status.rs`): `db_size` and
//!   `db_size_in_use` summed over the up nodes, `db_size_quota` the smallest
//!   node quota, `leader` this router's member id while placement has a raft
//!   leader (every router serves as leader; 0 without placement), `raft_term`
//!   / `raft_index` / `raft_applied_index` placement's raft group's (the
//!   replica that answered), `errors` the active alarms as etcd words them.
//! - `Alarm`: placement's cluster-wide alarms (`placement/src/alarm.rs`).
//! - `Defragment`: RocksDB compaction of all data on every up node.
//! - `HashKV`: every range's replicas compared at one revision (`hash.rs`);
//!   a disagreement fails the call naming the range and node.
//! - `Hash` (etcd's hash of its whole backend file) has no counterpart:
//!   Unimplemented, pointing at HashKV.
//! - `MoveLeader`: routers hold no raft leadership to move (range leaders
//!   are placed by placement's scheduler): a target that is no member is
//!   etcd's `bad leader transferee`, a member is FailedPrecondition saying so.
//! - `Snapshot` and `Downgrade`: not served here (Unimplemented).

pub mod hash;
mod nodes;
mod status;

use std::pin::Pin;

use futures::Stream;
use strata_proto::errors;
use strata_proto::etcd::*;
use strata_proto::strata::{Alarm, AlarmChange};
use tonic::{Request, Response, Status};

use crate::misc::{unimplemented, Common};

/// The etcd version reported by `Status`: clients enable features by it
/// (Kubernetes sends watch progress requests to 3.5.13 and later); Strata
/// implements the 3.5 API they use.
pub const ETCD_VERSION: &str = "3.5.17";

pub struct Maintenance(pub Common);

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<PbSnapshotResponse, Status>> + Send>>;

/// etcd's AlarmType names (as `etcdctl alarm list` and `Status.errors` print them).
pub fn alarm_name(alarm: i32) -> String {
    match alarm {
        0 => "NONE".into(),
        1 => "NOSPACE".into(),
        2 => "CORRUPT".into(),
        n => n.to_string(),
    }
}

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
        let r = req.into_inner();
        let change = AlarmChange {
            action: r.action,
            alarm: Some(Alarm {
                member_id: r.member_id,
                alarm: r.alarm,
            }),
        };
        let list = self
            .0
            .router
            .placement
            .clone()
            .alarm(change)
            .await?
            .into_inner();
        Ok(Response::new(PbAlarmResponse {
            header: self.0.header().await,
            alarms: list
                .alarms
                .into_iter()
                .map(|a| PbAlarmMember {
                    member_id: a.member_id,
                    alarm: a.alarm,
                })
                .collect(),
        }))
    }

    async fn status(
        &self,
        _: Request<PbStatusRequest>,
    ) -> Result<Response<PbStatusResponse>, Status> {
        Ok(Response::new(status::status(&self.0).await))
    }

    async fn defragment(
        &self,
        req: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        self.0.admin(&req)?;
        nodes::defragment(&self.0.router).await?;
        Ok(Response::new(PbDefragmentResponse {
            header: self.0.header().await,
        }))
    }

    async fn hash(&self, req: Request<PbHashRequest>) -> Result<Response<PbHashResponse>, Status> {
        self.0.admin(&req)?;
        Err(Status::unimplemented(
            "strata: Hash (a hash of a member's whole backend file) has no counterpart in a \
             sharded store; use HashKV, which compares every range's replicas",
        ))
    }

    async fn hash_kv(
        &self,
        req: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        self.0.admin(&req)?;
        let asked = req.into_inner().revision;
        let current = self.0.oracle.current().await?;
        if asked > current {
            return Err(errors::future_rev());
        }
        // Each replica checks its own compaction floor too; this is the
        // cluster's (placement's) as the router last heard it.
        let compacted = self
            .0
            .router
            .compacted
            .load(std::sync::atomic::Ordering::Acquire);
        if asked > 0 && asked < compacted {
            return Err(errors::compacted());
        }
        let rev = if asked > 0 { asked } else { current.max(1) };
        let total = hash::check_all(&self.0.router, rev).await?;
        if let Some(m) = total.mismatch() {
            return Err(Status::data_loss(format!("strata: HashKV: {m}")));
        }
        Ok(Response::new(PbHashKvResponse {
            header: self.0.header().await,
            hash: total.hash(),
            compact_revision: total.compact_revision(),
            hash_revision: rev,
        }))
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
        let target = req.into_inner().target_id;
        let members = crate::announce::members(&self.0.router.placement, &self.0.me).await;
        if !members.iter().any(|m| m.id == target) {
            return Err(errors::bad_leader_transferee());
        }
        Err(Status::failed_precondition(
            "strata: routers hold no raft leadership to move: every router serves as \
             leader, and range leaders are placed by placement's scheduler",
        ))
    }

    async fn downgrade(
        &self,
        req: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        self.0.admin(&req)?;
        Err(unimplemented("Downgrade"))
    }
}
