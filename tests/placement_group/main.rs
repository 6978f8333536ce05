//! Placement as a raft group of real processes: the revision oracle across
//! `kill -9` of its leader, and replacing a replica while it serves. This file
//! holds the harness (replica processes, a leader-following caller, the
//! real-time order check); `oracle.rs` the tests.

#[path = "../common/mod.rs"]
mod common;

mod oracle;

use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Background;
use strata_proto::strata::placement_client::PlacementClient;
use strata_proto::strata::{AllocRequest, MembersRequest};
use tonic::transport::Channel;

/// One placement replica process.
pub(crate) struct Replica {
    pub(crate) id: u64,
    pub(crate) addr: String,
    pub(crate) dir: std::path::PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) proc: Option<Background>,
}

impl Replica {
    pub(crate) fn start(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata"));
        cmd.arg("placement")
            .args(["--listen", &self.addr])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(&self.args)
            .env(
                "STRATA_FAILPOINTS_FILE",
                self.dir.with_extension("failpoints"),
            )
            .env("RUST_LOG", "info");
        self.proc = Some(Background::spawn(cmd));
    }

    /// Sets this replica's failpoints (the process polls the file).
    pub(crate) fn failpoints(&self, lines: &str) {
        std::fs::write(self.dir.with_extension("failpoints"), lines).unwrap();
    }

    /// SIGSTOP for `d`, then SIGCONT: a leader that wakes up believing it
    /// still leads.
    pub(crate) fn pause(&self, d: Duration) {
        let pid = self.proc.as_ref().and_then(|p| p.pid()).expect("running");
        let sig = |s: &str| {
            let ok = Command::new("kill")
                .args([s, &pid.to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill {s} {pid}");
        };
        sig("-STOP");
        std::thread::sleep(d);
        sig("-CONT");
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(p) = self.proc.take() {
            let (_, err) = p.finish();
            let log = self.dir.with_extension("log");
            let _ = std::fs::write(log, err);
        }
    }
}

/// `strata ctl ARGS --placement ADDRS`; its stdout (it must succeed).
pub(crate) fn ctl(addrs: &[String], args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("ctl")
        .args(args)
        .args(["--placement", &addrs.join(","), "--timeout", "10s"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "strata ctl {args:?} failed: {err}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) struct Group {
    _tmp: tempfile::TempDir,
    pub(crate) replicas: Vec<Replica>,
}

impl Group {
    pub(crate) fn start(n: u64) -> Group {
        let tmp = tempfile::tempdir().unwrap();
        let addrs: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers: Vec<String> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect();
        let mut replicas = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let mut r = Replica {
                id,
                addr: addr.clone(),
                dir: tmp.path().join(format!("placement-{id}")),
                args: vec![
                    "--id".into(),
                    id.to_string(),
                    "--peers".into(),
                    peers.join(","),
                    "--replicas".into(),
                    "3".into(),
                    "--no-scheduler".into(),
                ],
                proc: None,
            };
            r.start();
            replicas.push(r);
        }
        Group {
            _tmp: tmp,
            replicas,
        }
    }

    /// The position in `replicas` of the current leader (bounded wait).
    pub(crate) async fn leader_pos(&self) -> usize {
        let id = leader(&self.addrs(), Duration::from_secs(10))
            .await
            .expect("a leader");
        self.replicas
            .iter()
            .position(|r| r.id == id)
            .expect("leader replica")
    }

    pub(crate) fn addrs(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.addr.clone()).collect()
    }
}

pub(crate) async fn client(addr: &str) -> Option<PlacementClient<Channel>> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(2));
    ep.connect().await.ok().map(PlacementClient::new)
}

/// Calls `addr` (reads and writes, or only reads) every `every` for `during`, over one
/// connection made now, each waiting up to 6 s; returns the answered ones.
pub(crate) async fn sticky_calls(
    addr: &str,
    during: Duration,
    every: Duration,
    reads_only: bool,
) -> tokio::task::JoinHandle<Vec<Op>> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(6));
    let c = PlacementClient::new(ep.connect().await.expect("connect"));
    tokio::spawn(async move {
        let mut calls = Vec::new();
        let end = Instant::now() + during;
        let mut n = 0u64;
        while Instant::now() < end {
            tokio::time::sleep(every).await;
            let mut c = c.clone();
            let count = if reads_only { 0 } else { n % 2 };
            n += 1;
            calls.push(tokio::spawn(async move {
                let invoked = Instant::now();
                let r = match c.alloc(AllocRequest { count }).await {
                    Ok(r) => r,
                    Err(_) => return None,
                };
                Some(Op {
                    invoked,
                    returned: Instant::now(),
                    count,
                    start: r.into_inner().start,
                })
            }));
        }
        let mut ops = Vec::new();
        for c in calls {
            ops.extend(c.await.unwrap());
        }
        ops
    })
}

/// The leader's id as a replica that knows one says, within `limit`.
pub(crate) async fn leader(addrs: &[String], limit: Duration) -> Option<u64> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        for a in addrs {
            if let Some(mut c) = client(a).await {
                if let Ok(r) = c.members(MembersRequest {}).await {
                    let r = r.into_inner();
                    if r.leader_id != 0 {
                        return Some(r.leader_id);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// One answered Alloc: when it was asked and answered, and what it says.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Op {
    pub(crate) invoked: Instant,
    pub(crate) returned: Instant,
    pub(crate) count: u64,
    pub(crate) start: i64,
}

impl Op {
    /// Every revision this answer says was handed out before it: the end of
    /// its allocation, or the next unallocated one for `alloc(0)`.
    pub(crate) fn end(&self) -> i64 {
        self.start + self.count as i64
    }
}

/// Allocates through whichever replica serves, following hints and trying
/// the others, for up to `limit`.
pub(crate) async fn alloc(
    addrs: &[String],
    conns: &mut [Option<PlacementClient<Channel>>],
    count: u64,
    limit: Duration,
) -> Result<i64, String> {
    let deadline = Instant::now() + limit;
    let mut i = 0usize;
    let mut last = String::new();
    while Instant::now() < deadline {
        let k = i % addrs.len();
        i += 1;
        if conns[k].is_none() {
            conns[k] = client(&addrs[k]).await;
        }
        let Some(c) = conns[k].as_mut() else {
            continue;
        };
        match c.alloc(AllocRequest { count }).await {
            Ok(r) => return Ok(r.into_inner().start),
            Err(st) => {
                last = st.message().to_string();
                match strata_proto::errors::placement_leader_hint(&st) {
                    Some(h) if !h.is_empty() => {
                        if let Some(p) = addrs.iter().position(|a| *a == h) {
                            i = p;
                        }
                    }
                    Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    None => {
                        conns[k] = None;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }
    }
    Err(last)
}

/// Checks real-time order: an answer given after another returned never
/// reaches below what that one handed out. Returns the violations.
pub(crate) fn order_violations(ops: &[Op]) -> Vec<String> {
    let mut by_return: Vec<&Op> = ops.iter().collect();
    by_return.sort_by_key(|o| o.returned);
    let mut by_invoke: Vec<&Op> = ops.iter().collect();
    by_invoke.sort_by_key(|o| o.invoked);
    let (mut j, mut max_end, mut bad) = (0, 0i64, Vec::new());
    for b in by_invoke {
        while j < by_return.len() && by_return[j].returned < b.invoked {
            max_end = max_end.max(by_return[j].end());
            j += 1;
        }
        if b.start < max_end {
            bad.push(format!(
                "alloc({}) answered {} after an earlier answer had handed out up to {}",
                b.count, b.start, max_end
            ));
        }
    }
    bad
}

/// Runs `clients` sequential allocating clients until `stop`; returns every
/// answered op and every failed call.
pub(crate) fn load(
    addrs: Vec<String>,
    clients: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<Op>, Vec<String>)> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for c in 0..clients {
            let (addrs, stop) = (addrs.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut conns = vec![None; addrs.len()];
                let (mut ops, mut errs) = (Vec::new(), Vec::new());
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && ops.len() < 200_000 {
                    // Reads (0) and writes of 1..=3 revisions.
                    let count = (n + c as u64) % 4;
                    n += 1;
                    let invoked = Instant::now();
                    match alloc(&addrs, &mut conns, count, Duration::from_secs(8)).await {
                        Ok(start) => ops.push(Op {
                            invoked,
                            returned: Instant::now(),
                            count,
                            start,
                        }),
                        Err(e) => errs.push(e),
                    }
                }
                (ops, errs)
            }));
        }
        let (mut ops, mut errs) = (Vec::new(), Vec::new());
        for t in tasks {
            let (o, e) = t.await.unwrap();
            ops.extend(o);
            errs.extend(e);
        }
        (ops, errs)
    })
}

/// Every answer in real-time order, and no call that failed for 8 s in a
/// row.
pub(crate) fn check(ops: &[Op], errs: &[String]) {
    let bad = order_violations(ops);
    assert!(
        bad.is_empty(),
        "{} order violations, first: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert!(
        errs.is_empty(),
        "calls failed for 8 s in a row: {:?}",
        &errs[..errs.len().min(5)]
    );
}

/// Lets the load run 1 s more, stops it, and checks it: no call failed for
/// 8 s in a row, every answer in real-time order. Returns the answers.
pub(crate) async fn stop_and_check(
    stop: Arc<std::sync::atomic::AtomicBool>,
    running: tokio::task::JoinHandle<(Vec<Op>, Vec<String>)>,
) -> Vec<Op> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ops, errs) = running.await.unwrap();
    eprintln!(
        "{} answered allocations, {} failed calls",
        ops.len(),
        errs.len()
    );
    check(&ops, &errs);
    ops
}

/// For each instant in `at`, how long until the first op invoked after it
/// was answered.
pub(crate) fn gaps_after(ops: &[Op], at: &[Instant]) -> Vec<Duration> {
    at.iter()
        .map(|&t| {
            ops.iter()
                .filter(|o| o.invoked >= t)
                .map(|o| o.returned - t)
                .min()
                .unwrap_or(Duration::MAX)
        })
        .collect()
}
