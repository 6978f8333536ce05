//! Placement's gRPC service: node registry, range directory, revision oracle,
//! compaction record and leases.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use strata_proto::errors;
use strata_proto::strata::placement_server::Placement;
use strata_proto::strata::*;
use tonic::{Request, Response, Status};

use crate::hosting::Hosting;
use crate::oracle::Oracle;
use crate::replica::Replicated;
use crate::state::{Command, Outcome, StoredRange};

pub use crate::lease::{MAX_LEASE_TTL_SECS, MIN_LEASE_TTL_SECS};
/// The most range (or peer) ids one `AllocIds` call may ask for; a split asks
/// for one range and one peer per replica.
pub const MAX_ALLOC_IDS: u64 = 1 << 20;

#[derive(Clone, Copy)]
pub struct LeaderHint {
    pub node: u64,
    pub term: u64,
}

pub struct PlacementService {
    pub rep: Replicated,
    pub replicas: usize,
    pub oracle: tokio::sync::Mutex<Oracle>,
    pub leaders: Mutex<HashMap<u64, LeaderHint>>,
    pub last_seen: Mutex<HashMap<u64, Instant>>,
    /// Latest stats reported by each range's leader.
    pub stats: Mutex<HashMap<u64, RangeStats>>,
    /// Their last sum per leading node (`load.rs`).
    pub(crate) led: Mutex<crate::load::Led>,
    /// What each node reports hosting, and the voters it does not host.
    pub hosting: Mutex<Hosting>,
    /// Lease id → deadline (leader-local, reset on restart as in etcd).
    pub lease_deadlines: Mutex<HashMap<i64, Instant>>,
    /// The term this replica last served in, and since when.
    served_term: Mutex<(u64, Instant)>,
    /// Routers that announced themselves (leader-local soft state).
    pub routers: Mutex<crate::routers::Routers>,
    /// Bumped whenever a range's leader hint names another node.
    leader_version: std::sync::atomic::AtomicU64,
    /// Bumped whenever a reported range's stats change.
    stats_version: std::sync::atomic::AtomicU64,
    /// Random per process, so `GetRanges` versions of a restarted placement
    /// never match those a router holds from before.
    nonce: u64,
}

impl PlacementService {
    pub fn new(rep: Replicated, replicas: usize) -> Arc<Self> {
        Arc::new(Self {
            oracle: tokio::sync::Mutex::new(Oracle {
                next: crate::oracle::FIRST_REVISION,
                last_start: None,
                term: 0,
            }),
            rep,
            replicas,
            leaders: Mutex::new(HashMap::new()),
            last_seen: Mutex::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
            led: Mutex::default(),
            hosting: Mutex::new(Hosting::default()),
            lease_deadlines: Mutex::new(HashMap::new()),
            routers: Mutex::default(),
            served_term: Mutex::new((0, Instant::now())),
            leader_version: Default::default(),
            stats_version: Default::default(),
            nonce: rand::random(),
        })
    }

    /// The term in which this replica serves, or the refusal placement
    /// clients follow to the leader. Every RPC (but the group's own and
    /// `Members`) and every leader-only loop (lease expiry, the scheduler)
    /// asks first.
    pub fn serving(&self) -> Result<u64, Status> {
        let term = self.rep.serving()?;
        let mut served = self.served_term.lock();
        if served.0 != term {
            self.promote(term);
            *served = (term, Instant::now());
        }
        Ok(term)
    }

    /// How long this replica has served in its current term.
    pub fn serving_for(&self) -> Option<Duration> {
        let term = self.serving().ok()?;
        let served = self.served_term.lock();
        (served.0 == term).then(|| served.1.elapsed())
    }

    /// A new term of leadership: what earlier leaders kept in memory is
    /// rebuilt. Nodes count as up (they heartbeat ten times a second, so the
    /// dead are down again after `--node-down-after`); leader hints, stats and
    /// hosting are learned from the next heartbeats; every lease gets its
    /// whole TTL again from now, as etcd's lessor does when a member is
    /// promoted (a lease is never expired early by a failover — at worst it
    /// lives up to one TTL longer than it would have).
    fn promote(&self, term: u64) {
        // Lock order: state, then last_seen, leaders, stats, hosting.
        let st = self.rep.state();
        let now = Instant::now();
        *self.last_seen.lock() = st.nodes.keys().map(|&id| (id, now)).collect();
        self.leaders.lock().clear();
        self.stats.lock().clear();
        *self.hosting.lock() = Hosting::default();
        *self.lease_deadlines.lock() = st
            .leases
            .iter()
            .map(|(&id, &ttl)| (id, now + Duration::from_secs(ttl.max(0) as u64)))
            .collect();
        *self.routers.lock() = Default::default();
        drop(st);
        self.leader_version
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        crate::metrics::LEADER_CHANGES.inc();
        tracing::info!(
            term,
            replica = self.rep.id(),
            "placement replica leads and serves"
        );
    }

    /// What `GetRanges` calls its version: changes whenever anything a router
    /// caches may have (never 0, which means "none" in requests).
    fn routing_version(&self, state_version: u64) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            self.nonce,
            state_version,
            self.leader_version
                .load(std::sync::atomic::Ordering::Acquire),
        )
            .hash(&mut h);
        h.finish() | 1
    }

    /// The version `GetRanges` would answer with now.
    pub fn current_version(&self) -> u64 {
        let v = self.rep.state().routing_version;
        self.routing_version(v)
    }

    /// Changes whenever anything the scheduler reads may have: the routing
    /// version (ranges, leaders, nodes) and the stats version.
    pub fn scheduler_version(&self) -> (u64, u64) {
        (
            self.current_version(),
            self.stats_version
                .load(std::sync::atomic::Ordering::Acquire),
        )
    }

    pub(crate) fn leader_of(&self, range_id: u64) -> u64 {
        self.leaders.lock().get(&range_id).map_or(0, |h| h.node)
    }

    /// Creates the first range once enough nodes registered.
    pub async fn maybe_bootstrap(&self) {
        let need = {
            let st = self.rep.state();
            st.ranges.is_empty() && st.nodes.len() >= self.replicas
        };
        if need {
            match self
                .rep
                .propose(Command::Bootstrap {
                    replicas: self.replicas,
                })
                .await
            {
                Ok(_) => tracing::info!(
                    "bootstrapped the first range with {} replicas",
                    self.replicas
                ),
                Err(e) => tracing::warn!("bootstrap failed: {}", e.message()),
            }
        }
    }
}

pub struct Svc(pub Arc<PlacementService>);

#[tonic::async_trait]
impl Placement for Svc {
    async fn register_node(
        &self,
        req: Request<RegisterNodeRequest>,
    ) -> Result<Response<RegisterNodeResponse>, Status> {
        self.0.serving()?;
        let r = req.into_inner();
        if r.addr.is_empty() {
            return Err(Status::invalid_argument("strata: node address is required"));
        }
        let out = self
            .0
            .rep
            .propose(Command::RegisterNode {
                id: r.node_id,
                addr: r.addr.clone(),
            })
            .await?;
        let id = match out {
            Outcome::NodeId(id) => id,
            Outcome::IdsExhausted => {
                return Err(Status::resource_exhausted("strata: node ids exhausted"))
            }
            _ => return Err(Status::internal("unexpected outcome")),
        };
        tracing::info!(node = id, addr = %r.addr, "node registered");
        self.0.last_seen.lock().insert(id, Instant::now());
        self.0.maybe_bootstrap().await;
        Ok(Response::new(RegisterNodeResponse { node_id: id }))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.0.serving()?;
        let r = req.into_inner();
        self.0.last_seen.lock().insert(r.node_id, Instant::now());
        self.0.hosting.lock().report(
            r.node_id,
            r.full_report.then_some(&r.hosted_range_ids[..]),
            r.leader_ranges
                .iter()
                .filter_map(|rep| rep.desc.as_ref().map(|d| d.id)),
        );
        let mut updates = Vec::new();
        {
            let st = self.0.rep.state();
            let mut leaders = self.0.leaders.lock();
            let mut stats = self.0.stats.lock();
            for rep in &r.leader_ranges {
                let Some(d) = &rep.desc else { continue };
                let reported = StoredRange::from_descriptor(d);
                if st
                    .ranges
                    .get(&d.id)
                    .is_none_or(|cur| reported.newer_than(cur))
                {
                    updates.push(reported);
                }
                if rep.leader_node != 0 {
                    let e = leaders
                        .entry(d.id)
                        .or_insert(LeaderHint { node: 0, term: 0 });
                    if rep.term >= e.term {
                        if e.node != rep.leader_node {
                            self.0
                                .leader_version
                                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        }
                        *e = LeaderHint {
                            node: rep.leader_node,
                            term: rep.term,
                        };
                    }
                    if let Some(s) = rep.stats {
                        if stats.insert(d.id, s) != Some(s) {
                            self.0
                                .stats_version
                                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        }
                    }
                }
            }
        }
        for range in updates {
            tracing::info!(
                range = range.id,
                version = range.version,
                "range descriptor updated"
            );
            self.0.rep.propose(Command::UpdateRange { range }).await?;
        }
        self.0.maybe_bootstrap().await;
        let st = self.0.rep.state();
        let mut hosting = self.0.hosting.lock();
        let missing: std::collections::HashSet<u64> = hosting
            .reconcile(r.node_id, &st.ranges, Instant::now())
            .into_iter()
            .collect();
        let ranges = st
            .ranges
            .values()
            // Replicas the node must create itself, unless it reported them:
            // the first range, learners being added, and missing voters (a
            // split's new range on a node that caught up past the split with
            // a snapshot; see `hosting.rs`). Other split halves are created by
            // the split.
            .filter(|rg| {
                let Some(&(peer, _)) = rg.peers.iter().find(|p| p.1 == r.node_id) else {
                    return false;
                };
                if hosting.hosts(r.node_id, rg.id) == Some(true) {
                    return false;
                }
                let bootstrap = rg.id == 1 && rg.conf_ver == 1 && rg.version == 1;
                bootstrap || rg.learners.contains(&peer) || missing.contains(&rg.id)
            })
            .map(|rg| rg.descriptor())
            .collect();
        drop(hosting);
        let checked = crate::hosting::checked(
            r.node_id,
            &r.check_range_ids,
            &r.hosted_range_ids,
            &st.ranges,
        )
        .iter()
        .map(StoredRange::descriptor)
        .collect();
        drop(st);
        let alarms = crate::alarm::active(&self.0.rep.state());
        let (leader_writes_per_sec, mean_leader_writes_per_sec) = self.0.leader_load(r.node_id);
        Ok(Response::new(HeartbeatResponse {
            ranges,
            nodes: self.nodes(false),
            alarms,
            checked,
            leader_writes_per_sec,
            mean_leader_writes_per_sec,
        }))
    }

    async fn get_ranges(
        &self,
        req: Request<GetRangesRequest>,
    ) -> Result<Response<GetRangesResponse>, Status> {
        self.0.serving()?;
        let st = self.0.rep.state();
        let version = self.0.routing_version(st.routing_version);
        if req.get_ref().known_version == version {
            return Ok(Response::new(GetRangesResponse {
                version,
                unchanged: true,
                ..Default::default()
            }));
        }
        let ranges = st
            .ranges
            .values()
            .map(|r| RangeInfo {
                desc: Some(r.descriptor()),
                leader_node: self.0.leader_of(r.id),
                stats: self.0.stats.lock().get(&r.id).copied(),
            })
            .collect();
        let compact_revision = st.compacted;
        drop(st);
        Ok(Response::new(GetRangesResponse {
            ranges,
            nodes: self.nodes(true),
            compact_revision,
            version,
            unchanged: false,
        }))
    }

    async fn alloc(&self, req: Request<AllocRequest>) -> Result<Response<AllocResponse>, Status> {
        self.0.serving()?;
        let start = self.0.alloc(req.into_inner().count).await?;
        Ok(Response::new(AllocResponse { start }))
    }

    type AllocStreamStream = crate::oracle::AllocAnswers;

    async fn alloc_stream(
        &self,
        req: Request<tonic::Streaming<AllocRequest>>,
    ) -> Result<Response<Self::AllocStreamStream>, Status> {
        self.0.serving()?;
        Ok(Response::new(self.0.clone().alloc_stream(req.into_inner())))
    }

    async fn alloc_ids(
        &self,
        req: Request<AllocIdsRequest>,
    ) -> Result<Response<AllocIdsResponse>, Status> {
        self.0.serving()?;
        let r = req.into_inner();
        for (what, n) in [("range", r.ranges), ("peer", r.peers)] {
            if n > MAX_ALLOC_IDS {
                return Err(Status::invalid_argument(format!(
                    "strata: cannot allocate {n} {what} ids in one call (at most {MAX_ALLOC_IDS})"
                )));
            }
        }
        let cmd = Command::AllocIds {
            ranges: r.ranges,
            peers: r.peers,
        };
        match self.0.rep.propose(cmd).await? {
            Outcome::Ids {
                first_range_id,
                first_peer_id,
            } => Ok(Response::new(AllocIdsResponse {
                first_range_id,
                first_peer_id,
            })),
            Outcome::IdsExhausted => Err(Status::invalid_argument(
                "strata: cannot allocate these ids: the id space is exhausted",
            )),
            _ => Err(Status::internal("unexpected outcome")),
        }
    }

    async fn compact(
        &self,
        req: Request<CompactRequest>,
    ) -> Result<Response<CompactResponse>, Status> {
        self.0.serving()?;
        let rev = req.into_inner().revision;
        self.0.check_compact(rev).await?;
        match self
            .0
            .rep
            .propose(Command::Compact { revision: rev })
            .await?
        {
            Outcome::Ok => Ok(Response::new(CompactResponse {
                compact_revision: rev,
            })),
            _ => Err(errors::compacted()),
        }
    }

    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        self.0.serving()?;
        self.0.check_space()?;
        let r = req.into_inner();
        Ok(Response::new(self.0.grant(r.id, r.ttl).await?))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseIdRequest>,
    ) -> Result<Response<LeaseInfo>, Status> {
        self.0.serving()?;
        let id = req.into_inner().id;
        self.0.revoke(id).await?;
        Ok(Response::new(LeaseInfo {
            id,
            ttl: -1,
            granted_ttl: 0,
            found: true,
        }))
    }

    async fn lease_keep_alive(
        &self,
        req: Request<LeaseIdRequest>,
    ) -> Result<Response<LeaseInfo>, Status> {
        self.0.serving()?;
        Ok(Response::new(self.0.keep_alive(req.into_inner().id).await?))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseIdRequest>,
    ) -> Result<Response<LeaseInfo>, Status> {
        self.0.serving()?;
        Ok(Response::new(self.0.lease_info(req.into_inner().id)))
    }

    async fn lease_list(
        &self,
        _: Request<LeaseListRequest>,
    ) -> Result<Response<LeaseListResponse>, Status> {
        self.0.serving()?;
        let ids = self.0.rep.state().leases.keys().copied().collect();
        Ok(Response::new(LeaseListResponse { ids }))
    }

    async fn raft(
        &self,
        req: Request<tonic::Streaming<PlacementRaftMessage>>,
    ) -> Result<Response<PlacementRaftDone>, Status> {
        self.0.rep.receive(req.into_inner()).await?;
        Ok(Response::new(PlacementRaftDone {}))
    }

    async fn members(
        &self,
        _: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        Ok(Response::new(self.0.rep.members().await?))
    }

    async fn add_member(
        &self,
        req: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberResponse>, Status> {
        let r = req.into_inner();
        let id = self.0.rep.add_member(r.addr).await?;
        if r.id != 0 && r.id != id {
            return Err(Status::invalid_argument(format!(
                "strata: that address is placement replica {id}, not {}",
                r.id
            )));
        }
        Ok(Response::new(AddMemberResponse {
            id,
            members: self.0.rep.members().await?.members,
        }))
    }

    async fn remove_member(
        &self,
        req: Request<RemoveMemberRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        self.0.rep.remove_member(req.into_inner().id).await?;
        Ok(Response::new(self.0.rep.members().await?))
    }

    async fn router_heartbeat(
        &self,
        req: Request<RouterHeartbeatRequest>,
    ) -> Result<Response<RouterHeartbeatResponse>, Status> {
        self.0.serving()?;
        self.0
            .routers
            .lock()
            .heartbeat(req.into_inner(), Instant::now())?;
        Ok(Response::new(RouterHeartbeatResponse {}))
    }

    async fn list_routers(
        &self,
        _: Request<ListRoutersRequest>,
    ) -> Result<Response<ListRoutersResponse>, Status> {
        self.0.serving()?;
        let routers = self.0.routers.lock().live(Instant::now());
        Ok(Response::new(ListRoutersResponse { routers }))
    }

    async fn auth_change(
        &self,
        r: Request<AuthChangeRequest>,
    ) -> Result<Response<AuthStateReply>, Status> {
        Ok(Response::new(self.0.auth_change(r.into_inner()).await?))
    }

    async fn auth_state(
        &self,
        r: Request<AuthStateRequest>,
    ) -> Result<Response<AuthStateReply>, Status> {
        Ok(Response::new(self.0.auth_state(r.into_inner())?))
    }

    async fn txn_decide(
        &self,
        r: Request<TxnDecideRequest>,
    ) -> Result<Response<TxnDecideResponse>, Status> {
        Ok(Response::new(self.0.txn_decide(r.into_inner()).await?))
    }

    async fn txn_forget(
        &self,
        r: Request<TxnForgetRequest>,
    ) -> Result<Response<TxnForgetResponse>, Status> {
        self.0.txn_forget(r.into_inner()).await?;
        Ok(Response::new(TxnForgetResponse {}))
    }

    async fn alarm(&self, r: Request<AlarmChange>) -> Result<Response<AlarmList>, Status> {
        Ok(Response::new(self.0.alarm(r.into_inner()).await?))
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
pub(crate) mod tests;
