//! The node's typed errors. Routing errors are retryable: the router resends
//! the request to the right replica (they become a `RouteError` in exactly
//! one place, `service.rs`). `Etcd` carries an error for the client as etcd
//! would send it (code and message), unchanged.

use tonic::Status;

#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// This replica does not lead (or no longer leads in the term a request
    /// was prepared in). The request certainly did not apply.
    #[error("not leader")]
    NotLeader,
    /// The request's keys or epoch do not match the range (it split or
    /// changed); it certainly did not apply.
    #[error("epoch not match")]
    EpochNotMatch,
    #[error("range not found")]
    RangeNotFound,
    /// The range is held by a cross-range txn (`txn/`), or the node's
    /// storage is close to stalling writes (`crate::pressure`); the reason
    /// says which. The request certainly did not apply and may be sent
    /// again shortly.
    #[error("{0}")]
    Busy(&'static str),
    #[error("{}", .0.message())]
    Etcd(Status),
}

impl From<Status> for NodeError {
    fn from(s: Status) -> Self {
        NodeError::Etcd(s)
    }
}

impl NodeError {
    /// The range is held by a cross-range txn.
    pub fn held() -> Self {
        NodeError::Busy("range held by a transaction")
    }

    /// Whether the request certainly never applied, so the router may send
    /// it again elsewhere.
    pub fn is_route(&self) -> bool {
        !matches!(self, NodeError::Etcd(_))
    }

    /// The error as a gRPC status, for paths without a route error channel.
    pub fn into_status(self) -> Status {
        match self {
            NodeError::NotLeader => Status::unavailable("strata: not leader"),
            NodeError::EpochNotMatch => Status::unavailable("strata: epoch not match"),
            NodeError::RangeNotFound => Status::not_found("strata: range not found"),
            NodeError::Busy(why) => Status::unavailable(format!("strata: {why}")),
            NodeError::Etcd(s) => s,
        }
    }
}

pub type NodeResult<T> = Result<T, NodeError>;
