//! `scale`: write throughput of Strata clusters of 3, 6 and 9 nodes, all on this one
//! machine. Each storage node's process is capped to the same CPU share with a cgroup
//! CPU quota (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us`) to stand in for one small
//! machine per node. It is a simulation: the nodes still share this machine's disk,
//! memory bandwidth and loopback network, and the router, placement and the load
//! generator are not capped.
//!
//! After every round (warm-ups too) it prints the requests that failed, by error
//! message, and where the cluster got to — its range
//! count, the ranges each node leads and holds (`strata ctl nodes`) — and the table
//! gives the last measured round's range count and leader skew: a cluster that
//! starts as one range must find and split its hot ranges and spread their
//! leaders itself, and its throughput is only as even as that.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::cli::GlobalArgs;
use crate::compare::{median, spread_pct, workload_cli};
use crate::layout::Layout;
use crate::plot;
use crate::runner::Progress;
use crate::targets::{strata_bin, Target};
use crate::workloads::{self, RunReport};

/// Enough clients that the load, not each request's latency, limits a
/// 9-node cluster: a closed loop of 100 clients measures latency at every
/// size and so cannot show scaling.
const DEFAULT_WORKLOAD: &[&str] = &[
    "put",
    "--conns",
    "100",
    "--clients",
    "1000",
    "--total",
    "30000",
    "--key-space-size",
    "100000",
    "--key-size",
    "16",
    "--val-size",
    "256",
];

#[derive(Args, Debug, Clone)]
pub struct ScaleArgs {
    /// Cluster sizes (storage nodes), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "3,6,9")]
    pub nodes: Vec<usize>,
    /// CPU quota of each storage node, in CPUs (0.25 = a quarter of one core).
    #[arg(long, default_value_t = 0.2)]
    pub cpu_per_node: f64,
    /// Run without CPU quotas (then the nodes share the machine freely; said in the output).
    #[arg(long)]
    pub no_cgroup: bool,
    /// Runs of the workload per cluster size (the median is reported).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Unmeasured runs of the workload first, per cluster size: each cluster
    /// starts as one range and must find and split its hot ranges and spread
    /// their leaders itself; the measured rounds show where that got it.
    #[arg(long, default_value_t = 1)]
    pub warmup_rounds: usize,
    /// strata binary (default: $STRATA_BIN, then next to this executable, then PATH).
    #[arg(long)]
    pub strata_bin: Option<PathBuf>,
    /// Also write the table as Markdown to FILE.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// The write workload, after `--` (default:
    /// `put --conns 100 --clients 1000 --total 30000 --key-space-size 100000 --key-size 16 --val-size 256`).
    #[arg(last = true)]
    pub workload: Vec<String>,
}

/// CPU-quota cgroups, removed on drop.
struct Cgroups {
    kind: Kind,
    dirs: Vec<PathBuf>,
}

#[derive(Clone, Debug)]
enum Kind {
    V1(PathBuf),
    V2(PathBuf),
}

const PERIOD_US: u64 = 100_000;

impl Cgroups {
    fn detect() -> Result<Cgroups> {
        let v2 = Path::new("/sys/fs/cgroup");
        if std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|x| x == "cpu"))
        {
            // Children of the root get the cpu controller only when it is enabled there.
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+cpu");
            return Ok(Cgroups {
                kind: Kind::V2(v2.to_path_buf()),
                dirs: Vec::new(),
            });
        }
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        if v1.join("cpu.cfs_quota_us").is_file() {
            return Ok(Cgroups {
                kind: Kind::V1(v1.to_path_buf()),
                dirs: Vec::new(),
            });
        }
        bail!("no cgroup CPU controller found (neither cgroup v2 with `cpu` nor v1 /sys/fs/cgroup/cpu); use --no-cgroup")
    }

    fn describe(&self) -> &'static str {
        match self.kind {
            Kind::V1(_) => "cgroup v1 cpu.cfs_quota_us",
            Kind::V2(_) => "cgroup v2 cpu.max",
        }
    }

    /// A new group limited to `cpus` CPUs.
    fn create(&mut self, name: &str, cpus: f64) -> Result<PathBuf> {
        let quota = ((cpus * PERIOD_US as f64).round() as u64).max(1000);
        let (base, files): (&Path, Vec<(&str, String)>) = match &self.kind {
            Kind::V1(b) => (
                b,
                vec![
                    ("cpu.cfs_period_us", PERIOD_US.to_string()),
                    ("cpu.cfs_quota_us", quota.to_string()),
                ],
            ),
            Kind::V2(b) => (b, vec![("cpu.max", format!("{quota} {PERIOD_US}"))]),
        };
        let dir = base.join(format!("strata-bench-{}-{name}", std::process::id()));
        std::fs::create_dir(&dir)
            .with_context(|| format!("create cgroup {} (needs root)", dir.display()))?;
        self.dirs.push(dir.clone());
        for (f, v) in files {
            std::fs::write(dir.join(f), &v)
                .with_context(|| format!("write {v} to {}", dir.join(f).display()))?;
        }
        Ok(dir)
    }

    fn add(dir: &Path, pid: u32) -> Result<()> {
        std::fs::write(dir.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("move pid {pid} into {}", dir.display()))
    }

    fn remove_all(&mut self) {
        for d in self.dirs.drain(..) {
            for _ in 0..50 {
                if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// PIDs of the storage nodes from `strata dev`'s `dev.json`.
fn node_pids(dev_json: &Path) -> Result<Vec<(String, u32)>> {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dev_json)
            .with_context(|| format!("read {}", dev_json.display()))?,
    )?;
    let comps = v["components"]
        .as_array()
        .ok_or_else(|| anyhow!("dev.json has no components"))?;
    Ok(comps
        .iter()
        .filter(|c| c["role"] == "node")
        .filter_map(|c| Some((c["name"].as_str()?.to_string(), c["pid"].as_u64()? as u32)))
        .collect())
}

#[derive(Debug, Clone, Serialize)]
struct Point {
    nodes: usize,
    cpu_per_node: Option<f64>,
    total_node_cpus: Option<f64>,
    requests_per_sec_median: f64,
    requests_per_sec_spread_pct: f64,
    requests_per_sec_per_node: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    runs: Vec<RunReport>,
    /// After each measured round (null where `strata ctl` did not answer).
    layouts: Vec<Option<Layout>>,
}

#[derive(Debug, Clone, Serialize)]
struct ScaleReport {
    tool: &'static str,
    version: &'static str,
    command: &'static str,
    argv: Vec<String>,
    simulation: String,
    workload: Vec<String>,
    cpu_limit: String,
    machine_cpus: usize,
    points: Vec<Point>,
}

pub async fn run(g: &GlobalArgs, a: &ScaleArgs, argv: Vec<String>) -> Result<ExitCode> {
    if a.nodes.is_empty() || a.nodes.contains(&0) || a.rounds == 0 {
        bail!("--nodes must list positive sizes and --rounds must be at least 1");
    }
    let quota_ok = a.cpu_per_node > 0.0 && a.cpu_per_node.is_finite();
    if !a.no_cgroup && !quota_ok {
        bail!("--cpu-per-node must be positive");
    }
    let workload: Vec<String> = if a.workload.is_empty() {
        DEFAULT_WORKLOAD.iter().map(|s| s.to_string()).collect()
    } else {
        a.workload.clone()
    };
    workload_cli(&workload, &["127.0.0.1:1".to_string()])?;
    let mut cg = if a.no_cgroup {
        None
    } else {
        Some(Cgroups::detect()?)
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpu_limit = match &cg {
        Some(c) => format!(
            "each storage node capped at {} CPU ({})",
            a.cpu_per_node,
            c.describe()
        ),
        None => "no CPU cap (--no-cgroup): the nodes share the machine freely".to_string(),
    };
    let simulation = format!(
        "ONE-MACHINE SIMULATION: every node of every cluster runs on this one machine ({cpus} CPUs), sharing its disk, \
         memory and loopback network; {cpu_limit} to stand in for one small machine per node. The router, placement \
         and the load generator are not capped. Real multi-machine clusters will differ."
    );
    println!("{simulation}");
    println!("Workload: {}", workload.join(" "));
    let bin = strata_bin(a.strata_bin.as_deref());
    let mut points = Vec::new();
    for &n in &a.nodes {
        eprintln!("strata-bench: starting strata dev with {n} nodes");
        let t = Target::start_strata(&bin, n, &[])
            .with_context(|| format!("start strata dev --nodes {n}"))?;
        if let Some(c) = cg.as_mut() {
            let dev_json = t.data_dir().unwrap().join("data").join("dev.json");
            let pids = node_pids(&dev_json)?;
            if pids.len() != n {
                bail!("dev.json lists {} nodes, expected {n}", pids.len());
            }
            for (name, pid) in pids {
                let dir = c.create(&format!("n{n}-{name}"), a.cpu_per_node)?;
                Cgroups::add(&dir, pid)?;
            }
        }
        let cli = workload_cli(&workload, &t.endpoints)?;
        let mut runs = Vec::new();
        let mut layouts = Vec::new();
        for i in 0..a.warmup_rounds + a.rounds {
            let warmup = i < a.warmup_rounds;
            let round = if warmup {
                i + 1
            } else {
                i + 1 - a.warmup_rounds
            };
            let mut inner = vec![
                "strata-bench".to_string(),
                "--endpoints".into(),
                t.endpoints.join(","),
            ];
            inner.extend(workload.iter().cloned());
            let rep = workloads::run(&cli, inner, &Progress::hidden())
                .await
                .with_context(|| format!("{n} nodes, round {round}"))?;
            let s = &rep.results[0];
            println!(
                "  {n} nodes, {} {round}: {:.1} req/s, p99 {:.3} ms, {} errors",
                if warmup { "warm-up" } else { "round" },
                s.requests_per_sec,
                s.pctl(99.0) * 1e3,
                s.errors
            );
            // What failed, by message (a round's errors are rare and telling).
            for (e, count) in &s.error_distribution {
                println!("    [{count}] {e}");
            }
            // Where the cluster got to: its splits and where their leaders went.
            // `strata ctl` runs as a child process: off the runtime's threads.
            let layout = match t.data_dir() {
                Some(d) => {
                    let (bin, dir) = (bin.clone(), d.join("data"));
                    tokio::task::spawn_blocking(move || Layout::read(&bin, &dir))
                        .await
                        .map_err(anyhow::Error::from)
                        .and_then(|r| r)
                        .map(Some)
                }
                None => Ok(None),
            };
            match &layout {
                Ok(Some(l)) => println!("    then {l}"),
                Ok(None) => {}
                Err(e) => eprintln!("strata-bench: cannot read the ranges: {e:#}"),
            }
            if !warmup {
                runs.push(rep);
                layouts.push(layout.ok().flatten());
            }
        }
        drop(t);
        if let Some(c) = cg.as_mut() {
            c.remove_all();
        }
        let rps: Vec<f64> = runs.iter().map(|r| r.results[0].requests_per_sec).collect();
        let m = median(&rps);
        points.push(Point {
            nodes: n,
            cpu_per_node: cg.as_ref().map(|_| a.cpu_per_node),
            total_node_cpus: cg.as_ref().map(|_| a.cpu_per_node * n as f64),
            requests_per_sec_median: m,
            requests_per_sec_spread_pct: spread_pct(&rps),
            requests_per_sec_per_node: m / n as f64,
            p50_ms: median(
                &runs
                    .iter()
                    .map(|r| r.results[0].pctl(50.0) * 1e3)
                    .collect::<Vec<_>>(),
            ),
            p99_ms: median(
                &runs
                    .iter()
                    .map(|r| r.results[0].pctl(99.0) * 1e3)
                    .collect::<Vec<_>>(),
            ),
            errors: runs.iter().map(|r| r.results[0].errors).sum(),
            runs,
            layouts,
        });
    }
    let base = points[0].requests_per_sec_median;
    let mut md = String::from("| nodes | node CPU cap (total) | requests/sec (median ± spread) | vs first | p50 (ms) | p99 (ms) | errors | ranges (most leaders / mean), last round |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    println!(
        "\n{:>5} {:>18} {:>26} {:>9} {:>9} {:>9} {:>7} {:>14}",
        "nodes",
        "node CPU (total)",
        "requests/sec ± spread",
        "vs first",
        "p50 ms",
        "p99 ms",
        "errors",
        "ranges (skew)"
    );
    for p in &points {
        let cap = p
            .cpu_per_node
            .map(|c| format!("{c} ({:.1})", c * p.nodes as f64))
            .unwrap_or_else(|| "uncapped".into());
        let rel = if base > 0.0 {
            p.requests_per_sec_median / base
        } else {
            f64::NAN
        };
        let ranges = p
            .layouts
            .last()
            .and_then(|l| l.as_ref())
            .map(|l| format!("{} ({:.2}x)", l.ranges, l.leader_skew()))
            .unwrap_or_else(|| "?".into());
        println!(
            "{:>5} {:>18} {:>26} {:>8.2}x {:>9.3} {:>9.3} {:>7} {:>14}",
            p.nodes,
            cap,
            format!(
                "{:.1} ± {:.1}%",
                p.requests_per_sec_median, p.requests_per_sec_spread_pct
            ),
            rel,
            p.p50_ms,
            p.p99_ms,
            p.errors,
            ranges
        );
        md += &format!(
            "| {} | {} | {:.1} ± {:.1}% | {:.2}x | {:.3} | {:.3} | {} | {} |\n",
            p.nodes,
            cap,
            p.requests_per_sec_median,
            p.requests_per_sec_spread_pct,
            rel,
            p.p50_ms,
            p.p99_ms,
            p.errors,
            ranges
        );
    }
    println!("\n(one-machine simulation; see the note above)");
    let report = ScaleReport {
        tool: "strata-bench",
        version: env!("CARGO_PKG_VERSION"),
        command: "scale",
        argv,
        simulation: simulation.clone(),
        workload: workload.clone(),
        cpu_limit,
        machine_cpus: cpus,
        points: points.clone(),
    };
    if let Some(p) = &g.json {
        let f = std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(f), &report)?;
    }
    if let Some(p) = &a.markdown {
        std::fs::write(p, format!("{md}\n_{simulation}_\n"))?;
    }
    if let Some(p) = &g.plot {
        let pts: Vec<(f64, f64)> = points
            .iter()
            .map(|p| (p.nodes as f64, p.requests_per_sec_median))
            .collect();
        plot::draw_scale(
            p,
            &format!(
                "strata-bench scale: {} (one-machine simulation)",
                workload.join(" ")
            ),
            &pts,
        )
        .with_context(|| format!("plot {}", p.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
