//! Running one Strata component (placement, node or router) as a process.
//!
//! Shared by `strata node|placement|router` and the thin binaries `strata-node`,
//! `strata-placement` and `strata-router`. Those crates cannot depend on the root
//! package (it depends on them), so they include this file with
//! `#[path = "../../src/component.rs"] mod component;`: keep it free of anything but
//! `std`, `tokio`, `tracing-subscriber` and `anyhow`, which every component crate has.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

pub const NODE_ABOUT: &str =
    "Strata storage node: hosts range replicas, each one a Raft group member";
pub const NODE_LONG_ABOUT: &str = "\
Strata storage node: hosts range replicas, each one a Raft group member.

A node keeps all its replicas in one RocksDB under --data-dir (raft log, MVCC data,
metadata), registers with the placement service at --placement, and serves the
internal gRPC API (raft transport, routed KV requests, range feeds) on --listen.
Clients never talk to nodes directly: they connect to a router.

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level.
The process runs until SIGTERM or Ctrl-C.";

pub const PLACEMENT_ABOUT: &str =
    "Strata placement service: node registry, range directory and revision oracle";
pub const PLACEMENT_LONG_ABOUT: &str = "\
Strata placement service: node registry, range directory and revision oracle.

Placement tracks which nodes are alive, which ranges exist and where their replicas
live, hands out the global revisions that order every write, and schedules replica
repair. It creates the first range once --replicas nodes have registered. Its state
is kept under --data-dir; nodes and routers find it through their --placement flag.

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level.
The process runs until SIGTERM or Ctrl-C.";

pub const ROUTER_ABOUT: &str =
    "Strata router: the stateless etcd v3 gRPC endpoint that clients connect to";
pub const ROUTER_LONG_ABOUT: &str = "\
Strata router: the stateless etcd v3 gRPC endpoint that clients connect to.

A router serves etcd's v3 API (KV, Watch, Lease, Cluster, Maintenance) on
--listen-client, so etcdctl and etcd client libraries work unchanged. It asks
placement (--placement) where ranges live and forwards each request to the range
leader, retrying on routing errors within --request-timeout. It keeps no state of
its own: run as many routers as you like.

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level.
The process runs until SIGTERM or Ctrl-C.";

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // `try_init`: a second initialisation in the same process is not an error.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Starts a component with `start` (its library's `run(config)`), then serves until
/// SIGTERM, SIGINT (Ctrl-C) or SIGHUP. Exits 0 after a signal, 1 if `start` fails.
pub fn serve<H, F>(name: &str, start: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<H>>,
{
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        // Install the handlers before starting, so that a signal arriving while the
        // component starts is not lost (and does not kill us with the default action).
        let mut signals = Signals::new()?;
        let handle = tokio::select! {
            h = start => h?,
            sig = signals.recv() => {
                eprintln!("{name}: received {sig} while starting, exiting");
                return Ok(());
            }
        };
        eprintln!(
            "{name}: serving (pid {}); stop with SIGTERM or Ctrl-C",
            std::process::id()
        );
        let sig = signals.recv().await;
        eprintln!("{name}: received {sig}, shutting down");
        drop(handle);
        anyhow::Ok(())
    });
    // Background tasks (servers, raft loops) end with the runtime; don't wait forever
    // on a blocking task that does not.
    rt.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The termination signals a component or `strata dev` reacts to.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs handlers for SIGTERM, SIGINT and SIGHUP; needs a tokio runtime.
    pub fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next signal and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}
