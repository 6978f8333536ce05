//! `compare`: one workload against two targets, interleaved A B A B … so that drift of
//! the machine (thermal, page cache, background work) falls on both alike; then a table
//! of medians over the rounds, their spread and the A/B ratio.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser};
use serde::Serialize;

use crate::cli::{Cli, GlobalArgs};
use crate::plot;
use crate::runner::Progress;
use crate::targets::{strata_bin, Target};
use crate::workloads::{self, RunReport};

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Target A: `strata` (start a `strata dev` cluster), `etcd` (start an etcd cluster
    /// of --members) or endpoints `host:port[,host:port…]` of a running server.
    #[arg(long, default_value = "strata")]
    pub a: String,
    /// Target B (same forms as --a).
    #[arg(long, default_value = "etcd")]
    pub b: String,
    /// Rounds; each round runs the workload once against A, then once against B.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Run the workload once against each target before the measured rounds.
    #[arg(long)]
    pub warmup: bool,
    /// etcd binary for an `etcd` target.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd_bin: PathBuf,
    /// Members of an `etcd` target.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// strata binary for a `strata` target (default: $STRATA_BIN, then next to this
    /// executable, then PATH).
    #[arg(long)]
    pub strata_bin: Option<PathBuf>,
    /// Storage nodes of a `strata` target.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Also write the ratio table as Markdown to FILE.
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// The workload: a benchmark subcommand and its flags, after `--`
    /// (e.g. `-- put --conns 10 --clients 100 --total 20000`).
    #[arg(last = true, required = true)]
    pub workload: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub metric: String,
    pub a_values: Vec<f64>,
    pub b_values: Vec<f64>,
    pub a_median: f64,
    pub b_median: f64,
    /// Half the min–max range as a percentage of the median.
    pub a_spread_pct: f64,
    pub b_spread_pct: f64,
    /// a_median / b_median.
    pub ratio_a_over_b: f64,
}

#[derive(Debug, Clone, Serialize)]
struct TargetInfo {
    spec: String,
    label: String,
    endpoints: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
struct RoundRun {
    round: usize,
    target: &'static str,
    report: RunReport,
}

#[derive(Debug, Clone, Serialize)]
struct CompareReport {
    tool: &'static str,
    version: &'static str,
    command: &'static str,
    argv: Vec<String>,
    workload: Vec<String>,
    rounds: usize,
    order: &'static str,
    a: TargetInfo,
    b: TargetInfo,
    notes: Vec<String>,
    table: Vec<Row>,
    runs: Vec<RoundRun>,
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Half the min–max range as a percentage of the median.
pub fn spread_pct(v: &[f64]) -> f64 {
    let m = median(v);
    if v.is_empty() || m == 0.0 {
        return 0.0;
    }
    let lo = v.iter().cloned().fold(f64::MAX, f64::min);
    let hi = v.iter().cloned().fold(f64::MIN, f64::max);
    (hi - lo) / 2.0 / m * 100.0
}

async fn start(spec: &str, a: &CompareArgs) -> Result<Target> {
    match spec {
        "strata" => {
            let bin = strata_bin(a.strata_bin.as_deref());
            eprintln!(
                "strata-bench: starting strata dev ({} nodes) from {}",
                a.nodes,
                bin.display()
            );
            Target::start_strata(&bin, a.nodes, &[])
        }
        "etcd" => {
            eprintln!(
                "strata-bench: starting etcd ({} members) from {}",
                a.members,
                a.etcd_bin.display()
            );
            Target::start_etcd(&a.etcd_bin, a.members).await
        }
        eps => {
            let eps: Vec<String> = eps
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if eps.is_empty() {
                bail!("empty target");
            }
            Ok(Target::external(eps))
        }
    }
}

/// Parses the workload for one target's endpoints.
pub fn workload_cli(workload: &[String], endpoints: &[String]) -> Result<Cli> {
    for w in workload {
        for bad in ["--endpoints", "--json", "--csv", "--plot"] {
            if w == bad || w.starts_with(&format!("{bad}=")) {
                bail!("{bad} belongs before `--` (compare sets the endpoints and writes the outputs itself)");
            }
        }
    }
    let mut args = vec![
        "strata-bench".to_string(),
        "--endpoints".into(),
        endpoints.join(","),
        "--no-progress".into(),
    ];
    args.extend(workload.iter().cloned());
    let cli = Cli::try_parse_from(&args).map_err(|e| anyhow::anyhow!("workload: {e}"))?;
    if matches!(
        cli.cmd,
        crate::cli::Cmd::Compare(_) | crate::cli::Cmd::Scale(_)
    ) {
        bail!("the workload must be a benchmark subcommand");
    }
    Ok(cli)
}

pub fn table(a: &[&RunReport], b: &[&RunReport]) -> Vec<Row> {
    type Get = fn(&crate::stats::Summary) -> f64;
    let metrics: [(&str, Get); 8] = [
        ("requests/sec", |s| s.requests_per_sec),
        ("average (ms)", |s| s.average_secs * 1e3),
        ("stddev (ms)", |s| s.stddev_secs * 1e3),
        ("p50 (ms)", |s| s.pctl(50.0) * 1e3),
        ("p90 (ms)", |s| s.pctl(90.0) * 1e3),
        ("p99 (ms)", |s| s.pctl(99.0) * 1e3),
        ("p99.9 (ms)", |s| s.pctl(99.9) * 1e3),
        ("errors", |s| s.errors as f64),
    ];
    metrics
        .iter()
        .map(|(name, get)| {
            let av: Vec<f64> = a.iter().map(|r| get(&r.results[0])).collect();
            let bv: Vec<f64> = b.iter().map(|r| get(&r.results[0])).collect();
            let (am, bm) = (median(&av), median(&bv));
            Row {
                metric: name.to_string(),
                a_spread_pct: spread_pct(&av),
                b_spread_pct: spread_pct(&bv),
                a_values: av,
                b_values: bv,
                a_median: am,
                b_median: bm,
                ratio_a_over_b: if bm != 0.0 { am / bm } else { f64::NAN },
            }
        })
        .collect()
}

fn fmt_val(v: f64) -> String {
    if (v == v.trunc() && v.abs() < 1e15) || v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.2}")
    } else {
        "-".into()
    }
}

pub fn text_table(rows: &[Row], a_label: &str, b_label: &str) -> String {
    let mut s = format!(
        "{:<16} {:>24} {:>24} {:>8}\n",
        "metric", "A median ± spread", "B median ± spread", "A/B"
    );
    for r in rows {
        let cell = |m: f64, sp: f64| format!("{} ± {:.1}%", fmt_val(m), sp);
        s += &format!(
            "{:<16} {:>24} {:>24} {:>8}\n",
            r.metric,
            cell(r.a_median, r.a_spread_pct),
            cell(r.b_median, r.b_spread_pct),
            fmt_ratio(r.ratio_a_over_b)
        );
    }
    s += &format!("A = {a_label}\nB = {b_label}\n");
    s
}

pub fn markdown_table(rows: &[Row], a_label: &str, b_label: &str, caption: &str) -> String {
    let mut s = format!("{caption}\n\n| metric | A: {a_label} (median ± spread) | B: {b_label} (median ± spread) | A/B |\n|---|---:|---:|---:|\n");
    for r in rows {
        s += &format!(
            "| {} | {} ± {:.1}% | {} ± {:.1}% | {} |\n",
            r.metric,
            fmt_val(r.a_median),
            r.a_spread_pct,
            fmt_val(r.b_median),
            r.b_spread_pct,
            fmt_ratio(r.ratio_a_over_b)
        );
    }
    s
}

pub async fn run(g: &GlobalArgs, a: &CompareArgs, argv: Vec<String>) -> Result<ExitCode> {
    if a.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    // Check the workload before starting anything.
    workload_cli(&a.workload, &["127.0.0.1:1".to_string()])?;
    let ta = start(&a.a, a).await.context("start target A")?;
    let tb = start(&a.b, a).await.context("start target B")?;
    let (ca, cb) = (
        workload_cli(&a.workload, &ta.endpoints)?,
        workload_cli(&a.workload, &tb.endpoints)?,
    );
    let wl = a.workload.join(" ");
    println!("Compare: {wl}");
    println!("  A: {} at {}", ta.label, ta.endpoints.join(","));
    println!("  B: {} at {}", tb.label, tb.endpoints.join(","));
    println!(
        "  {} rounds, interleaved A B A B; both targets run on this machine throughout{}",
        a.rounds,
        if a.warmup {
            "; one warm-up run each first"
        } else {
            ""
        }
    );
    let progress = Progress::hidden();
    if a.warmup {
        for (name, cli) in [("A", &ca), ("B", &cb)] {
            workloads::run(cli, Vec::new(), &progress)
                .await
                .with_context(|| format!("warm-up on {name}"))?;
        }
    }
    let mut runs: Vec<RoundRun> = Vec::new();
    for round in 1..=a.rounds {
        for (name, cli) in [("A", &ca), ("B", &cb)] {
            let mut inner_argv = vec![
                "strata-bench".to_string(),
                "--endpoints".into(),
                cli.global.endpoints.join(","),
            ];
            inner_argv.extend(a.workload.iter().cloned());
            let rep = workloads::run(cli, inner_argv, &progress)
                .await
                .with_context(|| format!("round {round} on {name}"))?;
            let s = &rep.results[0];
            println!(
                "  round {round} {name}: {:.1} req/s, average {:.3} ms, p99 {:.3} ms, {} errors",
                s.requests_per_sec,
                s.average_secs * 1e3,
                s.pctl(99.0) * 1e3,
                s.errors
            );
            runs.push(RoundRun {
                round,
                target: name,
                report: rep,
            });
        }
    }
    let ra: Vec<&RunReport> = runs
        .iter()
        .filter(|r| r.target == "A")
        .map(|r| &r.report)
        .collect();
    let rb: Vec<&RunReport> = runs
        .iter()
        .filter(|r| r.target == "B")
        .map(|r| &r.report)
        .collect();
    let rows = table(&ra, &rb);
    println!("\n{}", text_table(&rows, &ta.label, &tb.label));
    println!("(median over {} rounds of the main result \"{}\"; spread = half the min–max range as % of the median)", a.rounds, ra[0].results[0].name);
    let notes = vec![format!(
        "one machine: both targets and the load generator share its {} CPUs",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    )];
    let report = CompareReport {
        tool: "strata-bench",
        version: env!("CARGO_PKG_VERSION"),
        command: "compare",
        argv,
        workload: a.workload.clone(),
        rounds: a.rounds,
        order: "A B A B",
        a: TargetInfo {
            spec: a.a.clone(),
            label: ta.label.clone(),
            endpoints: ta.endpoints.clone(),
        },
        b: TargetInfo {
            spec: a.b.clone(),
            label: tb.label.clone(),
            endpoints: tb.endpoints.clone(),
        },
        notes,
        table: rows.clone(),
        runs,
    };
    if let Some(p) = &g.json {
        let f = std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(f), &report)?;
    }
    if let Some(p) = &a.markdown {
        let caption = format!(
            "`strata-bench compare` — workload `{wl}`; {} rounds interleaved A B A B; median ± spread \
             (half the min–max range); both targets and the load generator on one machine with {} CPUs.",
            a.rounds,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );
        std::fs::write(p, markdown_table(&rows, &ta.label, &tb.label, &caption))?;
    }
    if let Some(p) = &g.csv {
        let mut w = csv::Writer::from_path(p)?;
        w.write_record([
            "metric",
            "a_median",
            "a_spread_pct",
            "b_median",
            "b_spread_pct",
            "ratio_a_over_b",
            "a_values",
            "b_values",
        ])?;
        for r in &rows {
            let join = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            w.write_record([
                r.metric.clone(),
                format!("{}", r.a_median),
                format!("{:.2}", r.a_spread_pct),
                format!("{}", r.b_median),
                format!("{:.2}", r.b_spread_pct),
                format!("{}", r.ratio_a_over_b),
                join(&r.a_values),
                join(&r.b_values),
            ])?;
        }
        w.flush()?;
    }
    if let Some(p) = &g.plot {
        let series: Vec<plot::Series> = report
            .runs
            .iter()
            .map(|r| {
                let label = if r.target == "A" {
                    &ta.label
                } else {
                    &tb.label
                };
                plot::Series::from_summary(
                    &format!("{}: {label} r{}", r.target, r.round),
                    &r.report.results[0],
                )
            })
            .collect();
        plot::draw(p, &format!("strata-bench compare: {wl}"), &series)
            .with_context(|| format!("plot {}", p.display()))?;
    }
    drop(ta);
    drop(tb);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert!((spread_pct(&[90.0, 100.0, 110.0]) - 10.0).abs() < 1e-9);
        assert_eq!(spread_pct(&[5.0]), 0.0);
    }

    #[test]
    fn workload_parsing() {
        let c = workload_cli(
            &["put".into(), "--total".into(), "5".into()],
            &["1.2.3.4:5".into()],
        )
        .unwrap();
        assert_eq!(c.global.endpoints, vec!["1.2.3.4:5"]);
        assert!(workload_cli(
            &["put".into(), "--endpoints".into(), "x:1".into()],
            &["y:1".into()]
        )
        .is_err());
        assert!(workload_cli(&["put".into(), "--json=x".into()], &["y:1".into()]).is_err());
    }
}
