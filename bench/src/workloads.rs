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
    let conns = connect(&g.endpoints, g.conns, g.dial_timeout.0).await?;
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
            let workers = clients
                .iter()
                .map(|c| {
                    let (kv, key, opts) = (c.kv_client(), key.clone(), opts.clone());
                    Box::new(move |_i| {
                        let (mut kv, key, opts) = (kv.clone(), key.clone(), opts.clone());
                        let f: OpFuture = Box::pin(async move {
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

// ---------------------------------------------------------------------------
// watch

/// Creates `n` watches on one stream, one at a time, each timed from sending the
/// create request to its `created` response.
async fn create_watches(
    client: Client,
    keys: Vec<Vec<u8>>,
    timeout: Duration,
    t0: Instant,
) -> (Option<WatchStream>, Recorder) {
    let mut rec = Recorder::new();
    let mut wc = client.watch_client();
    let mut stream: Option<WatchStream> = None;
    let n = keys.len();
    for (j, key) in keys.into_iter().enumerate() {
        let st = Instant::now();
        let r = tokio::time::timeout(timeout, async {
            match stream.as_mut() {
                None => stream = Some(wc.watch(key, None).await.map_err(|e| err_text(&e))?),
                Some(s) => s.watch(key, None).await.map_err(|e| err_text(&e))?,
            }
            let s = stream.as_mut().unwrap();
            loop {
                match s.message().await.map_err(|e| err_text(&e))? {
                    Some(resp) if resp.created() => return Ok(()),
                    Some(resp) if resp.canceled() => {
                        return Err(format!("watch canceled: {}", resp.cancel_reason()))
                    }
                    Some(_) => continue,
                    None => return Err("watch stream closed".to_string()),
                }
            }
        })
        .await;
        let end = Instant::now();
        let err = match r {
            Ok(Ok(())) => {
                rec.record(end - st, end - t0);
                continue;
            }
            Ok(Err(e)) => e,
            Err(_) => format!("watch create timed out after {timeout:?}"),
        };
        // The stream is unusable: the remaining watches of it fail too.
        for _ in j..n {
            rec.record_error(&err, end - t0);
        }
        return (None, rec);
    }
    (stream, rec)
}

async fn watch(
    g: &GlobalArgs,
    a: &crate::cli::WatchArgs,
    clients: &[Client],
    progress: &Progress,
) -> Result<Vec<Summary>> {
    if a.streams == 0 || a.watch_per_stream == 0 || a.watched_key_total == 0 {
        bail!("--streams, --watch-per-stream and --watched-key-total must be at least 1");
    }
    let kg = KeyGen::new(
        a.prefix.as_bytes(),
        a.key_size,
        a.key_space_size,
        a.sequential_keys,
    )
    .map_err(|e| anyhow!(e))?;
    let mut rng = seeded();
    let watched: Vec<Vec<u8>> = (0..a.watched_key_total as u64)
        .map(|i| kg.key(i, &mut rng))
        .collect();
    let total_watchers = a.streams * a.watch_per_stream;
    let mut num_watchers: HashMap<&[u8], u64> = HashMap::new();
    for j in 0..total_watchers {
        *num_watchers.entry(&watched[j % watched.len()]).or_default() += 1;
    }

    // Phase 1: create the watches.
    let t0 = Instant::now();
    let created = Arc::new(AtomicU64::new(0));
    let bar = progress.track("watch create", total_watchers as u64, None, created.clone());
    let mut tasks = Vec::new();
    for s in 0..a.streams {
        let keys: Vec<Vec<u8>> = (0..a.watch_per_stream)
            .map(|w| watched[(s * a.watch_per_stream + w) % watched.len()].clone())
            .collect();
        let client = clients[s % clients.len()].clone();
        let (timeout, created) = (g.request_timeout.0, created.clone());
        tasks.push(tokio::spawn(async move {
            let r = create_watches(client, keys, timeout, t0).await;
            created.fetch_add(r.1.count(), Ordering::Relaxed);
            r
        }));
    }
    let mut streams = Vec::new();
    let mut creation = Recorder::new();
    for t in tasks {
        let (s, rec) = t.await?;
        creation.merge(&rec);
        streams.extend(s);
    }
    let creation_wall = t0.elapsed();
    bar.finish();
    let creation_sum = creation.summary("watch-creation", creation_wall, total_watchers as u64);

    // Phase 2: put the watched keys; every watcher of a key gets an event per put.
    // Watches whose creation failed are counted there and not expected to deliver.
    let events_total: u64 = if creation.error_count() == 0 {
        (0..a.put_total)
            .map(|i| num_watchers[watched[(i % watched.len() as u64) as usize].as_slice()])
            .sum()
    } else {
        0
    };
    let t1 = Instant::now();
    let starts: Arc<Vec<AtomicU64>> =
        Arc::new((0..a.put_total).map(|_| AtomicU64::new(0)).collect());
    let remaining = Arc::new(AtomicI64::new(events_total as i64));
    let all_in = Arc::new(tokio::sync::Notify::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let received = Arc::new(AtomicU64::new(0));
    let mut rx_tasks = Vec::new();
    if events_total > 0 {
        for mut s in streams {
            let (starts, remaining, all_in, received) = (
                starts.clone(),
                remaining.clone(),
                all_in.clone(),
                received.clone(),
            );
            let mut stop_rx = stop_rx.clone();
            rx_tasks.push(tokio::spawn(async move {
                let mut rec = Recorder::new();
                loop {
                    tokio::select! {
                        _ = stop_rx.changed() => break,
                        m = s.message() => {
                            let now = Instant::now();
                            let resp = match m {
                                Ok(Some(r)) => r,
                                Ok(None) => { rec.record_error("watch stream closed", now - t1); break }
                                Err(e) => { rec.record_error(&err_text(&e), now - t1); break }
                            };
                            for ev in resp.events() {
                                let Some(idx) = ev.kv().and_then(|kv| value_index(kv.value())) else { continue };
                                let Some(st) = starts.get(idx as usize) else { continue };
                                let st_ns = st.load(Ordering::Acquire);
                                if st_ns == 0 { continue; }
                                let at = now - t1;
                                rec.record(at.saturating_sub(Duration::from_nanos(st_ns - 1)), at);
                                received.fetch_add(1, Ordering::Relaxed);
                                if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                                    all_in.notify_one();
                                }
                            }
                        }
                    }
                }
                rec
            }));
        }
    } else {
        drop(streams);
    }
    let bar = progress.track("watch events", events_total, None, received.clone());
    let load = Load {
        total: a.put_total,
        duration: None,
        rate: a.put_rate,
        request_timeout: g.request_timeout.0,
    };
    let val_size = a.val_size;
    let workers = clients
        .iter()
        .map(|c| {
            let (kv, watched, starts) = (c.kv_client(), watched.clone(), starts.clone());
            Box::new(move |i: u64| {
                let key = watched[(i % watched.len() as u64) as usize].clone();
                starts[i as usize].store((t1.elapsed().as_nanos() as u64) + 1, Ordering::Release);
                let mut kv = kv.clone();
                let f: OpFuture = Box::pin(async move {
                    kv.put(key, indexed_value(i, val_size), None)
                        .await
                        .map(|_| ())
                        .map_err(|e| err_text(&e))
                });
                (0usize, f)
            }) as Worker
        })
        .collect();
    let ph = run_closed_loop(1, workers, load, &Progress::hidden(), "watch put").await;
    let put_sum = ph.recorders[0].summary("put", ph.wall, a.put_total);
    if events_total > 0 && remaining.load(Ordering::Acquire) > 0 {
        let _ = tokio::time::timeout(a.event_timeout.0, async {
            while remaining.load(Ordering::Acquire) > 0 {
                tokio::select! {
                    _ = all_in.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        })
        .await;
    }
    let events_wall = t1.elapsed();
    let _ = stop_tx.send(true);
    let mut events = Recorder::new();
    for t in rx_tasks {
        if let Ok(rec) = t.await {
            events.merge(&rec);
        }
    }
    bar.finish();
    let missing = events_total.saturating_sub(events.count());
    for _ in 0..missing.min(1_000_000) {
        events.record_error(
            &format!(
                "event not received within {:?} of the last put",
                a.event_timeout.0
            ),
            events_wall,
        );
    }
    let events_sum = events.summary("watch-events", events_wall, events_total);
    Ok(vec![creation_sum, put_sum, events_sum])
}

// ---------------------------------------------------------------------------
// watch-latency

async fn watch_latency(
    g: &GlobalArgs,
    a: &crate::cli::WatchLatencyArgs,
    clients: &[Client],
    progress: &Progress,
) -> Result<Vec<Summary>> {
    let mut rng = seeded();
    let mut key = a.prefix.as_bytes().to_vec();
    key.extend(rand_bytes(a.key_size, &mut rng));
    let n_w = clients.len();
    // One watch (on its own stream) per client; events go to one channel.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, Instant)>(4096.max(n_w * 4));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut rx_tasks = Vec::new();
    for c in clients {
        let mut wc = c.watch_client();
        let mut s = tokio::time::timeout(g.request_timeout.0, async {
            let mut s = wc.watch(key.clone(), None).await?;
            loop {
                match s.message().await? {
                    Some(r) if r.created() => return Ok::<_, etcd_client::Error>(s),
                    Some(_) => continue,
                    None => {
                        return Err(etcd_client::Error::WatchError("watch stream closed".into()))
                    }
                }
            }
        })
        .await
        .map_err(|_| anyhow!("watch create timed out"))?
        .map_err(|e| anyhow!("watch create: {}", err_text(&e)))?;
        let (tx, mut stop_rx) = (tx.clone(), stop_rx.clone());
        rx_tasks.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop_rx.changed() => break,
                    m = s.message() => {
                        let now = Instant::now();
                        let Ok(Some(resp)) = m else { break };
                        for ev in resp.events() {
                            if let Some(idx) = ev.kv().and_then(|kv| value_index(kv.value())) {
                                if tx.send((idx, now)).await.is_err() { return; }
                            }
                        }
                    }
                }
            }
        }));
    }
    drop(tx);
    // The writer has a connection of its own, as in etcd's tool.
    let put_conn = connect(&g.endpoints, 1, g.dial_timeout.0).await?;
    let mut kv = put_conn[0].kv_client();
    let limiter = RateLimiter::optional(a.put_rate);
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress.track("watch-latency", a.total, None, done.clone());
    let (mut from_ack, mut from_start, mut puts) =
        (Recorder::new(), Recorder::new(), Recorder::new());
    let t0 = Instant::now();
    for i in 0..a.total {
        if let Some(l) = &limiter {
            l.acquire().await;
        }
        let st = Instant::now();
        let r = tokio::time::timeout(
            g.request_timeout.0,
            kv.put(key.clone(), indexed_value(i, a.val_size), None),
        )
        .await;
        let ack = Instant::now();
        match r {
            Ok(Ok(_)) => puts.record(ack - st, ack - t0),
            Ok(Err(e)) => {
                puts.record_error(&err_text(&e), ack - t0);
                continue;
            }
            Err(_) => {
                puts.record_error("put timed out", ack - t0);
                continue;
            }
        }
        let mut got = 0usize;
        let deadline = tokio::time::Instant::now() + a.event_timeout.0;
        while got < n_w {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((idx, at))) if idx == i => {
                    got += 1;
                    from_ack.record(at.saturating_duration_since(ack), at - t0);
                    from_start.record(at - st, at - t0);
                }
                Ok(Some(_)) => {} // a late event of an earlier put (already counted missing)
                Ok(None) | Err(_) => break,
            }
        }
        for _ in got..n_w {
            let msg = format!("event not received within {:?}", a.event_timeout.0);
            from_ack.record_error(&msg, t0.elapsed());
            from_start.record_error(&msg, t0.elapsed());
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    let wall = t0.elapsed();
    bar.finish();
    let _ = stop_tx.send(true);
    for t in rx_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    let put_ok = puts.count();
    Ok(vec![
        from_ack.summary("watch-latency", wall, put_ok * n_w as u64),
        from_start.summary("watch-latency-from-put-start", wall, put_ok * n_w as u64),
        puts.summary("put", wall, a.total),
    ])
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
