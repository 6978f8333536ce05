//! etcd's auth state in placement: changes go through the raft group
//! (`Command::Auth`, checked and applied by `strata_proto::auth`), and routers
//! read the whole state, which they cache (it is small: users, roles and
//! their permissions).

use strata_proto::auth::AuthCommand;
use strata_proto::strata::{AuthChangeRequest, AuthStateReply, AuthStateRequest};
use tonic::Status;

use crate::service::PlacementService;
use crate::state::{Command, Outcome};

/// The largest auth change accepted (a permission's keys are etcd keys).
const MAX_AUTH_COMMAND_BYTES: usize = 64 * 1024;

impl PlacementService {
    pub async fn auth_change(&self, req: AuthChangeRequest) -> Result<AuthStateReply, Status> {
        self.serving()?;
        if req.command.len() > MAX_AUTH_COMMAND_BYTES {
            return Err(Status::invalid_argument("strata: auth change too large"));
        }
        let cmd: AuthCommand = serde_json::from_slice(&req.command)
            .map_err(|e| Status::invalid_argument(format!("strata: bad auth change: {e}")))?;
        let caller = Some(req.caller).filter(|c| !c.is_empty());
        match self.rep.propose(Command::Auth { cmd, caller }).await? {
            Outcome::Ok => self.auth_state(AuthStateRequest::default()),
            Outcome::AuthRefused(e) => Err(e.status()),
            other => Err(Status::internal(format!(
                "strata: unexpected auth outcome {other:?}"
            ))),
        }
    }

    pub fn auth_state(&self, req: AuthStateRequest) -> Result<AuthStateReply, Status> {
        self.serving()?;
        let st = self.rep.state();
        let revision = st.auth.revision;
        if req.known && req.known_revision == revision {
            return Ok(AuthStateReply {
                revision,
                state: Vec::new(),
            });
        }
        let state = serde_json::to_vec(&st.auth)
            .map_err(|e| Status::internal(format!("strata: auth state: {e}")))?;
        Ok(AuthStateReply { revision, state })
    }
}
