//! The whole cluster across placement leader failovers: 3 placement
//! replicas, 3 nodes, 2 routers (real processes), under a steady write and
//! linearizable-read load through both routers, the placement leader is
//! `kill -9`ed and restarted 5 times. Every acknowledged write must be there
//! afterwards, each client's header revisions must only go up (strictly for
//! writes), a read must see every write acknowledged before it started, and
//! leases must live through it all. This file holds the load and its checks;
//! `cluster.rs` the tests.

#[path = "../common/mod.rs"]
mod common;

mod cluster;

pub(crate) use common::placement_leader;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, GetOptions, PutOptions};

fn opts() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10))
}

#[derive(Clone, Debug)]
pub(crate) struct Write {
    key: String,
    value: String,
    revision: i64,
    invoked: Instant,
    returned: Instant,
}

#[derive(Clone, Debug)]
pub(crate) struct Read {
    revision: i64,
    invoked: Instant,
}

#[derive(Default)]
pub(crate) struct Log {
    writes: Vec<Write>,
    reads: Vec<Read>,
    write_errors: Vec<String>,
    read_errors: Vec<String>,
    problems: Vec<String>,
}

/// The load: 4 writers and 2 linearizable readers spread over `routers`,
/// and keep-alives of a 10 s lease, until [`Load::finish`].
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub(crate) admin: Client,
    kept: i64,
    idle: i64,
}

impl Load {
    pub(crate) async fn start(routers: &[String]) -> Load {
        // Leases: one kept alive, one left alone (TTL above the test's length).
        let mut admin = Client::connect([routers[0].clone()], Some(opts()))
            .await
            .expect("connect");
        let kept = admin.lease_grant(10, None).await.expect("grant").id();
        let idle = admin.lease_grant(120, None).await.expect("grant").id();
        admin
            .put("lease/kept", "x", Some(PutOptions::new().with_lease(kept)))
            .await
            .expect("put");
        admin
            .put("lease/idle", "x", Some(PutOptions::new().with_lease(idle)))
            .await
            .expect("put");

        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Log::default()));
        let mut tasks = Vec::new();
        // Writers and readers, half on each router.
        for w in 0..4 {
            let (ep, stop, log) = (
                routers[w % routers.len()].clone(),
                stop.clone(),
                log.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut cl = Client::connect([ep], Some(opts())).await.expect("connect");
                let mut last = 0i64;
                for n in 0..20_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (key, value) = (format!("w{w}/{n:06}"), format!("v{w}-{n}"));
                    let invoked = Instant::now();
                    match cl.put(key.clone(), value.clone(), None).await {
                        Ok(r) => {
                            let revision = r.header().map_or(0, |h| h.revision());
                            let mut l = log.lock().unwrap();
                            if revision <= last {
                                l.problems.push(format!(
                                    "writer {w}: put {key} at revision {revision} after {last}"
                                ));
                            }
                            last = revision;
                            l.writes.push(Write {
                                key,
                                value,
                                revision,
                                invoked,
                                returned: Instant::now(),
                            });
                        }
                        Err(e) => log.lock().unwrap().write_errors.push(format!("{key}: {e}")),
                    }
                }
            }));
        }
        for r in 0..2 {
            let (ep, stop, log) = (
                routers[r % routers.len()].clone(),
                stop.clone(),
                log.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut cl = Client::connect([ep], Some(opts())).await.expect("connect");
                let mut last = 0i64;
                for _ in 0..50_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let invoked = Instant::now();
                    let got = cl
                        .get(
                            format!("w{r}/"),
                            Some(GetOptions::new().with_prefix().with_count_only()),
                        )
                        .await;
                    match got {
                        Ok(resp) => {
                            let revision = resp.header().map_or(0, |h| h.revision());
                            let mut l = log.lock().unwrap();
                            if revision < last {
                                l.problems
                                    .push(format!("reader {r}: revision {revision} after {last}"));
                            }
                            last = revision;
                            l.reads.push(Read { revision, invoked });
                        }
                        Err(e) => log.lock().unwrap().read_errors.push(e.to_string()),
                    }
                }
            }));
        }
        // Keep-alives for the 10 s lease, every 2 s.
        {
            let (ep, stop) = (routers[routers.len() - 1].clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut cl = Client::connect([ep], Some(opts())).await.expect("connect");
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((mut k, mut s)) = cl.lease_keep_alive(kept).await {
                        let _ = k.keep_alive().await;
                        let _ = tokio::time::timeout(Duration::from_secs(2), s.message()).await;
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }));
        }

        Load {
            stop,
            log,
            tasks,
            admin,
            kept,
            idle,
        }
    }

    /// Stops the load (after 2 s more) and returns what it saw.
    pub(crate) async fn finish(self) -> (Log, Client, [(i64, &'static str); 2]) {
        let Load {
            stop,
            log,
            tasks,
            admin,
            kept,
            idle,
        } = self;
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.expect("client task");
        }
        let log = std::mem::take(&mut *log.lock().unwrap());

        (log, admin, [(kept, "lease/kept"), (idle, "lease/idle")])
    }
}

/// For each instant in `kills`, how long until the first write made after
/// it was acknowledged; printed with the load's counts.
pub(crate) fn resumed(log: &Log, kills: &[Instant]) -> Vec<Duration> {
    let resumed: Vec<Duration> = kills
        .iter()
        .map(|&k| {
            log.writes
                .iter()
                .filter(|w| w.invoked >= k)
                .map(|w| w.returned - k)
                .min()
                .unwrap_or(Duration::MAX)
        })
        .collect();
    let mut sorted = resumed.clone();
    sorted.sort();
    eprintln!(
        "{} writes and {} reads acknowledged; {} write and {} read errors; time from each kill \
         to the first write made after it being acknowledged: {resumed:?} (median {:?}, worst {:?})",
        log.writes.len(),
        log.reads.len(),
        log.write_errors.len(),
        log.read_errors.len(),
        sorted.get(sorted.len() / 2),
        sorted.last()
    );
    resumed
}

/// No client error, revisions only went up, reads saw every write
/// acknowledged before them, every acknowledged write is there at its
/// revision, and neither lease expired.
pub(crate) async fn check(log: &Log, admin: &mut Client, leases: [(i64, &'static str); 2]) {
    assert!(
        log.problems.is_empty(),
        "revisions went back: {:?}",
        &log.problems[..log.problems.len().min(5)]
    );
    assert!(
        log.write_errors.is_empty() && log.read_errors.is_empty(),
        "client errors: writes {:?}, reads {:?}",
        &log.write_errors[..log.write_errors.len().min(3)],
        &log.read_errors[..log.read_errors.len().min(3)]
    );
    // Linearizable reads: a read started after a write was acknowledged is at
    // or after its revision.
    let mut acked: Vec<(Instant, i64)> = log
        .writes
        .iter()
        .map(|w| (w.returned, w.revision))
        .collect();
    acked.sort();
    let mut reads = log.reads.clone();
    reads.sort_by_key(|r| r.invoked);
    let (mut j, mut max_rev) = (0, 0);
    for r in &reads {
        while j < acked.len() && acked[j].0 < r.invoked {
            max_rev = max_rev.max(acked[j].1);
            j += 1;
        }
        assert!(
            r.revision >= max_rev,
            "a read at revision {} missed a write acknowledged at {max_rev}",
            r.revision
        );
    }
    // Every acknowledged write is there, at its revision.
    for w in 0..4 {
        let got = admin
            .get(format!("w{w}/"), Some(GetOptions::new().with_prefix()))
            .await
            .expect("final read");
        let have: std::collections::HashMap<String, (String, i64)> = got
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key_str().unwrap().to_string(),
                    (kv.value_str().unwrap().to_string(), kv.mod_revision()),
                )
            })
            .collect();
        for wr in log
            .writes
            .iter()
            .filter(|x| x.key.starts_with(&format!("w{w}/")))
        {
            assert_eq!(
                have.get(&wr.key),
                Some(&(wr.value.clone(), wr.revision)),
                "acknowledged write {} lost or changed",
                wr.key
            );
        }
    }

    // No lease expired early.
    for (id, key) in leases {
        let ttl = admin.lease_time_to_live(id, None).await.expect("ttl").ttl();
        assert!(ttl > 0, "lease {id} expired (ttl {ttl})");
        let got = admin.get(key, None).await.expect("get");
        assert_eq!(got.kvs().len(), 1, "{key} was deleted with its lease");
    }
}
