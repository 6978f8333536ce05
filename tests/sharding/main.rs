//! Multi-range behaviour through real processes and real clients: splits under
//! load, watches across splits, consistent reads over many ranges.

#[path = "../common/mod.rs"]
mod common;

mod balance;
mod hot;
mod splits;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{start_strata_with, Target};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use strata_proto::strata::placement_client::PlacementClient;
use strata_proto::strata::GetRangesRequest;

const KEYS: usize = 20_000;

async fn load(client: &Client, prefix: &str, n: usize, writers: usize) -> BTreeMap<String, i64> {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut c = client.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in (w..n).step_by(writers) {
                let k = format!("{prefix}{i:06}");
                let r = tokio::time::timeout(
                    Duration::from_secs(20),
                    c.put(k.clone(), format!("v{i}"), None),
                )
                .await
                .expect("put timed out")
                .unwrap_or_else(|e| panic!("put {k}: {e}"));
                acked.push((k, r.header().unwrap().revision()));
            }
            acked
        }));
    }
    let mut out = BTreeMap::new();
    for t in tasks {
        out.extend(t.await.expect("writer"));
    }
    out
}

async fn range_count(c: &common::Cluster) -> (usize, Vec<Vec<u64>>) {
    let mut p = PlacementClient::connect(format!("http://{}", c.placement_addr()))
        .await
        .expect("placement");
    let r = p
        .get_ranges(GetRangesRequest::default())
        .await
        .expect("ranges")
        .into_inner();
    let nodes = r
        .ranges
        .iter()
        .map(|r| {
            r.desc
                .as_ref()
                .unwrap()
                .peers
                .iter()
                .map(|p| p.node_id)
                .collect()
        })
        .collect();
    (r.ranges.len(), nodes)
}

/// Puts `n` keys from `writers` tasks, tolerating errors (a put whose result
/// is unknown may or may not have happened); returns acknowledged puts.
async fn load_tolerant(
    client: &Client,
    prefix: &str,
    n: usize,
    writers: usize,
) -> (BTreeMap<String, i64>, usize) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut c = client.clone();
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let (mut acked, mut errors) = (Vec::new(), 0);
            for i in (w..n).step_by(writers) {
                let k = format!("{prefix}{i:06}");
                match tokio::time::timeout(
                    Duration::from_secs(20),
                    c.put(k.clone(), format!("v{i}"), None),
                )
                .await
                {
                    Ok(Ok(r)) => acked.push((k, r.header().unwrap().revision())),
                    _ => errors += 1,
                }
            }
            (acked, errors)
        }));
    }
    let (mut out, mut errors) = (BTreeMap::new(), 0);
    for t in tasks {
        let (a, e) = t.await.expect("writer");
        out.extend(a);
        errors += e;
    }
    (out, errors)
}

struct Layout {
    /// Per range: (voter nodes, learner count, leader node).
    ranges: Vec<(Vec<u64>, usize, u64)>,
    /// node id → (addr, up, replicas, leaders)
    nodes: BTreeMap<u64, (String, bool, u64, u64)>,
}

async fn layout(c: &common::Cluster) -> Layout {
    let mut p = PlacementClient::connect(format!("http://{}", c.placement_addr()))
        .await
        .expect("placement");
    let r = p
        .get_ranges(GetRangesRequest::default())
        .await
        .expect("ranges")
        .into_inner();
    Layout {
        ranges: r
            .ranges
            .iter()
            .map(|r| {
                let d = r.desc.as_ref().unwrap();
                (
                    d.peers
                        .iter()
                        .filter(|p| !p.learner)
                        .map(|p| p.node_id)
                        .collect(),
                    d.peers.iter().filter(|p| p.learner).count(),
                    r.leader_node,
                )
            })
            .collect(),
        nodes: r
            .nodes
            .iter()
            .map(|n| (n.id, (n.addr.clone(), n.up, n.range_count, n.leader_count)))
            .collect(),
    }
}

/// Waits (bounded) until `pred` holds for the cluster layout.
async fn wait_layout(
    c: &common::Cluster,
    what: &str,
    limit: Duration,
    pred: impl Fn(&Layout) -> bool,
) -> Layout {
    let deadline = Instant::now() + limit;
    loop {
        let l = layout(c).await;
        if pred(&l) {
            return l;
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: not reached within {limit:?}; ranges {:?}; nodes {:?}",
                l.ranges, l.nodes
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn healthy(l: &Layout, live: &[u64]) -> bool {
    l.ranges.iter().all(|(voters, learners, leader)| {
        let mut v = voters.clone();
        v.sort();
        v.dedup();
        v.len() == 3
            && voters.len() == 3
            && *learners == 0
            && *leader != 0
            && v.iter().all(|n| live.contains(n))
    })
}

fn leaders_even(l: &Layout, live: &[u64]) -> bool {
    let total: u64 = l.ranges.len() as u64;
    let counts: Vec<u64> = live
        .iter()
        .map(|n| l.nodes.get(n).map_or(0, |x| x.3))
        .collect();
    let sum: u64 = counts.iter().sum();
    // "Even" is floor or ceil of the average; allow one more or less.
    let avg = total as f64 / live.len() as f64;
    let (lo, hi) = (avg.floor() as u64, avg.ceil() as u64);
    sum == total && counts.iter().all(|c| *c + 1 >= lo && *c <= hi + 1)
}
