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

/// `(HTTP path, gRPC method as "package.Service/Method", Close)`.
pub const ROUTES: &[(&str, &str, Close)] = &[
    ("/v3/kv/range", "etcdserverpb.KV/Range", Close::AfterBody),
    ("/v3/kv/put", "etcdserverpb.KV/Put", Close::AfterBody),
    (
        "/v3/kv/deleterange",
        "etcdserverpb.KV/DeleteRange",
        Close::AfterBody,
    ),
    ("/v3/kv/txn", "etcdserverpb.KV/Txn", Close::AfterBody),
    (
        "/v3/kv/compaction",
        "etcdserverpb.KV/Compact",
        Close::AfterBody,
    ),
    (
        "/v3/watch",
        "etcdserverpb.Watch/Watch",
        Close::WhenClientGoes,
    ),
    (
        "/v3/lease/grant",
        "etcdserverpb.Lease/LeaseGrant",
        Close::AfterBody,
    ),
    (
        "/v3/lease/revoke",
        "etcdserverpb.Lease/LeaseRevoke",
        Close::AfterBody,
    ),
    (
        "/v3/kv/lease/revoke",
        "etcdserverpb.Lease/LeaseRevoke",
        Close::AfterBody,
    ),
    (
        "/v3/lease/keepalive",
        "etcdserverpb.Lease/LeaseKeepAlive",
        Close::AfterBody,
    ),
    (
        "/v3/lease/timetolive",
        "etcdserverpb.Lease/LeaseTimeToLive",
        Close::AfterBody,
    ),
    (
        "/v3/kv/lease/timetolive",
        "etcdserverpb.Lease/LeaseTimeToLive",
        Close::AfterBody,
    ),
    (
        "/v3/lease/leases",
        "etcdserverpb.Lease/LeaseLeases",
        Close::AfterBody,
    ),
    (
        "/v3/kv/lease/leases",
        "etcdserverpb.Lease/LeaseLeases",
        Close::AfterBody,
    ),
    (
        "/v3/cluster/member/add",
        "etcdserverpb.Cluster/MemberAdd",
        Close::AfterBody,
    ),
    (
        "/v3/cluster/member/remove",
        "etcdserverpb.Cluster/MemberRemove",
        Close::AfterBody,
    ),
    (
        "/v3/cluster/member/update",
        "etcdserverpb.Cluster/MemberUpdate",
        Close::AfterBody,
    ),
    (
        "/v3/cluster/member/list",
        "etcdserverpb.Cluster/MemberList",
        Close::AfterBody,
    ),
    (
        "/v3/cluster/member/promote",
        "etcdserverpb.Cluster/MemberPromote",
        Close::AfterBody,
    ),
    (
        "/v3/maintenance/alarm",
        "etcdserverpb.Maintenance/Alarm",
        Close::AfterBody,
    ),
    (
        "/v3/maintenance/status",
        "etcdserverpb.Maintenance/Status",
        Close::AfterBody,
    ),
    (
        "/v3/maintenance/defragment",
        "etcdserverpb.Maintenance/Defragment",
        Close::AfterBody,
    ),
    (
        "/v3/maintenance/hash",
        "etcdserverpb.Maintenance/Hash",
        Close::AfterBody,
    ),
    (
        "/v3/maintenance/hashkv",
        "etcdserverpb.Maintenance/HashKV",
        Close::AfterBody,
    ),
    (
        "/v3/maintenance/snapshot",
        "etcdserverpb.Maintenance/Snapshot",
        Close::AfterBody,
    ),
    (
        "/v3/maintenance/transfer-leadership",
        "etcdserverpb.Maintenance/MoveLeader",
        Close::AfterBody,
    ),
    (
        "/v3/maintenance/downgrade",
        "etcdserverpb.Maintenance/Downgrade",
        Close::AfterBody,
    ),
    (
        "/v3/auth/enable",
        "etcdserverpb.Auth/AuthEnable",
        Close::AfterBody,
    ),
    (
        "/v3/auth/disable",
        "etcdserverpb.Auth/AuthDisable",
        Close::AfterBody,
    ),
    (
        "/v3/auth/status",
        "etcdserverpb.Auth/AuthStatus",
        Close::AfterBody,
    ),
    (
        "/v3/auth/authenticate",
        "etcdserverpb.Auth/Authenticate",
        Close::AfterBody,
    ),
    (
        "/v3/auth/user/add",
        "etcdserverpb.Auth/UserAdd",
        Close::AfterBody,
    ),
    (
        "/v3/auth/user/get",
        "etcdserverpb.Auth/UserGet",
        Close::AfterBody,
    ),
    (
        "/v3/auth/user/list",
        "etcdserverpb.Auth/UserList",
        Close::AfterBody,
    ),
    (
        "/v3/auth/user/delete",
        "etcdserverpb.Auth/UserDelete",
        Close::AfterBody,
    ),
    (
        "/v3/auth/user/changepw",
        "etcdserverpb.Auth/UserChangePassword",
        Close::AfterBody,
    ),
    (
        "/v3/auth/user/grant",
        "etcdserverpb.Auth/UserGrantRole",
        Close::AfterBody,
    ),
    (
        "/v3/auth/user/revoke",
        "etcdserverpb.Auth/UserRevokeRole",
        Close::AfterBody,
    ),
    (
        "/v3/auth/role/add",
        "etcdserverpb.Auth/RoleAdd",
        Close::AfterBody,
    ),
    (
        "/v3/auth/role/get",
        "etcdserverpb.Auth/RoleGet",
        Close::AfterBody,
    ),
    (
        "/v3/auth/role/list",
        "etcdserverpb.Auth/RoleList",
        Close::AfterBody,
    ),
    (
        "/v3/auth/role/delete",
        "etcdserverpb.Auth/RoleDelete",
        Close::AfterBody,
    ),
    (
        "/v3/auth/role/grant",
        "etcdserverpb.Auth/RoleGrantPermission",
        Close::AfterBody,
    ),
    (
        "/v3/auth/role/revoke",
        "etcdserverpb.Auth/RoleRevokePermission",
        Close::AfterBody,
    ),
];

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
    routes: &[(&str, &str, Close)],
) -> Result<HashMap<String, Route>, String> {
    let mut out = HashMap::with_capacity(routes.len());
    for &(http_path, method, close) in routes {
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
