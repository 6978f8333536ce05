//! Placement as a raft group of real processes: the revision oracle across
//! `kill -9` of its leader, and replacing a replica while it serves.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Background;
use strata_proto::strata::placement_client::PlacementClient;
use strata_proto::strata::{AllocRequest, MembersRequest};
use tonic::transport::Channel;

/// One placement replica process.
struct Replica {
    id: u64,
    addr: String,
    dir: std::path::PathBuf,
    args: Vec<String>,
    proc: Option<Background>,
}

impl Replica {
    fn start(&mut self) {
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
    fn failpoints(&self, lines: &str) {
        std::fs::write(self.dir.with_extension("failpoints"), lines).unwrap();
    }

    /// SIGSTOP for `d`, then SIGCONT: a leader that wakes up believing it
    /// still leads.
    fn pause(&self, d: Duration) {
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

    fn kill9(&mut self) {
        if let Some(p) = self.proc.take() {
            let (_, err) = p.finish();
            let log = self.dir.with_extension("log");
            let _ = std::fs::write(log, err);
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Group {
    _tmp: tempfile::TempDir,
    replicas: Vec<Replica>,
}

impl Group {
    fn start(n: u64) -> Group {
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

    fn addrs(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.addr.clone()).collect()
    }
}

async fn client(addr: &str) -> Option<PlacementClient<Channel>> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(2));
    ep.connect().await.ok().map(PlacementClient::new)
}

/// Calls `addr` (reads and writes, or only reads) every `every` for `during`, over one
/// connection made now, each waiting up to 6 s; returns the answered ones.
async fn sticky_calls(
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
async fn leader(addrs: &[String], limit: Duration) -> Option<u64> {
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
struct Op {
    invoked: Instant,
    returned: Instant,
    count: u64,
    start: i64,
}

impl Op {
    /// Every revision this answer says was handed out before it: the end of
    /// its allocation, or the next unallocated one for `alloc(0)`.
    fn end(&self) -> i64 {
        self.start + self.count as i64
    }
}

/// Allocates through whichever replica serves, following hints and trying
/// the others, for up to `limit`.
async fn alloc(
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
fn order_violations(ops: &[Op]) -> Vec<String> {
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
fn load(
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

/// For each instant in `at`, how long until the first op invoked after it
/// was answered.
fn gaps_after(ops: &[Op], at: &[Instant]) -> Vec<Duration> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_oracle_survives_five_leader_kills_without_repeating_or_going_back() {
    let mut g = Group::start(3);
    let addrs = g.addrs();
    assert!(
        leader(&addrs, Duration::from_secs(20)).await.is_some(),
        "no placement leader elected"
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(addrs.clone(), 4, stop.clone());
    let kills = Arc::new(Mutex::new(Vec::new()));
    let mut extra = Vec::new();
    for round in 0..8 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let id = leader(&addrs, Duration::from_secs(10))
            .await
            .expect("a leader");
        let r = g
            .replicas
            .iter_mut()
            .find(|r| r.id == id)
            .expect("leader replica");
        if round % 3 == 2 {
            // Paused past its lease: the others elect a leader, and it must
            // not answer from its old oracle state when it wakes up.
            eprintln!("round {round}: pausing placement leader {id}");
            // A client that sticks to it meanwhile: its calls, made after
            // the new leader answered others, wait in the socket until the
            // old leader wakes up.
            let sticky = sticky_calls(
                &r.addr,
                Duration::from_millis(2500),
                Duration::from_millis(100),
                false,
            )
            .await;
            let r = &*r;
            tokio::task::block_in_place(|| r.pause(Duration::from_millis(2500)));
            extra.extend(sticky.await.unwrap());
            continue;
        }
        r.kill9();
        kills.lock().unwrap().push(Instant::now());
        eprintln!("round {round}: killed placement leader {id}");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        r.start();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ops, errs) = running.await.unwrap();
    eprintln!(
        "{} calls to a paused leader were answered after it woke up",
        extra.len()
    );
    ops.extend(extra);
    let kills = kills.lock().unwrap().clone();
    let gaps = gaps_after(&ops, &kills);
    let mut sorted = gaps.clone();
    sorted.sort();
    eprintln!(
        "{} answered allocations, {} failed calls; time from each kill to the first answer to a call made after it: {:?} (median {:?}, worst {:?})",
        ops.len(),
        errs.len(),
        gaps,
        sorted[sorted.len() / 2],
        sorted.last().unwrap()
    );
    let bad = order_violations(&ops);
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
    assert!(
        gaps.iter().all(|g| *g < Duration::from_secs(6)),
        "allocations did not resume after a kill: {gaps:?}"
    );
    for r in &mut g.replicas {
        r.kill9();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_replica_is_replaced_by_a_fresh_one_while_the_oracle_serves() {
    let mut g = Group::start(3);
    let addrs = g.addrs();
    let lead = leader(&addrs, Duration::from_secs(20))
        .await
        .expect("a leader");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(addrs.clone(), 2, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A follower dies for good.
    let victim = g
        .replicas
        .iter()
        .map(|r| r.id)
        .find(|&id| id != lead)
        .unwrap();
    g.replicas
        .iter_mut()
        .find(|r| r.id == victim)
        .unwrap()
        .kill9();
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("ctl")
            .args(args)
            .args(["--placement", &addrs.join(","), "--timeout", "10s"])
            .output()
            .unwrap();
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        assert!(out.status.success(), "strata ctl {args:?} failed: {e}");
        o
    };
    // Remove it (the list starts with the dead one: the client moves on).
    let out = tokio::task::block_in_place(|| ctl(&["placement", "remove", &victim.to_string()]));
    eprintln!("{out}");
    // Add a fresh replica's address, then start it as `add` says.
    let tmp = tempfile::tempdir().unwrap();
    let survivors: Vec<String> = g
        .replicas
        .iter()
        .filter(|r| r.id != victim)
        .map(|r| r.addr.clone())
        .collect();
    let fresh_addr = format!("127.0.0.1:{}", free_port());
    let out = tokio::task::block_in_place(|| ctl(&["placement", "add", &fresh_addr]));
    eprintln!("{out}");
    let id: u64 = out
        .split("--id ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no id in {out:?}"));
    assert!(
        out.contains(&format!("--join {}", survivors.join(","))) || out.contains("--join "),
        "{out}"
    );
    let mut fresh = Replica {
        id,
        addr: fresh_addr,
        dir: tmp.path().join("fresh"),
        args: vec![
            "--id".into(),
            id.to_string(),
            "--join".into(),
            survivors.join(","),
            "--replicas".into(),
            "3".into(),
            "--no-scheduler".into(),
        ],
        proc: None,
    };
    fresh.start();
    let mut c = client(&survivors[0]).await.expect("a live replica");
    // It becomes a voter once caught up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let members = loop {
        let r = c
            .members(MembersRequest {})
            .await
            .expect("members")
            .into_inner();
        let joined = r.members.iter().find(|m| m.addr == fresh.addr);
        if joined.is_some_and(|m| !m.learner) && r.members.len() == 3 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the fresh replica did not become a voter: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("members after the replacement: {:?}", members.members);
    assert!(
        !members.members.iter().any(|m| m.id == victim),
        "the dead replica is still a member"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ops, errs) = running.await.unwrap();
    eprintln!(
        "{} answered allocations, {} failed calls",
        ops.len(),
        errs.len()
    );
    assert!(
        errs.is_empty(),
        "client errors during the replacement: {:?}",
        &errs[..errs.len().min(5)]
    );
    assert!(order_violations(&ops).is_empty());
    // The new member holds the state: with the original leader killed, the
    // group (the other survivor and the fresh replica) still serves.
    let first = g.replicas.iter().position(|r| r.id == lead).unwrap();
    g.replicas[first].kill9();
    let mut all = addrs.clone();
    all.push(fresh.addr.clone());
    let mut conns = vec![None; all.len()];
    let got = alloc(&all, &mut conns, 1, Duration::from_secs(15)).await;
    assert!(
        got.is_ok(),
        "no serving leader among the survivor and the fresh replica: {got:?}"
    );
    fresh.kill9();
    for r in &mut g.replicas {
        r.kill9();
    }
}

/// A leader cut off from its group (raft messages dropped both ways) while
/// clients still reach it: it must stop answering before the others elect a
/// new leader, or an answer of its could fall below one the new leader gave.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_group_stops_answering_before_a_new_one_serves() {
    let g = Group::start(3);
    let addrs = g.addrs();
    assert!(
        leader(&addrs, Duration::from_secs(20)).await.is_some(),
        "no placement leader elected"
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = load(addrs.clone(), 3, stop.clone());
    let mut sticky_ops = Vec::new();
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let id = leader(&addrs, Duration::from_secs(10))
            .await
            .expect("a leader");
        let r = g
            .replicas
            .iter()
            .find(|r| r.id == id)
            .expect("leader replica");
        // Reads (`alloc(0)`: answered from memory, no window to persist)
        // to it alone, every 10 ms, through the cut and after.
        let sticky = sticky_calls(
            &r.addr,
            Duration::from_millis(3500),
            Duration::from_millis(10),
            true,
        )
        .await;
        r.failpoints("placement_partition=return\n");
        eprintln!("round {round}: cut placement leader {id} off its group");
        tokio::time::sleep(Duration::from_millis(3500)).await;
        r.failpoints("");
        let answered = sticky.await.unwrap();
        eprintln!(
            "  it answered {} calls made to it during the cut",
            answered.len()
        );
        sticky_ops.extend(answered);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ops, errs) = running.await.unwrap();
    eprintln!(
        "{} answered allocations, {} failed calls",
        ops.len(),
        errs.len()
    );
    ops.extend(sticky_ops);
    let bad = order_violations(&ops);
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
