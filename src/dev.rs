//! `strata dev`: a whole local cluster (placement, N nodes, one router) in one command.
//!
//! Every component runs as a child process of this executable (`strata placement`,
//! `strata node`, `strata router`), each in its own process group so that a terminal
//! Ctrl-C reaches `strata dev` alone, which then stops the children in order: SIGTERM,
//! up to 10 s of grace, then SIGKILL. The layout of the cluster is written to
//! `DATA_DIR/dev.json` so that tests can find, kill and restart components.

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

/// Grace period between SIGTERM and SIGKILL when stopping a child.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Alert rules loaded by the Prometheus of `--prometheus` (DATA_DIR/prometheus/alerts.yml).
const ALERT_RULES: &str = include_str!("../deploy/prometheus/alerts.yml");
/// Key read to check that the cluster serves clients (what `etcdctl endpoint health` reads).
const PROBE_KEY: &str = "health";

pub const DEV_LONG_ABOUT: &str = "\
Start a local Strata cluster for development and tests: one placement service, N
storage nodes and one router serving etcd's v3 API on --listen-client.

Every component is a child process of this executable, with its own data under
DATA_DIR (placement/, node-1/, ...) and its stdout/stderr in DATA_DIR/logs/NAME.log.
Ports (all on 127.0.0.1): placement listens on BASE_PORT, node i on BASE_PORT+i,
and component k (0 = placement, 1..N = nodes, N+1 = router) serves Prometheus
metrics on BASE_PORT+10+k (BASE_PORT+N+1+k when N >= 10).

DATA_DIR/dev.json describes the running cluster: the client endpoint and, for every
component, its role, name, address, pid, metrics URL, log file and the full argv
that started it (to restart a component that was killed).

Once a client request succeeds, one line containing \"ready\" is printed on stdout.
Ctrl-C or SIGTERM stops every component (SIGTERM, then SIGKILL after 10 s) and
exits 0. A component that exits on its own is reported on stderr; the others keep
running. Running again on the same DATA_DIR keeps the data of the last run.";

#[derive(clap::Args, Debug, Clone)]
pub struct DevArgs {
    /// Number of storage nodes (ranges are replicated on min(3, N) of them).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub nodes: u16,

    /// Directory for all data, logs and dev.json; reused, never wiped, if it exists.
    #[arg(long, default_value = "./strata-data")]
    pub data_dir: PathBuf,

    /// Address of the etcd v3 endpoint (the router's client address).
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub listen_client: SocketAddr,

    /// First of the internal ports (placement BASE, node i BASE+i, metrics BASE+10+k).
    #[arg(long, default_value_t = 23790)]
    pub base_port: u16,

    /// Router's interval of watch progress notifications (e.g. 500ms, 10s, 10m).
    #[arg(long, value_parser = check_duration)]
    pub watch_progress_notify_interval: Option<String>,

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
    /// every node; 0 disables; default: the node's, 3000).
    #[arg(long)]
    pub range_split_write_rate: Option<f64>,

    /// Split a range once it holds more than this many keys (passed to every
    /// node; default: the node's, 500000).
    #[arg(long)]
    pub range_split_keys: Option<u64>,

    /// How long to wait for the cluster to serve a client request before giving up.
    #[arg(long, default_value = "60s", value_parser = strata_router::parse_duration)]
    pub ready_timeout: Duration,

    /// Also start a Prometheus server (the `prometheus` binary on PATH) scraping every
    /// component; its data goes to DATA_DIR/prometheus.
    #[arg(long)]
    pub prometheus: bool,

    /// Address of that Prometheus server's web UI [default: 127.0.0.1, the port after
    /// the router's metrics port].
    #[arg(long, requires = "prometheus")]
    pub prometheus_listen: Option<SocketAddr>,
}

fn check_duration(s: &str) -> Result<String, String> {
    strata_router::parse_duration(s).map(|_| s.to_string())
}

/// `DATA_DIR/dev.json`.
#[derive(Serialize, Debug)]
pub struct DevJson {
    /// host:port of the etcd v3 endpoint (the router).
    pub client_endpoint: String,
    /// Absolute data directory.
    pub data_dir: String,
    /// Pid of `strata dev` itself (SIGTERM it to stop the cluster).
    pub dev_pid: u32,
    pub components: Vec<ComponentJson>,
    /// Present when started with `--prometheus`.
    pub prometheus: Option<PrometheusJson>,
}

#[derive(Serialize, Debug)]
pub struct ComponentJson {
    /// "placement", "node" or "router".
    pub role: &'static str,
    /// "placement", "node-1", ..., "router".
    pub name: String,
    /// The node number for nodes (1..N), 0 for placement and the router.
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
    client_endpoint: String,
    components: Vec<Spec>,
    prometheus: Option<(Spec, String)>,
}

fn localhost(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// Computes the processes, ports and argvs; pure, so it is unit-tested.
fn plan(args: &DevArgs, exe: &Path, data_dir: &Path) -> anyhow::Result<Plan> {
    let n = u32::from(args.nodes);
    let base = u32::from(args.base_port);
    let metrics_offset = 10.max(n + 1);
    // The highest port: the router's metrics (or Prometheus right after it).
    let top = base + metrics_offset + n + 2;
    if top > u32::from(u16::MAX) {
        bail!("--base-port {base} is too high for {n} nodes: ports {base}..={top} are needed");
    }
    let port = |p: u32| localhost(p as u16);
    let exe = exe.to_string_lossy().into_owned();
    let dir = |name: &str| data_dir.join(name).to_string_lossy().into_owned();
    let log = |name: &str| data_dir.join("logs").join(format!("{name}.log"));
    let placement_addr = port(base);
    let metrics = |k: u32| port(base + metrics_offset + k);
    let metrics_url = |a: SocketAddr| format!("http://{a}/metrics");

    let mut components = Vec::new();
    let m = metrics(0);
    components.push(Spec {
        role: "placement",
        name: "placement".into(),
        id: 0,
        addr: placement_addr.to_string(),
        metrics_url: metrics_url(m),
        args: vec![
            exe.clone(),
            "placement".into(),
            "--data-dir".into(),
            dir("placement"),
            "--listen".into(),
            placement_addr.to_string(),
            "--replicas".into(),
            n.min(3).to_string(),
            "--metrics-addr".into(),
            m.to_string(),
        ]
        .into_iter()
        .chain(
            args.node_down_after
                .iter()
                .flat_map(|d| ["--node-down-after".to_string(), d.clone()]),
        )
        .collect(),
        log: log("placement"),
        ports: vec![
            (placement_addr, "placement".into()),
            (m, "placement metrics".into()),
        ],
    });
    for i in 1..=n {
        let name = format!("node-{i}");
        let addr = port(base + i);
        let m = metrics(i);
        let mut argv = vec![
            exe.clone(),
            "node".into(),
            "--data-dir".into(),
            dir(&name),
            "--listen".into(),
            addr.to_string(),
            "--placement".into(),
            placement_addr.to_string(),
            "--metrics-addr".into(),
            m.to_string(),
        ];
        if let Some(t) = args.raft_tick_ms {
            argv.extend(["--raft-tick-ms".into(), t.to_string()]);
        }
        if let Some(q) = args.quiesce_after_ticks {
            argv.extend(["--quiesce-after-ticks".into(), q.to_string()]);
        }
        if let Some(b) = args.range_split_bytes {
            argv.extend(["--range-split-bytes".into(), b.to_string()]);
        }
        if let Some(w) = args.range_split_write_rate {
            argv.extend(["--range-split-write-rate".into(), w.to_string()]);
        }
        if let Some(k) = args.range_split_keys {
            argv.extend(["--range-split-keys".into(), k.to_string()]);
        }
        components.push(Spec {
            role: "node",
            name: name.clone(),
            id: u64::from(i),
            addr: addr.to_string(),
            metrics_url: metrics_url(m),
            args: argv,
            log: log(&name),
            ports: vec![(addr, name.clone()), (m, format!("{name} metrics"))],
        });
    }
    let m = metrics(n + 1);
    let mut argv = vec![
        exe,
        "router".into(),
        "--listen-client".into(),
        args.listen_client.to_string(),
        "--placement".into(),
        placement_addr.to_string(),
        "--metrics-addr".into(),
        m.to_string(),
    ];
    if let Some(d) = &args.watch_progress_notify_interval {
        argv.extend(["--watch-progress-notify-interval".into(), d.clone()]);
    }
    components.push(Spec {
        role: "router",
        name: "router".into(),
        id: 0,
        addr: args.listen_client.to_string(),
        metrics_url: metrics_url(m),
        args: argv,
        log: log("router"),
        ports: vec![
            (args.listen_client, "router client endpoint".into()),
            (m, "router metrics".into()),
        ],
    });

    // A router listening on 0.0.0.0 or [::] is reached through loopback.
    let client = match args.listen_client.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => localhost(args.listen_client.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => localhost(args.listen_client.port()),
        _ => args.listen_client,
    };

    let prometheus = if args.prometheus {
        let listen = args.prometheus_listen.unwrap_or_else(|| metrics(n + 2));
        let prom_dir = data_dir.join("prometheus");
        let spec = Spec {
            role: "prometheus",
            name: "prometheus".into(),
            id: 0,
            addr: listen.to_string(),
            metrics_url: metrics_url(listen),
            args: vec![
                "prometheus".into(), // replaced by the path found on PATH
                format!(
                    "--config.file={}",
                    prom_dir.join("prometheus.yml").display()
                ),
                format!("--storage.tsdb.path={}", prom_dir.join("data").display()),
                format!("--web.listen-address={listen}"),
            ],
            log: log("prometheus"),
            ports: vec![(listen, "prometheus".into())],
        };
        let mut config = String::from(
            "# Written by `strata dev --prometheus`; rewritten on every start.\n\
             global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n\
             rule_files:\n  - alerts.yml\nscrape_configs:\n",
        );
        for role in ["placement", "node", "router"] {
            config.push_str(&format!(
                "  - job_name: strata-{role}\n    static_configs:\n      - targets:\n"
            ));
            for c in components.iter().filter(|c| c.role == role) {
                let target = c.metrics_url.trim_start_matches("http://");
                let target = target.trim_end_matches("/metrics");
                config.push_str(&format!("          - '{target}'\n"));
            }
        }
        Some((spec, config))
    } else {
        None
    };

    Ok(Plan {
        client_endpoint: client.to_string(),
        components,
        prometheus,
    })
}

/// A started child process.
struct Running {
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
    let plan = plan(&args, &exe, &data_dir)?;

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
        client_endpoint: plan.client_endpoint.clone(),
        data_dir: data_dir.to_string_lossy().into_owned(),
        dev_pid: std::process::id(),
        components: Vec::new(),
        prometheus: None,
    };

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
        "strata dev: started placement, {} node{}, a router{} (pids {}); logs in {}; \
         waiting up to {:?} for {} to answer a client request",
        args.nodes,
        if args.nodes == 1 { "" } else { "s" },
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
        plan.client_endpoint,
    );

    let outcome = tokio::select! {
        r = wait_until_serving(&plan.client_endpoint, args.ready_timeout, &children) => Some(r),
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

    let metrics: Vec<&str> = json
        .components
        .iter()
        .map(|c| c.metrics_url.as_str())
        .collect();
    let mut line = format!(
        "strata dev ready: etcd endpoint {} ({} node{}, data in {}; metrics: {}",
        plan.client_endpoint,
        args.nodes,
        if args.nodes == 1 { "" } else { "s" },
        data_dir.display(),
        metrics.join(" "),
    );
    if let Some(p) = &json.prometheus {
        line.push_str(&format!("; prometheus: {}", p.url));
    }
    line.push(')');
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

/// Takes an exclusive lock on `DATA_DIR/dev.lock` for as long as the returned file lives;
/// doubles as the check that the data dir is writable.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    use std::os::fd::AsRawFd;
    let path = data_dir.join("dev.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("data dir {} is not writable", data_dir.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            bail!(
                "another `strata dev` (pid {}) is already using data dir {}; stop it or pass \
                 another --data-dir",
                holder.trim(),
                data_dir.display()
            );
        }
        return Err(err).with_context(|| format!("locking {}", path.display()));
    }
    file.set_len(0)
        .and_then(|_| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
        .with_context(|| format!("data dir {} is not writable", data_dir.display()))?;
    Ok(file)
}

/// Fails with a readable error if a port the cluster needs is taken.
fn check_ports(plan: &Plan) -> anyhow::Result<()> {
    let specs = plan
        .components
        .iter()
        .chain(plan.prometheus.as_ref().map(|(s, _)| s));
    for spec in specs {
        for (addr, what) in &spec.ports {
            if let Err(e) = TcpListener::bind(addr) {
                let hint = if e.kind() == io::ErrorKind::AddrInUse {
                    " (is another `strata dev` or an etcd running? choose other ports with \
                     --listen-client, --base-port or --prometheus-listen)"
                } else {
                    ""
                };
                bail!("cannot listen on {addr} ({what}): {e}{hint}");
            }
        }
    }
    Ok(())
}

fn find_on_path(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("`{name}` not found on PATH")
}

fn unix_time() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Starts one child with stdout and stderr appended to its log file, in its own process
/// group, and a task that reports its exit.
fn spawn(spec: &Spec, stopping: &Arc<AtomicBool>) -> anyhow::Result<Running> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("opening log file {}", spec.log.display()))?;
    writeln!(
        log,
        "==== strata dev (pid {}) starting {} at unix time {}: {}",
        std::process::id(),
        spec.name,
        unix_time(),
        spec.args.join(" ")
    )
    .with_context(|| format!("writing log file {}", spec.log.display()))?;
    let stderr = log.try_clone()?;

    let mut cmd = std::process::Command::new(&spec.args[0]);
    cmd.args(&spec.args[1..])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        // Own process group: a terminal's Ctrl-C goes to `strata dev` only.
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // If `strata dev` dies without stopping us (SIGKILL), we get SIGTERM.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::other("strata dev exited while starting a child"));
            }
            Ok(())
        });
    }
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .with_context(|| format!("starting {} ({})", spec.name, spec.args[0]))?;
    let pid = child.id().context("child has no pid")?;

    let (tx, rx) = watch::channel(None);
    let name = spec.name.clone();
    let stopping = stopping.clone();
    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(st) => describe(st),
            Err(e) => format!("could not be waited for: {e}"),
        };
        if !stopping.load(Ordering::SeqCst) {
            eprintln!("strata dev: {name} (pid {pid}) {status}; the other components keep running");
        }
        let _ = tx.send(Some(status));
    });
    Ok(Running {
        name: spec.name.clone(),
        pid,
        log: spec.log.clone(),
        exited: rx,
    })
}

fn describe(st: ExitStatus) -> String {
    if let Some(code) = st.code() {
        format!("exited with status {code}")
    } else if let Some(sig) = st.signal() {
        format!("was killed by signal {sig}{}", signal_name(sig))
    } else {
        format!("exited ({st})")
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => " (SIGTERM)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGINT => " (SIGINT)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGHUP => " (SIGHUP)",
        libc::SIGBUS => " (SIGBUS)",
        _ => "",
    }
}

/// Retries a `get` through the router until it succeeds, the deadline passes, or a
/// component without which the cluster cannot serve (placement, router) exits.
async fn wait_until_serving(
    endpoint: &str,
    timeout: Duration,
    children: &[Running],
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let url = format!("http://{endpoint}");
    let mut last_error = String::from("no attempt finished");
    loop {
        let essential_gone: Vec<&str> = children
            .iter()
            .filter(|c| (c.name == "placement" || c.name == "router") && !c.is_running())
            .map(|c| c.name.as_str())
            .collect();
        if !essential_gone.is_empty() {
            return Err(format!(
                "{} exited before the cluster served a client request",
                essential_gone.join(" and ")
            ));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "the cluster did not serve a client request at {endpoint} within {timeout:?} \
                 (last error: {last_error})"
            ));
        }
        let attempt_budget = (deadline - now).min(Duration::from_secs(3));
        let attempt = async {
            let opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(attempt_budget)
                .with_timeout(attempt_budget);
            let mut client = etcd_client::Client::connect([url.as_str()], Some(opts)).await?;
            client.get(PROBE_KEY, None).await?;
            Ok::<(), etcd_client::Error>(())
        };
        match tokio::time::timeout(attempt_budget, attempt).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = format!("no answer within {attempt_budget:?}"),
        }
        let pause =
            Duration::from_millis(250).min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
    }
}

/// Prints which components are not running, with the end of their logs (or of every
/// log when all are running but the cluster does not answer).
fn report_failure(children: &[Running]) {
    let down: Vec<&Running> = children.iter().filter(|c| !c.is_running()).collect();
    let mut err = io::stderr().lock();
    if down.is_empty() {
        let _ = writeln!(
            err,
            "strata dev: every component is still running; the end of each log follows"
        );
    } else {
        let names: Vec<&str> = down.iter().map(|c| c.name.as_str()).collect();
        let _ = writeln!(err, "strata dev: not running: {}", names.join(", "));
    }
    let show: Vec<&Running> = if down.is_empty() {
        children.iter().collect()
    } else {
        down
    };
    for c in show {
        let state = c
            .exited
            .borrow()
            .clone()
            .unwrap_or_else(|| "is running".into());
        let _ = writeln!(
            err,
            "--- {} (pid {}) {}; last lines of {}:",
            c.name,
            c.pid,
            state,
            c.log.display()
        );
        match tail(&c.log, 20) {
            Ok(lines) => {
                for l in lines {
                    let _ = writeln!(err, "    {l}");
                }
            }
            Err(e) => {
                let _ = writeln!(err, "    (cannot read the log: {e})");
            }
        }
    }
}

/// The last `n` lines of a file (reading at most its last 64 KiB).
fn tail(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0); // probably a partial line
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines[skip..].iter().map(|l| l.to_string()).collect())
}

fn signal_group(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2). Each child leads its own process group (pgid == pid), and
    // is still unreaped when this is called, so the group id cannot have been reused.
    unsafe {
        if libc::kill(-(pid as libc::pid_t), sig) != 0 {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

/// SIGTERM to every running child (router first, placement last), up to STOP_GRACE for
/// them to exit, then SIGKILL. A second signal to `strata dev` skips the grace period.
async fn stop_all(children: &[Running], stopping: &Arc<AtomicBool>, signals: &mut Signals) {
    stopping.store(true, Ordering::SeqCst);
    for c in children.iter().rev() {
        if c.is_running() {
            signal_group(c.pid, libc::SIGTERM);
        }
    }
    let all_exited = async {
        for c in children {
            let mut rx = c.exited.clone();
            let _ = rx.wait_for(|s| s.is_some()).await;
        }
    };
    let graceful = tokio::select! {
        _ = all_exited => true,
        _ = tokio::time::sleep(STOP_GRACE) => false,
        sig = signals.recv() => {
            eprintln!("strata dev: received {sig} again; killing every component now");
            false
        }
    };
    if !graceful {
        for c in children {
            if c.is_running() {
                eprintln!(
                    "strata dev: {} (pid {}) did not stop on SIGTERM; sending SIGKILL",
                    c.name, c.pid
                );
                signal_group(c.pid, libc::SIGKILL);
            }
        }
        let all_exited = async {
            for c in children {
                let mut rx = c.exited.clone();
                let _ = rx.wait_for(|s| s.is_some()).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), all_exited)
            .await
            .is_err()
        {
            eprintln!("strata dev: some components could not be reaped after SIGKILL");
        }
    }
    eprintln!("strata dev: stopped");
}

fn write_dev_json(data_dir: &Path, json: &DevJson) -> anyhow::Result<()> {
    let path = data_dir.join("dev.json");
    let tmp = data_dir.join("dev.json.tmp");
    let mut text = serde_json::to_string_pretty(json)?;
    text.push('\n');
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        dev: DevArgs,
    }

    fn args(argv: &[&str]) -> DevArgs {
        Cli::try_parse_from(std::iter::once("dev").chain(argv.iter().copied()))
            .unwrap()
            .dev
    }

    fn flag<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
        argv.iter()
            .position(|a| a == name)
            .map(|i| argv[i + 1].as_str())
    }

    #[test]
    fn default_plan() {
        let a = args(&[]);
        assert_eq!(a.nodes, 3);
        assert_eq!(a.ready_timeout, Duration::from_secs(60));
        let p = plan(&a, Path::new("/bin/strata"), Path::new("/d")).unwrap();
        assert_eq!(p.client_endpoint, "127.0.0.1:2379");
        let names: Vec<&str> = p.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["placement", "node-1", "node-2", "node-3", "router"]);
        let pl = &p.components[0];
        assert_eq!(pl.args[..2], ["/bin/strata", "placement"]);
        assert_eq!(flag(&pl.args, "--listen"), Some("127.0.0.1:23790"));
        assert_eq!(flag(&pl.args, "--replicas"), Some("3"));
        assert_eq!(flag(&pl.args, "--data-dir"), Some("/d/placement"));
        assert_eq!(flag(&pl.args, "--metrics-addr"), Some("127.0.0.1:23800"));
        let n2 = &p.components[2];
        assert_eq!((n2.role, n2.id), ("node", 2));
        assert_eq!(flag(&n2.args, "--listen"), Some("127.0.0.1:23792"));
        assert_eq!(flag(&n2.args, "--placement"), Some("127.0.0.1:23790"));
        assert_eq!(flag(&n2.args, "--data-dir"), Some("/d/node-2"));
        assert_eq!(n2.metrics_url, "http://127.0.0.1:23802/metrics");
        assert_eq!(n2.log, Path::new("/d/logs/node-2.log"));
        assert_eq!(flag(&n2.args, "--raft-tick-ms"), None);
        let r = &p.components[4];
        assert_eq!(flag(&r.args, "--listen-client"), Some("127.0.0.1:2379"));
        assert_eq!(flag(&r.args, "--metrics-addr"), Some("127.0.0.1:23804"));
        assert_eq!(flag(&r.args, "--watch-progress-notify-interval"), None);
        assert!(p.prometheus.is_none());
    }

    #[test]
    fn custom_plan() {
        let a = args(&[
            "--nodes",
            "1",
            "--base-port",
            "30000",
            "--listen-client",
            "0.0.0.0:4000",
            "--watch-progress-notify-interval",
            "500ms",
            "--raft-tick-ms",
            "20",
            "--ready-timeout",
            "5s",
            "--prometheus",
        ]);
        assert_eq!(a.ready_timeout, Duration::from_secs(5));
        let p = plan(&a, Path::new("/x"), Path::new("/d")).unwrap();
        assert_eq!(p.client_endpoint, "127.0.0.1:4000");
        assert_eq!(p.components.len(), 3);
        assert_eq!(flag(&p.components[0].args, "--replicas"), Some("1"));
        assert_eq!(flag(&p.components[1].args, "--raft-tick-ms"), Some("20"));
        let r = &p.components[2];
        assert_eq!(
            flag(&r.args, "--watch-progress-notify-interval"),
            Some("500ms")
        );
        assert_eq!(flag(&r.args, "--metrics-addr"), Some("127.0.0.1:30012"));
        let (prom, config) = p.prometheus.unwrap();
        assert_eq!(prom.addr, "127.0.0.1:30013");
        assert!(config.contains("'127.0.0.1:30011'"), "{config}");
        assert!(config.contains("job_name: strata-router"), "{config}");
    }

    #[test]
    fn many_nodes_do_not_collide() {
        let p = plan(&args(&["--nodes", "12"]), Path::new("/x"), Path::new("/d")).unwrap();
        let mut ports: Vec<SocketAddr> = p
            .components
            .iter()
            .flat_map(|c| c.ports.iter().map(|(a, _)| *a))
            .collect();
        let n = ports.len();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), n);
        assert!(plan(
            &args(&["--base-port", "65530"]),
            Path::new("/x"),
            Path::new("/d")
        )
        .is_err());
    }

    #[test]
    fn bad_flags() {
        let parse = |argv: &[&str]| {
            Cli::try_parse_from(std::iter::once("dev").chain(argv.iter().copied())).is_ok()
        };
        assert!(!parse(&["--nodes", "0"]));
        assert!(!parse(&["--watch-progress-notify-interval", "soon"]));
        assert!(!parse(&["--prometheus-listen", "127.0.0.1:1"]));
    }

    #[test]
    fn tail_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("log");
        fs::write(&f, "a\nb\nc\n").unwrap();
        assert_eq!(tail(&f, 2).unwrap(), ["b", "c"]);
        assert_eq!(tail(&f, 10).unwrap(), ["a", "b", "c"]);
    }
}
