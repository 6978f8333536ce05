//! etcd's authentication state (users, roles, key permissions) as a pure
//! state machine, shared by placement (which replicates it: one
//! `Command::Auth` per change) and routers (which cache it and check every
//! request against it).
//!
//! The rules follow etcd's auth store: a change is refused with etcd's exact
//! error; while auth is enabled every management change needs a caller with
//! the `root` role (checked here, at apply, so a caller whose root role was
//! revoked concurrently is refused on every replica alike); `root` can be
//! neither deleted nor stripped of its role while auth is enabled. Passwords
//! arrive here already hashed (bcrypt, by the router): no password ever
//! reaches placement's raft log.

mod perms;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tonic::{Code, Status};

pub use perms::{permitted, valid_permission_range, Access};

/// The built-in administrator user and role.
pub const ROOT: &str = "root";

/// etcd's `authpb.Permission.Type`.
pub const READ: i32 = 0;
pub const WRITE: i32 = 1;
pub const READWRITE: i32 = 2;

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
pub struct AuthState {
    pub enabled: bool,
    /// Bumped by every change that succeeded (enable and disable included):
    /// a router's cache is current when its revision matches.
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
    /// The key tokens are signed with; replaced at every enable, so disabling
    /// auth invalidates every token handed out before.
    #[serde(default)]
    pub secret: Vec<u8>,
}

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
pub struct User {
    /// bcrypt hash (modular crypt format); `None` for a user added with
    /// `--no-password` (it can authenticate only by client certificate).
    pub password: Option<String>,
    pub roles: BTreeSet<String>,
    /// Bumped when the password changes: tokens carry it, so a token issued
    /// before the change stops working (etcd invalidates the user's tokens).
    pub generation: u64,
}

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq)]
pub struct Role {
    /// Sorted by key; at most one per (key, range_end).
    pub perms: Vec<Perm>,
}

#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
pub struct Perm {
    pub key: Vec<u8>,
    /// Empty: the single key; `[0]`: every key from `key` on; else `[key, range_end)`.
    pub range_end: Vec<u8>,
    pub perm_type: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum AuthCommand {
    Enable {
        secret: Vec<u8>,
    },
    Disable,
    UserAdd {
        name: String,
        password: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password: Option<String>,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        name: String,
        perm: Option<Perm>,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

/// Why a change or a check was refused: etcd's errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    RootUserNotExist,
    RootRoleNotExist,
    UserAlreadyExist,
    UserEmpty,
    UserNotFound,
    RoleAlreadyExist,
    RoleNotFound,
    RoleEmpty,
    AuthFailed,
    PermissionNotGiven,
    PermissionDenied,
    RoleNotGranted,
    PermissionNotGranted,
    AuthNotEnabled,
    InvalidAuthToken,
    InvalidAuthMgmt,
    AuthOldRevision,
}

impl AuthError {
    /// etcd's gRPC status for it (code and message, as clients match them).
    pub fn status(self) -> Status {
        use AuthError::*;
        let (code, msg) = match self {
            RootUserNotExist => (Code::FailedPrecondition, "root user does not exist"),
            RootRoleNotExist => (
                Code::FailedPrecondition,
                "root user does not have root role",
            ),
            UserAlreadyExist => (Code::FailedPrecondition, "user name already exists"),
            UserEmpty => (Code::InvalidArgument, "user name is empty"),
            UserNotFound => (Code::FailedPrecondition, "user name not found"),
            RoleAlreadyExist => (Code::FailedPrecondition, "role name already exists"),
            RoleNotFound => (Code::FailedPrecondition, "role name not found"),
            RoleEmpty => (Code::InvalidArgument, "role name is empty"),
            AuthFailed => (
                Code::InvalidArgument,
                "authentication failed, invalid user ID or password",
            ),
            PermissionNotGiven => (Code::InvalidArgument, "permission not given"),
            PermissionDenied => (Code::PermissionDenied, "permission denied"),
            RoleNotGranted => (Code::FailedPrecondition, "role is not granted to the user"),
            PermissionNotGranted => (
                Code::FailedPrecondition,
                "permission is not granted to the role",
            ),
            AuthNotEnabled => (Code::FailedPrecondition, "authentication is not enabled"),
            InvalidAuthToken => (Code::Unauthenticated, "invalid auth token"),
            InvalidAuthMgmt => (Code::InvalidArgument, "invalid auth management"),
            AuthOldRevision => (Code::InvalidArgument, "revision of auth store is old"),
        };
        Status::new(code, format!("etcdserver: {msg}"))
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        e.status()
    }
}

impl User {
    pub fn is_root(&self) -> bool {
        self.roles.contains(ROOT)
    }
}

impl AuthState {
    /// Is `caller` allowed to administer (etcd's `IsAdminPermitted`)? Always
    /// while auth is disabled.
    pub fn admin(&self, caller: Option<&str>) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let name = caller
            .filter(|c| !c.is_empty())
            .ok_or(AuthError::UserEmpty)?;
        let user = self.users.get(name).ok_or(AuthError::UserNotFound)?;
        if user.is_root() {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// Applies one change made by `caller` (the authenticated user name the
    /// router vouches for; `None` when the request carried none). Bumps the
    /// revision when it succeeded.
    pub fn apply(&mut self, cmd: &AuthCommand, caller: Option<&str>) -> Result<(), AuthError> {
        self.admin(caller)?;
        self.change(cmd)?;
        self.revision = self.revision.saturating_add(1);
        Ok(())
    }

    fn change(&mut self, cmd: &AuthCommand) -> Result<(), AuthError> {
        use AuthCommand::*;
        match cmd {
            Enable { secret } => {
                if self.enabled {
                    return Ok(());
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserNotExist)?;
                if !root.is_root() {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
                self.secret = secret.clone();
            }
            Disable => self.enabled = false,
            UserAdd { name, password } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                let user = User {
                    password: password.clone(),
                    ..User::default()
                };
                self.users.insert(name.clone(), user);
            }
            UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(AuthError::UserNotFound)?;
            }
            UserChangePassword { name, password } => {
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                if user.password.is_some() {
                    user.password = password.clone();
                }
                user.generation = user.generation.saturating_add(1);
            }
            UserGrantRole { user, role } => {
                let u = self.users.get(user).ok_or(AuthError::UserNotFound)?;
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                if u.roles.contains(role) {
                    return Ok(());
                }
                if let Some(u) = self.users.get_mut(user) {
                    u.roles.insert(role.clone());
                }
            }
            UserRevokeRole { name, role } => {
                if self.enabled && name == ROOT && role == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let u = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                if !u.roles.remove(role) {
                    return Err(AuthError::RoleNotGranted);
                }
            }
            RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(name.clone(), Role::default());
            }
            RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
                for u in self.users.values_mut() {
                    u.roles.remove(name);
                }
            }
            RoleGrantPermission { name, perm } => {
                let perm = perm.as_ref().ok_or(AuthError::PermissionNotGiven)?;
                if !valid_permission_range(&perm.key, &perm.range_end)
                    || !(READ..=READWRITE).contains(&perm.perm_type)
                {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let role = self.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
                match role
                    .perms
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.range_end == perm.range_end)
                {
                    Some(p) => p.perm_type = perm.perm_type,
                    None => {
                        role.perms.push(perm.clone());
                        role.perms.sort_by(|a, b| a.key.cmp(&b.key));
                    }
                }
            }
            RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let r = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = r.perms.len();
                r.perms
                    .retain(|p| !(p.key == *key && p.range_end == *range_end));
                if r.perms.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
            }
        }
        Ok(())
    }

    /// Does `user` hold `access` on `[key, range_end)` (etcd's rules for
    /// `range_end`)? Root holds everything; so does everyone while auth is
    /// disabled.
    pub fn check(
        &self,
        user: &str,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        let u = self.users.get(user).ok_or(AuthError::PermissionDenied)?;
        if u.is_root() {
            return Ok(());
        }
        let perms = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.perms.iter());
        if permitted(perms, key, range_end, access) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// `RoleGet`'s permissions. (etcd 3.4 lists the root role's stored ones,
    /// none unless granted; root's access to every key is implicit.)
    pub fn role_perms(&self, name: &str) -> Result<Vec<Perm>, AuthError> {
        Ok(self
            .roles
            .get(name)
            .ok_or(AuthError::RoleNotFound)?
            .perms
            .clone())
    }
}
