//! `strata dev`: a whole local cluster (placement replicas, N nodes, routers) in one command.
//!
//! Every component runs as a child process of this executable (`strata placement`,
//! `strata node`, `strata router`), each in its own process group so that a terminal
//! Ctrl-C reaches `strata dev` alone, which then stops the children in order: SIGTERM,
//! up to 10 s of grace, then SIGKILL. The layout of the cluster is written to
//! `DATA_DIR/dev.json` so that tests can find, kill and restart components.
//!
//! This file holds the flags, `dev.json` types and the run loop; `plan.rs` computes
//! what to start, `setup.rs` checks and writes files, `process.rs` spawns and stops
//! children, `serving.rs` waits for the cluster to serve.
//!
//! The cluster cannot serve without a quorum of placement replicas or without any
//! router: while starting, `strata dev` gives up (and stops everything) when that
//! many of them exited; one placement replica or one router of several exiting is
//! reported and the cluster goes on. Once ready, an exit is reported and the others
//! keep running (tests kill and restart components through `dev.json`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::sync::watch;

use crate::component::Signals;
use plan::plan;
use process::{spawn, stop_all};
use serving::{report_failure, wait_until_serving};
use setup::{check_placement_dirs, check_ports, find_on_path, lock_data_dir, write_dev_json};

mod ids;
mod plan;
mod process;
mod restore;
mod serving;
mod setup;
#[cfg(test)]
mod tests;

/// Grace period between SIGTERM and SIGKILL when stopping a child.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Alert rules loaded by the Prometheus of `--prometheus` (DATA_DIR/prometheus/alerts.yml).
const ALERT_RULES: &str = include_str!("../../deploy/prometheus/alerts.yml");
/// Key read to check that the cluster serves clients (what `etcdctl endpoint health` reads).
const PROBE_KEY: &str = "health";

pub const DEV_LONG_ABOUT: &str = "\
Start a local Strata cluster for development and tests: a placement service of
--placement-replicas replicas (one raft group), N storage nodes and --routers routers
serving etcd's v3 API, the first on --listen-client.

Every component is a child process of this executable, with its own data under
DATA_DIR (placement-1/, node-1/, ...) and its stdout/stderr in DATA_DIR/logs/NAME.log.
Ports, with P placement replicas, N nodes and R routers:
  placement replica i (1..P)  127.0.0.1:BASE_PORT+i-1
  node i (1..N)               127.0.0.1:BASE_PORT+P-1+i
  router 1                    --listen-client (default 127.0.0.1:2379)
  router j (2..R)             the port j-1 after --listen-client, same IP (2380, ...)
  metrics of component k      127.0.0.1:BASE_PORT+M+k, M = max(10, P+N), k counting
                              placement replicas, nodes, then routers from 0
  prometheus                  the port after the last metrics port
Every node and router is given every placement replica (--placement A,B,C).

DATA_DIR/dev.json describes the running cluster: the client endpoints and, for every
component, its role, name, address, pid, metrics URL, log file and the full argv
that started it (to restart a component that was killed).

Once every router answers a client request, one line containing \"ready\" is printed
on stdout, with the endpoints (and the etcdctl --endpoints= flag naming them all).
Ctrl-C or SIGTERM stops every component (SIGTERM, then SIGKILL after 10 s) and
exits 0. While starting, the cluster is stopped when a quorum of placement replicas
or every router exited; one of several exiting is reported and the rest go on. Once
ready, a component that exits on its own is reported on stderr; the others keep
running. Running again on the same DATA_DIR keeps the data of the last run (with
the same --placement-replicas). A DATA_DIR made by `strata ctl snapshot restore` is
loaded with the snapshot's keys on its first start, before \"ready\".";

#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// Number of storage nodes (ranges are replicated on min(3, N) of them).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub nodes: u16,

    /// Directory for all data, logs and dev.json; reused, never wiped, if it exists.
    #[arg(long, default_value = "./strata-data")]
    pub data_dir: PathBuf,

    /// Address of the etcd v3 endpoint (router 1's client address; router j
    /// listens on the port j-1 after it).
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub listen_client: SocketAddr,

    /// Number of routers (etcd endpoints; every one serves the whole keyspace).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub routers: u16,

    /// Replicas of placement's raft group: 1, 3 or 5 (a quorum of them must run).
    #[arg(long, default_value_t = 3, value_parser = parse_placement_replicas)]
    pub placement_replicas: u8,

    /// First of the internal ports (placement replica i BASE+i-1, node i BASE+P-1+i,
    /// metrics from BASE+max(10, P+N); see above).
    #[arg(long, default_value_t = 23790)]
    pub base_port: u16,

    /// Router's interval of watch progress notifications (e.g. 500ms, 10s, 10m).
    #[arg(long, value_parser = check_duration)]
    pub watch_progress_notify_interval: Option<String>,

    /// Routers' auth token type (etcd's --auth-token: `simple`, or
    /// `jwt,pub-key=FILE,priv-key=FILE,sign-method=ALG[,ttl=DURATION]`;
    /// default: the router's, simple).
    #[arg(long)]
    pub auth_token: Option<String>,

    /// Seconds a simple token lasts after its last use (routers'
    /// --auth-token-ttl; default: the router's, 300).
    #[arg(long)]
    pub auth_token_ttl: Option<u64>,

    /// Nodes' raft tick interval in milliseconds (default: the node's own default).
    #[arg(long)]
    pub raft_tick_ms: Option<u64>,

    /// Placement replaces the replicas of a node silent for this long (e.g. 30s,
    /// 10m; default: placement's, 60s).
    #[arg(long, value_parser = check_duration)]
    pub node_down_after: Option<String>,

    /// Idle ticks before a range quiesces (passed to every node; 0 disables;
    /// default: the node's, 20).
    #[arg(long)]
    pub quiesce_after_ticks: Option<u32>,

    /// Split a range once its data passes this many bytes (passed to every node;
    /// default: the node's, 64 MiB).
    #[arg(long)]
    pub range_split_bytes: Option<u64>,

    /// Split a range once it takes more writes per second than this (passed to
    /// every node; 0 disables; default: the node's, 0).
    #[arg(long)]
    pub range_split_write_rate: Option<f64>,

    /// Split a range once it holds more than this many keys (passed to every
    /// node; default: the node's, 500000).
    #[arg(long)]
    pub range_split_keys: Option<u64>,

    /// etcd's space quota, per node (passed to every node; 0 = etcd's default,
    /// 2 GiB): past it, writes fail with `database space exceeded` and a
    /// NOSPACE alarm is raised.
    #[arg(long)]
    pub quota_backend_bytes: Option<u64>,

    /// Threads of each process's async runtime (nodes', placement's and routers'
    /// --worker-threads, routers' --client-threads) [default: the CPUs this machine
    /// gives `strata dev` shared among its processes, at least 1]. More threads
    /// than there are CPUs only add hand-offs between threads to each request.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=i64::from(crate::component::MAX_WORKER_THREADS)))]
    pub threads_per_process: Option<u16>,

    /// How long to wait for the cluster to serve a client request before giving up.
    #[arg(long, default_value = "60s", value_parser = strata_router::parse_duration)]
    pub ready_timeout: Duration,

    /// TLS everywhere: a throwaway CA and certificates under DATA_DIR/tls/ (made
    /// on the first such start, then kept; see `strata certs`), routers' client
    /// ports with --client-cert-auth, mutual TLS on every internal link.
    #[arg(long)]
    pub tls: bool,

    /// Also start a Prometheus server (the `prometheus` binary on PATH) scraping every
    /// component; its data goes to DATA_DIR/prometheus.
    #[arg(long)]
    pub prometheus: bool,

    /// Address of that Prometheus server's web UI [default: 127.0.0.1, the port after
    /// the router's metrics port].
    #[arg(long, requires = "prometheus")]
    pub prometheus_listen: Option<SocketAddr>,
}

fn parse_placement_replicas(s: &str) -> Result<u8, String> {
    match s.trim() {
        "1" => Ok(1),
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!(
            "{s:?} is not a supported size of placement's raft group: use 1, 3 or 5 \
             (an odd number, so that a majority survives the loss of 0, 1 or 2 replicas)"
        )),
    }
}

fn check_duration(s: &str) -> Result<String, String> {
    strata_router::parse_duration(s).map(|_| s.to_string())
}

/// `DATA_DIR/dev.json`.
#[derive(Serialize, Debug)]
pub struct DevJson {
    /// host:port of the first etcd v3 endpoint (router 1).
    pub client_endpoint: String,
    /// host:port of every router, router 1 first.
    pub client_endpoints: Vec<String>,
    /// Absolute data directory.
    pub data_dir: String,
    /// Pid of `strata dev` itself (SIGTERM it to stop the cluster).
    pub dev_pid: u32,
    pub components: Vec<ComponentJson>,
    /// Present when started with `--prometheus`.
    pub prometheus: Option<PrometheusJson>,
    /// The certificate files, when started with `--tls`.
    pub tls: Option<crate::certs::TlsFiles>,
}

#[derive(Serialize, Debug)]
pub struct ComponentJson {
    /// "placement", "node" or "router".
    pub role: &'static str,
    /// "placement-1", ..., "node-1", ..., "router-1", ...
    pub name: String,
    /// The placement replica's raft id (1..P); a node's id as placement gave
    /// it (what `strata ctl` shows; 0 until it registered); the router number
    /// (1..R).
    pub id: u64,
    /// The address it serves gRPC on (the client address for the router).
    pub addr: String,
    pub pid: u32,
    pub metrics_url: String,
    /// Full argv that started it; `args[0]` is the absolute path of the executable.
    pub args: Vec<String>,
    /// Absolute path of the file receiving its stdout and stderr.
    pub log: String,
}

#[derive(Serialize, Debug)]
pub struct PrometheusJson {
    pub url: String,
    pub pid: u32,
    pub args: Vec<String>,
    pub log: String,
}

/// One process to start.
#[derive(Debug, Clone)]
struct Spec {
    role: &'static str,
    name: String,
    id: u64,
    addr: String,
    metrics_url: String,
    args: Vec<String>,
    log: PathBuf,
    /// Ports it will listen on, with what they are for, checked before starting.
    ports: Vec<(SocketAddr, String)>,
}

/// Everything `strata dev` will start.
#[derive(Debug)]
struct Plan {
    /// host:port of every router, router 1 first.
    client_endpoints: Vec<String>,
    components: Vec<Spec>,
    prometheus: Option<(Spec, String)>,
    /// With `--tls`: the files every component is given.
    tls: Option<crate::certs::TlsFiles>,
}

/// A started child process.
struct Running {
    role: &'static str,
    name: String,
    pid: u32,
    log: PathBuf,
    /// `Some` once the process exited (and was reaped).
    exited: watch::Receiver<Option<String>>,
}

impl Running {
    fn is_running(&self) -> bool {
        self.exited.borrow().is_none()
    }
}

/// Entry point of `strata dev`.
pub fn main(args: DevArgs) -> ExitCode {
    // One thread: every child is spawned from the main thread, which lives as long as
    // the process, so the children's parent-death signal fires only when we are gone.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strata dev: error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata dev: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let mut signals = Signals::new().context("installing signal handlers")?;
    let exe = std::env::current_exe().context("finding the path of this executable")?;
    let data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("resolving --data-dir {}", args.data_dir.display()))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let plan = plan(&args, &exe, &data_dir, cpus)?;

    // Data dir: created if missing, must be writable, one `strata dev` at a time.
    let logs = data_dir.join("logs");
    fs::create_dir_all(&logs).with_context(|| {
        format!(
            "data dir {} is not usable: cannot create {}",
            data_dir.display(),
            logs.display()
        )
    })?;
    let _lock = lock_data_dir(&data_dir)?;
    check_placement_dirs(&data_dir, usize::from(args.placement_replicas))?;
    check_ports(&plan)?;

    let prometheus_exe = if plan.prometheus.is_some() {
        Some(find_on_path("prometheus").context(
            "--prometheus needs the `prometheus` binary on PATH \
             (Debian: apt-get install prometheus, or run scripts/install-deps.sh)",
        )?)
    } else {
        None
    };

    let stopping = Arc::new(AtomicBool::new(false));
    let mut children: Vec<Running> = Vec::new();
    let mut json = DevJson {
        client_endpoint: plan.client_endpoints[0].clone(),
        client_endpoints: plan.client_endpoints.clone(),
        data_dir: data_dir.to_string_lossy().into_owned(),
        dev_pid: std::process::id(),
        components: Vec::new(),
        prometheus: None,
        tls: plan.tls.clone(),
    };
    if let Some(tls) = &plan.tls {
        if !Path::new(&tls.peer_key).exists() {
            crate::certs::generate(&data_dir.join("tls"), &["alice"])?;
        }
    }

    let started: anyhow::Result<()> = (|| {
        for spec in &plan.components {
            let r = spawn(spec, &stopping)?;
            json.components.push(ComponentJson {
                role: spec.role,
                name: spec.name.clone(),
                id: spec.id,
                addr: spec.addr.clone(),
                pid: r.pid,
                metrics_url: spec.metrics_url.clone(),
                args: spec.args.clone(),
                log: spec.log.to_string_lossy().into_owned(),
            });
            children.push(r);
        }
        if let (Some((spec, config)), Some(prom)) = (&plan.prometheus, &prometheus_exe) {
            let prom_dir = data_dir.join("prometheus");
            fs::create_dir_all(&prom_dir)
                .with_context(|| format!("creating {}", prom_dir.display()))?;
            let config_path = prom_dir.join("prometheus.yml");
            fs::write(&config_path, config)
                .with_context(|| format!("writing {}", config_path.display()))?;
            let rules_path = prom_dir.join("alerts.yml");
            fs::write(&rules_path, ALERT_RULES)
                .with_context(|| format!("writing {}", rules_path.display()))?;
            let mut spec = spec.clone();
            spec.args[0] = prom.to_string_lossy().into_owned();
            let r = spawn(&spec, &stopping)?;
            json.prometheus = Some(PrometheusJson {
                url: format!("http://{}", spec.addr),
                pid: r.pid,
                args: spec.args.clone(),
                log: spec.log.to_string_lossy().into_owned(),
            });
            children.push(r);
        }
        write_dev_json(&data_dir, &json)
    })();
    if let Err(e) = started {
        eprintln!("strata dev: error: {e:#}");
        stop_all(&children, &stopping, &mut signals).await;
        return Ok(ExitCode::FAILURE);
    }

    eprintln!(
        "strata dev: started {} placement replica{}, {} node{}, {} router{}{} (pids {}); \
         logs in {}; waiting up to {:?} for {} to answer a client request",
        args.placement_replicas,
        plural(args.placement_replicas.into()),
        args.nodes,
        plural(args.nodes),
        args.routers,
        plural(args.routers),
        if json.prometheus.is_some() {
            " and Prometheus"
        } else {
            ""
        },
        children
            .iter()
            .map(|c| c.pid.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        logs.display(),
        args.ready_timeout,
        plan.client_endpoints.join(" and "),
    );

    let outcome = tokio::select! {
        r = wait_until_serving(&plan.client_endpoints, args.ready_timeout, &children, plan.tls.as_ref()) => Some(r),
        sig = signals.recv() => {
            eprintln!("strata dev: received {sig} while starting; stopping the cluster");
            None
        }
    };
    match outcome {
        None => {
            stop_all(&children, &stopping, &mut signals).await;
            return Ok(ExitCode::SUCCESS);
        }
        Some(Err(why)) => {
            eprintln!("strata dev: error: {why}");
            report_failure(&children);
            stop_all(&children, &stopping, &mut signals).await;
            return Ok(ExitCode::FAILURE);
        }
        Some(Ok(())) => {}
    }
    // A snapshot restored into DATA_DIR (`strata ctl snapshot restore`) is
    // loaded before the cluster is reported ready.
    match restore::load_pending(&data_dir, &plan).await {
        Ok(None) => {}
        Ok(Some(what)) => eprintln!("strata dev: {what}"),
        Err(e) => {
            eprintln!("strata dev: error: restoring the snapshot: {e:#}");
            stop_all(&children, &stopping, &mut signals).await;
            return Ok(ExitCode::FAILURE);
        }
    }
    // Serving means placement runs: every node's id is known (or soon).
    if let Err(e) = ids::learn_node_ids(&mut json, plan.tls.as_ref(), args.ready_timeout).await {
        eprintln!("strata dev: warning: {e:#}");
    }
    write_dev_json(&data_dir, &json)?;

    let line = ready_line(&plan, &args, &data_dir, &json);
    {
        // Exactly one line with "ready" on stdout; a closed stdout is not an error.
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    let sig = signals.recv().await;
    eprintln!("strata dev: received {sig}; stopping the cluster");
    stop_all(&children, &stopping, &mut signals).await;
    Ok(ExitCode::SUCCESS)
}

fn plural(n: u16) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The one stdout line saying the cluster is ready: every router endpoint, the
/// etcdctl flag naming them all, then where data and metrics are.
fn ready_line(plan: &Plan, args: &DevArgs, data_dir: &Path, json: &DevJson) -> String {
    let metrics: Vec<&str> = json
        .components
        .iter()
        .map(|c| c.metrics_url.as_str())
        .collect();
    let eps = &plan.client_endpoints;
    let mut line = format!(
        "strata dev ready: etcd endpoint{} {} (etcdctl --endpoints={}) ({} placement \
         replica{}, {} node{}, {} router{}; data in {}; metrics: {}",
        if eps.len() == 1 { "" } else { "s" },
        eps.join(" "),
        eps.join(","),
        args.placement_replicas,
        plural(args.placement_replicas.into()),
        args.nodes,
        plural(args.nodes),
        args.routers,
        plural(args.routers),
        data_dir.display(),
        metrics.join(" "),
    );
    if let Some(p) = &json.prometheus {
        line.push_str(&format!("; prometheus: {}", p.url));
    }
    line.push(')');
    if let Some(t) = &plan.tls {
        line.push_str(&format!(
            "; TLS on: etcdctl --endpoints {} --cacert {} --cert {} --key {} endpoint health",
            eps.iter()
                .map(|e| format!("https://{e}"))
                .collect::<Vec<_>>()
                .join(","),
            t.ca,
            t.client_cert,
            t.client_key
        ));
    }
    line
}
