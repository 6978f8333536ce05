//! `strata robustness`: etcd's guarantees checked under faults, in the spirit of
//! etcd's `tests/robustness`. A run starts a real cluster (placement, nodes,
//! several routers), drives recorded traffic through the routers while a nemesis
//! injects faults, heals, takes a final read, and checks the history
//! (`check::check`): linearizability against an etcd model with revisions, etcd's
//! watch guarantees, durability of acknowledged writes.

pub mod check;
mod cluster;
pub mod history;
mod nemesis;
mod report;
mod run;
mod traffic;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

pub const ROBUSTNESS_ABOUT: &str =
    "Check etcd's guarantees under faults: recorded traffic, nemeses, history checkers";

pub const ROBUSTNESS_LONG_ABOUT: &str = "\
Check etcd's guarantees under faults, as etcd's own robustness tests do.

Each run starts a fresh cluster from this executable (--placement-replicas placement
replicas, --nodes storage nodes, --routers routers, on 127.0.0.1 from --base-port up)
under --dir, with tiny
split thresholds so the keyspace splits into many ranges during the run. Clients
(--clients, spread over the routers) send the --profile's requests and record each
one with its invoke and return time and outcome; watchers record every watch
response. Meanwhile the --nemesis injects faults, chosen and timed by the seed:

  kill             kill -9 and restart a node, a range leader's node, a router, or a
                   placement replica (half the time placement's leader)
  pause            SIGSTOP a node, router or placement replica (half the time the
                   leader) for 1-4 s, then SIGCONT
  partition        drop every packet to and from one node for 2-5 s (failpoint); one
                   time in four, cut the placement leader off its raft group instead
                   (clients still reach it: it must stop serving once its lease ends)
  leader-transfer  a storm of leader transfers of random ranges
  split            a storm of splits of random ranges, under load
  snapshot         cut a node off while its ranges split, so it catches up by snapshot
  failpoint        crash a node before/after its raft log fsync, mid-apply, mid-split,
                   mid-snapshot-install, then restart it
  all              any of the above, at random
  none             no faults

Then everything is healed, a final read taken, and the history checked:
linearizable reads and writes (every read equals the state at its revision, no read
misses a write that completed before it began, revisions follow real time, every
event is explained by a request), etcd's watch guarantees (ordered, unique, atomic,
reliable, resumable, bookmarkable, prev_kv, filters, event contents), durability of
acknowledged writes, revisions never going back for a client, and no process exiting
on its own. Each run prints its ops, outcomes, splits, faults and `violations: N`
(with the first violation and the requests that show it), and writes its history to
DIR/run-SEED/history.json (check it again with --check FILE). The exit code is
non-zero on any violation. The nodes' fault points need a build with the
`failpoints` feature (scripts/robustness.sh builds one).

--plant injects a known bug into the cluster (test-only failpoints) to show the
checkers catch it: stale-read (a node answers linearizable reads from older state),
drop-watch-event (a router drops watch events), reuse-revision (placement hands a
revision out twice).";

#[derive(Args, Debug, Clone)]
#[command(after_help = "Examples:
  scripts/robustness.sh --profile etcd --nemesis kill --duration 30s --seed 7
  scripts/robustness.sh --profile etcd,kubernetes --nemesis all --runs 10 --duration 60s
  strata robustness --check /tmp/strata-robustness/run-7/history.json")]
pub struct RobustnessArgs {
    /// Traffic profile(s): etcd, kubernetes (comma-separated: runs take turns)
    #[arg(long, default_value = "etcd")]
    pub profile: String,
    /// Nemesis (comma-separated: runs take turns); see above
    #[arg(long, default_value = "all")]
    pub nemesis: String,
    /// How long traffic and faults last in each run (e.g. 30s, 2m)
    #[arg(long, default_value = "30s", value_parser = strata_router::parse_duration)]
    pub duration: Duration,
    /// Seed of the first run (later runs: seed+1, ...); random when not given
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of runs
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
    /// Runs at the same time (each its own cluster and ports)
    #[arg(long, default_value_t = 1)]
    pub parallel: u32,
    /// Directory for the runs' data, logs and histories
    #[arg(long, default_value = "/tmp/strata-robustness")]
    pub dir: PathBuf,
    /// Storage nodes per cluster
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Replicas of placement's raft group per cluster: 1, 3 or 5
    #[arg(long, default_value_t = 3, value_parser = parse_placement_replicas)]
    pub placement_replicas: usize,
    /// Routers per cluster (clients and watchers spread over them)
    #[arg(long, default_value_t = 2)]
    pub routers: usize,
    /// Concurrent clients
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// Keys the profile writes
    #[arg(long, default_value_t = 300)]
    pub keys: u32,
    /// Split a range once it holds this many keys
    #[arg(long, default_value_t = 24)]
    pub split_keys: u64,
    /// First port to try (each run takes placement replicas + 2×nodes + routers
    /// consecutive free ports; parallel runs start that many, at least 20,
    /// apart). Keep them below the kernel's
    /// ephemeral range (ip_local_port_range, usually from 32768): an outgoing
    /// connection may take a port there while its process is down, and the
    /// restarted process could not listen on it again
    #[arg(long, default_value_t = 21000)]
    pub base_port: u16,
    /// Plant a known bug to prove the checkers catch it: stale-read,
    /// drop-watch-event, reuse-revision
    #[arg(long)]
    pub plant: Option<String>,
    /// TLS everywhere: a throwaway CA and certificates under DIR/tls/, routers'
    /// client ports with client certificates required, mutual TLS on internal
    /// links; every client of the run uses them
    #[arg(long)]
    pub tls: bool,
    /// Keep each run's data directories (by default only history.json and logs stay)
    #[arg(long)]
    pub keep: bool,
    /// Check a recorded history (a history.json) instead of running
    #[arg(long, value_name = "FILE")]
    pub check: Option<PathBuf>,
}

fn parse_placement_replicas(s: &str) -> Result<usize, String> {
    match s.trim() {
        "1" => Ok(1),
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!(
            "{s:?}: placement's raft group has 1, 3 or 5 replicas"
        )),
    }
}

pub fn main(args: RobustnessArgs) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strata robustness: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run::main(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("strata robustness: {e:#}");
            ExitCode::from(2)
        }
    }
}
