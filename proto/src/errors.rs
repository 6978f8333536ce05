//! etcd's exact gRPC errors (clients match on code and message).
use tonic::{Code, Status};

fn s(code: Code, msg: &str) -> Status {
    Status::new(code, msg)
}
pub fn compacted() -> Status {
    s(
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    )
}
pub fn future_rev() -> Status {
    s(
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    )
}
pub fn key_not_found() -> Status {
    s(Code::InvalidArgument, "etcdserver: key not found")
}
pub fn empty_key() -> Status {
    s(Code::InvalidArgument, "etcdserver: key is not provided")
}
pub fn too_many_ops() -> Status {
    s(
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    )
}
pub fn duplicate_key() -> Status {
    s(
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    )
}
pub fn request_too_large() -> Status {
    s(Code::InvalidArgument, "etcdserver: request is too large")
}
pub fn lease_not_found() -> Status {
    s(Code::NotFound, "etcdserver: requested lease not found")
}
pub fn lease_exists() -> Status {
    s(Code::FailedPrecondition, "etcdserver: lease already exists")
}
pub fn too_many_requests() -> Status {
    s(Code::ResourceExhausted, "etcdserver: too many requests")
}
pub fn no_leader() -> Status {
    s(Code::Unavailable, "etcdserver: no leader")
}
pub fn timeout() -> Status {
    s(Code::Unavailable, "etcdserver: request timed out")
}
pub fn leader_changed() -> Status {
    s(Code::Unavailable, "etcdserver: leader changed")
}
/// Internal (never reaches a client): a request spans several ranges, so
/// the router runs it as a cross-range txn.
pub fn cross_range(what: &str) -> Status {
    s(
        Code::FailedPrecondition,
        &format!("strata: {what} spans several ranges"),
    )
}
pub fn is_cross_range(st: &Status) -> bool {
    st.code() == Code::FailedPrecondition && st.message().ends_with(" spans several ranges")
}
pub fn value_provided() -> Status {
    s(Code::InvalidArgument, "etcdserver: value is provided")
}
pub fn lease_provided() -> Status {
    s(Code::InvalidArgument, "etcdserver: lease is provided")
}
/// A write past the space quota, or while a NOSPACE alarm is active.
pub fn no_space() -> Status {
    s(
        Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    )
}
/// MoveLeader to a target that is not a member.
pub fn bad_leader_transferee() -> Status {
    s(
        Code::FailedPrecondition,
        "etcdserver: bad leader transferee",
    )
}

/// A request past the deadline its client gave (Go's context error, as
/// etcd's gRPC server reports it).
pub fn deadline_exceeded() -> Status {
    s(Code::DeadlineExceeded, "context deadline exceeded")
}
/// The same as etcd's Lock and Election services answer it (their
/// handlers return Go's context error, which gRPC reports as Unknown).
pub fn recipe_deadline_exceeded() -> Status {
    s(Code::Unknown, "context deadline exceeded")
}
/// etcd's Lock and Election services (v3lock, v3election) answer the errors
/// of clientv3's concurrency package; they are plain Go errors, so gRPC
/// reports them with code Unknown.
pub fn election_missing_leader_key() -> Status {
    s(Code::Unknown, "\"leader\" field must be provided")
}
pub fn election_not_leader() -> Status {
    s(Code::Unknown, "election: not leader")
}
pub fn election_no_leader() -> Status {
    s(Code::Unknown, "election: no leader")
}
pub fn mutex_session_expired() -> Status {
    s(Code::Unknown, "mutex: session is expired")
}
pub fn lost_watcher() -> Status {
    s(Code::Unknown, "lost watcher waiting for delete")
}

/// The metadata key of a placement replica's "not the leader" answer: the
/// leader's placement address, or empty when the replica knows none.
pub const PLACEMENT_LEADER_HINT: &str = "strata-placement-leader";

/// A placement replica that does not lead (or leads but cannot serve yet)
/// refuses every request, unexecuted, with Unavailable and a hint naming the
/// leader it knows of; placement clients (see `placement_client.rs`) retry
/// there. Safe to retry: nothing was done.
pub fn placement_not_leader(replica: u64, leader: Option<&str>) -> Status {
    let mut st = s(
        Code::Unavailable,
        &format!(
            "strata: placement replica {replica} is not the leader (leader: {})",
            leader.unwrap_or("unknown")
        ),
    );
    if let Ok(v) = leader.unwrap_or("").parse() {
        st.metadata_mut().insert(PLACEMENT_LEADER_HINT, v);
    }
    st
}

/// Is `st` a placement replica's "not the leader" answer? Returns the hinted
/// leader address (empty when unknown).
pub fn placement_leader_hint(st: &Status) -> Option<String> {
    let v = st.metadata().get(PLACEMENT_LEADER_HINT)?;
    Some(v.to_str().unwrap_or("").to_string())
}
