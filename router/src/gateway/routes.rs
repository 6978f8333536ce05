//! The gateway's route table: etcd's HTTP paths (the `google.api.http`
//! bindings of etcd's protos) and the gRPC method each one calls. Message
//! types and streaming come from the descriptor set, so a new service is a
//! few lines here plus its .proto in the descriptor set (`proto/build.rs`).

use std::collections::HashMap;

use prost_reflect::{DescriptorPool, MessageDescriptor};

/// What the gateway does with the request stream of a client-streaming call
/// once the body's messages are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// Half-close at once (etcd's gateway does; a keep-alive stream then ends
    /// after its answers).
    AfterBody,
    /// Keep it open until the HTTP client goes: etcd's watch goes on after a
    /// half-close, Strata's Watch stops every watcher of the stream.
    WhenClientGoes,
}

/// `(HTTP path, gRPC method as "package.Service/Method")`: etcd's bindings.
#[rustfmt::skip]
pub const ROUTES: &[(&str, &str)] = &[
    ("/v3/kv/range",                        "etcdserverpb.KV/Range"),
    ("/v3/kv/put",                          "etcdserverpb.KV/Put"),
    ("/v3/kv/deleterange",                  "etcdserverpb.KV/DeleteRange"),
    ("/v3/kv/txn",                          "etcdserverpb.KV/Txn"),
    ("/v3/kv/compaction",                   "etcdserverpb.KV/Compact"),
    ("/v3/watch",                           "etcdserverpb.Watch/Watch"),
    ("/v3/lease/grant",                     "etcdserverpb.Lease/LeaseGrant"),
    ("/v3/lease/revoke",                    "etcdserverpb.Lease/LeaseRevoke"),
    ("/v3/kv/lease/revoke",                 "etcdserverpb.Lease/LeaseRevoke"),
    ("/v3/lease/keepalive",                 "etcdserverpb.Lease/LeaseKeepAlive"),
    ("/v3/lease/timetolive",                "etcdserverpb.Lease/LeaseTimeToLive"),
    ("/v3/kv/lease/timetolive",             "etcdserverpb.Lease/LeaseTimeToLive"),
    ("/v3/lease/leases",                    "etcdserverpb.Lease/LeaseLeases"),
    ("/v3/kv/lease/leases",                 "etcdserverpb.Lease/LeaseLeases"),
    ("/v3/cluster/member/add",              "etcdserverpb.Cluster/MemberAdd"),
    ("/v3/cluster/member/remove",           "etcdserverpb.Cluster/MemberRemove"),
    ("/v3/cluster/member/update",           "etcdserverpb.Cluster/MemberUpdate"),
    ("/v3/cluster/member/list",             "etcdserverpb.Cluster/MemberList"),
    ("/v3/cluster/member/promote",          "etcdserverpb.Cluster/MemberPromote"),
    ("/v3/maintenance/alarm",               "etcdserverpb.Maintenance/Alarm"),
    ("/v3/maintenance/status",              "etcdserverpb.Maintenance/Status"),
    ("/v3/maintenance/defragment",          "etcdserverpb.Maintenance/Defragment"),
    ("/v3/maintenance/hash",                "etcdserverpb.Maintenance/Hash"),
    ("/v3/maintenance/hashkv",              "etcdserverpb.Maintenance/HashKV"),
    ("/v3/maintenance/snapshot",            "etcdserverpb.Maintenance/Snapshot"),
    ("/v3/maintenance/transfer-leadership", "etcdserverpb.Maintenance/MoveLeader"),
    ("/v3/maintenance/downgrade",           "etcdserverpb.Maintenance/Downgrade"),
    ("/v3/auth/enable",                     "etcdserverpb.Auth/AuthEnable"),
    ("/v3/auth/disable",                    "etcdserverpb.Auth/AuthDisable"),
    ("/v3/auth/status",                     "etcdserverpb.Auth/AuthStatus"),
    ("/v3/auth/authenticate",               "etcdserverpb.Auth/Authenticate"),
    ("/v3/auth/user/add",                   "etcdserverpb.Auth/UserAdd"),
    ("/v3/auth/user/get",                   "etcdserverpb.Auth/UserGet"),
    ("/v3/auth/user/list",                  "etcdserverpb.Auth/UserList"),
    ("/v3/auth/user/delete",                "etcdserverpb.Auth/UserDelete"),
    ("/v3/auth/user/changepw",              "etcdserverpb.Auth/UserChangePassword"),
    ("/v3/auth/user/grant",                 "etcdserverpb.Auth/UserGrantRole"),
    ("/v3/auth/user/revoke",                "etcdserverpb.Auth/UserRevokeRole"),
    ("/v3/auth/role/add",                   "etcdserverpb.Auth/RoleAdd"),
    ("/v3/auth/role/get",                   "etcdserverpb.Auth/RoleGet"),
    ("/v3/auth/role/list",                  "etcdserverpb.Auth/RoleList"),
    ("/v3/auth/role/delete",                "etcdserverpb.Auth/RoleDelete"),
    ("/v3/auth/role/grant",                 "etcdserverpb.Auth/RoleGrantPermission"),
    ("/v3/auth/role/revoke",                "etcdserverpb.Auth/RoleRevokePermission"),
    ("/v3/lock/lock",                       "v3lockpb.Lock/Lock"),
    ("/v3/lock/unlock",                     "v3lockpb.Lock/Unlock"),
    ("/v3/election/campaign",               "v3electionpb.Election/Campaign"),
    ("/v3/election/proclaim",               "v3electionpb.Election/Proclaim"),
    ("/v3/election/leader",                 "v3electionpb.Election/Leader"),
    ("/v3/election/observe",                "v3electionpb.Election/Observe"),
    ("/v3/election/resign",                 "v3electionpb.Election/Resign"),
];

/// Client-streaming methods whose request stream stays open until the HTTP
/// client goes (`Close::WhenClientGoes`); every other closes after the body.
pub const KEEP_OPEN: &[&str] = &["etcdserverpb.Watch/Watch"];

/// One HTTP path, resolved against the descriptor set.
#[derive(Clone, Debug)]
pub struct Route {
    /// The gRPC request path, `/package.Service/Method`.
    pub grpc_path: String,
    pub input: MessageDescriptor,
    pub output: MessageDescriptor,
    pub client_streaming: bool,
    pub server_streaming: bool,
    pub close: Close,
}

/// Resolves every entry of `routes` in `pool`; an entry naming a method the
/// descriptor set lacks is an error (a build mistake, caught at start and by
/// the unit tests).
pub fn resolve(
    pool: &DescriptorPool,
    routes: &[(&str, &str)],
) -> Result<HashMap<String, Route>, String> {
    let mut out = HashMap::with_capacity(routes.len());
    for &(http_path, method) in routes {
        let close = if KEEP_OPEN.contains(&method) {
            Close::WhenClientGoes
        } else {
            Close::AfterBody
        };
        let (service, name) = method
            .split_once('/')
            .ok_or_else(|| format!("gateway route {http_path}: bad method {method:?}"))?;
        let m = pool
            .get_service_by_name(service)
            .and_then(|s| s.methods().find(|m| m.name() == name))
            .ok_or_else(|| {
                format!("gateway route {http_path}: no method {method} in the descriptor set")
            })?;
        let route = Route {
            grpc_path: format!("/{method}"),
            input: m.input(),
            output: m.output(),
            client_streaming: m.is_client_streaming(),
            server_streaming: m.is_server_streaming(),
            close,
        };
        if out.insert(http_path.to_string(), route).is_some() {
            return Err(format!("gateway route {http_path} listed twice"));
        }
    }
    Ok(out)
}
