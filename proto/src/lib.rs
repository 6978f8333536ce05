//! Wire types: Strata's internal gRPC services and storage records (generated
//! from `proto/strata.proto`), plus re-exports of etcd's v3 API types from the
//! `etcd-client` crate (`build-server` feature).

#[allow(clippy::all, clippy::pedantic)]
pub mod strata {
    tonic::include_proto!("strata");
}

/// etcd v3 API messages and server traits.
pub use etcd_client::proto as etcd;

/// etcd's Auth service, generated from `proto/etcd/` (the etcd-client crate
/// does not export every type its Auth server trait names).
#[allow(clippy::all, clippy::pedantic)]
pub mod etcd_auth {
    pub mod authpb {
        tonic::include_proto!("authpb");
    }
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    pub mod v3lockpb {
        tonic::include_proto!("v3lockpb");
    }
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
    }
    pub use etcdserverpb::auth_server::{Auth as AuthService, AuthServer};
    pub use etcdserverpb::*;
}

/// etcd's Lock service (`v3lockpb`, generated from `proto/etcd/v3lock.proto`:
/// the etcd-client crate ships only its client).
pub mod etcd_lock {
    pub use crate::etcd_auth::v3lockpb::lock_server::{Lock as LockService, LockServer};
    pub use crate::etcd_auth::v3lockpb::*;
}

/// etcd's Election service (`v3electionpb`, from `proto/etcd/v3election.proto`).
pub mod etcd_election {
    pub use crate::etcd_auth::mvccpb::KeyValue;
    pub use crate::etcd_auth::v3electionpb::election_server::{
        Election as ElectionService, ElectionServer,
    };
    pub use crate::etcd_auth::v3electionpb::*;
}

pub use prost::Message;

/// The encoded `FileDescriptorSet` of etcd's services as the HTTP/JSON gateway
/// maps them (`proto/etcd/rpc.proto` and its imports): message and field names
/// for the JSON mapping.
pub const GATEWAY_DESCRIPTORS: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/gateway_descriptors.bin"));

pub mod answers;
pub mod auth;
pub mod errors;
pub mod etcdutil;
pub mod failpoint;
pub mod oracle;
pub mod placement_client;
pub mod telemetry;
pub mod tls;
pub mod xtxn;
