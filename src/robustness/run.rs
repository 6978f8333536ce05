//! One run: cluster, traffic, nemesis, heal, final read, checks, report.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::cluster::{Cluster, Options, Role};
use super::history::{History, Violation};
use super::report::{self, RunReport};
use super::traffic::profile::Profile;
use super::traffic::{self, watch, Recorder};
use super::{check, nemesis, RobustnessArgs};

/// Every planted bug: its name and the failpoints that plant it.
pub const PLANTS: &[(&str, Role, &str, &str)] = &[
    ("stale-read", Role::Node, "plant_stale_read", "25%return"),
    (
        "drop-watch-event",
        Role::Router,
        "plant_drop_watch_event",
        "3%return",
    ),
    (
        "reuse-revision",
        Role::Placement,
        "plant_reuse_revision",
        "10%return",
    ),
];

pub async fn main(args: RobustnessArgs) -> anyhow::Result<bool> {
    if let Some(file) = &args.check {
        return check_file(file);
    }
    let profiles: Vec<&str> = args.profile.split(',').map(str::trim).collect();
    let nemeses: Vec<&'static str> = args
        .nemesis
        .split(',')
        .map(|n| nemesis::parse(n.trim()))
        .collect::<anyhow::Result<_>>()?;
    let needs_failpoints = args.plant.is_some()
        || nemeses
            .iter()
            .any(|n| matches!(*n, "partition" | "snapshot" | "failpoint" | "all"));
    if needs_failpoints && !cfg!(feature = "failpoints") {
        anyhow::bail!(
            "this strata was built without the `failpoints` feature, which --plant and the \
             partition, snapshot, failpoint and all nemeses need: use scripts/robustness.sh \
             (or cargo build --features strata/failpoints)"
        );
    }
    for p in &profiles {
        Profile::parse(p, args.keys)?;
    }
    if let Some(p) = &args.plant {
        if !PLANTS.iter().any(|(n, ..)| n == p) {
            let names: Vec<&str> = PLANTS.iter().map(|(n, ..)| *n).collect();
            anyhow::bail!("unknown --plant {p:?}; one of: {}", names.join(", "));
        }
    }
    let first_seed = args
        .seed
        .unwrap_or_else(|| u64::from(rand::random::<u32>()));
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    if args.tls {
        // One set for every run of this process (its own TLS is set once).
        let files = crate::certs::generate(&args.dir.join("tls"), &[])?;
        strata_proto::tls::set_internal(&files.peer_flags()).map_err(anyhow::Error::msg)?;
        traffic::use_tls(files.etcd_client_tls()?);
    }
    let plan: Vec<(u32, u64, &str, &'static str)> = (0..args.runs)
        .map(|k| {
            let seed = first_seed + u64::from(k);
            // Nemeses take turns, and so do profiles, shifted by one every
            // round of nemeses: K runs cover every pair once K >= both counts
            // multiplied.
            let k = k as usize;
            let n = nemeses[k % nemeses.len()];
            let p = profiles[(k + k / nemeses.len()) % profiles.len()];
            (k as u32, seed, p, n)
        })
        .collect();
    let parallel = args.parallel.max(1) as usize;
    // Parallel runs' port blocks: far enough apart not to overlap.
    let spacing = (args.placement_replicas + 2 * args.nodes + args.routers.max(1)).max(20);
    let top = u32::from(args.base_port) + (spacing * parallel) as u32;
    if let Some(low) = ephemeral_low().filter(|&low| top >= low) {
        eprintln!(
            "strata robustness: warning: ports up to {top} reach the ephemeral range (from {low}): \
             a restarted process may find its port taken; use a lower --base-port"
        );
    }
    let mut reports = Vec::new();
    for chunk in plan.chunks(parallel) {
        let mut tasks = Vec::new();
        for (slot, &(k, seed, p, n)) in chunk.iter().enumerate() {
            let args = args.clone();
            let p = p.to_string();
            let base = args.base_port.saturating_add((slot * spacing) as u16);
            tasks.push(tokio::spawn(async move {
                let r = run_once(&args, seed, &p, n, base).await;
                (k, seed, p, n, r)
            }));
        }
        for t in tasks {
            let (k, seed, p, n, r) = t.await?;
            let r = r.unwrap_or_else(|e| RunReport::failed(seed, &p, n, format!("{e:#}")));
            println!("{}", report::run_text(k + 1, args.runs, &r));
            reports.push(r);
        }
    }
    if reports.len() > 1 {
        println!("{}", report::table(&reports));
    }
    Ok(reports.iter().all(RunReport::passed))
}

/// The first port of the kernel's ephemeral range (outgoing connections).
fn ephemeral_low() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn check_file(file: &Path) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
    let h: History = serde_json::from_str(&text).context("parse history")?;
    let v = check::check(&h);
    println!(
        "{} ops, {} watchers: violations: {}",
        h.ops.len(),
        h.watches.len(),
        v.len()
    );
    if let Some(first) = v.first() {
        println!("{}\n{}", check::summary(&v), check::excerpt(&h, first));
    }
    // Every violation (capped per kind by the checker), one per paragraph.
    for x in &v {
        println!("\n{}", report::violation_text(&h, x));
    }
    Ok(v.is_empty())
}

async fn run_once(
    args: &RobustnessArgs,
    seed: u64,
    profile: &str,
    nemesis_name: &'static str,
    base_port: u16,
) -> anyhow::Result<RunReport> {
    let started = Instant::now();
    let profile = Profile::parse(profile, args.keys)?;
    let dir = args.dir.join(format!("run-{seed}"));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clear {}", dir.display()))?;
    }
    let opts = Options {
        placements: args.placement_replicas,
        nodes: args.nodes,
        routers: args.routers.max(1),
        base_port,
        split_keys: args.split_keys,
        raft_log_keep_entries: 20,
        node_down_after: "20s".into(),
        progress_notify_interval: "1s".into(),
        tls: args
            .tls
            .then(|| crate::certs::TlsFiles::in_dir(&args.dir.join("tls"))),
    };
    let mut cluster = Cluster::start(&dir, &opts)?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    if let Some(plant) = &args.plant {
        for (name, role, point, action) in PLANTS {
            if name == plant {
                cluster.set_failpoints_all(*role, &[(point, action)])?;
            }
        }
    }
    let endpoints = cluster.endpoints();
    let specs = watch::specs(profile);
    let rec = Arc::new(Recorder::new(specs.len()));
    let (stop_watch, stop_rx) = tokio::sync::watch::channel(false);
    let watchers: Vec<_> = specs
        .into_iter()
        .enumerate()
        .map(|(i, spec)| {
            let rec = rec.clone();
            let eps = endpoints.clone();
            tokio::spawn(watch::watch_loop(rec, i, spec, eps, stop_rx.clone(), 1))
        })
        .collect();
    let clients: Vec<_> = (0..args.clients)
        .map(|c| {
            let ep = endpoints[c as usize % endpoints.len()].clone();
            tokio::spawn(traffic::client_loop(
                rec.clone(),
                c,
                ep,
                profile,
                seed,
                1_000_000,
            ))
        })
        .collect();
    let compactor = tokio::spawn(traffic::compactor(
        rec.clone(),
        endpoints[0].clone(),
        Duration::from_secs(3),
    ));
    {
        let rec = rec.clone();
        let d = args.duration;
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            rec.stop.store(true, Ordering::Relaxed);
        });
    }
    let outcome = nemesis::run(&mut cluster, &rec, nemesis_name, seed).await;
    for c in clients {
        let _ = c.await;
    }
    let _ = compactor.await;
    // Faults healed (and planted bugs cleared): the final read, then let
    // every watcher catch up to it.
    cluster.wait_ready(Duration::from_secs(60)).await.ok();
    let final_read = traffic::final_read(&rec, &endpoints, profile.prefix()).await;
    let target = final_read
        .as_ref()
        .and_then(|o| o.resp.as_ref().ok())
        .map(|r| r.revision);
    let catch_up = Instant::now() + Duration::from_secs(30);
    while target.is_some_and(|t| rec.min_watch_progress() < t) && Instant::now() < catch_up {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_watch.send(true);
    let mut watches = Vec::new();
    for w in watchers {
        watches.push(w.await?);
    }
    let ranges = cluster.ranges().await.map(|r| r.ranges.len()).unwrap_or(0);
    // Snapshot catch-ups the snapshot nemesis reported, plus what the nodes
    // applied since their last restart.
    let snapshots = history_snapshots(&outcome.faults)
        + cluster
            .of(Role::Node)
            .filter_map(|i| cluster.node_metric(i, "strata_node_snapshots_applied_total"))
            .sum::<f64>() as u64;
    let mut violations: Vec<Violation> = outcome.violations;
    violations.extend(panics_in_logs(&cluster));
    drop(cluster);
    let history = History {
        seed,
        profile: profile.name().into(),
        nemesis: nemesis_name.into(),
        ops: rec.take_ops(),
        watches,
        faults: outcome.faults,
        final_read,
    };
    if history.final_read.is_none() {
        violations.push(Violation {
            kind: "availability.final_read".into(),
            message: "no linearizable read succeeded within 60 s after every fault healed".into(),
            ops: vec![],
        });
    }
    violations.extend(check::check(&history));
    let path = dir.join("history.json");
    std::fs::write(&path, serde_json::to_vec(&history)?)?;
    let passed = violations.is_empty();
    if passed && !args.keep {
        remove_data(&dir);
    }
    let mut report = RunReport::new(&history, ranges, violations, path, started.elapsed());
    report.snapshots = snapshots;
    Ok(report)
}

/// Snapshots applied by nodes the snapshot nemesis healed (their counters
/// may restart later, so they are taken from its fault records).
fn history_snapshots(faults: &[super::history::Fault]) -> u64 {
    faults
        .iter()
        .filter(|f| f.kind == "snapshot")
        .filter_map(|f| f.detail.split(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A panic in any process's log is a violation even if it was restarted.
fn panics_in_logs(cluster: &Cluster) -> Vec<Violation> {
    let mut out = Vec::new();
    for (i, m) in cluster.members.iter().enumerate() {
        let log = cluster.log_tail(i, 64 << 20);
        if let Some(at) = log.find("panicked at") {
            let end = (at + 600).min(log.len());
            let end = (at..=end)
                .rev()
                .find(|&e| log.is_char_boundary(e))
                .unwrap_or(at);
            out.push(Violation {
                kind: "process.panic".into(),
                message: format!("{} panicked: {}", m.name, &log[at..end]),
                ops: vec![],
            });
        }
    }
    out
}

/// Leaves only history.json and logs/ of a passing run.
fn remove_data(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if name != "history.json" && name != "logs" {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
        }
    }
}
