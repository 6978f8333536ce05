//! `strata-bench`: load generator speaking etcd v3 to any endpoint (Strata or etcd).
//!
//! Subcommands and flags follow etcd's `benchmark` tool (`put`, `range`, `txn-put`,
//! `txn-mixed`, `watch`, `watch-latency`, `lease-keepalive`), and so does the text
//! summary; the figures come from an HDR histogram (see `stats`). `--json`, `--csv` and
//! `--plot` write every figure, the per-second series and a PNG. `compare` runs one
//! workload against two targets, interleaved, and prints a ratio table; `scale` runs a
//! write workload against Strata clusters of 3, 6 and 9 CPU-capped nodes on this
//! machine.

mod cli;
mod compare;
mod keys;
mod layout;
mod plot;
mod ratelimit;
mod runner;
mod scale;

mod stats;
mod targets;
mod workloads;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;

use crate::cli::{Cli, Cmd, GlobalArgs};
use crate::runner::Progress;
use crate::workloads::RunReport;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let cli = Cli::parse();
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("STRATA_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        b.worker_threads(n);
    }
    let rt = match b.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("strata-bench: tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let r = rt.block_on(real_main(cli, argv));
    rt.shutdown_timeout(Duration::from_secs(2));
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("strata-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn real_main(cli: Cli, argv: Vec<String>) -> Result<ExitCode> {
    match &cli.cmd {
        Cmd::Compare(a) => compare::run(&cli.global, a, argv).await,
        Cmd::Scale(a) => scale::run(&cli.global, a, argv).await,
        cmd => {
            match cmd {
                Cmd::Range(r) => println!("bench with {} range", consistency_word(r.consistency)),
                Cmd::TxnMixed(r) => {
                    println!("bench with {} range", consistency_word(r.consistency))
                }
                _ => {}
            }
            let progress = Progress::new(cli.global.no_progress);
            let rep = workloads::run(&cli, argv, &progress).await?;
            print!("{}", rep.text());
            write_outputs(&cli.global, &rep)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn consistency_word(c: cli::Consistency) -> &'static str {
    match c {
        cli::Consistency::L => "linearizable",
        cli::Consistency::S => "serializable",
    }
}

/// `--json`, `--csv`, `--plot` of a single run.
fn write_outputs(g: &GlobalArgs, rep: &RunReport) -> Result<()> {
    if let Some(p) = &g.json {
        let f = std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(f), rep)?;
    }
    if let Some(p) = &g.csv {
        workloads::write_csv(p, rep).with_context(|| format!("write {}", p.display()))?;
    }
    if let Some(p) = &g.plot {
        let series: Vec<plot::Series> = rep
            .results
            .iter()
            .filter(|r| r.requests > 0)
            .map(|r| plot::Series::from_summary(&r.name, r))
            .collect();
        let title = format!(
            "strata-bench {} ({} conns, {} clients) against {}",
            rep.command,
            g.conns,
            g.clients,
            g.endpoints.join(",")
        );
        plot::draw(p, &title, &series).with_context(|| format!("plot {}", p.display()))?;
    }
    Ok(())
}
