//! Leases: grant, keep-alive, time-to-live, revocation and expiry.
//!
//! Placement's leader keeps each lease's deadline in memory (reset on restart,
//! as in etcd). A lease whose deadline passed is dead, even before the expiry
//! loop (every 250 ms) has revoked it — revocation deletes its keys in every
//! range first, a round trip to each. As etcd's lessor (`Renew` of an expired
//! lease waits for its revocation, then answers `ErrLeaseNotFound`), a
//! keep-alive of such a lease never renews it: it completes the revocation and
//! answers NotFound `etcdserver: requested lease not found` (the router turns
//! that into TTL 0 on etcd's keep-alive stream, as etcd's gRPC server does).
//! TimeToLive still finds it, with TTL 0, until it is revoked (etcd reports
//! the lease with its remaining time, at most 0 once expired).

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use strata_proto::errors;
use strata_proto::etcd::PbLeaseGrantRequest;
use strata_proto::strata::{KvKind, LeaseGrantResponse, LeaseInfo};
use tonic::{Code, Status};

use crate::service::PlacementService;
use crate::state::{Command, Outcome};

/// Smallest lease TTL granted, in seconds (as etcd's minimum with its defaults).
pub const MIN_LEASE_TTL_SECS: i64 = 2;
/// etcd's largest lease TTL.
pub const MAX_LEASE_TTL_SECS: i64 = 9_000_000_000;

impl PlacementService {
    pub async fn grant(&self, id: i64, ttl: i64) -> Result<LeaseGrantResponse, Status> {
        if ttl > MAX_LEASE_TTL_SECS {
            return Err(Status::out_of_range("etcdserver: too large lease TTL"));
        }
        let ttl = ttl.max(MIN_LEASE_TTL_SECS);
        let id = if id != 0 {
            if self.rep.state().leases.contains_key(&id) {
                return Err(errors::lease_exists());
            }
            // The id may have been granted and revoked before: every range
            // forgets it was revoked (node/src/lease.rs), so that Puts
            // attached to the new lease are accepted. (Random ids below are
            // never taken again in practice: 63 random bits.)
            let body = PbLeaseGrantRequest { id, ttl }.encode_to_vec();
            self.to_every_range(KvKind::KvLeaseGrant, body).await?;
            id
        } else {
            loop {
                let id = (rand::random::<u64>() >> 1) as i64;
                if id != 0 && !self.rep.state().leases.contains_key(&id) {
                    break id;
                }
            }
        };
        match self.rep.propose(Command::LeaseGrant { id, ttl }).await? {
            Outcome::Ok => {
                self.lease_deadlines
                    .lock()
                    .insert(id, Instant::now() + Duration::from_secs(ttl as u64));
                Ok(LeaseGrantResponse { id, ttl })
            }
            _ => Err(errors::lease_exists()),
        }
    }

    /// Renews a live lease to its TTL. An expired one is revoked (or its
    /// revocation waited for) and answered as not found, never renewed.
    pub async fn keep_alive(&self, id: i64) -> Result<LeaseInfo, Status> {
        {
            // Lock order: state, then deadlines. Holding the state keeps a
            // revocation that completes meanwhile (it forgets the lease in
            // the state first) from being undone by a renewal.
            let st = self.rep.state();
            let Some(&ttl) = st.leases.get(&id) else {
                return Err(errors::lease_not_found());
            };
            let mut deadlines = self.lease_deadlines.lock();
            let now = Instant::now();
            // No deadline yet: granted a moment ago (the grant sets it next).
            if deadlines.get(&id).is_none_or(|d| *d > now) {
                deadlines.insert(id, now + Duration::from_secs(ttl as u64));
                return Ok(LeaseInfo {
                    id,
                    ttl,
                    granted_ttl: ttl,
                    found: true,
                });
            }
        }
        // Revoked meanwhile by someone else: `revoke` answers "not found" too.
        self.revoke(id).await?;
        Err(errors::lease_not_found())
    }

    /// Deletes the lease's keys in every range, then forgets the lease.
    pub async fn revoke(&self, id: i64) -> Result<(), Status> {
        if !self.rep.state().leases.contains_key(&id) {
            return Err(errors::lease_not_found());
        }
        self.revoke_everywhere(id).await?;
        self.rep.propose(Command::LeaseRevoke { id }).await?;
        self.lease_deadlines.lock().remove(&id);
        Ok(())
    }

    pub fn lease_info(&self, id: i64) -> LeaseInfo {
        let granted = self.rep.state().leases.get(&id).copied();
        let deadline = self.lease_deadlines.lock().get(&id).copied();
        match (granted, deadline) {
            (Some(g), Some(d)) => LeaseInfo {
                id,
                // 0 once expired, until revoked.
                ttl: d
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64()
                    .round() as i64,
                granted_ttl: g,
                found: true,
            },
            _ => LeaseInfo {
                id,
                ttl: -1,
                granted_ttl: 0,
                found: false,
            },
        }
    }

    /// Revokes expired leases; runs forever.
    pub async fn expire_leases(self: Arc<Self>) {
        let mut iv = tokio::time::interval(Duration::from_millis(250));
        loop {
            iv.tick().await;
            // Deadlines are the serving leader's: a follower expires nothing.
            if self.serving().is_err() {
                continue;
            }
            let now = Instant::now();
            let expired: Vec<i64> = self
                .lease_deadlines
                .lock()
                .iter()
                .filter(|(_, d)| **d <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                match self.revoke(id).await {
                    Ok(()) => {}
                    // A keep-alive revoked it first.
                    Err(e) if e.code() == Code::NotFound => {}
                    Err(e) => {
                        tracing::warn!(lease = id, "lease expiry failed, retrying: {}", e.message())
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use strata_proto::strata::placement_server::Placement;
    use strata_proto::strata::{LeaseGrantRequest, LeaseIdRequest};
    use tonic::{Code, Request};

    use crate::service::tests::service;
    use crate::service::Svc;

    /// A lease whose TTL ran out but that placement has not revoked yet (the
    /// expiry loop runs every 250 ms, and revocation takes a round trip to
    /// every range): as etcd's lessor, a keep-alive must not renew it — it
    /// waits for the revocation and answers "lease not found".
    #[tokio::test]
    async fn keep_alive_of_an_expired_lease_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(&dir, 0).await;
        let api = Svc(svc.clone());
        let id = api
            .lease_grant(Request::new(LeaseGrantRequest { id: 0, ttl: 5 }))
            .await
            .expect("grant")
            .into_inner()
            .id;
        let ask = || Request::new(LeaseIdRequest { id });
        // Alive: renewed to its TTL.
        let info = api
            .lease_keep_alive(ask())
            .await
            .expect("keep-alive")
            .into_inner();
        assert_eq!((info.ttl, info.granted_ttl), (5, 5));
        // Expired a moment ago; the expiry loop (not running here) has not
        // revoked it yet.
        let past = Instant::now() - Duration::from_millis(10);
        svc.lease_deadlines.lock().insert(id, past);
        // TimeToLive reports it as etcd does: still there, no time left.
        let ttl = api
            .lease_time_to_live(ask())
            .await
            .expect("ttl")
            .into_inner();
        assert!(
            ttl.found,
            "an expired, unrevoked lease is still found: {ttl:?}"
        );
        assert_eq!((ttl.ttl, ttl.granted_ttl), (0, 5), "{ttl:?}");
        match api.lease_keep_alive(ask()).await {
            Err(s) if s.code() == Code::NotFound => {
                assert_eq!(s.message(), "etcdserver: requested lease not found")
            }
            other => panic!("keep-alive of an expired lease: expected NotFound, got {other:?}"),
        }
        // The answer came after the revocation: the lease is gone.
        let ttl = api
            .lease_time_to_live(ask())
            .await
            .expect("ttl")
            .into_inner();
        assert!(
            !ttl.found,
            "revoked before the keep-alive answered: {ttl:?}"
        );
        assert!(!svc.rep.state().leases.contains_key(&id));
        match api.lease_keep_alive(ask()).await {
            Err(s) if s.code() == Code::NotFound => {}
            other => panic!("keep-alive of a revoked lease: expected NotFound, got {other:?}"),
        }
    }
}
