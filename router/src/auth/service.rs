//! etcd's Auth service: users, roles, permissions, enable/disable and
//! Authenticate. Changes go to placement (`Auth::change`); reads are answered
//! from the state fetched from placement at the time of the request.

use std::sync::Arc;

use strata_proto::auth::{AuthCommand, AuthError, AuthState, Perm};
use strata_proto::etcd_auth::authpb::Permission;
use strata_proto::etcd_auth::*;
use tonic::{Request, Response, Status};

use super::{Auth, Caller};
use crate::misc::Common;

pub struct AuthSvc {
    pub auth: Arc<Auth>,
    pub common: Common,
}

/// The largest password accepted (bcrypt reads at most 72 bytes; etcd sets
/// no limit, but every request here is bounded).
const MAX_PASSWORD_BYTES: usize = 4096;

impl AuthSvc {
    async fn header(&self) -> Option<ResponseHeader> {
        self.common.header().await.map(|h| ResponseHeader {
            cluster_id: h.cluster_id,
            member_id: h.member_id,
            revision: h.revision,
            raft_term: h.raft_term,
        })
    }

    /// The caller, checked against the state as placement has it now.
    async fn fresh<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        let state = self.auth.refresh().await?;
        self.auth
            .caller_in(state, req.metadata(), crate::tls_cn(req))
    }

    /// A change by the request's caller, refused here already when the caller
    /// is no administrator (placement checks again at apply). UserAdd and
    /// UserChangePassword check before hashing, then call `Auth::change`.
    async fn change<T>(&self, req: &Request<T>, cmd: AuthCommand) -> Result<(), Status> {
        let caller = self.fresh(req).await?;
        caller.admin()?;
        self.auth.change(cmd, &caller).await
    }

    /// bcrypt of `password` (off the async threads: ~50 ms at cost 10), or an
    /// etcd 3.5 client's own `hashed_password`.
    async fn hash(&self, password: String, hashed: String) -> Result<String, Status> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(Status::invalid_argument("strata: password too long"));
        }
        if !hashed.is_empty() {
            return hashed_password(&hashed);
        }
        let cost = self.auth.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("strata: bcrypt: {e}")))
    }
}

/// etcd's `hashed_password` field: the base64 of a bcrypt hash.
fn hashed_password(b64: &str) -> Result<String, Status> {
    use base64::Engine as _;
    let bad = || Status::invalid_argument("strata: hashed_password is not a base64 bcrypt hash");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    // Check it parses as a bcrypt hash (verify of anything fails cleanly).
    bcrypt::verify("", &s).map_err(|_| bad())?;
    Ok(s)
}

fn perm_of(p: Option<Permission>) -> Option<Perm> {
    p.map(|p| Perm {
        key: p.key,
        range_end: p.range_end,
        perm_type: p.perm_type,
    })
}

fn verify_password(state: &AuthState, name: &str, password: &str) -> Result<(), AuthError> {
    let user = state.users.get(name).ok_or(AuthError::AuthFailed)?;
    let hash = user.password.as_deref().ok_or(AuthError::AuthFailed)?;
    match bcrypt::verify(password, hash) {
        Ok(true) => Ok(()),
        _ => Err(AuthError::AuthFailed),
    }
}

macro_rules! answer {
    ($self:ident, $t:ident { $($f:ident: $v:expr),* }) => {
        Ok(Response::new($t { header: $self.header().await, $($f: $v),* }))
    };
}

#[tonic::async_trait]
impl AuthService for AuthSvc {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let secret: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        self.change(&req, AuthCommand::Enable { secret }).await?;
        answer!(self, AuthEnableResponse {})
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        self.change(&req, AuthCommand::Disable).await?;
        answer!(self, AuthDisableResponse {})
    }

    async fn auth_status(
        &self,
        _: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let st = self.auth.refresh().await?;
        answer!(
            self,
            AuthStatusResponse {
                enabled: st.enabled,
                auth_revision: st.revision
            }
        )
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let r = req.into_inner();
        let state = self.auth.refresh().await?;
        if !state.enabled {
            return Err(AuthError::AuthNotEnabled.into());
        }
        if r.password.len() > MAX_PASSWORD_BYTES {
            return Err(AuthError::AuthFailed.into());
        }
        let (st, name) = (state.clone(), r.name.clone());
        tokio::task::spawn_blocking(move || verify_password(&st, &name, &r.password))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        let token = self.auth.tokens.assign(&state, &r.name)?;
        answer!(self, AuthenticateResponse { token: token })
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let caller = self.fresh(&req).await?;
        caller.admin()?;
        let r = req.into_inner();
        let no_password = r.options.is_some_and(|o| o.no_password);
        let password = if no_password {
            None
        } else {
            Some(self.hash(r.password, r.hashed_password).await?)
        };
        let cmd = AuthCommand::UserAdd {
            name: r.name,
            password,
        };
        self.auth.change(cmd, &caller).await?;
        answer!(self, AuthUserAddResponse {})
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let caller = self.fresh(&req).await?;
        let name = &req.get_ref().name;
        if caller.user.as_deref() != Some(name.as_str()) {
            caller.admin()?;
        }
        let user = caller
            .state
            .users
            .get(name)
            .ok_or(AuthError::UserNotFound)?;
        answer!(
            self,
            AuthUserGetResponse {
                roles: user.roles.iter().cloned().collect()
            }
        )
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let caller = self.fresh(&req).await?;
        caller.admin()?;
        answer!(
            self,
            AuthUserListResponse {
                users: caller.state.users.keys().cloned().collect()
            }
        )
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let name = req.get_ref().name.clone();
        self.change(&req, AuthCommand::UserDelete { name }).await?;
        answer!(self, AuthUserDeleteResponse {})
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let caller = self.fresh(&req).await?;
        caller.admin()?;
        let r = req.into_inner();
        let password = Some(self.hash(r.password, r.hashed_password).await?);
        let cmd = AuthCommand::UserChangePassword {
            name: r.name,
            password,
        };
        self.auth.change(cmd, &caller).await?;
        answer!(self, AuthUserChangePasswordResponse {})
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let r = req.get_ref().clone();
        let cmd = AuthCommand::UserGrantRole {
            user: r.user,
            role: r.role,
        };
        self.change(&req, cmd).await?;
        answer!(self, AuthUserGrantRoleResponse {})
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let r = req.get_ref().clone();
        let cmd = AuthCommand::UserRevokeRole {
            name: r.name,
            role: r.role,
        };
        self.change(&req, cmd).await?;
        answer!(self, AuthUserRevokeRoleResponse {})
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let name = req.get_ref().name.clone();
        self.change(&req, AuthCommand::RoleAdd { name }).await?;
        answer!(self, AuthRoleAddResponse {})
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let caller = self.fresh(&req).await?;
        let role = &req.get_ref().role;
        let has_role = caller
            .user
            .as_ref()
            .and_then(|u| caller.state.users.get(u))
            .is_some_and(|u| u.roles.contains(role));
        if !has_role {
            caller.admin()?;
        }
        let perm = caller
            .state
            .role_perms(role)?
            .into_iter()
            .map(|p| Permission {
                perm_type: p.perm_type,
                key: p.key,
                range_end: p.range_end,
            })
            .collect();
        answer!(self, AuthRoleGetResponse { perm: perm })
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let caller = self.fresh(&req).await?;
        caller.admin()?;
        answer!(
            self,
            AuthRoleListResponse {
                roles: caller.state.roles.keys().cloned().collect()
            }
        )
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let name = req.get_ref().role.clone();
        self.change(&req, AuthCommand::RoleDelete { name }).await?;
        answer!(self, AuthRoleDeleteResponse {})
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let r = req.get_ref().clone();
        let cmd = AuthCommand::RoleGrantPermission {
            name: r.name,
            perm: perm_of(r.perm),
        };
        self.change(&req, cmd).await?;
        answer!(self, AuthRoleGrantPermissionResponse {})
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let r = req.get_ref().clone();
        let cmd = AuthCommand::RoleRevokePermission {
            role: r.role,
            key: r.key,
            range_end: r.range_end,
        };
        self.change(&req, cmd).await?;
        answer!(self, AuthRoleRevokePermissionResponse {})
    }
}
