//! `Status`: the cluster as one etcd member (meanings in `mod.rs`). Every
//! part is asked at once and bounded; a part that does not answer in time
//! reports zeros rather than holding the call (clients poll Status as a
//! health check).

use std::time::Duration;

use strata_proto::etcd::PbStatusResponse;
use strata_proto::strata::{AlarmChange, MembersRequest, MembersResponse};

use super::{alarm_name, nodes, ETCD_VERSION};
use crate::misc::Common;

const PLACEMENT_TIMEOUT: Duration = Duration::from_secs(1);

/// Placement's raft group as the replica that answered sees it.
async fn placement_raft(c: &Common) -> Option<MembersResponse> {
    let mut req = tonic::Request::new(MembersRequest {});
    req.set_timeout(PLACEMENT_TIMEOUT);
    let mut placement = c.router.placement.clone();
    Some(
        tokio::time::timeout(PLACEMENT_TIMEOUT, placement.members(req))
            .await
            .ok()?
            .ok()?
            .into_inner(),
    )
}

/// The active alarms as etcd's `Status.errors` words them.
async fn alarm_errors(c: &Common) -> Vec<String> {
    let mut req = tonic::Request::new(AlarmChange::default());
    req.set_timeout(PLACEMENT_TIMEOUT);
    let mut placement = c.router.placement.clone();
    match tokio::time::timeout(PLACEMENT_TIMEOUT, placement.alarm(req)).await {
        Ok(Ok(list)) => list
            .into_inner()
            .alarms
            .iter()
            // etcd's words exactly (its text encoding of an AlarmMember,
            // trailing space included).
            .map(|a| format!("memberID:{} alarm:{} ", a.member_id, alarm_name(a.alarm)))
            .collect(),
        _ => Vec::new(),
    }
}

pub async fn status(c: &Common) -> PbStatusResponse {
    let (header, raft, errors, sizes) = tokio::join!(
        c.header(),
        placement_raft(c),
        alarm_errors(c),
        nodes::sizes(&c.router)
    );
    let raft = raft.unwrap_or_default();
    PbStatusResponse {
        header,
        version: ETCD_VERSION.into(),
        db_size: i64::try_from(sizes.db_size).unwrap_or(i64::MAX),
        db_size_in_use: i64::try_from(sizes.db_size_in_use).unwrap_or(i64::MAX),
        db_size_quota: i64::try_from(sizes.quota).unwrap_or(i64::MAX),
        leader: if raft.leader_id != 0 { c.member_id } else { 0 },
        raft_term: raft.term,
        raft_index: raft.commit,
        raft_applied_index: raft.applied,
        errors,
        is_learner: false,
        ..Default::default()
    }
}
