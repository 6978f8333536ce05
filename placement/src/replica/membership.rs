//! Membership of placement's group, on the raft thread: adding (as a
//! learner, promoted once caught up) and removing replicas, recording the
//! initial members' addresses, and what `Members` answers.

use raft::eraftpb::{ConfChange, ConfChangeType};
use raft::StateRole;
use strata_proto::strata::{MembersResponse, PlacementMember};
use tokio::sync::oneshot;
use tonic::Status;

use super::raft_loop::{ConfReq, Loop, Reply};
use super::transport::MAX_ADDR;
use crate::state::Command;

impl Loop {
    pub(super) fn conf_change(
        &mut self,
        req: ConfReq,
        reply: oneshot::Sender<Result<u64, Status>>,
    ) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(self.refusal()));
            return;
        }
        if self.raw.raft.has_pending_conf() {
            let _ = reply.send(Err(Status::unavailable(
                "strata: a placement membership change is in progress; try again",
            )));
            return;
        }
        let cs = self.raw.raft.prs().conf().to_conf_state();
        let mut cc = ConfChange::default();
        match req {
            ConfReq::Add { addr } => {
                if addr.is_empty()
                    || addr.len() > MAX_ADDR
                    || addr.parse::<std::net::SocketAddr>().is_err()
                {
                    let _ = reply.send(Err(Status::invalid_argument(format!(
                        "strata: bad placement member address {addr:?} (want HOST:PORT)"
                    ))));
                    return;
                }
                let members = cs.voters.iter().chain(&cs.learners);
                if let Some(&id) = members
                    .clone()
                    .find(|&&id| self.sh.book.get(id).as_deref() == Some(&addr))
                {
                    // Already a member (a retried add): the same answer.
                    let _ = reply.send(Ok(id));
                    return;
                }
                let id = members
                    .copied()
                    .chain([self.sh.state.read().last_member_id, self.raw.raft.id])
                    .max()
                    .unwrap_or(0)
                    + 1;
                cc.set_change_type(ConfChangeType::AddLearnerNode);
                cc.node_id = id;
                cc.context = addr.into_bytes().into();
            }
            ConfReq::Remove { id } => {
                if !cs.voters.contains(&id) && !cs.learners.contains(&id) {
                    let _ = reply.send(Err(Status::not_found(format!(
                        "strata: placement replica {id} is not a member"
                    ))));
                    return;
                }
                if cs.voters == [id] {
                    let _ = reply.send(Err(Status::failed_precondition(
                        "strata: cannot remove the last voting placement replica",
                    )));
                    return;
                }
                if id == self.raw.raft.id {
                    // Hand the lead to the most caught-up voter first; the
                    // caller retries there (the hint names it).
                    let prs = self.raw.raft.prs();
                    let target = cs
                        .voters
                        .iter()
                        .filter(|&&v| v != id)
                        .max_by_key(|&&v| prs.get(v).map_or(0, |p| p.matched))
                        .copied();
                    if let Some(t) = target {
                        self.raw.transfer_leader(t);
                        let addr = self.sh.book.get(t);
                        let _ = reply.send(Err(strata_proto::errors::placement_not_leader(
                            self.raw.raft.id,
                            addr.as_deref(),
                        )));
                    }
                    return;
                }
                cc.set_change_type(ConfChangeType::RemoveNode);
                cc.node_id = id;
            }
        }
        let node = cc.node_id;
        if self.raw.propose_conf_change(vec![], cc).is_err() {
            let _ = reply.send(Err(self.refusal()));
            return;
        }
        self.track(Reply::Conf(reply, node));
    }

    /// A learner as up to date as the commit index becomes a voter.
    pub(super) fn promote_caught_up_learner(&mut self) {
        if self.raw.raft.has_pending_conf() {
            return;
        }
        let committed = self.raw.raft.raft_log.committed;
        let prs = self.raw.raft.prs();
        let ready = prs
            .conf()
            .learners()
            .iter()
            .find(|&&l| prs.get(l).is_some_and(|p| p.matched >= committed))
            .copied();
        if let Some(id) = ready {
            let mut cc = ConfChange::default();
            cc.set_change_type(ConfChangeType::AddNode);
            cc.node_id = id;
            tracing::info!(
                replica = id,
                "promoting a caught-up placement learner to voter"
            );
            let _ = self.raw.propose_conf_change(vec![], cc);
        }
    }

    /// Replicates the addresses of members the state lacks (the initial
    /// members, known from `--peers`), so snapshots carry them.
    pub(super) fn record_member_addrs(&mut self) {
        if self.raw.raft.has_pending_conf() {
            return;
        }
        let cs = self.raw.raft.prs().conf().to_conf_state();
        let missing: Vec<(u64, String)> = {
            let st = self.sh.state.read();
            cs.voters
                .iter()
                .chain(&cs.learners)
                .filter(|id| !st.members.contains_key(id))
                .filter_map(|&id| self.sh.book.get(id).map(|a| (id, a)))
                .collect()
        };
        if missing.is_empty() {
            return;
        }
        if let Ok(data) = serde_json::to_vec(&Command::MemberAddrs { addrs: missing }) {
            let _ = self.raw.propose(vec![], data);
        }
    }

    pub(super) fn members(&self) -> MembersResponse {
        let r = &self.raw.raft;
        let cs = r.prs().conf().to_conf_state();
        let leader = r.state == StateRole::Leader;
        let member = |id: u64, learner: bool| PlacementMember {
            id,
            addr: self.sh.book.get(id).unwrap_or_default(),
            learner,
            matched: if leader {
                r.prs().get(id).map_or(0, |p| p.matched)
            } else {
                0
            },
        };
        MembersResponse {
            members: cs
                .voters
                .iter()
                .map(|&id| member(id, false))
                .chain(cs.learners.iter().map(|&id| member(id, true)))
                .collect(),
            leader_id: r.leader_id,
            term: r.term,
            commit: r.raft_log.committed,
            responder_id: r.id,
            applied: r.raft_log.applied,
        }
    }

    pub(super) fn membership_applied(&mut self, cc: &ConfChange) {
        let id = cc.node_id;
        match cc.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let addr = String::from_utf8_lossy(&cc.context).to_string();
                if !addr.is_empty() {
                    self.sh.book.set(id, &addr);
                }
                let known = self.sh.book.get(id);
                self.sh.state.write().member_added(id, known);
                tracing::info!(
                    replica = id,
                    "placement member added ({:?})",
                    cc.get_change_type()
                );
            }
            ConfChangeType::RemoveNode => {
                self.sh.state.write().member_removed(id);
                self.transport.forget(id);
                if id == self.raw.raft.id {
                    self.sh.lead.lock().removed = true;
                    tracing::warn!(
                        "this placement replica was removed from the group; it serves no more"
                    );
                }
                tracing::info!(replica = id, "placement member removed");
            }
        }
    }
}
