//! The benchmarks: what each subcommand sends, after etcd's `benchmark` tool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};
use etcd_client::{Client, GetOptions, Txn, TxnOp, WatchStream};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::cli::{Cli, Cmd, Consistency, GlobalArgs, LoadArgs};
use crate::keys::{indexed_value, prefix_end, rand_bytes, value_index, KeyGen};
use crate::ratelimit::RateLimiter;
use crate::runner::{connect, err_text, run_closed_loop, share, Load, OpFuture, Progress, Worker};
use crate::stats::{Recorder, Summary};

mod watch;
use watch::{watch, watch_latency};

/// Everything a run produced: the JSON of `--json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunReport {
    pub tool: String,
    pub version: String,
    pub command: String,
    /// The command line, as given.
    pub argv: Vec<String>,
    /// Every flag of the run after defaults were applied (the exact workload).
    pub workload: serde_json::Value,
    pub started_unix_secs: f64,
    pub notes: Vec<String>,
    /// One summary per kind of request; the first is the main one.
    pub results: Vec<Summary>,
}

impl RunReport {
    /// The etcd-style text report.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for r in &self.results {
            let header = match (self.command.as_str(), r.name.as_str()) {
                ("txn-mixed", "read") => {
                    format!("Total Read Ops: {}\nDetails:", r.requests + r.errors)
                }
                ("txn-mixed", "write") => {
                    format!("Total Write Ops: {}\nDetails:", r.requests + r.errors)
                }
                ("watch", "watch-creation") => "Watch creation summary:".into(),
                ("watch", "put") | ("watch-latency", "put") => "\nPut summary:".into(),
                ("watch", "watch-events") => "\nWatch events received summary:".into(),
                ("watch-latency", "watch-latency-from-put-start") => {
                    "\nWatch latency measured from the start of the put:".into()
                }
                _ => String::new(),
            };
            if !header.is_empty() {
                s += &header;
            }
            s += &r.etcd_text();
        }
        for n in &self.notes {
            s += &format!("\nNote: {n}\n");
        }
        s
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn load_of(l: &LoadArgs, g: &GlobalArgs) -> Result<Load> {
    if !(l.rate >= 0.0 && l.rate.is_finite()) {
        bail!("--rate must be ≥ 0");
    }
    Ok(Load {
        total: l.total(),
        duration: l.duration.map(|d| d.0),
        rate: l.rate,
        request_timeout: g.request_timeout.0,
    })
}

/// Expected request count of a closed-loop phase: `--total`, or what was issued in a
/// `--duration` run.
fn expected(load: &Load, issued: u64) -> u64 {
    if load.total == u64::MAX || load.duration.is_some() {
        issued
    } else {
        load.total
    }
}

fn seeded() -> SmallRng {
    SmallRng::from_os_rng()
}

/// Runs one benchmark subcommand (not `compare`/`scale`) and returns its report.
pub async fn run(cli: &Cli, argv: Vec<String>, progress: &Progress) -> Result<RunReport> {
    let g = &cli.global;
    if g.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let started = now_unix();
    let mut notes = Vec::new();
    let conns = connect(
        &g.endpoints,
        g.conns,
        g.dial_timeout.0,
        g.tls()?.as_ref(),
        g.credentials()?.as_ref(),
    )
    .await?;
    let clients = share(&conns, g.clients);
    let workload = workload_json(cli);
    let results = match &cli.cmd {
        Cmd::Put(a) => {
            let load = load_of(&a.load, g)?;
            let kg = KeyGen::new(
                a.keys.prefix.as_bytes(),
                a.keys.key_size,
                a.keys.key_space_size,
                a.keys.sequential_keys,
            )
            .map_err(|e| anyhow!(e))?;
            let mut rng0 = seeded();
            let val = rand_bytes(a.keys.val_size, &mut rng0);
            let workers = clients
                .iter()
                .map(|c| {
                    let (kv, kg, val) = (c.kv_client(), kg.clone(), val.clone());
                    let mut rng = SmallRng::from_rng(&mut rng0);
                    Box::new(move |i| {
                        let key = kg.key(i, &mut rng);
                        let (mut kv, val) = (kv.clone(), val.clone());
                        let f: OpFuture = Box::pin(async move {
                            kv.put(key, val, None)
                                .await
                                .map(|_| ())
                                .map_err(|e| err_text(&e))
                        });
                        (0usize, f)
                    }) as Worker
                })
                .collect();
            let ph = run_closed_loop(1, workers, load, progress, "put").await;
            vec![ph.recorders[0].summary("put", ph.wall, expected(&load, ph.issued))]
        }
        Cmd::Range(a) => {
            let load = load_of(&a.load, g)?;
            let (key, end): (Vec<u8>, Option<Vec<u8>>) = match (&a.key, &a.end) {
                (Some(k), e) => (
                    k.as_bytes().to_vec(),
                    e.as_ref().map(|e| e.as_bytes().to_vec()),
                ),
                (None, _) if !a.prefix.is_empty() => (
                    a.prefix.as_bytes().to_vec(),
                    Some(prefix_end(a.prefix.as_bytes())),
                ),
                (None, _) => bail!("range needs KEY [END] or --prefix"),
            };
            let mut opts = GetOptions::new();
            if let Some(e) = end {
                opts = opts.with_range(e);
            }
            if a.consistency == Consistency::S {
                opts = opts.with_serializable();
            }
            if a.limit > 0 {
                opts = opts.with_limit(a.limit);
            }
            if a.count_only {
                opts = opts.with_count_only();
            }
            let stream = a.stream;
            let workers = clients
                .iter()
                .map(|c| {
                    // A whole LIST may be far above gRPC's 4 MiB default.
                    let kv = c.kv_client().max_decoding_message_size(usize::MAX);
                    let (key, opts) = (key.clone(), opts.clone());
                    Box::new(move |_i| {
                        let (mut kv, key, opts) = (kv.clone(), key.clone(), opts.clone());
                        let f: OpFuture = Box::pin(async move {
                            if stream {
                                let mut s = kv
                                    .get_stream(key, Some(opts))
                                    .await
                                    .map_err(|e| err_text(&e))?;
                                while s.message().await.map_err(|e| err_text(&e))?.is_some() {}
                                return Ok(());
                            }
                            kv.get(key, Some(opts))
                                .await
                                .map(|_| ())
                                .map_err(|e| err_text(&e))
                        });
                        (0usize, f)
                    }) as Worker
                })
                .collect();
            let ph = run_closed_loop(1, workers, load, progress, "range").await;
            vec![ph.recorders[0].summary("range", ph.wall, expected(&load, ph.issued))]
        }
        Cmd::TxnPut(a) => {
            let load = load_of(&a.load, g)?;
            let kg = KeyGen::new(
                a.keys.prefix.as_bytes(),
                a.keys.key_size,
                a.keys.key_space_size,
                a.keys.sequential_keys,
            )
            .map_err(|e| anyhow!(e))?;
            if a.txn_ops == 0 || a.txn_ops > a.keys.key_space_size {
                bail!(
                    "--txn-ops ({}) must be between 1 and --key-space-size ({}): a txn may not put one key twice",
                    a.txn_ops,
                    a.keys.key_space_size
                );
            }
            let ops = a.txn_ops;
            let mut rng0 = seeded();
            let val = rand_bytes(a.keys.val_size, &mut rng0);
            let workers = clients
                .iter()
                .map(|c| {
                    let (kv, kg, val) = (c.kv_client(), kg.clone(), val.clone());
                    Box::new(move |i: u64| {
                        // As etcd: txn i puts keys (i·ops + j) mod key-space-size.
                        let txn = Txn::new().and_then(
                            (0..ops)
                                .map(|j| {
                                    TxnOp::put(
                                        kg.key_n(i.wrapping_mul(ops).wrapping_add(j)),
                                        val.clone(),
                                        None,
                                    )
                                })
                                .collect::<Vec<_>>(),
                        );
                        let mut kv = kv.clone();
                        let f: OpFuture = Box::pin(async move {
                            kv.txn(txn).await.map(|_| ()).map_err(|e| err_text(&e))
                        });
                        (0usize, f)
                    }) as Worker
                })
                .collect();
            let ph = run_closed_loop(1, workers, load, progress, "txn-put").await;
            vec![ph.recorders[0].summary("txn-put", ph.wall, expected(&load, ph.issued))]
        }
        Cmd::TxnMixed(a) => {
            let load = load_of(&a.load, g)?;
            if !(a.rw_ratio >= 0.0 && a.rw_ratio.is_finite()) {
                bail!("--rw-ratio must be ≥ 0");
            }
            let kg = KeyGen::new(
                a.keys.prefix.as_bytes(),
                a.keys.key_size,
                a.keys.key_space_size,
                a.keys.sequential_keys,
            )
            .map_err(|e| anyhow!(e))?;
            let (rkey, rend) = if a.keys.prefix.is_empty() {
                (vec![0u8], vec![0u8])
            } else {
                (
                    a.keys.prefix.as_bytes().to_vec(),
                    prefix_end(a.keys.prefix.as_bytes()),
                )
            };
            let rend = a
                .end_key
                .as_ref()
                .map(|e| e.as_bytes().to_vec())
                .unwrap_or(rend);
            let mut ropts = GetOptions::new().with_range(rend).with_limit(a.limit);
            if a.consistency == Consistency::S {
                ropts = ropts.with_serializable();
            }
            let p_read = a.rw_ratio / (1.0 + a.rw_ratio);
            let mut rng0 = seeded();
            let val = rand_bytes(a.keys.val_size, &mut rng0);
            let workers = clients
                .iter()
                .map(|c| {
                    let (kv, kg, val, rkey, ropts) = (
                        c.kv_client(),
                        kg.clone(),
                        val.clone(),
                        rkey.clone(),
                        ropts.clone(),
                    );
                    let mut rng = SmallRng::from_rng(&mut rng0);
                    Box::new(move |i: u64| {
                        let (kind, op) = if rng.random::<f64>() < p_read {
                            (0usize, TxnOp::get(rkey.clone(), Some(ropts.clone())))
                        } else {
                            // As etcd: writes go to key i mod key-space-size.
                            (1usize, TxnOp::put(kg.key_n(i), val.clone(), None))
                        };
                        let mut kv = kv.clone();
                        let f: OpFuture = Box::pin(async move {
                            kv.txn(Txn::new().and_then([op]))
                                .await
                                .map(|_| ())
                                .map_err(|e| err_text(&e))
                        });
                        (kind, f)
                    }) as Worker
                })
                .collect();
            let ph = run_closed_loop(2, workers, load, progress, "txn-mixed").await;
            let (r, w) = (&ph.recorders[0], &ph.recorders[1]);
            let (nr, nw) = (r.count() + r.error_count(), w.count() + w.error_count());
            vec![
                r.summary("read", ph.wall, nr),
                w.summary("write", ph.wall, nw),
            ]
        }
        Cmd::LeaseKeepalive(a) => {
            let load = load_of(&a.load, g)?;
            let mut ids = Vec::new();
            for c in &clients {
                let mut lc = c.lease_client();
                let r = tokio::time::timeout(g.request_timeout.0, lc.grant(100, None))
                    .await
                    .map_err(|_| anyhow!("lease grant timed out"))?
                    .map_err(|e| anyhow!("lease grant: {}", err_text(&e)))?;
                ids.push(r.id());
            }
            let workers = clients
                .iter()
                .zip(&ids)
                .map(|(c, &id)| {
                    let lc = c.lease_client();
                    Box::new(move |_i| {
                        let mut lc = lc.clone();
                        // One keepalive request and its response on a fresh stream, as
                        // etcd's KeepAliveOnce.
                        let f: OpFuture = Box::pin(async move {
                            lc.keep_alive(id)
                                .await
                                .map(|_| ())
                                .map_err(|e| err_text(&e))
                        });
                        (0usize, f)
                    }) as Worker
                })
                .collect();
            let ph = run_closed_loop(1, workers, load, progress, "lease-keepalive").await;
            let mut lc = conns[0].lease_client();
            for id in ids {
                let _ = tokio::time::timeout(Duration::from_secs(5), lc.revoke(id)).await;
            }
            vec![ph.recorders[0].summary("lease-keepalive", ph.wall, expected(&load, ph.issued))]
        }
        Cmd::Watch(a) => watch(g, a, &clients, progress).await?,
        Cmd::WatchLatency(a) => {
            notes.push(
                "watch-latency: the first summary measures from the put's response to each watcher's event \
                 (as etcd's tool; 0 when the event came first); the second from the start of the put"
                    .into(),
            );
            watch_latency(g, a, &clients, progress).await?
        }
        Cmd::Compare(_) | Cmd::Scale(_) => bail!("compare and scale are not workloads"),
    };
    Ok(RunReport {
        tool: "strata-bench".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        command: cli.cmd.name().into(),
        argv,
        workload,
        started_unix_secs: started,
        notes,
        results,
    })
}

fn workload_json(cli: &Cli) -> serde_json::Value {
    let mut g = serde_json::to_value(&cli.global).unwrap_or_default();
    if let Some(m) = g.as_object_mut() {
        // Output files are not part of the workload.
        for k in ["json", "csv", "plot", "no_progress"] {
            m.remove(k);
        }
    }
    let sub = match &cli.cmd {
        Cmd::Put(a) => serde_json::to_value(a),
        Cmd::Range(a) => serde_json::to_value(a),
        Cmd::TxnPut(a) => serde_json::to_value(a),
        Cmd::TxnMixed(a) => serde_json::to_value(a),
        Cmd::Watch(a) => serde_json::to_value(a),
        Cmd::WatchLatency(a) => serde_json::to_value(a),
        Cmd::LeaseKeepalive(a) => serde_json::to_value(a),
        Cmd::Compare(_) | Cmd::Scale(_) => Ok(serde_json::Value::Null),
    }
    .unwrap_or_default();
    // Resolve the request count bound.
    let mut sub = sub;
    if let Some(load) = sub.get_mut("load").and_then(|l| l.as_object_mut()) {
        let total = load
            .get("total")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        if total.is_null() && load.get("duration").is_none_or(|d| d.is_null()) {
            load.insert("total".into(), 10_000.into());
        }
    }
    serde_json::json!({ "command": cli.cmd.name(), "global": g, "args": sub })
}

/// The per-second series of all results as CSV.
pub fn write_csv(path: &std::path::Path, rep: &RunReport) -> Result<()> {
    let mut w = csv::Writer::from_path(path)?;
    w.write_record([
        "command",
        "result",
        "second",
        "requests",
        "errors",
        "interval_secs",
        "requests_per_sec",
        "average_ms",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
    ])?;
    for r in &rep.results {
        for s in &r.series {
            let interval = (r.total_secs - s.second as f64).clamp(0.0, 1.0);
            let rps = if interval > 0.0 {
                s.requests as f64 / interval
            } else {
                0.0
            };
            w.write_record([
                rep.command.clone(),
                r.name.clone(),
                s.second.to_string(),
                s.requests.to_string(),
                s.errors.to_string(),
                format!("{interval:.3}"),
                format!("{rps:.3}"),
                format!("{:.4}", s.average_ms),
                format!("{:.4}", s.p50_ms),
                format!("{:.4}", s.p90_ms),
                format!("{:.4}", s.p99_ms),
                format!("{:.4}", s.max_ms),
            ])?;
        }
    }
    w.flush()?;
    Ok(())
}
