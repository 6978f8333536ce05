//! Multi-range behaviour through real processes and real clients: splits under
//! load, watches across splits, consistent reads over many ranges.

mod common;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splits_under_load_with_a_watch_across_them() {
    if Target::from_env() != Target::Strata {
        return; // ranges are Strata's; etcd has one keyspace
    }
    let c = start_strata_with(&["--range-split-keys", "500"]);
    let client = c.client().await;

    // A prefix watch opened before the load sees every put exactly once, in
    // revision order, across every split.
    let mut wc = client.clone();
    let mut stream = wc
        .watch("load/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    let created = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("created in time")
        .expect("watch stream")
        .expect("created response");
    assert!(created.created());
    let watcher = tokio::spawn(async move {
        let mut seen: Vec<(String, i64)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(240);
        while seen.len() < KEYS && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
                Ok(Ok(Some(resp))) => {
                    for e in resp.events() {
                        assert_eq!(e.event_type(), EventType::Put);
                        let kv = e.kv().unwrap();
                        seen.push((kv.key_str().unwrap().to_string(), kv.mod_revision()));
                    }
                }
                other => panic!("watch ended early after {} events: {other:?}", seen.len()),
            }
        }
        seen
    });

    let started = Instant::now();
    let acked = load(&client, "load/", KEYS, 32).await;
    eprintln!("loaded {KEYS} keys in {:?}", started.elapsed());
    let seen = watcher.await.expect("watcher");
    assert_eq!(seen.len(), KEYS, "every put seen exactly once");
    assert!(
        seen.windows(2).all(|w| w[0].1 < w[1].1),
        "events in revision order"
    );
    let seen_map: BTreeMap<String, i64> = seen.into_iter().collect();
    assert_eq!(seen_map, acked, "watch events match acknowledged puts");

    // Dozens of ranges, three replicas each on distinct nodes.
    let (n, peers) = range_count(&c).await;
    eprintln!("{n} ranges after the load");
    assert!(n >= 20, "expected dozens of ranges, got {n}");
    for p in &peers {
        let mut d = p.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 3, "replicas on distinct nodes: {p:?}");
    }

    // A prefix read across all of them returns everything, with limit/count.
    let mut c2 = client.clone();
    let all = c2
        .get("load/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(all.count() as usize, KEYS);
    assert_eq!(all.kvs().len(), KEYS);
    let got: BTreeMap<String, i64> = all
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
        .collect();
    assert_eq!(got, acked);
    let page = c2
        .get(
            "load/",
            Some(GetOptions::new().with_prefix().with_limit(10)),
        )
        .await
        .expect("page");
    assert!(page.more() && page.kvs().len() == 10 && page.count() as usize == KEYS);
    assert_eq!(page.kvs()[0].key_str().unwrap(), "load/000000");
    let desc = c2
        .get(
            "load/",
            Some(GetOptions::new().with_prefix().with_limit(3).with_sort(
                etcd_client::SortTarget::Key,
                etcd_client::SortOrder::Descend,
            )),
        )
        .await
        .expect("desc");
    assert_eq!(
        desc.kvs()[0].key_str().unwrap(),
        format!("load/{:06}", KEYS - 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefix_read_over_many_ranges_is_a_snapshot() {
    if Target::from_env() != Target::Strata {
        return;
    }
    let c = start_strata_with(&["--range-split-keys", "100"]);
    let client = c.client().await;
    // 16 counters spread over the keyspace, with filler keys between them so
    // that they end up in different ranges.
    const COUNTERS: usize = 16;
    for i in 0..COUNTERS {
        let mut cl = client.clone();
        cl.put(format!("snap/{i:02}/counter"), "0", None)
            .await
            .expect("init");
    }
    load(&client, "snap/", 3000, 16).await; // keys snap/000000.. sort before snap/00/..? no: interleave below
    for i in 0..COUNTERS {
        load(&client, &format!("snap/{i:02}/fill"), 120, 8).await;
    }
    // Wait (bounded) for splits to spread the counters over >= 10 ranges.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (n, _) = range_count(&c).await;
        if n >= 12 || Instant::now() > deadline {
            assert!(n >= 12, "only {n} ranges");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A writer bumps every counter to the same value round by round, in
    // order 0..16: any consistent snapshot sees a non-increasing sequence
    // whose first and last values differ by at most one.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut cl = client.clone();
        tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) && round < 200 {
                round += 1;
                for i in 0..COUNTERS {
                    cl.put(format!("snap/{i:02}/counter"), round.to_string(), None)
                        .await
                        .expect("bump");
                }
            }
            round
        })
    };
    let mut cl = client.clone();
    let mut checked = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while checked < 30 && Instant::now() < deadline {
        let r = cl
            .get("snap/", Some(GetOptions::new().with_prefix()))
            .await
            .expect("read");
        let vals: Vec<u64> = r
            .kvs()
            .iter()
            .filter(|kv| kv.key_str().unwrap().ends_with("/counter"))
            .map(|kv| kv.value_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(vals.len(), COUNTERS);
        assert!(vals.windows(2).all(|w| w[0] >= w[1]), "torn read: {vals:?}");
        assert!(vals[0] - vals[COUNTERS - 1] <= 1, "torn read: {vals:?}");
        checked += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.await.expect("writer");
    assert!(
        checked >= 10 && rounds > 1,
        "checked {checked} snapshots over {rounds} rounds"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_balance_repair_and_join() {
    if Target::from_env() != Target::Strata {
        return;
    }
    let c = start_strata_with(&[
        "--nodes",
        "5",
        "--range-split-keys",
        "300",
        "--node-down-after",
        "4s",
    ]);
    let client = c.client().await;
    let (acked, errors) = load_tolerant(&client, "bal/", 6000, 16).await;
    eprintln!("loaded {} keys ({errors} errors)", acked.len());
    let live: Vec<u64> = (1..=5).collect();
    let l = wait_layout(&c, "balanced over 5 nodes", Duration::from_secs(120), |l| {
        l.ranges.len() >= 12 && healthy(l, &live) && leaders_even(l, &live)
    })
    .await;
    eprintln!("balanced: {} ranges, nodes {:?}", l.ranges.len(), l.nodes);

    // kill -9 one node under a write load: nothing acknowledged is lost, writes
    // go on, and every range is back to 3 live replicas after the down timeout.
    let victim_id = 5u64;
    let victim_addr = l.nodes[&victim_id].0.clone();
    let text = std::fs::read_to_string(c.data_dir.join("dev.json")).expect("dev.json");
    let dev: serde_json::Value = serde_json::from_str(&text).expect("json");
    let pid = dev["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["addr"] == victim_addr.as_str())
        .and_then(|x| x["pid"].as_i64())
        .expect("victim pid") as i32;
    let writer = {
        let client = client.clone();
        tokio::spawn(async move { load_tolerant(&client, "kill/", 1500, 8).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SAFETY: kill(2) on a pid of our own cluster, read from dev.json.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let (acked2, errors2) = writer.await.expect("writer");
    eprintln!("during the crash: {} acked, {errors2} errors", acked2.len());
    assert!(
        acked2.len() > 1000,
        "writes did not continue: {} acked",
        acked2.len()
    );
    let live: Vec<u64> = (1..=4).collect();
    let l = wait_layout(
        &c,
        "repaired after kill -9",
        Duration::from_secs(120),
        |l| healthy(l, &live),
    )
    .await;
    eprintln!("repaired: nodes {:?}", l.nodes);
    let mut cl = client.clone();
    for (prefix, acked) in [("bal/", &acked), ("kill/", &acked2)] {
        let got = cl
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .expect("read back");
        let got: BTreeMap<String, i64> = got
            .kvs()
            .iter()
            .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
            .collect();
        for (k, rev) in acked {
            assert_eq!(got.get(k), Some(rev), "acknowledged write {k} lost");
        }
    }

    // A new node joins and receives a fair share of replicas and leaders.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut node6 = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["node", "--data-dir"])
        .arg(c.data_dir.join("node-6"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--placement",
            &c.placement_addr(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start node 6");
    let joined = wait_layout(
        &c,
        "new node got its share",
        Duration::from_secs(150),
        |l| {
            let Some((id, _)) = l
                .nodes
                .iter()
                .find(|(_, n)| n.0 == format!("127.0.0.1:{port}"))
            else {
                return false;
            };
            let mut live: Vec<u64> = (1..=4).collect();
            live.push(*id);
            let replicas = l.nodes[id].2;
            let fair = (l.ranges.len() * 3) as f64 / 5.0;
            healthy(l, &live) && replicas as f64 >= fair - 1.0 && leaders_even(l, &live)
        },
    )
    .await;
    eprintln!("joined: nodes {:?}", joined.nodes);
    let _ = node6.kill();
    let _ = node6.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_hot_range_splits_by_write_rate() {
    if Target::from_env() != Target::Strata {
        return;
    }
    // 50 keys are far below the key and byte thresholds: only the write rate
    // can split this range.
    let c = start_strata_with(&["--range-split-write-rate", "50"]);
    let client = c.client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    loop {
        let (acked, _errors) = load_tolerant(&client, "hot/", 50, 10).await;
        assert!(!acked.is_empty());
        rounds += 1;
        let (n, _) = range_count(&c).await;
        if n >= 2 {
            eprintln!("split by load after {rounds} rounds of 50 puts: {n} ranges");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no load-based split after {rounds} rounds"
        );
    }
    // Both halves still serve every key.
    let mut cl = client.clone();
    let all = cl
        .get("hot/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("read");
    assert_eq!(all.count(), 50);
}

/// Placement's current list of ranges (with leaders and stats).
async fn range_infos(c: &common::Cluster) -> Vec<strata_proto::strata::RangeInfo> {
    PlacementClient::connect(format!("http://{}", c.placement_addr()))
        .await
        .expect("placement")
        .get_ranges(GetRangesRequest::default())
        .await
        .expect("ranges")
        .into_inner()
        .ranges
}

/// Write-load balance: two hot ranges led by the same node end up led by
/// different nodes, while leader counts stay even.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_leaders_spread_over_nodes() {
    if Target::from_env() != Target::Strata {
        return;
    }
    let c = start_strata_with(&["--range-split-keys", "16"]);
    let client = c.client().await;
    let keys: Vec<String> = load(&client, "hot/", 120, 4).await.into_keys().collect();
    let live = [1, 2, 3];
    wait_layout(
        &c,
        "6+ ranges, healthy, leaders even",
        Duration::from_secs(90),
        |l| l.ranges.len() >= 6 && healthy(l, &live) && leaders_even(l, &live),
    )
    .await;
    // Two ranges led by one node, with a loaded key in each.
    let ranges = range_infos(&c).await;
    let key_in = |d: &strata_proto::strata::RangeDescriptor| {
        keys.iter()
            .find(|k| {
                k.as_bytes() >= d.start_key.as_slice()
                    && (d.end_key.is_empty() || k.as_bytes() < d.end_key.as_slice())
            })
            .cloned()
    };
    let mut by_leader: BTreeMap<u64, Vec<(u64, String)>> = BTreeMap::new();
    for r in &ranges {
        let d = r.desc.as_ref().unwrap();
        if let Some(k) = key_in(d) {
            by_leader.entry(r.leader_node).or_default().push((d.id, k));
        }
    }
    let (_, pair) = by_leader
        .iter()
        .find(|(n, v)| **n != 0 && v.len() >= 2)
        .unwrap_or_else(|| panic!("no node leads two loaded ranges: {by_leader:?}"));
    let hot: Vec<(u64, String)> = pair[..2].to_vec();
    let hot_ids: Vec<u64> = hot.iter().map(|h| h.0).collect();

    // Hammer both (bounded: 90 s at most), until their leaders differ for 3 s.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut cl = client.clone();
        let key = hot[w % 2].1.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = tokio::time::timeout(
                    Duration::from_secs(10),
                    cl.put(key.as_str(), format!("{i}"), None),
                )
                .await;
                assert!(matches!(r, Ok(Ok(_))), "put {key}: {r:?}");
                i += 1;
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(80);
    let mut apart_since: Option<Instant> = None;
    let final_layout = loop {
        let l = layout(&c).await;
        let rs = range_infos(&c).await;
        let leaders: Vec<u64> = hot_ids
            .iter()
            .map(|id| {
                rs.iter()
                    .find(|r| r.desc.as_ref().is_some_and(|d| d.id == *id))
                    .map_or(0, |r| r.leader_node)
            })
            .collect();
        if leaders[0] != 0 && leaders[1] != 0 && leaders[0] != leaders[1] {
            let since = *apart_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(3) {
                break l;
            }
        } else {
            apart_since = None;
        }
        assert!(
            Instant::now() < deadline,
            "hot ranges {hot_ids:?} still share a leader: {leaders:?}; nodes {:?}",
            l.nodes
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    assert!(
        leaders_even(&final_layout, &live),
        "leader counts uneven: {:?}",
        final_layout.nodes
    );
}
