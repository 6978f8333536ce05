//! Snapshot catch-up of a large range, with real processes.
//!
//! One range grows past 200 MiB (split thresholds raised so it stays one
//! range), then a voter is killed with `kill -9`; placement's repair adds a
//! learner on the spare node, which can only start from a raft snapshot of
//! the whole range. The test checks the new replica catches up with exactly
//! the leader's data: every key's latest version and older history.
//! Strata only; every wait is bounded and the cluster is stopped on drop.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{start_strata_with, within, Cluster, Target};
use strata_proto::etcd::{PbRangeRequest, PbRangeResponse};
use strata_proto::strata::node_client::NodeClient;
use strata_proto::strata::placement_client::PlacementClient;
use strata_proto::strata::{GetRangesRequest, KvKind, KvRequest, NodeStatusRequest, RangeInfo};
use strata_proto::Message as _;

/// Value size: large values keep the key count (and the test) small.
const VALUE_BYTES: usize = 1024 * 1024;
/// Keys written: 205 MiB of values.
const KEYS: usize = 205;
const PREFIX: &str = "big/";

fn key(i: usize) -> String {
    format!("{PREFIX}{i:05}")
}

/// Deterministic, incompressible-looking bytes for key `i`, version `v`.
fn value(i: usize, v: u64, len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ ((i as u64) << 20) ^ v;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn ranges(c: &Cluster) -> (Vec<RangeInfo>, BTreeMap<u64, (String, bool)>) {
    let mut p = PlacementClient::connect(format!("http://{}", c.placement_addr()))
        .await
        .expect("connect placement");
    let r = p
        .get_ranges(GetRangesRequest::default())
        .await
        .expect("get ranges")
        .into_inner();
    let nodes = r
        .nodes
        .iter()
        .map(|n| (n.id, (n.addr.clone(), n.up)))
        .collect();
    (r.ranges, nodes)
}

fn node_pid(c: &Cluster, addr: &str) -> i32 {
    let text = std::fs::read_to_string(c.data_dir.join("dev.json")).expect("dev.json");
    let dev: serde_json::Value = serde_json::from_str(&text).expect("dev.json is JSON");
    dev["components"]
        .as_array()
        .expect("components")
        .iter()
        .find(|x| x["addr"] == addr)
        .and_then(|x| x["pid"].as_i64())
        .expect("node pid") as i32
}

async fn node_client(addr: &str) -> NodeClient<tonic::transport::Channel> {
    NodeClient::connect(format!("http://{addr}"))
        .await
        .expect("connect node")
        .max_decoding_message_size(16 * 1024 * 1024)
}

/// (applied index, applied revision) of range 1 on the node at `addr`.
async fn applied(addr: &str) -> Option<(u64, i64)> {
    let mut n = NodeClient::connect(format!("http://{addr}")).await.ok()?;
    let s = n
        .status(NodeStatusRequest::default())
        .await
        .ok()?
        .into_inner();
    s.ranges
        .iter()
        .find(|r| r.desc.as_ref().is_some_and(|d| d.id == 1))
        .map(|r| (r.applied_index, r.applied_revision))
}

/// A serializable read of `key` (at `revision`, 0 = latest) served by the
/// replica of range 1 on that node.
async fn read(
    n: &mut NodeClient<tonic::transport::Channel>,
    key: &str,
    revision: i64,
) -> PbRangeResponse {
    let req = PbRangeRequest {
        key: key.as_bytes().to_vec(),
        revision,
        ..Default::default()
    };
    let resp = n
        .kv(KvRequest {
            range_id: 1,
            epoch: None,
            kind: KvKind::KvRange as i32,
            request: req.encode_to_vec(),
            read_revision: 0,
        })
        .await
        .expect("node kv")
        .into_inner();
    assert!(resp.error.is_none(), "read {key}: {:?}", resp.error);
    let mut r = PbRangeResponse::decode(&resp.response[..]).expect("range response");
    r.header = None; // carries the replica's own ids
    r
}

/// Lines of the nodes' logs about snapshots or failed raft sends (for the
/// failure message).
fn snapshot_log_lines(c: &Cluster) -> String {
    let mut out = String::new();
    for n in 1..=4 {
        let path = c.data_dir.join("logs").join(format!("node-{n}.log"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("snapshot") || l.contains("raft send"))
            .collect();
        let from = lines.len().saturating_sub(6);
        for l in &lines[from..] {
            let l = strip_ansi(l);
            out.push_str(&format!("node-{n}.log: {}\n", &l[..l.len().min(400)]));
        }
    }
    out
}

/// The line without terminal color codes.
fn strip_ansi(l: &str) -> String {
    let mut out = String::with_capacity(l.len());
    let mut chars = l.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_200_mib_range_catches_up_by_snapshot() {
    if Target::from_env() != Target::Strata {
        return;
    }
    let started = Instant::now();
    if std::env::var_os("RUST_LOG").is_none() {
        // Failed raft sends are logged at debug level; the nodes inherit this.
        std::env::set_var("RUST_LOG", "info,strata_node::transport=debug");
    }
    let c = start_strata_with(&[
        "--nodes",
        "4",
        "--range-split-bytes",
        &(4u64 << 30).to_string(),
        "--range-split-keys",
        "10000000",
        "--node-down-after",
        "3s",
    ]);
    let client = c.client().await;

    // Load: 205 MiB in one range, then some history (overwrites, deletes).
    let mut tasks = Vec::new();
    for w in 0..4 {
        let mut cl = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..KEYS).step_by(4) {
                let mut ok = false;
                for _ in 0..5 {
                    if cl.put(key(i), value(i, 1, VALUE_BYTES), None).await.is_ok() {
                        ok = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                assert!(ok, "put {} failed 5 times", key(i));
            }
        }));
    }
    for t in tasks {
        within(Duration::from_secs(120), "loading", t)
            .await
            .expect("writer");
    }
    let mut cl = client.clone();
    let loaded_rev = common::current_revision(&mut cl).await;
    for i in 0..10 {
        cl.put(key(i), value(i, 2, 1000), None)
            .await
            .expect("overwrite");
    }
    for i in 10..15 {
        cl.delete(key(i), None).await.expect("delete");
    }
    eprintln!(
        "loaded {} MiB in {:?} (revision {loaded_rev})",
        (KEYS * VALUE_BYTES) >> 20,
        started.elapsed()
    );

    // One range, on three of the four nodes.
    let (rs, nodes) = ranges(&c).await;
    assert_eq!(rs.len(), 1, "the range split: {rs:?}");
    let desc = rs[0].desc.clone().expect("desc");
    let leader = rs[0].leader_node;
    let voters: Vec<u64> = desc.peers.iter().map(|p| p.node_id).collect();
    assert_eq!(voters.len(), 3, "{desc:?}");
    let spare = *nodes
        .keys()
        .find(|n| !voters.contains(n))
        .expect("a node without a replica");
    let victim = *voters.iter().find(|n| **n != leader).expect("a follower");
    let pid = node_pid(&c, &nodes[&victim].0);
    // SAFETY: kill(2) on a pid of our own cluster, read from dev.json.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let killed_at = Instant::now();
    eprintln!("killed node {victim}; expecting a replica on node {spare}");

    // Repair: a learner on the spare node gets a snapshot and is promoted.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (leader_addr, spare_addr) = loop {
        let (rs, nodes) = ranges(&c).await;
        let d = rs[0].desc.clone().expect("desc");
        let on_spare = d.peers.iter().any(|p| p.node_id == spare && !p.learner);
        let leader = rs[0].leader_node;
        if on_spare && leader != 0 {
            let (la, sa) = (nodes[&leader].0.clone(), nodes[&spare].0.clone());
            if let (Some(l), Some(s)) = (applied(&la).await, applied(&sa).await) {
                if l == s {
                    break (la, sa);
                }
            }
        }
        if Instant::now() > deadline {
            let spare_state = applied(&nodes[&spare].0).await;
            panic!(
                "the new replica on node {spare} did not catch up within 90 s: \
                 peers {:?}, leader {leader}, leader applied {:?}, new replica applied \
                 {spare_state:?}\n--- node logs (snapshots, failed sends) ---\n{}",
                d.peers,
                applied(&nodes[&leader].0).await,
                snapshot_log_lines(&c)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("caught up {:?} after the kill", killed_at.elapsed());

    // Exactly the leader's data: latest versions and history.
    let (mut l, mut s) = (
        node_client(&leader_addr).await,
        node_client(&spare_addr).await,
    );
    for i in 0..KEYS {
        let (a, b) = (
            read(&mut l, &key(i), 0).await,
            read(&mut s, &key(i), 0).await,
        );
        assert_eq!(a, b, "{} differs", key(i));
        let want = match i {
            0..10 => Some(value(i, 2, 1000)),
            10..15 => None,
            _ => Some(value(i, 1, VALUE_BYTES)),
        };
        assert_eq!(a.kvs.first().map(|kv| kv.value.clone()), want, "{}", key(i));
    }
    for i in 0..15 {
        let (a, b) = (
            read(&mut l, &key(i), loaded_rev).await,
            read(&mut s, &key(i), loaded_rev).await,
        );
        assert_eq!(a, b, "{} at {loaded_rev} differs", key(i));
        assert_eq!(a.kvs[0].value, value(i, 1, VALUE_BYTES), "{}", key(i));
    }
    eprintln!("whole test took {:?}", started.elapsed());
}
