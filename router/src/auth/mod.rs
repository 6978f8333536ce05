//! etcd's authentication and access control at the router.
//!
//! Placement holds the auth state (`strata_proto::auth`, replicated in its
//! raft group); every router caches it and checks each request against the
//! cached copy before routing it, as etcd checks requests against its auth
//! store. Consistency bound: a change is enforced at once by the router that
//! made it (placement's answer carries the new state) and by every other
//! router within one poll (`POLL`, 500 ms, plus the RPC); a router whose copy
//! could be older than `STALE` (placement unreachable) refuses requests while
//! auth is enabled rather than enforce permissions that may have been revoked.
//! Authenticate and the management reads (UserGet, RoleList, ...) fetch the
//! current state first, as etcd serves them linearizably.

pub mod service;
pub mod token;

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use strata_proto::auth::{Access, AuthCommand, AuthError, AuthState};
use strata_proto::etcd::{PbDeleteRequest, PbPutRequest, PbTxnOpRequest, PbTxnRequest};
use strata_proto::oracle::PlacementConn;
use strata_proto::strata::{AuthChangeRequest, AuthStateReply, AuthStateRequest};
use tonic::metadata::MetadataMap;
use tonic::Status;

pub use token::Tokens;

/// How often a router asks placement whether the auth state changed.
pub const POLL: Duration = Duration::from_millis(500);
/// Past this without a successful poll, an enabled auth state is not trusted.
pub const STALE: Duration = Duration::from_secs(5);

struct Cached {
    state: Arc<AuthState>,
    /// When placement last confirmed `state` (None: never loaded).
    at: Option<Instant>,
}

pub struct Auth {
    placement: PlacementConn,
    cache: RwLock<Cached>,
    pub tokens: Tokens,
    pub bcrypt_cost: u32,
    /// `--client-cert-auth`: a verified client certificate's common name
    /// names the user when the request carries no token.
    pub cert_auth: bool,
}

/// The user a request runs as, and the auth state it is checked against.
pub struct Caller {
    pub state: Arc<AuthState>,
    /// None: no token or certificate (or auth is disabled).
    pub user: Option<String>,
    /// A JWT token's auth revision.
    token_revision: Option<u64>,
}

impl Auth {
    pub fn new(
        placement: PlacementConn,
        tokens: Tokens,
        bcrypt_cost: u32,
        cert_auth: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            placement,
            cache: RwLock::new(Cached {
                state: Arc::new(AuthState::default()),
                at: None,
            }),
            tokens,
            bcrypt_cost,
            cert_auth,
        })
    }

    fn absorb(&self, reply: AuthStateReply) -> Result<Arc<AuthState>, Status> {
        let mut c = self.cache.write();
        if !reply.state.is_empty() {
            let st: AuthState = serde_json::from_slice(&reply.state)
                .map_err(|e| Status::internal(format!("strata: bad auth state: {e}")))?;
            // Answers may cross: never go back to an older state.
            if c.at.is_none() || st.revision >= c.state.revision {
                c.state = Arc::new(st);
            }
        }
        c.at = Some(Instant::now());
        Ok(c.state.clone())
    }

    /// The current state, from placement.
    pub async fn refresh(&self) -> Result<Arc<AuthState>, Status> {
        let (known, known_revision) = {
            let c = self.cache.read();
            (c.at.is_some(), c.state.revision)
        };
        let reply = self
            .placement
            .clone()
            .auth_state(AuthStateRequest {
                known_revision,
                known,
            })
            .await?
            .into_inner();
        self.absorb(reply)
    }

    /// Polls placement every `POLL` (every 100 ms while never loaded, so a
    /// router started before placement serves as soon as it can).
    pub async fn refresh_loop(self: Arc<Self>) {
        loop {
            let pause = match self.refresh().await {
                Ok(_) => POLL,
                Err(e) => {
                    tracing::debug!("auth state refresh failed: {}", e.message());
                    if self.cache.read().at.is_none() {
                        Duration::from_millis(100)
                    } else {
                        POLL
                    }
                }
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// The cached state, if it can be trusted.
    fn current(&self) -> Result<Arc<AuthState>, Status> {
        let c = self.cache.read();
        match c.at {
            None => Err(Status::unavailable(
                "strata: the auth state is not loaded from placement yet",
            )),
            Some(at) if c.state.enabled && at.elapsed() > STALE => Err(Status::unavailable(
                "strata: the auth state is stale (placement unreachable)",
            )),
            Some(_) => Ok(c.state.clone()),
        }
    }

    /// Applies a change through placement, as `caller`.
    pub async fn change(&self, cmd: AuthCommand, caller: &Caller) -> Result<(), Status> {
        let command = serde_json::to_vec(&cmd)
            .map_err(|e| Status::internal(format!("strata: auth change: {e}")))?;
        let reply = self
            .placement
            .clone()
            .auth_change(AuthChangeRequest {
                command,
                caller: caller.user.clone().unwrap_or_default(),
            })
            .await?
            .into_inner();
        self.absorb(reply).map(|_| ())
    }

    /// Who sent a request (token metadata, else the client certificate's
    /// common name under `--client-cert-auth`): etcd's `AuthInfoFromCtx`.
    pub fn caller(&self, md: &MetadataMap, cert_cn: Option<String>) -> Result<Caller, Status> {
        let state = self.current()?;
        self.caller_in(state, md, cert_cn)
    }

    /// As `caller`, against a state just fetched.
    pub fn caller_in(
        &self,
        state: Arc<AuthState>,
        md: &MetadataMap,
        cert_cn: Option<String>,
    ) -> Result<Caller, Status> {
        let mut c = Caller {
            state,
            user: None,
            token_revision: None,
        };
        if !c.state.enabled {
            return Ok(c);
        }
        let token = md.get("token").or_else(|| md.get("authorization"));
        if let Some(t) = token {
            let t = t.to_str().map_err(|_| AuthError::InvalidAuthToken)?;
            let t = t.strip_prefix("Bearer ").unwrap_or(t);
            let info = self.tokens.info(&c.state, t)?;
            c.user = Some(info.user);
            c.token_revision = info.revision;
        } else if self.cert_auth {
            c.user = cert_cn;
        }
        Ok(c)
    }
}

impl Caller {
    /// etcd's `isOpPermitted`.
    pub fn need(&self, key: &[u8], range_end: &[u8], access: Access) -> Result<(), Status> {
        if !self.state.enabled {
            return Ok(());
        }
        let user = self.user.as_deref().ok_or(AuthError::UserEmpty)?;
        if self.token_revision.is_some_and(|r| r < self.state.revision) {
            return Err(AuthError::AuthOldRevision.into());
        }
        Ok(self.state.check(user, key, range_end, access)?)
    }

    pub fn read(&self, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        self.need(key, range_end, Access::Read)
    }

    /// etcd's `IsAdminPermitted`.
    pub fn admin(&self) -> Result<(), Status> {
        Ok(self.state.admin(self.user.as_deref())?)
    }

    pub fn is_admin(&self) -> bool {
        self.state.enabled && self.admin().is_ok()
    }

    pub fn put(&self, r: &PbPutRequest) -> Result<(), Status> {
        self.need(&r.key, &[], Access::Write)?;
        if r.prev_kv {
            self.read(&r.key, &[])?;
        }
        Ok(())
    }

    pub fn delete(&self, r: &PbDeleteRequest) -> Result<(), Status> {
        self.need(&r.key, &r.range_end, Access::Write)?;
        if r.prev_kv {
            self.read(&r.key, &r.range_end)?;
        }
        Ok(())
    }

    /// A txn needs permission for every key it compares, reads or writes,
    /// in both branches (etcd's `checkTxnPermission`).
    pub fn txn(&self, t: &PbTxnRequest) -> Result<(), Status> {
        if !self.state.enabled {
            return Ok(());
        }
        for c in &t.compare {
            self.read(&c.key, &c.range_end)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(PbTxnOpRequest::RequestRange(r)) => self.read(&r.key, &r.range_end)?,
                Some(PbTxnOpRequest::RequestPut(p)) => self.put(p)?,
                Some(PbTxnOpRequest::RequestDeleteRange(d)) => self.delete(d)?,
                Some(PbTxnOpRequest::RequestTxn(inner)) => self.txn(inner)?,
                None => {}
            }
        }
        Ok(())
    }
}
