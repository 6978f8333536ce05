//! Harness for the etcd-compatibility integration tests.
//!
//! `STRATA_TEST_TARGET` selects the server under test:
//! - unset or `strata`: `strata dev` (the binary of this package), a whole local
//!   cluster (placement + 3 nodes + router) in one process tree;
//! - `etcd`: a real single-member etcd (`/usr/bin/etcd`, or `STRATA_TEST_ETCD_BIN`),
//!   used to check that every expectation in these tests is etcd's true behaviour.
//!
//! Every server runs on loopback with free ports and a temporary data directory, in
//! its own process group; it is stopped on drop (or, for the per-binary shared
//! cluster, at process exit), and as a last resort the kernel kills it when the test
//! process dies (`PR_SET_PDEATHSIG`). Every wait here is bounded.
//!
//! `STRATA_TEST_KEEP=1` keeps the temporary directories (logs, data) for debugging;
//! their paths are printed.
//!
//! Servers are in `cluster.rs` (`components.rs`: one placement replica or router
//! killed and restarted), child-process plumbing in `process.rs` (both
//! re-exported here); this file holds the shared constants and test helpers.

#![allow(dead_code)]

mod cluster;
mod components;
pub mod failover;
mod process;
pub mod rawgrpc;
mod tls;

// Not every test binary uses every item.
#[allow(unused_imports)]
pub use cluster::{shared, start, start_strata_prepared, start_strata_with, Cluster};
#[allow(unused_imports)]
pub use components::placement_leader;
#[allow(unused_imports)]
pub use process::{run_bounded, Background};
#[allow(unused_imports)]
pub use tls::{client_url, make_certs, TlsPaths};

use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping server gets after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-request timeout of the clients handed to tests (unary calls).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Default bound for one etcdctl invocation.
pub const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound for one receive on a watch stream.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// Progress-notify interval configured on the server (both targets).
pub const PROGRESS_NOTIFY_INTERVAL_SECS: u64 = 1;
/// Environment variable that marks every process of one test server.
const MARKER_VAR: &str = "STRATA_TEST_SERVER_ID";
/// Ports `strata dev --base-port B` may use: B..=B+20.
const STRATA_PORT_SPAN: u16 = 21;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Strata,
    Etcd,
}

impl Target {
    pub fn from_env() -> Target {
        match std::env::var("STRATA_TEST_TARGET") {
            Err(_) => Target::Strata,
            Ok(v) if v.is_empty() || v == "strata" => Target::Strata,
            Ok(v) if v == "etcd" => Target::Etcd,
            Ok(v) => panic!("unknown STRATA_TEST_TARGET={v:?} (expected `strata` or `etcd`)"),
        }
    }
}

/// A key prefix unique to this test process and `name`.
pub fn prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{name}/{}-{}/",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `(code, message)` of a gRPC error, e.g. `("OutOfRange", "etcdserver: ...")`.
pub fn grpc_error(e: &etcd_client::Error) -> (String, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (format!("{:?}", s.code()), s.message().to_string()),
        other => panic!("expected a gRPC status error, got {other:?}"),
    }
}

/// Asserts that `r` failed with exactly this gRPC code (`tonic::Code` variant name)
/// and message.
#[track_caller]
pub fn assert_grpc_err<T: Debug>(r: Result<T, etcd_client::Error>, code: &str, message: &str) {
    match r {
        Ok(v) => panic!("expected error {code} {message:?}, got Ok({v:?})"),
        Err(e) => {
            let (c, m) = grpc_error(&e);
            assert_eq!(
                (c.as_str(), m.as_str()),
                (code, message),
                "unexpected error: {e:?}"
            );
        }
    }
}

/// The store's current revision, from the header of a read.
pub async fn current_revision(c: &mut etcd_client::Client) -> i64 {
    c.get("x", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
}

/// Runs `f` with a bound; panics with `what` if it takes longer.
pub async fn within<F: Future>(limit: Duration, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
pub const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
pub const TOO_LARGE: &str = "etcdserver: request is too large";
pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";

/// Decodes standard base64 (with or without padding), as in etcdctl's `-w json`.
pub fn base64_decode(s: &str) -> Vec<u8> {
    fn val(c: u8) -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 byte {c:?}"),
        }
    }
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// Asserts that an etcdctl run succeeded; returns its stdout.
#[track_caller]
pub fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "etcdctl failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}
